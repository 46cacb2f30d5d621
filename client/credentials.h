// How the client proves itself to a daemon's TCP port: TLS (the CA that
// signed the server's certificate; a client certificate for mutual TLS)
// and/or the API key sent as "authorization: Bearer KEY" on every call.
// The Unix socket needs neither.
#ifndef FLASHD_CLIENT_CREDENTIALS_H_
#define FLASHD_CLIENT_CREDENTIALS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"

namespace flashd::client {

struct SecurityOptions {
  std::string tls_ca;        // PEM CA file: connect with TLS
  std::string tls_cert;      // PEM client certificate (mutual TLS)
  std::string tls_key;       // PEM key of tls_cert
  std::string api_key_file;  // file holding the key
};

// TLS credentials when tls_ca (or a client certificate) is given, else
// insecure ones. INVALID_ARGUMENT for a certificate without its key (or
// the reverse) or TLS on a Unix-socket target; NOT_FOUND for an unreadable
// file.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(
    const std::string& target, const SecurityOptions& options);

// The value of the `authorization` metadata ("Bearer KEY") from
// api_key_file, or "" without one. NOT_FOUND / INVALID_ARGUMENT name the
// file.
absl::StatusOr<std::string> AuthorizationFor(const SecurityOptions& options);

}  // namespace flashd::client

#endif  // FLASHD_CLIENT_CREDENTIALS_H_
