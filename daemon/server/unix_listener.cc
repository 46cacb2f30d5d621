#include "daemon/server/unix_listener.h"

#include <linux/sockios.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/base/errno_status.h"
#include "grpcpp/server_posix.h"

namespace flashd::server {

absl::StatusOr<PeerCredentials> PeerOf(const std::string& peer) {
  int fd = -1;
  if (!absl::StartsWith(peer, "fd:") || !absl::SimpleAtoi(peer.substr(3), &fd) ||
      fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared-memory delivery is for clients on the daemon's Unix socket; "
        "this call came from ", peer, ": use delivery STREAM"));
  }
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return FileErrnoStatus(errno, absl::StrCat("SO_PEERCRED of ", peer));
  }
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

absl::StatusOr<std::unique_ptr<UnixListener>> UnixListener::Listen(
    const std::string& path, mode_t mode, ConnectionLimits limits) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", path, "' is too long or empty"));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return FileErrnoStatus(errno, "socket(AF_UNIX)");
  // bind() creates the file: under this umask it never has wider bits.
  const mode_t old_umask = ::umask(~mode & 0777);
  const int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  const int bind_err = errno;
  ::umask(old_umask);
  if (rc != 0) {
    ::close(fd);
    return FileErrnoStatus(bind_err, absl::StrCat("cannot bind ", path));
  }
  if (::chmod(path.c_str(), mode) != 0 || ::listen(fd, SOMAXCONN) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return FileErrnoStatus(err, absl::StrCat("cannot listen on ", path));
  }
  const int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return FileErrnoStatus(err, "eventfd");
  }
  return std::unique_ptr<UnixListener>(new UnixListener(path, fd, wake, limits));
}

UnixListener::~UnixListener() {
  Stop();
  ::close(wake_fd_);
}

void UnixListener::Start(grpc::Server* server) {
  thread_ = std::thread([this, server] { Run(server); });
}

void UnixListener::Stop() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
    thread_.join();
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

absl::Status UnixListener::Refusal(const std::string& peer) const {
  int fd = -1;
  if (!absl::StartsWith(peer, "fd:") || !absl::SimpleAtoi(peer.substr(3), &fd)) {
    return absl::OkStatus();
  }
  return table_.Refusal(fd);
}

uint64_t UnixListener::UnreadBytes() const {
  uint64_t unread = 0;
  for (int fd : table_.Live()) {
    // Still one of our connections? (Its number may now name another file.)
    sockaddr_un local{};
    socklen_t len = sizeof(local);
    int type = 0;
    socklen_t type_len = sizeof(type);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0 ||
        local.sun_family != AF_UNIX ||
        ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 ||
        type != SOCK_STREAM ||
        len <= offsetof(sockaddr_un, sun_path) ||
        path_ != std::string_view(local.sun_path,
                                  ::strnlen(local.sun_path,
                                            len - offsetof(sockaddr_un, sun_path)))) {
      continue;
    }
    int queued = 0;
    if (::ioctl(fd, SIOCOUTQ, &queued) == 0 && queued > 0) {
      unread += static_cast<uint64_t>(queued);
    }
  }
  return unread;
}

void UnixListener::Run(grpc::Server* server) {
  pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  int timeout_ms = -1;  // until a refused connection is due to close
  while (true) {
    if (::poll(fds, 2, timeout_ms) < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "flashd serve: poll on the socket: %s\n",
                   std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;  // Stop()
    timeout_ms = table_.ShutDownRefused(std::chrono::steady_clock::now());
    if ((fds[0].revents & POLLIN) == 0) continue;
    // gRPC's endpoints need non-blocking descriptors.
    const int conn = ::accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn < 0) {
      const int err = errno;
      if (err == EAGAIN || err == EINTR || err == ECONNABORTED) continue;
      // Out of descriptors or memory: say so, let the pressure pass, and
      // keep serving the connections we have.
      std::fprintf(stderr, "flashd serve: accept: %s\n", std::strerror(err));
      ::poll(fds + 1, 1, 100);
      continue;
    }
    Take(server, conn);
    timeout_ms = table_.ShutDownRefused(std::chrono::steady_clock::now());
  }
}

void UnixListener::Take(grpc::Server* server, int conn) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  absl::Status why;
  ConnectionTable::Verdict verdict = ConnectionTable::Verdict::kClose;
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    verdict = table_.Admit(conn, cred.uid, &why);
  } else {
    why = FileErrnoStatus(errno, "SO_PEERCRED of a new connection");
  }
  if (verdict != ConnectionTable::Verdict::kAdmitted) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_refusal_log_) {
      std::fprintf(stderr, "flashd serve: refused a connection (%llu more since "
                   "the last report): %s\n",
                   static_cast<unsigned long long>(refusals_unlogged_),
                   std::string(why.message()).c_str());
      next_refusal_log_ = now + std::chrono::seconds(1);
      refusals_unlogged_ = 0;
    } else {
      ++refusals_unlogged_;
    }
  }
  if (verdict == ConnectionTable::Verdict::kClose) {
    ::close(conn);
    return;
  }
  grpc::AddInsecureChannelFromFd(server, conn);
  accepted_.fetch_add(1);
}

}  // namespace flashd::server
