// The narrow interface flashd reads model weights through: positional reads
// of a file that stays on flash, one at a time or as a batch in flight
// together. Implementations: PosixFile (buffered pread), UringFile (O_DIRECT
// + io_uring) and FaultInjectionFile (tests, fault drills).
#ifndef FLASHD_COMMON_IO_RANDOM_ACCESS_FILE_H_
#define FLASHD_COMMON_IO_RANDOM_ACCESS_FILE_H_

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace flashd::io {

// One read of a batch: `n` bytes at file `offset` into `dst` (caller-owned,
// at least `n` bytes). `status` is written by ReadBatch.
struct ReadRequest {
  uint64_t offset = 0;
  size_t n = 0;
  uint8_t* dst = nullptr;
  absl::Status status;
};

// A read-only file of fixed size. Reads deliver exactly the requested bytes
// or an error: short reads from the OS are completed by the implementation
// that talks to the OS, never passed up. Thread safety is per
// implementation (see each class).
class RandomAccessFile {
 public:
  virtual ~RandomAccessFile() = default;

  // File size in bytes, fixed when the file was opened.
  virtual uint64_t size() const = 0;
  // Offsets, lengths and buffer addresses must be multiples of this
  // (1 for buffered files; 4096 or the device's block size for O_DIRECT).
  virtual size_t required_alignment() const = 0;
  // The path the file was opened from (for messages).
  virtual const std::string& path() const = 0;

  // Reads exactly `n` bytes at `offset` into `dst`. Errors:
  // OUT_OF_RANGE when [offset, offset+n) passes the end of the file;
  // INVALID_ARGUMENT for a misaligned offset/length/buffer; DATA_LOSS (EIO,
  // file shrank), UNAVAILABLE (transient, retries exhausted) and others
  // mapped from errno. Messages name the path, offset, length and errno.
  virtual absl::Status Read(uint64_t offset, size_t n, uint8_t* dst) = 0;

  // Reads every request, with as many in flight together as the
  // implementation supports. Each request gets its own status; returns the
  // first failed request's status in request order, or OK. A failed
  // request's buffer contents are unspecified; the others are unaffected.
  virtual absl::Status ReadBatch(absl::Span<ReadRequest> reqs) = 0;
};

// OUT_OF_RANGE naming offset/n/size when [offset, offset+n) is not inside a
// file of `size` bytes, else OK. Shared by the implementations.
inline absl::Status CheckReadRange(const std::string& path, uint64_t size,
                                   uint64_t offset, size_t n) {
  if (offset > size || n > size - offset) {
    return absl::OutOfRangeError(absl::StrCat(
        "read of ", path, " at offset ", offset, ", length ", n,
        " passes the end of the file (size ", size, ")"));
  }
  return absl::OkStatus();
}

// Maps a read's errno to a Status naming path, offset, length and errno:
// EIO -> DATA_LOSS; EAGAIN/EINTR/EBUSY -> UNAVAILABLE; ENOMEM/ENOBUFS ->
// RESOURCE_EXHAUSTED; EINVAL/EFAULT -> INVALID_ARGUMENT; EBADF ->
// FAILED_PRECONDITION; anything else -> UNKNOWN.
inline absl::Status ReadErrnoStatus(int err, const std::string& path,
                                    uint64_t offset, size_t n) {
  const std::string msg =
      absl::StrCat("read of ", path, " at offset ", offset, ", length ", n,
                   " failed: ", std::strerror(err), " (errno ", err, ")");
  switch (err) {
    case EIO:
      return absl::DataLossError(msg);
    case EAGAIN:
    case EINTR:
    case EBUSY:
      return absl::UnavailableError(msg);
    case ENOMEM:
    case ENOBUFS:
      return absl::ResourceExhaustedError(msg);
    case EINVAL:
    case EFAULT:
      return absl::InvalidArgumentError(msg);
    case EBADF:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::UnknownError(msg);
  }
}

// The first non-OK status of `reqs` in request order, or OK.
inline absl::Status FirstError(absl::Span<const ReadRequest> reqs) {
  for (const ReadRequest& r : reqs) {
    if (!r.status.ok()) return r.status;
  }
  return absl::OkStatus();
}

}  // namespace flashd::io

#endif  // FLASHD_COMMON_IO_RANDOM_ACCESS_FILE_H_
