// The daemon's end of a session's token ring (see token_ring_layout.h).
//
// Who can map a ring ("only the client can map it", precisely): the file
// is created in the daemon's ShmDir (a directory only the daemon can write,
// searchable by all) with O_EXCL and mode 0600, then fchown'ed to the
// client's uid. Opening it by path then succeeds only for processes running
// as that uid (every process of that user, not just the requesting one: the
// user is the trust boundary), and for root or holders of
// CAP_DAC_OVERRIDE. The daemon itself keeps its mapping and descriptor from
// creation; it never reopens the name. The group and others get no bits.
// Giving the file away needs root or CAP_CHOWN (a non-root daemon gets it
// from AmbientCapabilities=CAP_CHOWN). Nobody but the daemon can rename or
// unlink the name (the directory is the daemon's); the daemon unlinks it as
// soon as the client has attached. A client can still hard-link the file it
// owns into another directory of the same filesystem: at destruction the
// writer truncates a file that is still linked somewhere, so such links
// keep no memory.
//
// How the daemon learns the uid: from the kernel, never from the request.
// The server reads SO_PEERCRED (struct ucred) of the accepted Unix-socket
// connection and passes its uid as `owner`. Even a claimed uid could not
// leak another user's tokens (the ring would go to the claimed user, not
// the claimant), but it would let a client plant segments on others.
//
// The client owns the file, so it can also truncate it under the daemon;
// an ShmFaultGuard turns the resulting SIGBUS into a DATA_LOSS status of
// this ring instead of a dead daemon. Nothing the client writes into the
// segment is trusted: the writer keeps its own copies of every header
// field and only reads read_index, which it bounds-checks.
#ifndef FLASHD_COMMON_SHM_TOKEN_RING_WRITER_H_
#define FLASHD_COMMON_SHM_TOKEN_RING_WRITER_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/shm/shm_dir.h"
#include "common/shm/shm_fault_guard.h"
#include "common/shm/shm_segment.h"
#include "common/shm/token_ring_layout.h"

namespace flashd::shm {

// The start of the names of rings made by process `pid` of our pid
// namespace: "flashd-ring-<pid namespace inode hex>-<pid>-".
std::string TokenRingPrefix(pid_t pid);

// A fresh, unguessable segment name for `session_id`:
// TokenRingPrefix(getpid()) + "<session hex>-<64 random bits hex>".
std::string MakeTokenRingName(uint64_t session_id);

// Unlinks rings in `dir` left by daemons of our pid namespace that died
// (the pid in the name no longer exists; a live or unknown pid, or another
// namespace's ring is left alone; a ring linked elsewhere too is truncated
// first). A SIGKILLed daemon cannot clean up, and a client that never
// attached leaves the name. Returns how many were removed.
int RemoveStaleTokenRings(const ShmDir& dir);

// Single producer of one ring. Not thread-safe: one thread (the inference
// thread) pushes. Destruction finishes the ring (kAbandoned) if Finish()
// was not called, unlinks the name if Remove() was not called, and unmaps.
class TokenRingWriter {
 public:
  // Creates `name` in `dir` (must not exist) for `capacity` records (a
  // power of two, kMinRingCapacity..kMaxRingCapacity), mode 0600, header
  // written, state open; gives it to `owner` if that is not our euid.
  // Errors: INVALID_ARGUMENT (name, capacity), ALREADY_EXISTS (pick another
  // name), PERMISSION_DENIED (cannot chown: not root, no CAP_CHOWN),
  // RESOURCE_EXHAUSTED (tmpfs full, too many rings). On error nothing is
  // left in `dir`.
  static absl::StatusOr<std::unique_ptr<TokenRingWriter>> Create(
      std::shared_ptr<const ShmDir> dir, const std::string& name,
      uint32_t capacity, uint64_t session_id, uid_t owner);

  ~TokenRingWriter();
  TokenRingWriter(const TokenRingWriter&) = delete;
  TokenRingWriter& operator=(const TokenRingWriter&) = delete;

  // Appends one token (its text split over RecordsForText(text.size())
  // records) and wakes the consumer. Never blocks. All or nothing:
  //   RESOURCE_EXHAUSTED  not enough free records now (the consumer is
  //                       behind); nothing written. The caller decides:
  //                       retry later (keep the token) or drop the session.
  //   INVALID_ARGUMENT    the text needs more records than the capacity.
  //   FAILED_PRECONDITION after Finish().
  //   DATA_LOSS           the consumer corrupted read_index or truncated
  //                       the segment; the ring is dead, end the session.
  absl::Status Push(int32_t token_id, uint32_t index, absl::string_view text);

  // Records free for Push right now (0 if the ring is broken).
  uint32_t FreeRecords();

  // Marks the stream finished with `reason` (after every pushed token) and
  // wakes the consumer. FAILED_PRECONDITION if already finished; DATA_LOSS
  // if the ring is broken.
  absl::Status Finish(FinishReason reason);

  // Unlinks the name (the client keeps its mapping; the memory goes when
  // both sides unmap). Push does it once the client has attached;
  // destruction at the latest. Idempotent; errors name the file and the OS
  // reason.
  absl::Status Remove();

  // True once a consumer wrote its pid into the header (advisory: written
  // by the client, so untrusted).
  bool consumer_attached();

  // Rings alive in this process (created and not yet destroyed).
  static int64_t live_rings() { return live_.load(); }

  const std::string& name() const { return segment_->name(); }
  // The file's full path (what the client opens).
  const std::string& path() const { return segment_->path(); }
  uint64_t session_id() const { return session_id_; }
  uint32_t capacity() const { return capacity_; }
  // Records published so far (the write index).
  uint64_t write_index() const { return write_index_; }
  bool finished() const { return finished_; }

 private:
  TokenRingWriter(std::shared_ptr<const ShmDir> dir,
                  std::unique_ptr<ShmSegment> segment, ShmFaultGuard guard,
                  uint32_t capacity, uint64_t session_id);
  TokenRingHeader* header() const {
    return reinterpret_cast<TokenRingHeader*>(segment_->data());
  }
  // The broken-ring status if the segment faulted (sticky).
  absl::Status CheckIntact();
  void Wake();

  std::shared_ptr<const ShmDir> dir_;
  std::unique_ptr<ShmSegment> segment_;
  ShmFaultGuard guard_;  // declared after segment_: released before unmap
  TokenRecord* records_;
  uint32_t capacity_;
  uint64_t session_id_;
  uint64_t write_index_ = 0;  // our copy; the shared one is never read back
  bool finished_ = false;
  bool removed_ = false;
  absl::Status broken_;
  static std::atomic<int64_t> live_;
};

}  // namespace flashd::shm

#endif  // FLASHD_COMMON_SHM_TOKEN_RING_WRITER_H_
