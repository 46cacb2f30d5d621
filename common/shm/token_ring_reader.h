// The client's end of a session's token ring (see token_ring_layout.h).
//
// Wait strategy (no interprocess mutex or condition variable): Next() spins
// for up to 20 us re-reading the write index, then sleeps on a futex on the
// header's wake_seq word, which the producer bumps after every publish and
// on Finish (it issues FUTEX_WAKE only while consumer_waiting is set, so
// tokens pushed while the reader is busy cost the producer no syscall). The
// futex sleep is cut into slices of at most 50 ms; between slices the reader
// checks that the producer process is still alive (pid, start time, zombie
// state; see process_liveness.h), so a dead daemon is reported instead of
// waited for.
#ifndef FLASHD_COMMON_SHM_TOKEN_RING_READER_H_
#define FLASHD_COMMON_SHM_TOKEN_RING_READER_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/shm/process_liveness.h"
#include "common/shm/shm_segment.h"
#include "common/shm/token_ring_layout.h"

namespace flashd::shm {

// What the consumer takes out of a ring: one whole token, or the end.
struct RingEvent {
  enum class Kind { kToken, kFinished };
  Kind kind = Kind::kToken;
  int32_t token_id = -1;  // kToken: vocabulary id
  uint32_t index = 0;     // kToken: position among the generated tokens
  std::string text;       // kToken: the token's text piece, reassembled
  FinishReason reason = FinishReason::kNone;  // kFinished
};

// Single consumer of one ring (one reader per ring; not thread-safe).
// Owns its mapping; the daemon removes the file's name once the reader has
// attached.
class TokenRingReader {
 public:
  // Opens the ring file `path` read-write (the consumer publishes its read
  // index; ShmSegment::Open checks it is a regular file of ours that nobody
  // else can open) and validates the header against the file's size and
  // `session_id` (see ValidateTokenRingHeader for the errors; plus
  // NOT_FOUND / PERMISSION_DENIED from opening). Resumes at the stored read
  // index and records this process as the consumer.
  static absl::StatusOr<std::unique_ptr<TokenRingReader>> Attach(
      const std::string& path, uint64_t session_id);

  ~TokenRingReader();
  TokenRingReader(const TokenRingReader&) = delete;
  TokenRingReader& operator=(const TokenRingReader&) = delete;

  // Hands every event available now to `fn`, in order, without waiting; at
  // most `max_events`. Returns how many were handed over. After the last
  // token of a finished ring each call hands one kFinished event. Errors:
  // DATA_LOSS (corrupt record or indices). Does not check the producer's
  // liveness: call CheckProducer() when Poll keeps returning 0.
  absl::StatusOr<size_t> Poll(
      absl::FunctionRef<void(const RingEvent&)> fn,
      size_t max_events = std::numeric_limits<size_t>::max());

  // The next event, waiting up to `timeout` (absl::InfiniteDuration() for
  // no limit). Tokens already published are always delivered first.
  // Errors: DEADLINE_EXCEEDED (nothing within the timeout), UNAVAILABLE
  // (the producer died without finishing), DATA_LOSS (corrupt ring).
  absl::StatusOr<RingEvent> Next(absl::Duration timeout);

  // OK while the producer runs (or cannot be checked: another pid
  // namespace); UNAVAILABLE naming its pid once it died.
  absl::Status CheckProducer() const;

  const std::string& name() const { return segment_->name(); }
  uint32_t capacity() const { return capacity_; }
  const ProcessIdentity& producer() const { return producer_; }
  // Records consumed so far.
  uint64_t read_index() const { return read_; }

 private:
  TokenRingReader(std::unique_ptr<ShmSegment> segment,
                  const TokenRingHeader& header);
  TokenRingHeader* header() const {
    return reinterpret_cast<TokenRingHeader*>(segment_->data());
  }
  // Takes the next event if one is there: true and *out filled, false when
  // nothing is available yet.
  absl::StatusOr<bool> TryRead(RingEvent* out);
  absl::StatusOr<bool> ReadToken(uint64_t write, RingEvent* out);

  std::unique_ptr<ShmSegment> segment_;
  const TokenRecord* records_;
  uint32_t capacity_;
  ProcessIdentity producer_;
  uint64_t read_ = 0;  // our copy; we are the only writer of read_index
};

}  // namespace flashd::shm

#endif  // FLASHD_COMMON_SHM_TOKEN_RING_READER_H_
