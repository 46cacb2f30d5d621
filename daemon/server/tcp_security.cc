#include "daemon/server/tcp_security.h"

#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/server_credentials.h"

namespace flashd::server {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& flag,
                                    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read ", flag, " ", path, " (a PEM file)"));
  }
  std::string text((std::istreambuf_iterator<char>(in)), {});
  if (text.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", path, " holds no PEM block"));
  }
  return text;
}

}  // namespace

grpc::Status ApiKeyProcessor::Process(const InputMetadata& auth_metadata,
                                      grpc::AuthContext* context,
                                      OutputMetadata* consumed_auth_metadata,
                                      OutputMetadata* response_metadata) {
  const auto it = auth_metadata.find("authorization");
  if (it == auth_metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this port needs an API key: send metadata "
                        "'authorization: Bearer KEY'");
  }
  if (!key_.Matches(absl::string_view(it->second.data(), it->second.size()))) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "wrong API key in 'authorization: Bearer KEY'");
  }
  consumed_auth_metadata->insert(
      {"authorization", std::string(it->second.data(), it->second.size())});
  return grpc::Status::OK;
}

bool IsLoopback(const std::string& listen) {
  return absl::StartsWith(listen, "127.") ||
         absl::StartsWith(listen, "[::1]:") ||
         absl::StartsWith(listen, "localhost:") ||
         absl::StartsWith(listen, "ipv4:127.") ||
         absl::StartsWith(listen, "ipv6:[::1]:");
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeTcpCredentials(
    const std::string& listen, const TcpSecurityOptions& o) {
  const bool tls = !o.tls_cert.empty() || !o.tls_key.empty();
  if (tls && (o.tls_cert.empty() || o.tls_key.empty())) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: give both");
  }
  if (!o.tls_client_ca.empty() && !tls) {
    return absl::InvalidArgumentError(
        "--tls-client-ca needs --tls-cert and --tls-key");
  }
  const bool keyed = !o.api_key_file.empty();
  if (!tls && !keyed && !o.insecure) {
    return absl::InvalidArgumentError(
        "--listen serves only authenticated callers: give --tls-cert and "
        "--tls-key (optionally --tls-client-ca for mutual TLS) and/or "
        "--api-key-file FILE; --insecure-tcp serves plain TCP to anyone "
        "who can reach the port");
  }
  if (keyed && !tls && !IsLoopback(listen)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--api-key-file without TLS serves only loopback addresses (the key "
        "would cross the network in clear); --listen ",
        listen,
        " needs --tls-cert and --tls-key too, or a 127.0.0.1 / [::1] address"));
  }
  if (o.insecure && (tls || keyed)) {
    return absl::InvalidArgumentError(
        "--insecure-tcp contradicts --tls-cert/--api-key-file: drop one");
  }
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (tls) {
    grpc::SslServerCredentialsOptions ssl(
        o.tls_client_ca.empty()
            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    absl::StatusOr<std::string> cert = ReadPem("--tls-cert", o.tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem("--tls-key", o.tls_key);
    if (!key.ok()) return key.status();
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!o.tls_client_ca.empty()) {
      absl::StatusOr<std::string> ca =
          ReadPem("--tls-client-ca", o.tls_client_ca);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    creds = grpc::SslServerCredentials(ssl);
  } else if (keyed) {
    // gRPC's insecure credentials take no metadata processor; local ones
    // do, and admit only loopback peers -- where a key without TLS belongs
    // (anywhere else it would cross the network in clear).
    creds = grpc::experimental::LocalServerCredentials(LOCAL_TCP);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  if (keyed) {
    absl::StatusOr<ApiKey> key = ApiKey::Load(o.api_key_file);
    if (!key.ok()) return key.status();
    creds->SetAuthMetadataProcessor(
        std::make_shared<ApiKeyProcessor>(std::move(*key)));
  }
  return creds;
}

}  // namespace flashd::server
