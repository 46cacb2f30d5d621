#include "common/shm/shm_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/errno_status.h"

namespace flashd::shm {
namespace {

constexpr mode_t kDirMode = 0711;

// Opens `path` as a directory without following a final symlink and checks
// it is ours and writable by nobody else; on success makes its mode 0711
// and returns the descriptor. Otherwise sets *why and returns -1.
int OpenOwnedDir(const std::string& path, std::string* why) {
  const int fd =
      ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    *why = err == ELOOP || err == ENOTDIR
               ? absl::StrCat(path, " is not a directory (a symlink or a file)")
               : absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    return -1;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    *why = absl::StrCat("cannot stat ", path, ": ", std::strerror(errno));
  } else if (st.st_uid != ::geteuid()) {
    *why = absl::StrFormat("%s belongs to uid %d, not to this daemon (uid %d)",
                           path, st.st_uid, ::geteuid());
  } else if ((st.st_mode & 022) != 0) {
    *why = absl::StrFormat("%s is writable by group or others (mode %04o)",
                           path, st.st_mode & 07777);
  } else if ((st.st_mode & 07777) != kDirMode && ::fchmod(fd, kDirMode) != 0) {
    *why = absl::StrCat("cannot chmod ", path, ": ", std::strerror(errno));
  } else {
    return fd;
  }
  ::close(fd);
  return -1;
}

}  // namespace

std::string DefaultShmDirPath() {
  return absl::StrCat("/dev/shm/flashd-", ::geteuid());
}

absl::Status CheckOwnedFile(int fd, const std::string& path, mode_t mode) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return FileErrnoStatus(errno, absl::StrCat("cannot stat ", path));
  }
  std::string wrong;
  if (!S_ISREG(st.st_mode)) {
    wrong = "is not a regular file";
  } else if (st.st_uid != ::geteuid()) {
    wrong = absl::StrFormat("belongs to uid %d, not to uid %d", st.st_uid,
                            ::geteuid());
  } else if ((st.st_mode & 07777) != mode) {
    wrong = absl::StrFormat("has mode %04o, not %04o", st.st_mode & 07777,
                            mode);
  } else if (st.st_nlink != 1) {
    wrong = absl::StrFormat("has %d links (a hard link elsewhere)",
                            st.st_nlink);
  } else {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat(path, " ", wrong, ": not used"));
}

absl::StatusOr<std::shared_ptr<const ShmDir>> ShmDir::Open(
    const std::string& path) {
  if (path.empty() || path.back() == '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-memory directory '", path,
        "' must be a path without a trailing '/'"));
  }
  if (::mkdir(path.c_str(), kDirMode) != 0 && errno != EEXIST) {
    const int err = errno;
    if (err != EACCES && err != EPERM) {
      return FileErrnoStatus(err, absl::StrCat("cannot create ", path));
    }
  }
  std::string why;
  if (const int fd = OpenOwnedDir(path, &why); fd >= 0) {
    return std::shared_ptr<const ShmDir>(new ShmDir(fd, path, ""));
  }
  // Refused: a fresh directory of ours beside it. mkdtemp creates it with
  // O_EXCL semantics, so nobody can have planted it.
  std::string tmpl = path + ".XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    return FileErrnoStatus(
        errno, absl::StrCat(why, "; and cannot create a directory ", tmpl));
  }
  const std::string fresh(buf.data());
  std::string why_fresh;
  const int fd = OpenOwnedDir(fresh, &why_fresh);
  if (fd < 0) return absl::InternalError(why_fresh);
  return std::shared_ptr<const ShmDir>(new ShmDir(
      fd, fresh,
      absl::StrCat(why, ": not used; using ", fresh,
                   " instead (shared memory there does not survive a "
                   "restart)")));
}

ShmDir::~ShmDir() { ::close(fd_); }

std::string ShmDir::PathOf(const std::string& name) const {
  return absl::StrCat(path_, "/", name);
}

}  // namespace flashd::shm
