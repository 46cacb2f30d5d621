// A shared-memory file mapped read-write: the one adapter over the open,
// size, reserve and mmap system calls behind the token rings and the neuron
// cache segment. Errors come out as absl::Status naming the file and the OS
// reason.
//
// The daemon creates its files in a ShmDir (a directory only it can write);
// a client opens its ring by the full path the daemon gave it. Both check
// the file through the descriptor (O_NOFOLLOW, then fstat) before mapping
// it: see CheckOwnedFile.
#ifndef FLASHD_COMMON_SHM_SHM_SEGMENT_H_
#define FLASHD_COMMON_SHM_SHM_SEGMENT_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/shm/shm_dir.h"

namespace flashd::shm {

// One mapping of a shared-memory file. Owns the mapping and the descriptor
// (unmapped and closed on destruction); never unlinks the name by itself
// (see Remove). Not thread-safe.
class ShmSegment {
 public:
  // Creates `name` in `dir` (must not exist: O_CREAT|O_EXCL|O_NOFOLLOW)
  // with permission bits `mode` applied exactly (fchmod, ignoring the
  // umask), sizes it to `bytes` (zero-filled, every page reserved so a full
  // tmpfs is an error here, not a SIGBUS later) and maps it. Errors:
  // ALREADY_EXISTS, PERMISSION_DENIED, INVALID_ARGUMENT (bad name),
  // RESOURCE_EXHAUSTED (tmpfs full); on error nothing is left behind.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Create(
      const ShmDir& dir, const std::string& name, size_t bytes, mode_t mode);

  // Opens and maps the existing file `path` read-write, whole, after
  // checking on the descriptor that it is a regular file of our euid that
  // no group or other user can access. Errors: NOT_FOUND,
  // PERMISSION_DENIED (another user's file, a symlink, loose mode),
  // DATA_LOSS (empty file).
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Open(
      const std::string& path);

  // Maps `bytes` of the already checked, sized and reserved descriptor
  // `fd` (taken over: closed on error too). `name` and `path` are for
  // messages.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Map(
      int fd, const std::string& name, const std::string& path, size_t bytes);

  // Unlinks `name` in `dir`: it can no longer be opened; existing mappings
  // stay valid. NOT_FOUND if it does not exist.
  static absl::Status Remove(const ShmDir& dir, const std::string& name);

  // OK for 1..200 characters of [A-Za-z0-9._-] not starting with '.';
  // INVALID_ARGUMENT naming the problem otherwise.
  static absl::Status CheckName(const std::string& name);

  ~ShmSegment();
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  // Changes the file's owner to `uid` (group unchanged) through the open
  // descriptor. Needs root or CAP_CHOWN: PERMISSION_DENIED otherwise.
  absl::Status ChownTo(uid_t uid);

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }
  const std::string& path() const { return path_; }
  // The open descriptor (for fstat, flock, ftruncate; owned by this
  // object).
  int fd() const { return fd_; }

 private:
  ShmSegment(int fd, uint8_t* data, size_t size, std::string name,
             std::string path)
      : fd_(fd), data_(data), size_(size), name_(std::move(name)),
        path_(std::move(path)) {}

  int fd_;
  uint8_t* data_;
  size_t size_;
  std::string name_;
  std::string path_;
};

// Reserves every page of the first `bytes` of `fd` (posix_fallocate), so a
// full tmpfs is RESOURCE_EXHAUSTED naming `path` and the free space instead
// of a SIGBUS on a later store.
absl::Status ReserveShm(int fd, const std::string& path, uint64_t bytes);

// An errno as a Status: ALREADY_EXISTS (EEXIST), RESOURCE_EXHAUSTED (no
// memory, space or descriptors), else as FileErrnoStatus.
absl::Status ShmErrnoStatus(int err, const std::string& what);

}  // namespace flashd::shm

#endif  // FLASHD_COMMON_SHM_SHM_SEGMENT_H_
