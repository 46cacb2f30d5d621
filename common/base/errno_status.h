// Opening files: an errno from opening or mapping a file as an
// absl::Status, and opening a regular file for reading.
#ifndef FLASHD_COMMON_BASE_ERRNO_STATUS_H_
#define FLASHD_COMMON_BASE_ERRNO_STATUS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace flashd {

// "<what>: <strerror(err)>" as NOT_FOUND (ENOENT), PERMISSION_DENIED
// (EACCES, EPERM) or INVALID_ARGUMENT (anything else).
absl::Status FileErrnoStatus(int err, const std::string& what);

// Opens `path` (O_RDONLY | O_CLOEXEC | extra_flags) and checks it is a
// regular file; returns the fd and stores its size. Errors: FileErrnoStatus
// of "cannot open PATH" / "cannot stat PATH", INVALID_ARGUMENT "PATH is not
// a regular file".
absl::StatusOr<int> OpenRegularFile(const std::string& path, int extra_flags,
                                    uint64_t* size);

}  // namespace flashd

#endif  // FLASHD_COMMON_BASE_ERRNO_STATUS_H_
