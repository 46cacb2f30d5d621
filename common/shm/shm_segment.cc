#include "common/shm/shm_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/errno_status.h"

namespace flashd::shm {

absl::Status ShmErrnoStatus(int err, const std::string& what) {
  const std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EFBIG:
      return absl::ResourceExhaustedError(msg);
    default:
      return FileErrnoStatus(err, what);
  }
}

absl::Status ReserveShm(int fd, const std::string& path, uint64_t bytes) {
  const int err = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (err == 0) return absl::OkStatus();
  struct statvfs vfs;
  const uint64_t free_bytes =
      ::fstatvfs(fd, &vfs) == 0
          ? static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize
          : 0;
  return ShmErrnoStatus(
      err, absl::StrFormat("cannot reserve %d bytes (%.1f MiB) for %s (%.1f "
                           "MiB free there)",
                           bytes, bytes / 1048576.0, path,
                           free_bytes / 1048576.0));
}

absl::Status ShmSegment::CheckName(const std::string& name) {
  if (name.empty() || name.size() > 200) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared-memory name '", name,
                     "' must have 1..200 characters, has ", name.size()));
  }
  if (name[0] == '.') {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-memory name '", name, "' must not start with '.'"));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("shared-memory name '", name, "' has character '",
                       std::string(1, c), "'; allowed are [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::Map(
    int fd, const std::string& name, const std::string& path, size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    ::close(fd);
    return ShmErrnoStatus(
        err, absl::StrCat("cannot map ", path, " (", bytes, " bytes)"));
  }
  return std::unique_ptr<ShmSegment>(
      new ShmSegment(fd, static_cast<uint8_t*>(p), bytes, name, path));
}

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::Create(
    const ShmDir& dir, const std::string& name, size_t bytes, mode_t mode) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  const std::string path = dir.PathOf(name);
  if (bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared-memory file ", path, ": size 0"));
  }
  const int fd =
      ::openat(dir.fd(), name.c_str(),
               O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    return ShmErrnoStatus(errno, absl::StrCat("cannot create ", path));
  }
  absl::Status s;
  if (::fchmod(fd, mode & 07777) != 0 ||
      ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    s = ShmErrnoStatus(errno, absl::StrCat("cannot set up ", path));
  } else {
    s = ReserveShm(fd, path, bytes);
  }
  if (s.ok()) {
    absl::StatusOr<std::unique_ptr<ShmSegment>> seg = Map(fd, name, path, bytes);
    if (seg.ok()) return seg;
    s = seg.status();
  } else {
    ::close(fd);
  }
  (void)::unlinkat(dir.fd(), name.c_str(), 0);
  return s;
}

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return ShmErrnoStatus(err == ELOOP ? EACCES : err,
                          absl::StrCat("cannot open ", path));
  }
  struct stat st;
  std::string wrong;
  if (::fstat(fd, &st) != 0) {
    wrong = std::strerror(errno);
  } else if (!S_ISREG(st.st_mode)) {
    wrong = "not a regular file";
  } else if (st.st_uid != ::geteuid()) {
    wrong = absl::StrFormat("belongs to uid %d, not to uid %d", st.st_uid,
                            ::geteuid());
  } else if ((st.st_mode & 077) != 0) {
    wrong = absl::StrFormat("mode %04o lets others in", st.st_mode & 07777);
  } else if (st.st_size <= 0) {
    ::close(fd);
    return absl::DataLossError(
        absl::StrCat("opening ", path, ": the file is empty (0 bytes)"));
  }
  if (!wrong.empty()) {
    ::close(fd);
    return absl::PermissionDeniedError(
        absl::StrCat("opening ", path, ": ", wrong));
  }
  return Map(fd, path.substr(path.rfind('/') + 1), path,
             static_cast<size_t>(st.st_size));
}

absl::Status ShmSegment::Remove(const ShmDir& dir, const std::string& name) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  if (::unlinkat(dir.fd(), name.c_str(), 0) != 0) {
    return ShmErrnoStatus(errno,
                          absl::StrCat("removing ", dir.PathOf(name)));
  }
  return absl::OkStatus();
}

ShmSegment::~ShmSegment() {
  ::munmap(data_, size_);
  ::close(fd_);
}

absl::Status ShmSegment::ChownTo(uid_t uid) {
  if (::fchown(fd_, uid, static_cast<gid_t>(-1)) != 0) {
    const int err = errno;
    return ShmErrnoStatus(
        err, absl::StrCat("giving ", path_, " to uid ", uid,
                          " (needs root or CAP_CHOWN, e.g. "
                          "AmbientCapabilities=CAP_CHOWN in flashd.service)"));
  }
  return absl::OkStatus();
}

}  // namespace flashd::shm
