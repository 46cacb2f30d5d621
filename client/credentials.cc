#include "client/credentials.h"

#include <fstream>
#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace flashd::client {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& flag,
                                     const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot read ", flag, " ", path));
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(
    const std::string& target, const SecurityOptions& o) {
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: give both");
  }
  if (o.tls_ca.empty() && o.tls_cert.empty()) {
    return grpc::InsecureChannelCredentials();
  }
  if (absl::StartsWith(target, "unix")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TLS is for TCP targets; ", target,
        " is the Unix socket: drop --tls-ca/--tls-cert/--tls-key"));
  }
  grpc::SslCredentialsOptions ssl;
  if (!o.tls_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadFile("--tls-ca", o.tls_ca);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
  }
  if (!o.tls_cert.empty()) {
    absl::StatusOr<std::string> cert = ReadFile("--tls-cert", o.tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile("--tls-key", o.tls_key);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  return grpc::SslCredentials(ssl);
}

absl::StatusOr<std::string> AuthorizationFor(const SecurityOptions& o) {
  if (o.api_key_file.empty()) return std::string();
  absl::StatusOr<std::string> text = ReadFile("--api-key-file", o.api_key_file);
  if (!text.ok()) return text.status();
  const std::string key(absl::StripAsciiWhitespace(*text));
  if (key.empty() || key.find_first_of(" \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--api-key-file ", o.api_key_file, " must hold one key (one word)"));
  }
  return absl::StrCat("Bearer ", key);
}

}  // namespace flashd::client
