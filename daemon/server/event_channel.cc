#include "daemon/server/event_channel.h"

#include <utility>

namespace flashd::server {

void EventChannel::Push(SessionEvent event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled() || finished_) return;
    events_.push_back(std::move(event));
  }
  Pump();
}

void EventChannel::Attach(EventWriter* writer) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    writer_ = writer;
  }
  Pump();
}

void EventChannel::WriteDone(bool ok) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) cancelled_.store(true, std::memory_order_release);
  }
  Pump();
}

void EventChannel::Cancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.store(true, std::memory_order_release);
    events_.clear();
  }
  Pump();
}

void EventChannel::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  writer_ = nullptr;
  events_.clear();
  // Nothing can be delivered any more: the producer should stop.
  cancelled_.store(true, std::memory_order_release);
}

size_t EventChannel::backlog() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

void EventChannel::Pump() {
  EventWriter* writer = nullptr;
  SessionEvent event;
  bool finish_cancelled = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (writer_ == nullptr || writing_ || finished_) return;
    if (cancelled()) {
      finished_ = true;
      finish_cancelled = true;
    } else if (events_.empty()) {
      return;
    } else {
      event = std::move(events_.front());
      events_.pop_front();
      if (event.last()) {
        finished_ = true;  // the write also ends the stream
      } else {
        writing_ = true;   // WriteDone follows
      }
    }
    writer = writer_;
  }
  // The flag just set (writing_ or finished_) keeps the writer alive until
  // this call is made: gRPC runs OnDone only after the stream is finished
  // and every write completed.
  if (finish_cancelled) {
    writer->FinishCancelled();
  } else {
    writer->StartEvent(event);
  }
}

}  // namespace flashd::server
