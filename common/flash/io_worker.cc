#include "common/flash/io_worker.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"

namespace flashd::flash {

IoWorker::IoWorker(std::unique_ptr<io::RandomAccessFile> file, int max_pending)
    : file_(std::move(file)) {
  FLASHD_CHECK(file_ != nullptr && max_pending >= 1);
  entries_.resize(max_pending);
  thread_ = std::thread(&IoWorker::Run, this);
}

IoWorker::~IoWorker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

absl::StatusOr<IoWorker::Ticket> IoWorker::Submit(
    absl::Span<io::ReadRequest> reqs) {
  Ticket t;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry* free = nullptr;
    for (Entry& candidate : entries_) {
      if (candidate.state == State::kFree) free = &candidate;
    }
    if (free == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "I/O worker for ", file_->path(), ": ", entries_.size(),
          " batches outstanding; wait for one before submitting ticket ",
          next_ticket_));
    }
    Entry& e = *free;
    t = next_ticket_++;
    e.ticket = t;
    e.state = State::kQueued;
    e.reqs = reqs;
    e.status = absl::OkStatus();
  }
  work_cv_.notify_one();
  return t;
}

absl::Status IoWorker::Wait(Ticket ticket) {
  std::unique_lock<std::mutex> lock(mu_);
  Entry* found = Find(ticket);
  if (ticket == 0 || found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("I/O worker for ", file_->path(), ": ticket ", ticket,
                     " is not outstanding (next ticket ", next_ticket_, ")"));
  }
  Entry& e = *found;
  done_cv_.wait(lock, [&] { return e.state == State::kDone; });
  absl::Status status = std::move(e.status);
  e.status = absl::OkStatus();
  e.reqs = {};
  e.state = State::kFree;
  return status;
}

bool IoWorker::Ready(Ticket ticket) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Entry* e = const_cast<IoWorker*>(this)->Find(ticket);
  return e != nullptr && e->state == State::kDone;
}

int IoWorker::outstanding() const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const Entry& e : entries_) n += e.state != State::kFree;
  return n;
}

IoWorker::Counters IoWorker::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

IoWorker::Entry* IoWorker::Find(Ticket t) {
  for (Entry& e : entries_) {
    if (e.state != State::kFree && e.ticket == t) return &e;
  }
  return nullptr;
}

void IoWorker::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    // Queued batches are drained even after stop_ (see the destructor).
    work_cv_.wait(lock, [&] { return stop_ || next_run_ < next_ticket_; });
    if (next_run_ == next_ticket_) break;  // stop_ and nothing queued
    Entry* found = Find(next_run_);
    FLASHD_CHECK(found != nullptr && found->state == State::kQueued);
    Entry& e = *found;
    const absl::Span<io::ReadRequest> reqs = e.reqs;
    lock.unlock();

    const auto t0 = std::chrono::steady_clock::now();
    absl::Status status = file_->ReadBatch(reqs);
    const auto t1 = std::chrono::steady_clock::now();
    uint64_t bytes = 0;
    for (const io::ReadRequest& r : reqs) {
      if (r.status.ok()) bytes += r.n;
    }

    lock.lock();
    e.status = std::move(status);
    e.state = State::kDone;
    ++next_run_;
    counters_.batches++;
    counters_.requests += reqs.size();
    counters_.bytes_read += bytes;
    counters_.busy_seconds += std::chrono::duration<double>(t1 - t0).count();
    done_cv_.notify_all();
  }
}

}  // namespace flashd::flash
