#include "common/base/thread_pool.h"

#include <sched.h>

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#define FLASHD_PAUSE() _mm_pause()
#else
#define FLASHD_PAUSE() ((void)0)
#endif

namespace flashd {
namespace {
// Spin iterations (~50-100 us) before a worker sleeps on the generation
// counter. A token of a 1B model runs ~150 kernels microseconds apart;
// spinning between them keeps the pool's overhead in microseconds, and a
// short budget keeps idle workers off a core other processes need.
constexpr int kSpinIterations = 1 << 12;
}  // namespace

int AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::Run(absl::FunctionRef<void(int, int)> fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  job_ = &fn;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  fn(0, n_threads_);
  // Wait for the workers; yield often so a descheduled worker (or the
  // flash engine's I/O thread, when every core computes) gets a core back:
  // with 2 cores, spinning without yielding halved flash-mode decode.
  for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
    if ((spin & 63) == 63) {
      std::this_thread::yield();
    } else {
      FLASHD_PAUSE();
    }
  }
  job_ = nullptr;
}

void ThreadPool::ParallelFor(int64_t n, int64_t align,
                             absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  align = std::max<int64_t>(1, align);
  const int64_t units = (n + align - 1) / align;
  Run([&](int index, int count) {
    const int64_t per = units / count, extra = units % count;
    const int64_t ub = index * per + std::min<int64_t>(index, extra);
    const int64_t ue = ub + per + (index < extra ? 1 : 0);
    const int64_t b = std::min(n, ub * align), e = std::min(n, ue * align);
    if (b < e) fn(b, e);
  });
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g = generation_.load(std::memory_order_acquire);
    for (int spin = 0; g == seen && spin < kSpinIterations; ++spin) {
      if ((spin & 63) == 63) {
        std::this_thread::yield();  // see Run
      } else {
        FLASHD_PAUSE();
      }
      g = generation_.load(std::memory_order_acquire);
    }
    while (g == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      g = generation_.load(std::memory_order_acquire);
    }
    seen = g;
    if (stop_.load(std::memory_order_acquire)) return;
    (*job_)(index, n_threads_);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace flashd
