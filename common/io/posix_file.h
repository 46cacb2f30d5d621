// Buffered positional reads through pread(2).
#ifndef FLASHD_COMMON_IO_POSIX_FILE_H_
#define FLASHD_COMMON_IO_POSIX_FILE_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/io/random_access_file.h"

namespace flashd::io {

// The pread(2) signature: returns bytes read (0 at EOF) or -1 with errno.
using PreadFn = std::function<ssize_t(int fd, void* buf, size_t n, off_t off)>;

// A RandomAccessFile over a buffered file descriptor (goes through the page
// cache; alignment 1). Loops on short reads and EINTR, so callers always
// get exactly n bytes or an error. ReadBatch serves requests one after the
// other (queue depth 1). Thread-safe: reads share no mutable state (unless
// the injected pread has some).
class PosixFile final : public RandomAccessFile {
 public:
  struct Options {
    // The syscall reads go through; empty means ::pread. Tests inject short
    // reads, EINTR and EIO here (see FaultyPread in fault_injection_file.h).
    PreadFn pread;
  };

  // Opens `path` read-only. NOT_FOUND / PERMISSION_DENIED / INVALID_ARGUMENT
  // (not a regular file) with the path and the OS reason.
  static absl::StatusOr<std::unique_ptr<PosixFile>> Open(
      const std::string& path, Options options = {});

  ~PosixFile() override;
  PosixFile(const PosixFile&) = delete;
  PosixFile& operator=(const PosixFile&) = delete;

  uint64_t size() const override { return size_; }
  size_t required_alignment() const override { return 1; }
  const std::string& path() const override { return path_; }
  absl::Status Read(uint64_t offset, size_t n, uint8_t* dst) override;
  absl::Status ReadBatch(absl::Span<ReadRequest> reqs) override;

 private:
  PosixFile(int fd, uint64_t size, std::string path, Options options);

  int fd_;
  uint64_t size_;
  std::string path_;
  Options options_;
};

}  // namespace flashd::io

#endif  // FLASHD_COMMON_IO_POSIX_FILE_H_
