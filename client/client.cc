#include "client/client.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace flashd::client {
namespace {

std::chrono::system_clock::time_point DeadlineAfter(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

// For "unix:PATH": checks the socket file and tries one raw connect, so a
// missing file, a permission problem or a stale socket is reported at once
// and by name instead of after the connect timeout. OK when it connects.
absl::Status ProbeUnixSocket(const std::string& target,
                             const std::string& path) {
  const std::string prefix = absl::StrCat("cannot connect to ", target, ": ");
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      return absl::UnavailableError(absl::StrCat(
          prefix, path, " does not exist: is flashd serve running?"));
    }
    return absl::UnavailableError(
        absl::StrCat(prefix, "stat ", path, ": ", std::strerror(err)));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(prefix, path, " is not a socket"));
  }
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "socket path is ", path.size(), " bytes, at most ",
                     sizeof(addr.sun_path) - 1, " allowed"));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat(prefix, "socket(AF_UNIX): ", std::strerror(errno)));
  }
  const int rc =
      ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  ::close(fd);
  if (rc == 0) return absl::OkStatus();
  if (err == EACCES || err == EPERM) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%spermission denied on %s (mode %04o, uid %d, gid %d): run as a "
        "member of the socket's group",
        prefix, path, st.st_mode & 07777, st.st_uid, st.st_gid));
  }
  if (err == ECONNREFUSED) {
    return absl::UnavailableError(absl::StrCat(
        prefix, "nothing listens on ", path,
        " (left by a daemon that exited?): is flashd serve running?"));
  }
  return absl::UnavailableError(
      absl::StrCat(prefix, "connect: ", std::strerror(err)));
}

}  // namespace

std::string NormalizeTarget(absl::string_view target) {
  if (target.empty()) return kDefaultTarget;
  if (absl::StartsWith(target, "/") || absl::StartsWith(target, "./") ||
      absl::StartsWith(target, "../")) {
    return absl::StrCat("unix:", std::string(target));
  }
  return std::string(target);
}

absl::StatusCode FromGrpcCode(grpc::StatusCode code) {
  const int c = static_cast<int>(code);
  // The two enums share numbering (both are google.rpc.Code).
  if (c < 0 || c > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::StatusCode::kUnknown;
  }
  return static_cast<absl::StatusCode>(c);
}

const char* HealthStatusName(HealthStatus status) {
  switch (status) {
    case HealthStatus::kServing:
      return "SERVING";
    case HealthStatus::kNotServing:
      return "NOT_SERVING";
    case HealthStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case HealthStatus::kUnknown:
      break;
  }
  return "UNKNOWN";
}

void CancelToken::Cancel() {
  cancelled_.store(true);
  std::lock_guard<std::mutex> lock(mu_);
  if (context_ != nullptr) context_->TryCancel();
}

bool CancelToken::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  return context_ != nullptr;
}

bool CancelToken::Attach(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mu_);
  context_ = context;
  return !cancelled_.load();
}

void CancelToken::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  context_ = nullptr;
}

Client::Client(std::string target, ClientOptions options,
               std::shared_ptr<grpc::Channel> channel)
    : target_(std::move(target)),
      options_(options),
      channel_(std::move(channel)),
      stub_(v1::Flashd::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    absl::string_view target_in, ClientOptions options) {
  std::string target = NormalizeTarget(target_in);
  if (absl::StartsWith(target, "unix:")) {
    std::string path = target.substr(5);
    if (absl::StartsWith(path, "//")) path = path.substr(2);  // unix://PATH
    if (absl::Status s = ProbeUnixSocket(target, path); !s.ok()) return s;
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      ChannelCredentialsFor(target, options.security);
  if (!creds.ok()) return creds.status();
  absl::StatusOr<std::string> authorization = AuthorizationFor(options.security);
  if (!authorization.ok()) return authorization.status();
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(target, *creds);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a channel to ", target));
  }
  if (!channel->WaitForConnected(DeadlineAfter(options.connect_timeout))) {
    return absl::UnavailableError(absl::StrCat(
        "cannot connect to ", target, " within ",
        absl::FormatDuration(options.connect_timeout),
        ": is flashd serve running",
        absl::StartsWith(target, "unix")
            ? "?"
            : " with --listen, and do its TLS settings match (--tls-ca, "
              "--tls-cert)?"));
  }
  std::unique_ptr<Client> client(
      new Client(std::move(target), options, std::move(channel)));
  client->authorization_ = std::move(*authorization);
  return client;
}

void Client::PrepareUnary(grpc::ClientContext* context) const {
  context->set_deadline(DeadlineAfter(options_.call_timeout));
  Authorize(context);
}

void Client::Authorize(grpc::ClientContext* context) const {
  if (!authorization_.empty()) {
    context->AddMetadata("authorization", authorization_);
  }
}

absl::Status Client::Error(absl::string_view rpc,
                           const grpc::Status& status) const {
  std::string message = absl::StrCat(std::string(rpc), " on ", target_, ": ",
                                     status.error_message());
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    absl::StrAppend(&message, " (is flashd serve running?)");
  } else if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    absl::StrAppend(&message, " (no answer within ",
                    absl::FormatDuration(options_.call_timeout), ")");
  }
  return absl::Status(FromGrpcCode(status.error_code()), message);
}

absl::Status Client::Generate(const v1::GenerateRequest& request,
                              const GenerateCallback& on_event,
                              CancelToken* cancel) {
  grpc::ClientContext context;
  Authorize(&context);
  if (cancel != nullptr && !cancel->Attach(&context)) {
    cancel->Detach();
    return absl::CancelledError(
        absl::StrCat("Generate on ", target_, ": cancelled before it began"));
  }
  std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>> reader =
      stub_->Generate(&context, request);
  v1::GenerateEvent event;
  bool done = false;
  bool stopped_by_callback = false;
  absl::Status ring_error;
  while (reader->Read(&event)) {
    done = done || event.has_done();
    bool go_on = on_event(event);
    if (go_on && event.has_started() && !event.started().shm_name().empty() &&
        request.delivery() == v1::SHARED_MEMORY) {
      // Shared-memory delivery: the tokens come through the ring until it
      // is finished; then the stream's Done (or error) follows.
      ring_error = ReadRing(event.started(), on_event, cancel, &go_on);
      if (ring_error.code() == absl::StatusCode::kNotFound) {
        // The daemon dropped the ring before we attached: the session
        // failed, and the stream says why.
        while (reader->Read(&event)) {
        }
        const grpc::Status status = reader->Finish();
        if (cancel != nullptr) cancel->Detach();
        return status.ok() ? ring_error : Error("Generate", status);
      }
    }
    if (!ring_error.ok() || (!go_on && !event.has_done())) {
      stopped_by_callback = ring_error.ok();
      context.TryCancel();
      while (reader->Read(&event)) {
      }
      break;
    }
  }
  const grpc::Status status = reader->Finish();
  if (cancel != nullptr) cancel->Detach();
  if (!ring_error.ok()) return ring_error;
  const bool cancelled =
      stopped_by_callback || (cancel != nullptr && cancel->cancelled());
  if (cancelled && !done) {
    return absl::CancelledError(
        absl::StrCat("Generate on ", target_, ": cancelled by the client"));
  }
  if (!status.ok() && !(done && cancelled)) return Error("Generate", status);
  if (!done) {
    return absl::InternalError(absl::StrCat(
        "Generate on ", target_, ": the stream ended without a Done event"));
  }
  return absl::OkStatus();
}

absl::Status Client::ReadRing(const v1::Started& started,
                              const GenerateCallback& on_event,
                              CancelToken* cancel, bool* go_on) {
  const std::string path =
      started.shm_path().empty()
          ? absl::StrCat("/dev/shm/", started.shm_name())
          : started.shm_path();
  const std::string where =
      absl::StrCat("Generate on ", target_, ": token ring ", path);
  absl::StatusOr<std::unique_ptr<shm::TokenRingReader>> ring =
      shm::TokenRingReader::Attach(path, started.shm_session_id());
  if (!ring.ok()) {
    return absl::Status(ring.status().code(),
                        absl::StrCat(where, ": ", ring.status().message()));
  }
  v1::GenerateEvent token_event;
  while (*go_on) {
    if (cancel != nullptr && cancel->cancelled()) return absl::OkStatus();
    absl::StatusOr<shm::RingEvent> e = (*ring)->Next(absl::Milliseconds(100));
    if (e.status().code() == absl::StatusCode::kDeadlineExceeded) {
      // The ring notices a dead daemon only in our pid namespace; the
      // connection notices it anywhere: then the stream has the status.
      if (channel_->GetState(false) != GRPC_CHANNEL_READY) return absl::OkStatus();
      continue;
    }
    if (!e.ok()) {
      return absl::Status(e.status().code(),
                          absl::StrCat(where, ": ", e.status().message()));
    }
    if (e->kind == shm::RingEvent::Kind::kFinished) return absl::OkStatus();
    v1::TokenEvent* t = token_event.mutable_token();
    t->set_id(e->token_id);
    t->set_index(static_cast<int32_t>(e->index));
    t->set_text(std::move(e->text));
    *go_on = on_event(token_event);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Client::Tokenize(absl::string_view text,
                                                      bool add_bos) {
  grpc::ClientContext context;
  PrepareUnary(&context);
  v1::TokenizeRequest request;
  request.set_text(std::string(text));
  request.set_add_bos(add_bos);
  v1::TokenizeResponse response;
  grpc::Status status = stub_->Tokenize(&context, request, &response);
  if (!status.ok()) return Error("Tokenize", status);
  return std::vector<int32_t>(response.ids().begin(), response.ids().end());
}

absl::StatusOr<std::string> Client::Detokenize(
    const std::vector<int32_t>& ids) {
  grpc::ClientContext context;
  PrepareUnary(&context);
  v1::DetokenizeRequest request;
  request.mutable_ids()->Add(ids.begin(), ids.end());
  v1::DetokenizeResponse response;
  grpc::Status status = stub_->Detokenize(&context, request, &response);
  if (!status.ok()) return Error("Detokenize", status);
  return std::move(*response.mutable_text());
}

absl::StatusOr<v1::ModelInfo> Client::GetModelInfo() {
  grpc::ClientContext context;
  PrepareUnary(&context);
  v1::ModelInfo info;
  grpc::Status status =
      stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) return Error("GetModelInfo", status);
  return info;
}

absl::StatusOr<v1::Stats> Client::GetStats() {
  grpc::ClientContext context;
  PrepareUnary(&context);
  v1::Stats stats;
  grpc::Status status =
      stub_->GetStats(&context, v1::GetStatsRequest(), &stats);
  if (!status.ok()) return Error("GetStats", status);
  return stats;
}

absl::StatusOr<HealthStatus> Client::Health(absl::string_view service) {
  grpc::ClientContext context;
  PrepareUnary(&context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(std::string(service));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = health_->Check(&context, request, &response);
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
    return absl::NotFoundError(absl::StrCat("Health on ", target_,
                                            ": unknown service \"",
                                            std::string(service), "\""));
  }
  if (!status.ok()) return Error("Health", status);
  using R = grpc::health::v1::HealthCheckResponse;
  switch (response.status()) {
    case R::SERVING:
      return HealthStatus::kServing;
    case R::NOT_SERVING:
      return HealthStatus::kNotServing;
    case R::SERVICE_UNKNOWN:
      return HealthStatus::kServiceUnknown;
    default:
      return HealthStatus::kUnknown;
  }
}

}  // namespace flashd::client
