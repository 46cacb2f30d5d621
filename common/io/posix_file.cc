#include "common/io/posix_file.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/errno_status.h"

namespace flashd::io {
namespace {

// Largest single pread: Linux transfers at most 0x7ffff000 bytes per call.
constexpr size_t kMaxPreadBytes = size_t{1} << 30;

}  // namespace

absl::StatusOr<std::unique_ptr<PosixFile>> PosixFile::Open(
    const std::string& path, Options options) {
  uint64_t size = 0;
  absl::StatusOr<int> fd = OpenRegularFile(path, 0, &size);
  if (!fd.ok()) return fd.status();
  if (!options.pread) options.pread = ::pread;
  return std::unique_ptr<PosixFile>(
      new PosixFile(*fd, size, path, std::move(options)));
}

PosixFile::PosixFile(int fd, uint64_t size, std::string path, Options options)
    : fd_(fd), size_(size), path_(std::move(path)),
      options_(std::move(options)) {}

PosixFile::~PosixFile() { ::close(fd_); }

absl::Status PosixFile::Read(uint64_t offset, size_t n, uint8_t* dst) {
  absl::Status s = CheckReadRange(path_, size_, offset, n);
  if (!s.ok()) return s;
  size_t done = 0;
  while (done < n) {
    const size_t want = std::min(n - done, kMaxPreadBytes);
    const ssize_t r = options_.pread(fd_, dst + done, want,
                                     static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ReadErrnoStatus(errno, path_, offset + done, n - done);
    }
    if (r == 0) {
      return absl::DataLossError(absl::StrCat(
          "read of ", path_, " at offset ", offset + done, ", length ",
          n - done, " hit end of file: the file shrank below ", offset + done,
          " bytes after it was opened (size then ", size_, ")"));
    }
    done += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

absl::Status PosixFile::ReadBatch(absl::Span<ReadRequest> reqs) {
  for (ReadRequest& r : reqs) r.status = Read(r.offset, r.n, r.dst);
  return FirstError(reqs);
}

}  // namespace flashd::io
