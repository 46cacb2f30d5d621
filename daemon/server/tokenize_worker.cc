#include "daemon/server/tokenize_worker.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace flashd::server {
namespace {

constexpr int kNice = 19;

}  // namespace

TokenizeWorker::TokenizeWorker(int32_t max_jobs)
    : max_jobs_(max_jobs < 1 ? 1 : max_jobs),
      per_caller_(max_jobs_ / 2 < 1 ? 1 : max_jobs_ / 2),
      thread_([this] { Run(); }) {}

TokenizeWorker::~TokenizeWorker() { Stop(); }

absl::Status TokenizeWorker::Submit(const std::string& caller,
                                    std::function<void()> job) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) {
    return absl::FailedPreconditionError("the tokenizer thread has stopped");
  }
  if (pending_ >= max_jobs_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        pending_, " tokenize jobs are queued or running; at most ", max_jobs_,
        " (--max-tokenize-jobs ", max_jobs_, "): retry later"));
  }
  int32_t& mine = by_caller_[caller];
  if (mine >= per_caller_) {
    return absl::ResourceExhaustedError(
        absl::StrCat(caller, " has ", mine,
                     " tokenize jobs queued or running; one caller "
                     "may hold at most ",
                     per_caller_, " (half of --max-tokenize-jobs ", max_jobs_,
                     "): retry later"));
  }
  ++mine;
  ++pending_;
  queue_.emplace_back(caller, std::move(job));
  cv_.notify_one();
  return absl::OkStatus();
}

void TokenizeWorker::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

int32_t TokenizeWorker::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_;
}

void TokenizeWorker::Run() {
  // Per-thread nice (Linux): this thread only. Failure leaves it at the
  // daemon's priority, which is still correct.
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), kNice);
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_, and nothing left to run
    auto [caller, job] = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    job();
    job = nullptr;  // free what it captured before counting it done
    lock.lock();
    --pending_;
    if (--by_caller_[caller] <= 0) by_caller_.erase(caller);
  }
}

}  // namespace flashd::server
