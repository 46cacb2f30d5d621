// Where the daemon tokenizes Tokenize texts and Generate prompts longer
// than 4 KiB (shorter ones cost microseconds: the gRPC thread does them). One
// thread at a lower CPU priority (nice 19) runs the jobs in order, so a
// flood of large Tokenize calls cannot take the cores from the inference
// thread, and at most --max-tokenize-jobs jobs wait or run at once, so
// their input (each at most --max-prompt-bytes or --max-tokenize-bytes)
// bounds the memory they take. One caller (see CallerOf) may hold at most
// half of the jobs, so another caller always finds room.
#ifndef FLASHD_DAEMON_SERVER_TOKENIZE_WORKER_H_
#define FLASHD_DAEMON_SERVER_TOKENIZE_WORKER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/status.h"

namespace flashd::server {

class TokenizeWorker {
 public:
  // `max_jobs` >= 1: jobs queued or running at once. Starts the thread.
  explicit TokenizeWorker(int32_t max_jobs);
  // Stop().
  ~TokenizeWorker();
  TokenizeWorker(const TokenizeWorker&) = delete;
  TokenizeWorker& operator=(const TokenizeWorker&) = delete;

  // Queues `job` for `caller`. RESOURCE_EXHAUSTED naming
  // --max-tokenize-jobs when max_jobs are queued or running, or the
  // caller's share (half, at least 1) is (the job is not run);
  // FAILED_PRECONDITION after Stop().
  absl::Status Submit(const std::string& caller, std::function<void()> job);

  // Runs the jobs still queued, then joins the thread.
  void Stop();

  int32_t pending() const;

 private:
  void Run();

  const int32_t max_jobs_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  const int32_t per_caller_;
  // Guarded by mu_.
  std::deque<std::pair<std::string, std::function<void()>>> queue_;
  int32_t pending_ = 0;                       // queued + running
  std::map<std::string, int32_t> by_caller_;  // the same, per caller
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_TOKENIZE_WORKER_H_
