#include "common/base/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace flashd {
namespace {

absl::Status ErrnoStatus(int err, const std::string& what) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    default:
      return absl::InvalidArgumentError(msg);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(
    const std::string& path, bool populate) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot open ", path));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a regular file"));
  }
  if (st.st_size == 0) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is empty"));
  }
  int flags = MAP_PRIVATE | (populate ? MAP_POPULATE : 0);
  void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, flags,
                   fd, 0);
  int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) return ErrnoStatus(err, absl::StrCat("cannot map ", path));
  auto f = std::unique_ptr<MappedFile>(new MappedFile());
  f->data_ = static_cast<const uint8_t*>(p);
  f->size_ = static_cast<size_t>(st.st_size);
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
