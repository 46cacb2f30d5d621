#include "common/base/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/errno_status.h"

namespace flashd {
namespace {

// Reads the file open as `fd` with O_DIRECT from offset 0 into `mem`
// (page-aligned, `size` rounded up to 4 KiB) in large requests: about twice
// as fast as buffered reads from a cold SSD, and no second copy in the page
// cache. Reopens the same inode through /proc/self/fd. Returns how many
// bytes it read; the caller reads the rest buffered (file systems without
// O_DIRECT, e.g. tmpfs, refuse it at open or at the first read).
size_t ReadDirect(int fd, char* mem, size_t size) {
  const std::string self = absl::StrCat("/proc/self/fd/", fd);
  const int dfd = ::open(self.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  if (dfd < 0) return 0;
  constexpr size_t kChunk = size_t{16} << 20;
  constexpr size_t kAlign = 4096;
  size_t done = 0;
  while (done < size) {
    const size_t want = std::min(size - done, kChunk);
    const size_t aligned = (want + kAlign - 1) / kAlign * kAlign;
    const ssize_t r =
        ::pread(dfd, mem + done, aligned, static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    done += std::min(static_cast<size_t>(r), size - done);
    if (done % kAlign != 0) break;  // the next O_DIRECT offset is unaligned
  }
  ::close(dfd);
  return done;
}

// Reads fd's `size` bytes into fresh anonymous memory (huge pages advised).
absl::StatusOr<void*> ReadIntoAnonymous(int fd, size_t size,
                                        const std::string& path) {
  const size_t mapped = (size + 4095) / 4096 * 4096;  // O_DIRECT's tail
  void* mem = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate ", size, " bytes to hold ", path, ": ",
        std::strerror(errno)));
  }
  ::madvise(mem, mapped, MADV_HUGEPAGE);  // advisory; fine if THP is off
  constexpr size_t kChunk = size_t{64} << 20;
  for (size_t done = ReadDirect(fd, static_cast<char*>(mem), size);
       done < size;) {
    const ssize_t r = ::pread(fd, static_cast<char*>(mem) + done,
                              std::min(size - done, kChunk),
                              static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = errno;
      ::munmap(mem, mapped);
      return absl::DataLossError(absl::StrCat(
          "reading ", path, " at offset ", done, " of ", size, ": ",
          r == 0 ? "file shrank while loading" : std::strerror(err)));
    }
    done += static_cast<size_t>(r);
  }
  return mem;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(
    const std::string& path, bool resident) {
  uint64_t file_size = 0;
  absl::StatusOr<int> opened = OpenRegularFile(path, 0, &file_size);
  if (!opened.ok()) return opened.status();
  const int fd = *opened;
  if (file_size == 0) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is empty"));
  }
  const size_t size = static_cast<size_t>(file_size);
  void* p = nullptr;
  if (resident) {
    absl::StatusOr<void*> mem = ReadIntoAnonymous(fd, size, path);
    ::close(fd);
    if (!mem.ok()) return mem.status();
    p = *mem;
  } else {
    p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) {
      return FileErrnoStatus(err, absl::StrCat("cannot map ", path));
    }
  }
  auto f = std::unique_ptr<MappedFile>(new MappedFile());
  f->data_ = static_cast<const uint8_t*>(p);
  f->size_ = size;
  f->is_mmap_ = true;
  f->path_ = path;
  return f;
}

std::unique_ptr<MappedFile> MappedFile::FromString(std::string_view bytes) {
  auto f = std::unique_ptr<MappedFile>(new MappedFile());
  f->owned_.assign(bytes.data(), bytes.size());
  f->data_ = reinterpret_cast<const uint8_t*>(f->owned_.data());
  f->size_ = f->owned_.size();
  f->path_ = "<memory>";
  return f;
}

MappedFile::~MappedFile() {
  if (is_mmap_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace flashd
