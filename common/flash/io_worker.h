// A background thread that owns one RandomAccessFile and reads batches
// submitted from another thread, so flash reads overlap computation.
#ifndef FLASHD_COMMON_FLASH_IO_WORKER_H_
#define FLASHD_COMMON_FLASH_IO_WORKER_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/io/random_access_file.h"

namespace flashd::flash {

// Runs io::RandomAccessFile::ReadBatch on its own thread, the file's only
// user (so a non-thread-safe UringFile is fine). Batches run one at a time
// in submission order. Up to max_pending batches may be outstanding
// (submitted and not yet waited for); every ticket must be waited for
// exactly once, which frees its place. Submit and Wait may be called from
// any one thread at a time (the owner thread, typically); the counters
// from any thread. Nothing is allocated per batch.
class IoWorker {
 public:
  // Identifies a submitted batch; tickets count up from 1.
  using Ticket = uint64_t;

  // What the worker has done so far.
  struct Counters {
    uint64_t batches = 0;     // batches finished
    uint64_t requests = 0;    // requests in those batches
    uint64_t bytes_read = 0;  // bytes of the requests that succeeded
    double busy_seconds = 0;  // time spent inside ReadBatch
    // Throughput while reading, bytes per second (0 before any read).
    double bytes_per_second() const {
      return busy_seconds > 0 ? bytes_read / busy_seconds : 0;
    }
  };

  // Takes ownership of `file` and starts the thread. 1 <= max_pending.
  explicit IoWorker(std::unique_ptr<io::RandomAccessFile> file,
                    int max_pending = 8);
  // Finishes every submitted batch (their buffers get filled as promised),
  // then joins the thread. No thread may be inside Wait.
  ~IoWorker();
  IoWorker(const IoWorker&) = delete;
  IoWorker& operator=(const IoWorker&) = delete;

  // Queues `reqs` (caller-owned, including their dst buffers; they must stay
  // valid and untouched until Wait returns for the ticket, the worker
  // writes each request's status). Never blocks: RESOURCE_EXHAUSTED when
  // max_pending batches are outstanding (wait for one first; any order).
  absl::StatusOr<Ticket> Submit(absl::Span<io::ReadRequest> reqs);
  // Blocks until the batch has been read and returns its status (the first
  // failed request's, as ReadBatch does); frees its place. INVALID_ARGUMENT
  // for a ticket that is not outstanding.
  absl::Status Wait(Ticket ticket);
  // Whether Wait(ticket) would return without blocking.
  bool Ready(Ticket ticket) const;

  // Batches submitted and not yet waited for.
  int outstanding() const;
  int max_pending() const { return static_cast<int>(entries_.size()); }
  Counters counters() const;
  // The file (size, alignment, path are fixed and safe to read from any
  // thread; reading from it is the worker's job).
  const io::RandomAccessFile& file() const { return *file_; }

 private:
  enum class State { kFree, kQueued, kDone };
  struct Entry {
    Ticket ticket = 0;
    State state = State::kFree;
    absl::Span<io::ReadRequest> reqs;
    absl::Status status;
  };

  void Run();
  // The outstanding entry of ticket t, or null (caller holds mu_).
  Entry* Find(Ticket t);

  std::unique_ptr<io::RandomAccessFile> file_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // worker waits for batches / stop
  std::condition_variable done_cv_;  // Wait waits for completion
  std::vector<Entry> entries_;       // free or holding one ticket each
  Ticket next_ticket_ = 1;           // ticket of the next Submit
  Ticket next_run_ = 1;              // ticket the worker runs next
  bool stop_ = false;
  Counters counters_;
  std::thread thread_;  // last: starts after everything above exists
};

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_IO_WORKER_H_
