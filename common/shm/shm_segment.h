// A POSIX shared-memory segment (/dev/shm/<name>) mapped read-write: the
// adapter over Boost.Interprocess. Boost's exceptions stop here and come
// out as absl::Status naming the segment and the OS reason.
#ifndef FLASHD_COMMON_SHM_SHM_SEGMENT_H_
#define FLASHD_COMMON_SHM_SHM_SEGMENT_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace flashd::shm {

// One mapping of a named segment. Owns the mapping and the descriptor
// (closed and unmapped on destruction); never unlinks the name by itself
// (see Remove). Not thread-safe.
class ShmSegment {
 public:
  // Creates `name` (must not exist: O_CREAT|O_EXCL, so nobody can plant a
  // segment under a name the daemon chose) with permission bits `mode`
  // applied exactly (fchmod after creation, ignoring the umask), sizes it to
  // `bytes` (zero-filled) and maps it. Errors: ALREADY_EXISTS,
  // PERMISSION_DENIED, INVALID_ARGUMENT (bad name), RESOURCE_EXHAUSTED
  // (/dev/shm full); on error nothing is left behind.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Create(
      const std::string& name, size_t bytes, mode_t mode);

  // Opens and maps the existing segment `name` read-write, whole. Errors:
  // NOT_FOUND, PERMISSION_DENIED (another user's segment), DATA_LOSS
  // (empty segment), INVALID_ARGUMENT.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Open(
      const std::string& name);

  // Unlinks `name`: it can no longer be opened; existing mappings stay
  // valid. NOT_FOUND if it does not exist, PERMISSION_DENIED if /dev/shm's
  // sticky bit forbids it (someone else's file, no CAP_FOWNER).
  static absl::Status Remove(const std::string& name);

  // The file behind `name`: "/dev/shm/<name>" on Linux.
  static std::string PathOf(const std::string& name);

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
  // The open descriptor (for fstat; owned by this object).
  int fd() const;

 private:
  struct Impl;
  explicit ShmSegment(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string name_;
};

}  // namespace flashd::shm

#endif  // FLASHD_COMMON_SHM_SHM_SEGMENT_H_
