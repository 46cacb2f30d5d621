#include "common/shm/shm_fault_guard.h"

#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace flashd::shm {
namespace {

// A registered range. `state`: 0 free, 1 being set up, 2 active. All
// fields are lock-free atomics, the only kind a signal handler may touch.
struct Slot {
  std::atomic<int> state{0};
  std::atomic<uintptr_t> begin{0};
  std::atomic<size_t> bytes{0};
  std::atomic<bool> faulted{false};
};

Slot g_slots[ShmFaultGuard::kMaxRanges];
struct sigaction g_previous;
int g_install_errno = 0;
std::once_flag g_install_once;

void OnSigbus(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (Slot& slot : g_slots) {
    if (slot.state.load(std::memory_order_acquire) != 2) continue;
    const uintptr_t begin = slot.begin.load(std::memory_order_relaxed);
    const size_t bytes = slot.bytes.load(std::memory_order_relaxed);
    if (addr < begin || addr - begin >= bytes) continue;
    void* p =
        ::mmap(reinterpret_cast<void*>(begin), bytes, PROT_READ | PROT_WRITE,
               MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      slot.faulted.store(true, std::memory_order_release);
      errno = saved_errno;
      return;  // the faulting access now succeeds on the zero pages
    }
    break;
  }
  // Not ours: hand over to whoever was there before.
  if (g_previous.sa_flags & SA_SIGINFO) {
    g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_DFL &&
             g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
  } else {
    // Default action: restore it; returning re-executes the access, which
    // faults again and terminates the process with a core dump.
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGBUS, &dfl, nullptr);
  }
  errno = saved_errno;
}

void Install() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (::sigaction(SIGBUS, &sa, &g_previous) != 0) g_install_errno = errno;
}

}  // namespace

absl::StatusOr<ShmFaultGuard> ShmFaultGuard::Register(void* base,
                                                      size_t bytes) {
  std::call_once(g_install_once, Install);
  if (g_install_errno != 0) {
    return absl::InternalError(absl::StrCat("installing the SIGBUS handler: ",
                                            std::strerror(g_install_errno)));
  }
  for (int i = 0; i < kMaxRanges; ++i) {
    int expected = 0;
    if (!g_slots[i].state.compare_exchange_strong(expected, 1)) continue;
    g_slots[i].begin.store(reinterpret_cast<uintptr_t>(base));
    g_slots[i].bytes.store(bytes);
    g_slots[i].faulted.store(false);
    g_slots[i].state.store(2, std::memory_order_release);
    return ShmFaultGuard(i);
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "more than ", kMaxRanges, " shared-memory ranges registered at once"));
}

ShmFaultGuard::ShmFaultGuard(ShmFaultGuard&& other) noexcept
    : slot_(other.slot_) {
  other.slot_ = -1;
}

ShmFaultGuard& ShmFaultGuard::operator=(ShmFaultGuard&& other) noexcept {
  if (this != &other) {
    Release();
    slot_ = other.slot_;
    other.slot_ = -1;
  }
  return *this;
}

ShmFaultGuard::~ShmFaultGuard() { Release(); }

void ShmFaultGuard::Release() {
  if (slot_ < 0) return;
  g_slots[slot_].state.store(0, std::memory_order_release);
  slot_ = -1;
}

bool ShmFaultGuard::Faulted() const {
  return slot_ >= 0 && g_slots[slot_].faulted.load(std::memory_order_acquire);
}

}  // namespace flashd::shm
