#include "daemon/server/server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/errno_status.h"
#include "grpc/grpc.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

namespace flashd::server {
namespace {

// After the last stream ended, how long shutdown waits at most for the
// clients on the Unix socket to read what was sent to them, and then how
// long the connections stay open regardless (the client's gRPC still has
// to parse what it read; TCP clients are not tracked).
constexpr std::chrono::milliseconds kReadWait(3000);
constexpr std::chrono::milliseconds kCloseLinger(100);

// mkdir -p with `mode` for the directories it creates.
absl::Status MakeDirs(const std::string& dir, mode_t mode) {
  if (dir.empty()) return absl::OkStatus();
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " exists and is not a directory"));
  }
  const size_t slash = dir.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    if (absl::Status s = MakeDirs(dir.substr(0, slash), mode); !s.ok()) return s;
  }
  if (::mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) {
    return FileErrnoStatus(
        errno, absl::StrCat("cannot create the socket directory ", dir,
                            " (create it or pass --socket PATH)"));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t MaxMessageBytes(const ServiceLimits& limits, int32_t n_ctx) {
  const RequestLimits& r = limits.request;
  // A packed int32 takes at most 5 bytes.
  const int64_t ids = 5 * std::max<int64_t>(r.max_detokenize_ids, n_ctx);
  const int64_t stops = int64_t{r.max_stop_strings} * (r.max_stop_bytes + 8);
  return std::max({r.max_prompt_bytes, r.max_tokenize_bytes, ids}) + stops +
         65536;
}

uint64_t FdsNeeded(const ServerOptions& options) {
  return static_cast<uint64_t>(options.connections.total) +
         ConnectionTable::kMaxRefused +
         static_cast<uint64_t>(options.scheduler.max_sessions) +
         static_cast<uint64_t>(options.scheduler.max_queue) + 1024;
}

absl::Status PrepareSocketPath(const std::string& path) {
  sockaddr_un addr;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--socket '", path, "' must be 1..", sizeof(addr.sun_path) - 1,
        " bytes long (a Unix socket path)"));
  }
  const size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    if (absl::Status s = MakeDirs(path.substr(0, slash), 0750); !s.ok()) {
      return s;
    }
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return FileErrnoStatus(errno, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " exists and is not a socket; remove it or pass another --socket"));
  }
  // A socket file: live (another daemon answers) or stale (left by a
  // daemon that died).
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return FileErrnoStatus(errno, "socket(AF_UNIX)");
  std::memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  ::close(fd);
  if (rc == 0) {
    return absl::AlreadyExistsError(absl::StrCat(
        "another server is listening on ", path,
        "; stop it or pass another --socket"));
  }
  if (err != ECONNREFUSED) {
    return FileErrnoStatus(err, absl::StrCat("cannot probe socket ", path));
  }
  if (::unlink(path.c_str()) != 0) {
    return FileErrnoStatus(errno,
                           absl::StrCat("cannot remove stale socket ", path));
  }
  return absl::OkStatus();
}

Server::Server(const ServedModel& model, const ServerOptions& options)
    : model_(model), options_(options) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServedModel& model, const ServerOptions& options) {
  if (options.socket_path.empty() && options.listen.empty()) {
    return absl::InvalidArgumentError(
        "nothing to listen on: give --socket PATH or --listen HOST:PORT");
  }
  if (options.scheduler.kv_budget == 0 || options.scheduler.max_sessions < 1 ||
      options.scheduler.max_queue < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-budget (", options.scheduler.kv_budget, ") and --max-sessions (",
        options.scheduler.max_sessions, ") must be > 0, --max-queue (",
        options.scheduler.max_queue, ") >= 0"));
  }
  std::shared_ptr<grpc::ServerCredentials> tcp_credentials;
  if (!options.listen.empty()) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
        MakeTcpCredentials(options.listen, options.tcp);
    if (!creds.ok()) return creds.status();
    tcp_credentials = std::move(*creds);
  }
  if (!options.socket_path.empty()) {
    if (absl::Status s = PrepareSocketPath(options.socket_path); !s.ok()) {
      return s;
    }
  }
  if (model.shm_dir == nullptr) {
    return absl::InvalidArgumentError("the server needs a shared-memory directory");
  }
  if (const int stale = shm::RemoveStaleTokenRings(*model.shm_dir); stale > 0) {
    std::fprintf(stderr, "flashd serve: removed %d token rings of dead daemons\n",
                 stale);
  }
  std::unique_ptr<Server> server(new Server(model, options));
  server->scheduler_ =
      std::make_unique<Scheduler>(server->model_, options.scheduler);
  server->service_ = std::make_unique<FlashdService>(
      server->model_, server->scheduler_.get(), options.limits);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(MaxMessageBytes(options.limits, model.n_ctx)));
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             options.handshake_timeout_ms);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             options.idle_connection_timeout_ms);
  std::string where;
  if (!options.socket_path.empty()) {
    // We accept on the Unix socket ourselves (see unix_listener.h): mode
    // 0660 from bind() on, and the peer's credentials for every call.
    absl::StatusOr<std::unique_ptr<UnixListener>> listener =
        UnixListener::Listen(options.socket_path, 0660, options.connections);
    if (!listener.ok()) return listener.status();
    server->listener_ = std::move(*listener);
    server->address_ = absl::StrCat("unix:", options.socket_path);
    where = server->address_;
  }
  int tcp_port = 0;
  if (!options.listen.empty()) {
    builder.AddListeningPort(options.listen, tcp_credentials, &tcp_port);
    if (server->address_.empty()) server->address_ = options.listen;
    absl::StrAppend(&where, where.empty() ? "" : " and ", options.listen);
  }
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr ||
      (!options.listen.empty() && tcp_port == 0)) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", where, " (see gRPC's message above)"));
  }
  server->tcp_port_ = tcp_port;
  grpc::HealthCheckServiceInterface* health =
      server->server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus(v1::Flashd::service_full_name(), true);
  }
  server->scheduler_->Start();
  if (server->listener_ != nullptr) {
    server->service_->set_listener(server->listener_.get());
    server->listener_->Start(server->server_.get());
  }
  return server;
}

Server::~Server() { Shutdown(std::chrono::milliseconds(0)); }

void Server::Shutdown(std::chrono::milliseconds drain) {
  if (shut_down_) return;
  shut_down_ = true;
  if (listener_ != nullptr) listener_->Stop();  // no new connections
  if (server_ != nullptr) {
    // Drain ourselves before gRPC's shutdown: once gRPC has sent GOAWAY it
    // closes each connection as soon as its last call ends, possibly before
    // the client read the end of its stream. A client whose gRPC then writes
    // (a flow-control update) gets EPIPE and drops what it had not read: a
    // finished generation seen as UNAVAILABLE. So: refuse new generations,
    // wait for the running ones, let the clients read, and only then close.
    service_->StopGenerating();
    if (grpc::HealthCheckServiceInterface* health =
            server_->GetHealthCheckService()) {
      health->Shutdown();  // NOT_SERVING from now on
    }
    const auto now = std::chrono::steady_clock::now();
    if (service_->WaitForStreams(now + drain)) {
      const auto read_by = std::chrono::steady_clock::now() + kReadWait;
      while (listener_ != nullptr && listener_->UnreadBytes() > 0 &&
             std::chrono::steady_clock::now() < read_by) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      std::this_thread::sleep_for(kCloseLinger);
    }
    // Refuses new calls; cancels what still runs (generations past the
    // drain timeout, a unary call in flight) and returns when every
    // reactor is done.
    server_->Shutdown(std::chrono::system_clock::now());
    service_->StopTokenizing();
  }
  if (scheduler_ != nullptr) scheduler_->Stop();
  if (!options_.socket_path.empty()) {
    struct stat st;
    if (::lstat(options_.socket_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      ::unlink(options_.socket_path.c_str());
    }
  }
}

}  // namespace flashd::server
