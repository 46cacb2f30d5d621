// Direct (O_DIRECT) reads through io_uring, many in flight at once.
#ifndef FLASHD_COMMON_IO_URING_FILE_H_
#define FLASHD_COMMON_IO_URING_FILE_H_

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/io/random_access_file.h"

namespace flashd::io {

// Options of UringFile::Open (outside the class so `= {}` defaults work).
struct UringFileOptions {
  // Reads ReadBatch keeps in flight; also the ring's size. 1..4096.
  int queue_depth = 64;
  // Open with O_DIRECT. If the filesystem refuses it (EINVAL on open or
  // on a probe read, e.g. some tmpfs/overlay setups), the file falls back
  // to buffered reads: is_direct() is false and direct_fallback_reason()
  // says why. Buffered results include the page cache.
  bool direct = true;
  // Largest read issued as one SQE; longer requests are read in pieces
  // through the same path as short reads. Rounded down to the alignment.
  // Default 1 GiB (Linux moves at most 0x7ffff000 bytes per read).
  size_t max_bytes_per_sqe = size_t{1} << 30;
};

// A RandomAccessFile that reads with io_uring, by default through O_DIRECT
// so the page cache neither helps nor pollutes. The ring and all
// bookkeeping for queue_depth reads are created in Open(); ReadBatch does
// not allocate.
//
// Alignment (direct mode): each request's offset, length and buffer address
// must be multiples of required_alignment(), else INVALID_ARGUMENT names
// the field. One exception: a read that ends exactly at size() (the file's
// tail) may have any length; it is served through a buffered descriptor.
//
// Short reads and EAGAIN/EINTR completions are resubmitted for the
// remainder here; callers see exactly n bytes or an error.
//
// NOT thread-safe: one owner thread per instance (the ring is not shared).
// Open one UringFile per thread that reads.
class UringFile final : public RandomAccessFile {
 public:
  using Options = UringFileOptions;


  // Opens `path` and creates the ring. Errors: as PosixFile::Open for the
  // path; INVALID_ARGUMENT for bad options; UNAVAILABLE when io_uring
  // cannot be set up (disabled by sysctl, memlock limit).
  static absl::StatusOr<std::unique_ptr<UringFile>> Open(
      const std::string& path, Options options = {});

  ~UringFile() override;
  UringFile(const UringFile&) = delete;
  UringFile& operator=(const UringFile&) = delete;

  uint64_t size() const override { return size_; }
  size_t required_alignment() const override { return alignment_; }
  const std::string& path() const override { return path_; }
  absl::Status Read(uint64_t offset, size_t n, uint8_t* dst) override;
  // Keeps up to queue_depth() requests in flight. Requests that fail
  // validation (range, alignment) are not submitted; the rest still are.
  // If the ring itself fails (not a per-read error), unfinished requests
  // get that error and later calls return FAILED_PRECONDITION.
  absl::Status ReadBatch(absl::Span<ReadRequest> reqs) override;

  // Whether reads bypass the page cache.
  bool is_direct() const { return direct_fd_ >= 0; }
  // Why O_DIRECT was asked for but not used; empty otherwise.
  const std::string& direct_fallback_reason() const { return fallback_; }
  int queue_depth() const { return static_cast<int>(slots_.size()); }

 private:
  // One in-flight request: which request, on which fd, bytes done so far.
  struct Slot {
    size_t req = 0;
    int fd = -1;
    uint64_t done = 0;
    int retries = 0;
  };

  UringFile() = default;
  absl::Status Validate(const ReadRequest& r) const;
  // Queues an SQE for the remainder of `slot`'s request.
  void Prepare(uint32_t slot, absl::Span<ReadRequest> reqs);

  std::string path_;
  uint64_t size_ = 0;
  size_t alignment_ = 1;
  size_t max_sqe_bytes_ = 0;
  int direct_fd_ = -1;    // O_DIRECT descriptor, or -1 in buffered mode
  int buffered_fd_ = -1;  // always open: buffered mode and direct tails
  std::string fallback_;
  bool ring_ok_ = false;
  absl::Status broken_;   // set when the ring failed; later calls fail
  io_uring ring_{};
  std::vector<Slot> slots_;          // queue_depth entries
  std::vector<uint32_t> free_;       // capacity queue_depth
  std::vector<uint32_t> ready_;      // slots needing an SQE; same capacity
};

}  // namespace flashd::io

#endif  // FLASHD_COMMON_IO_URING_FILE_H_
