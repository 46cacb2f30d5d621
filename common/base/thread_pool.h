// A fixed pool of worker threads for data-parallel kernels.
#ifndef FLASHD_COMMON_BASE_THREAD_POOL_H_
#define FLASHD_COMMON_BASE_THREAD_POOL_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace flashd {

// Runs one function on `n` threads at once (the caller is thread 0) and
// returns when all are done. Workers spin briefly between jobs, then sleep,
// so back-to-back kernels in one token do not pay a wake-up each. Not
// reentrant: one Run at a time, from one owner thread.
class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(thread_index, n_threads) on every thread. No allocation.
  void Run(absl::FunctionRef<void(int, int)> fn);

  // Splits [0, n) into contiguous chunks, one per thread, aligned to `align`
  // items; calls fn(begin, end) for non-empty chunks.
  void ParallelFor(int64_t n, int64_t align,
                   absl::FunctionRef<void(int64_t, int64_t)> fn);

 private:
  void WorkerLoop(int index);

  const int n_threads_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const absl::FunctionRef<void(int, int)>* job_ = nullptr;
};

// Number of cores this process may run on.
int AvailableCores();

}  // namespace flashd

#endif  // FLASHD_COMMON_BASE_THREAD_POOL_H_
