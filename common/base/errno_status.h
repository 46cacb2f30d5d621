// Turns an errno from opening or mapping a file into an absl::Status.
#ifndef FLASHD_COMMON_BASE_ERRNO_STATUS_H_
#define FLASHD_COMMON_BASE_ERRNO_STATUS_H_

#include <string>

#include "absl/status/status.h"

namespace flashd {

// "<what>: <strerror(err)>" as NOT_FOUND (ENOENT), PERMISSION_DENIED
// (EACCES, EPERM) or INVALID_ARGUMENT (anything else).
absl::Status FileErrnoStatus(int err, const std::string& what);

}  // namespace flashd

#endif  // FLASHD_COMMON_BASE_ERRNO_STATUS_H_
