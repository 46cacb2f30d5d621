// Keeps the daemon alive when a client truncates a shared-memory segment
// the daemon has mapped.
//
// A ring segment belongs to the client's uid (so only that user can map it),
// which also lets the client ftruncate(2) it. The daemon's next store into
// the vanished pages would raise SIGBUS and kill every session. This guard
// (the technique of libwayland-server's wl_shm pools) installs one SIGBUS
// handler for the process; a fault inside a registered range replaces the
// whole range with anonymous zero pages (mmap MAP_FIXED), marks the range
// faulted and returns, so the faulting instruction completes harmlessly on
// private memory. The owner checks Faulted() after touching the range and
// fails the session with a Status. Faults outside registered ranges go to
// the previous handler (or the default action: core dump).
#ifndef FLASHD_COMMON_SHM_SHM_FAULT_GUARD_H_
#define FLASHD_COMMON_SHM_SHM_FAULT_GUARD_H_

#include <cstddef>

#include "absl/status/statusor.h"

namespace flashd::shm {

// RAII registration of one mapped range. Movable, not copyable. The range
// must stay mapped while registered. Faulted() may be called from any
// thread; registration and destruction from the owning thread.
class ShmFaultGuard {
 public:
  // Number of ranges that can be registered at once, process-wide.
  static constexpr int kMaxRanges = 4096;

  // Installs the handler (once per process) and registers [base,
  // base+bytes). RESOURCE_EXHAUSTED when kMaxRanges are registered;
  // INTERNAL if sigaction fails.
  static absl::StatusOr<ShmFaultGuard> Register(void* base, size_t bytes);

  ShmFaultGuard() = default;
  ShmFaultGuard(ShmFaultGuard&& other) noexcept;
  ShmFaultGuard& operator=(ShmFaultGuard&& other) noexcept;
  ~ShmFaultGuard();

  // True once a SIGBUS hit the range: it is now private zero pages, no
  // longer shared with anyone.
  bool Faulted() const;

 private:
  explicit ShmFaultGuard(int slot) : slot_(slot) {}
  void Release();

  int slot_ = -1;
};

}  // namespace flashd::shm

#endif  // FLASHD_COMMON_SHM_SHM_FAULT_GUARD_H_
