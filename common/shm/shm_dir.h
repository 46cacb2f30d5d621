// The directory that holds every shared-memory file the daemon creates: the
// neuron-cache segment and the token rings.
//
// Why a directory of our own instead of /dev/shm itself: /dev/shm is
// writable by every user, so any name the daemon uses there (and the cache
// segment's name is stable across restarts) can be planted in advance by
// someone else, renamed or hard-linked. In a directory that only the
// daemon's uid can write, nobody else can create, rename or remove a name;
// clients still reach their own ring by its full path because the directory
// is searchable (mode 0711: others may open a file whose name they know,
// not list the directory). It lives on the same tmpfs as /dev/shm by
// default (/dev/shm/flashd-<euid>), which is sized for shared memory (half
// of RAM), survives daemon restarts and is gone at reboot.
//
// Every check runs on descriptors opened with O_NOFOLLOW, before anything is
// locked, mapped or trusted.
#ifndef FLASHD_COMMON_SHM_SHM_DIR_H_
#define FLASHD_COMMON_SHM_SHM_DIR_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace flashd::shm {

// "/dev/shm/flashd-<euid>": the default directory of a daemon running as
// this process's effective uid.
std::string DefaultShmDirPath();

// OK when the open descriptor `fd` (opened with O_NOFOLLOW) is a regular
// file owned by this process's euid with permission bits exactly `mode` and
// a single link; PERMISSION_DENIED naming `path` and what differs otherwise
// (another user's file, a world-writable one, a hard-linked one, ...).
absl::Status CheckOwnedFile(int fd, const std::string& path, mode_t mode);

// An open, verified segment directory. Keeps the directory's descriptor for
// its lifetime: every file is created, opened and unlinked relative to it
// (openat/unlinkat), so swapping the path afterwards changes nothing.
class ShmDir {
 public:
  // Uses directory `path`, creating it (mode 0711) when absent. It must be a
  // directory (not a symlink) owned by our euid that no group or other user
  // can write. When it is not -- someone else created it first, made it
  // writable or replaced it with a link -- it is never used: a fresh
  // directory `path`.XXXXXX (mkdtemp, mode 0711) takes its place and note()
  // says why (files there do not outlive the process: the next start picks
  // another name). Errors only when neither can be had (no such parent,
  // a full tmpfs).
  static absl::StatusOr<std::shared_ptr<const ShmDir>> Open(
      const std::string& path);

  ~ShmDir();
  ShmDir(const ShmDir&) = delete;
  ShmDir& operator=(const ShmDir&) = delete;

  // The directory in use (the fallback's name when `path` was refused).
  const std::string& path() const { return path_; }
  // Empty when the requested path is in use; otherwise why it was refused.
  const std::string& note() const { return note_; }
  // The directory's descriptor (owned; O_PATH is not used: openat needs a
  // searchable descriptor).
  int fd() const { return fd_; }
  // path() + "/" + name.
  std::string PathOf(const std::string& name) const;

 private:
  ShmDir(int fd, std::string path, std::string note)
      : fd_(fd), path_(std::move(path)), note_(std::move(note)) {}
  int fd_;
  std::string path_;
  std::string note_;
};

}  // namespace flashd::shm

#endif  // FLASHD_COMMON_SHM_SHM_DIR_H_
