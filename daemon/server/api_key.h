// A shared secret that remote callers present as "Authorization: Bearer
// KEY" (gRPC metadata `authorization`; the HTTP header of the same name).
// Loaded from a file only the daemon's user may read; compared in constant
// time. Free of gRPC so that any front end can use it.
#ifndef FLASHD_DAEMON_SERVER_API_KEY_H_
#define FLASHD_DAEMON_SERVER_API_KEY_H_

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace flashd::server {

class ApiKey {
 public:
  // Shortest key accepted (bytes).
  static constexpr size_t kMinBytes = 16;

  // Reads the key from `path`: the file's content without surrounding
  // whitespace, at least kMinBytes of printable ASCII without spaces.
  // Refused (FAILED_PRECONDITION, naming the file and the fix) when `path`
  // is not a regular file (a symlink is not followed) or is readable or
  // writable by group or others; NOT_FOUND / PERMISSION_DENIED when it
  // cannot be opened; INVALID_ARGUMENT for an empty or malformed key.
  static absl::StatusOr<ApiKey> Load(const std::string& path);
  // A key from memory (tests, other front ends); same format rules.
  static absl::StatusOr<ApiKey> FromString(absl::string_view key);

  // True when `authorization` is "Bearer <the key>" (the scheme is
  // case-insensitive, one or more spaces after it). Constant time in the
  // key: both sides are hashed (SHA-256) and the digests compared with
  // CRYPTO_memcmp, so neither the content nor the length leaks.
  bool Matches(absl::string_view authorization) const;

 private:
  explicit ApiKey(const std::array<uint8_t, 32>& digest) : digest_(digest) {}
  std::array<uint8_t, 32> digest_;  // SHA-256 of the key
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_API_KEY_H_
