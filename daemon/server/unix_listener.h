// The daemon's Unix-socket listener. flashd accepts local connections
// itself and hands each one to gRPC (grpc::AddInsecureChannelFromFd), so it
// knows, for every call, the kernel's credentials of the process on the
// other end (SO_PEERCRED): shared-memory delivery gives a session's ring to
// exactly that uid. gRPC names such a connection's peer "fd:<N>"; PeerOf
// maps a call back to its socket. The descriptor lives as long as the
// connection's endpoint: a call whose connection died may, in a narrow
// window, see its number reused by a newer connection, so callers check
// that the call is still alive after the lookup (a dead connection's calls
// are cancelled) -- and a ring given to the wrong uid that way would never
// receive a token.
#ifndef FLASHD_DAEMON_SERVER_UNIX_LISTENER_H_
#define FLASHD_DAEMON_SERVER_UNIX_LISTENER_H_

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <chrono>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/server/connection_table.h"
#include "grpcpp/server.h"

namespace flashd::server {

// Who is on the other end of a local connection, as the kernel says.
struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// The credentials of the client of a call whose context->peer() is
// `peer`. FAILED_PRECONDITION when the call did not come through the Unix
// socket (TCP clients are remote: no shared memory for them).
absl::StatusOr<PeerCredentials> PeerOf(const std::string& peer);

class UnixListener {
 public:
  // Binds `path` (which PrepareSocketPath made free) with `mode` from the
  // start (umask during bind) and listens. Errors name the path.
  // Connections beyond `limits` are refused (see ConnectionTable).
  static absl::StatusOr<std::unique_ptr<UnixListener>> Listen(
      const std::string& path, mode_t mode, ConnectionLimits limits = {});
  // Stop(), then closes the socket.
  ~UnixListener();
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  // Accepts connections on a thread of its own and gives them to `server`
  // (started; must outlive Stop()).
  void Start(grpc::Server* server);
  // Stops accepting and closes the listening socket, so new clients are
  // refused at once (connections already handed over stay with gRPC).
  void Stop();

  // Connections accepted so far.
  uint64_t accepted() const { return accepted_.load(); }

  // RESOURCE_EXHAUSTED, naming the limit, when the call whose
  // context->peer() is `peer` came on a connection refused for a
  // connection limit; OK otherwise (TCP calls included).
  absl::Status Refusal(const std::string& peer) const;

  // Bytes the daemon sent on its open connections that their clients have
  // not read yet (SIOCOUTQ). Shutdown waits for 0 before gRPC closes the
  // connections: a client that writes to a closed connection (gRPC sends
  // flow-control updates as it reads) gets EPIPE and drops what it had not
  // read, so a generation that finished would end UNAVAILABLE.
  uint64_t UnreadBytes() const;

 private:
  UnixListener(std::string path, int fd, int wake_fd, ConnectionLimits limits)
      : path_(std::move(path)), fd_(fd), wake_fd_(wake_fd), table_(limits) {}
  void Run(grpc::Server* server);
  // Takes the accepted connection `conn` (gives it to gRPC or closes it).
  void Take(grpc::Server* server, int conn);

  const std::string path_;
  int fd_;             // the listening socket; -1 after Stop()
  const int wake_fd_;  // eventfd: Stop() wakes the thread
  std::thread thread_;
  std::atomic<uint64_t> accepted_{0};
  // The connections handed to gRPC, per uid.
  mutable ConnectionTable table_;
  // Refusals are logged at most once a second (listener thread only).
  std::chrono::steady_clock::time_point next_refusal_log_{};
  uint64_t refusals_unlogged_ = 0;
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_UNIX_LISTENER_H_
