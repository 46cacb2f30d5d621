// The flashd gRPC server: the Flashd service, the standard health service
// (grpc.health.v1.Health) and reflection, listening on a Unix socket (mode
// 0660) and, when configured, on TCP. Owns the inference Scheduler.
#ifndef FLASHD_DAEMON_SERVER_SERVER_H_
#define FLASHD_DAEMON_SERVER_SERVER_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/server/scheduler.h"
#include "daemon/server/connection_table.h"
#include "daemon/server/service.h"
#include "daemon/server/tcp_security.h"
#include "daemon/server/unix_listener.h"
#include "grpcpp/grpcpp.h"

namespace flashd::server {

struct ServerOptions {
  // Unix socket path; empty: none. The parent directory is created when
  // missing; a stale socket file (nobody listening) is replaced.
  std::string socket_path = "/run/flashd/flashd.sock";
  // TCP "HOST:PORT" (e.g. "127.0.0.1:50051"); empty: no TCP. Served
  // only with `tcp`'s TLS and/or API key, or tcp.insecure.
  std::string listen;
  TcpSecurityOptions tcp;
  SchedulerOptions scheduler;
  ServiceLimits limits;
  ConnectionLimits connections;  // Unix socket
  // A TCP connection is closed when its TLS handshake and HTTP/2 settings
  // have not arrived this long after it was accepted (gRPC's server
  // handshake timeout), so half-open connections cannot pile up.
  int32_t handshake_timeout_ms = 10000;
  // Any connection with no call for this long is closed (gRPC's
  // max_connection_idle: GOAWAY, then close; clients reconnect).
  int32_t idle_connection_timeout_ms = 300000;
};

// Largest gRPC message the server accepts: what the request limits let
// through (a prompt, a Tokenize text, Detokenize ids, prompt ids) plus
// room for the other fields.
int64_t MaxMessageBytes(const ServiceLimits& limits, int32_t n_ctx);

// Descriptors the daemon may need with `options`: every connection the
// limits allow, refused ones waiting to close, a ring per session and
// queued request, and room for files, TCP and gRPC's own.
uint64_t FdsNeeded(const ServerOptions& options);

class Server {
 public:
  // Prepares the socket path, starts the inference thread and the gRPC
  // server. Errors: the socket's directory cannot be created, the path is
  // taken by another file or a live daemon, gRPC cannot bind, or --listen
  // lacks authentication (MakeTcpCredentials).
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServedModel& model, const ServerOptions& options);
  // Shutdown(0) if not done yet.
  ~Server();

  // Stops accepting connections, refuses new generations and reports
  // NOT_SERVING; running generations may finish until `drain` has passed,
  // then they are cancelled. Closes the connections once the clients read
  // what was sent (at most 3 s more), then stops the inference thread and
  // removes the socket file.
  void Shutdown(std::chrono::milliseconds drain);

  // Where clients connect, e.g. "unix:/run/flashd/flashd.sock".
  const std::string& address() const { return address_; }
  // The TCP port bound for --listen (the one chosen for port 0); 0 without.
  int tcp_port() const { return tcp_port_; }
  Scheduler& scheduler() { return *scheduler_; }

 private:
  Server(const ServedModel& model, const ServerOptions& options);

  const ServedModel model_;
  const ServerOptions options_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<FlashdService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<UnixListener> listener_;  // null without a socket
  std::string address_;
  int tcp_port_ = 0;
  bool shut_down_ = false;
};

// Makes `path` usable for a Unix socket: creates its directory (0750) when
// missing and removes a stale socket; refuses a path that is not a socket
// or on which a server answers, and one longer than sockaddr_un allows.
absl::Status PrepareSocketPath(const std::string& path);

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_SERVER_H_
