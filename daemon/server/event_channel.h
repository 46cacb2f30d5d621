// The events of one generation and the channel that carries them from the
// inference thread (producer) to the client's gRPC stream (consumer).
// Nothing here knows about protobuf: the service layer converts.
#ifndef FLASHD_DAEMON_SERVER_EVENT_CHANNEL_H_
#define FLASHD_DAEMON_SERVER_EVENT_CHANNEL_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>

#include "absl/status/status.h"

namespace flashd::server {

// Why a generation ended (mirrors flashd.v1.FinishReason).
enum class FinishReason { kMaxTokens, kEos, kStopString, kContextFull, kCancelled };

// Milliseconds of one generation, measured on the inference thread. Prefill
// and decode are wall-clock: with several sessions they include the other
// sessions' steps interleaved with this one's.
struct SessionTimings {
  double queue_ms = 0;    // enqueued to the first forward pass
  double prefill_ms = 0;  // first forward pass to the prompt's logits
  double time_to_first_token_ms = 0;  // enqueued to the first token
  double decode_ms = 0;   // after the first token
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
};

// One event of a generation, in the order the client receives them:
// kStarted, then kToken per generated token, then kDone (or kError).
struct SessionEvent {
  enum class Kind { kStarted, kToken, kDone, kError };
  Kind kind = Kind::kStarted;
  std::string session_id;      // kStarted
  int32_t prompt_tokens = 0;   // kStarted
  std::string shm_name;        // kStarted: the token ring, if any
  std::string shm_path;        // kStarted: the ring file's full path
  uint64_t shm_bytes = 0;      // kStarted
  uint64_t shm_session_id = 0; // kStarted
  int32_t token_id = 0;        // kToken
  int32_t index = 0;           // kToken: among generated tokens, from 0
  std::string text;            // kToken: complete UTF-8 (may be empty)
  FinishReason reason = FinishReason::kMaxTokens;  // kDone
  SessionTimings timings;      // kDone
  absl::Status error;          // kError: the stream ends with this status

  // kDone and kError end the stream.
  bool last() const { return kind == Kind::kDone || kind == Kind::kError; }
};

// Writes events to one client; the gRPC reactor implements it. The channel
// calls at most one of these at a time and never while holding its lock.
class EventWriter {
 public:
  virtual ~EventWriter() = default;
  // Starts writing `event`; when event.last() this also ends the stream and
  // no WriteDone follows. Otherwise the writer calls WriteDone when done.
  virtual void StartEvent(const SessionEvent& event) = 0;
  // Ends the stream as cancelled (nothing more is written).
  virtual void FinishCancelled() = 0;
};

// Thread-safe queue of events with a one-write-at-a-time pump. The
// inference thread Pushes and polls cancelled(); the reactor Attaches
// itself, reports WriteDone/Cancel, and Detaches in OnDone. Events pushed
// before Attach wait; events pushed after Cancel are dropped.
class EventChannel {
 public:
  // Producer: queues `event` and starts writing it if the writer is idle.
  void Push(SessionEvent event);
  // True once the client cancelled, disconnected or a write failed.
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  // Consumer: `writer` (not owned) receives events until Detach.
  void Attach(EventWriter* writer);
  // The last StartEvent completed; `ok` false means the stream is broken.
  void WriteDone(bool ok);
  // The client cancelled or went away: stop producing, end the stream.
  void Cancel();
  // The writer is being destroyed; nothing is called on it afterwards.
  void Detach();

  // Events queued but not yet handed to the writer.
  size_t backlog() const;

 private:
  // Hands the next event (or the cancellation) to the writer when it is
  // idle. Decides under mu_, calls the writer outside it.
  void Pump();

  mutable std::mutex mu_;
  std::deque<SessionEvent> events_;  // guarded by mu_
  EventWriter* writer_ = nullptr;    // guarded by mu_
  bool writing_ = false;   // a StartEvent is in flight (guarded by mu_)
  bool finished_ = false;  // the stream was ended (guarded by mu_)
  std::atomic<bool> cancelled_{false};
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_EVENT_CHANNEL_H_
