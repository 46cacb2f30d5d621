#include "daemon/server/api_key.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/errno_status.h"

namespace flashd::server {
namespace {

constexpr size_t kMaxFileBytes = 4096;
constexpr absl::string_view kScheme = "bearer";

std::array<uint8_t, 32> Digest(absl::string_view bytes) {
  std::array<uint8_t, 32> out;
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
         out.data());
  return out;
}

}  // namespace

absl::StatusOr<ApiKey> ApiKey::FromString(absl::string_view key) {
  key = absl::StripAsciiWhitespace(key);
  if (key.size() < kMinBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the API key has ", key.size(), " bytes; use at least ",
                     kMinBytes, " (e.g. `openssl rand -hex 32`)"));
  }
  for (char c : key) {
    if (c <= ' ' || c > '~') {
      return absl::InvalidArgumentError(
          "the API key must be one word of printable ASCII (e.g. `openssl "
          "rand -hex 32`)");
    }
  }
  return ApiKey(Digest(key));
}

absl::StatusOr<ApiKey> ApiKey::Load(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    const int err = errno;
    if (err == ELOOP) {
      return absl::FailedPreconditionError(
          absl::StrCat("--api-key-file ", path,
                       " is a symbolic link; give the file itself"));
    }
    return FileErrnoStatus(err,
                           absl::StrCat("cannot open --api-key-file ", path));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return FileErrnoStatus(err,
                           absl::StrCat("cannot stat --api-key-file ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("--api-key-file ", path, " is not a regular file"));
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrFormat(
        "--api-key-file %s has mode %04o: group and others must have no "
        "access (chmod 600 %s)",
        path, st.st_mode & 07777, path));
  }
  std::string content(kMaxFileBytes + 1, '\0');
  size_t got = 0;
  while (got < content.size()) {
    const ssize_t n = ::read(fd, content.data() + got, content.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return FileErrnoStatus(err,
                             absl::StrCat("cannot read --api-key-file ", path));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got > kMaxFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--api-key-file ", path, " is larger than ", kMaxFileBytes,
                     " bytes; it must hold one key"));
  }
  content.resize(got);
  absl::StatusOr<ApiKey> key = FromString(content);
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--api-key-file ", path, ": ", key.status().message()));
  }
  return key;
}

bool ApiKey::Matches(absl::string_view authorization) const {
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kScheme.size()),
                              kScheme) ||
      authorization[kScheme.size()] != ' ') {
    return false;
  }
  absl::string_view presented =
      absl::StripLeadingAsciiWhitespace(authorization.substr(kScheme.size()));
  const std::array<uint8_t, 32> digest = Digest(presented);
  return CRYPTO_memcmp(digest.data(), digest_.data(), digest.size()) == 0;
}

}  // namespace flashd::server
