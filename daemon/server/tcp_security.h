// How `flashd serve --listen HOST:PORT` authenticates remote callers: TLS
// (server certificate; with a client CA, mutual TLS requiring and
// verifying client certificates), a bearer API key checked on every call
// (health and reflection included), or both. Plain TCP without either is
// refused unless explicitly asked for. The Unix socket is not affected:
// there the kernel names the caller (SO_PEERCRED) and the socket's mode
// decides who may connect.
#ifndef FLASHD_DAEMON_SERVER_TCP_SECURITY_H_
#define FLASHD_DAEMON_SERVER_TCP_SECURITY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/server/api_key.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "grpcpp/security/server_credentials.h"

namespace flashd::server {

struct TcpSecurityOptions {
  std::string tls_cert;       // PEM certificate chain; with tls_key
  std::string tls_key;        // PEM private key
  std::string tls_client_ca;  // PEM CA bundle: require client certificates
  std::string api_key_file;   // see ApiKey::Load
  bool insecure = false;      // plain TCP without TLS or key (--insecure-tcp)
};

// The credentials of the TCP port `listen` ("HOST:PORT"). INVALID_ARGUMENT
// (naming the flags) for an incomplete or contradictory combination:
// neither TLS nor a key without `insecure`, or a key without TLS on an
// address that is not loopback (the key would cross the network in clear);
// the errors of ApiKey::Load; NOT_FOUND when a PEM file cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeTcpCredentials(
    const std::string& listen, const TcpSecurityOptions& options);

// True for "127.x.x.x:PORT", "[::1]:PORT" and "localhost:PORT".
bool IsLoopback(const std::string& listen);

// Fails every call whose `authorization` metadata is not "Bearer <key>"
// (gRPC then ends it UNAUTHENTICATED).
class ApiKeyProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit ApiKeyProcessor(ApiKey key) : key_(std::move(key)) {}
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata,
                       grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  const ApiKey key_;
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_TCP_SECURITY_H_
