// The C++ client of the flashd daemon: one gRPC channel to `flashd serve`
// (a Unix socket by default, TCP when the daemon listens on one) and a
// blocking call per RPC of proto/flashd/v1/flashd.proto plus the standard
// grpc.health.v1 check. Every error is an absl::Status whose code is the
// gRPC code and whose message names the RPC and the target.
#ifndef FLASHD_CLIENT_CLIENT_H_
#define FLASHD_CLIENT_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/credentials.h"
#include "common/shm/token_ring_reader.h"
#include "flashd/v1/flashd.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"

namespace flashd::client {

// Where flashd serve listens unless configured otherwise.
inline constexpr char kDefaultSocket[] = "/run/flashd/flashd.sock";
inline constexpr char kDefaultTarget[] = "unix:/run/flashd/flashd.sock";

// Turns what a user typed into a gRPC target: an absolute or ./relative
// path becomes "unix:PATH"; "unix:…", "unix-abstract:…", "dns:…" and
// "host:port" are kept. Empty means kDefaultTarget.
std::string NormalizeTarget(absl::string_view target);

// Stops a Generate in flight from any thread (e.g. a SIGINT handler
// thread). One token serves one call at a time; Reset() re-arms it.
class CancelToken {
 public:
  // Cancels the call in flight, or the next one to start. Thread-safe.
  void Cancel();
  bool cancelled() const { return cancelled_.load(); }
  // True while a Generate is using this token.
  bool active() const;
  void Reset() { cancelled_.store(false); }

 private:
  friend class Client;
  // Called by Client::Generate around the call; Attach returns false when
  // the token was already cancelled.
  bool Attach(grpc::ClientContext* context);
  void Detach();

  std::atomic<bool> cancelled_{false};
  mutable std::mutex mu_;
  grpc::ClientContext* context_ = nullptr;  // guarded by mu_
};

// Per-client settings.
struct ClientOptions {
  // How long Connect waits for the channel to become ready.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Deadline of each unary call (Tokenize, GetStats, …); Generate has none.
  absl::Duration call_timeout = absl::Seconds(30);
  // TLS and the API key for a daemon's TCP port (see credentials.h).
  SecurityOptions security;
};

// Serving status from grpc.health.v1.
enum class HealthStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
const char* HealthStatusName(HealthStatus status);

// Called with each event of a Generate stream, in order: one Started, then
// TokenEvents, then one Done. Return false to cancel the call. With
// delivery SHARED_MEMORY the TokenEvents are read from the session's ring
// (Started names it) and handed over the same way.
using GenerateCallback = std::function<bool(const v1::GenerateEvent& event)>;

// A connection to one flashd daemon. Thread-safe: calls may run
// concurrently from several threads over the one channel.
class Client {
 public:
  // Creates the channel and waits up to options.connect_timeout for it to
  // connect. UNAVAILABLE (naming the target, and for a Unix socket whether
  // the file is missing or not accessible) when nothing answers; the
  // errors of ChannelCredentialsFor and AuthorizationFor.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      absl::string_view target = kDefaultTarget, ClientOptions options = {});

  const std::string& target() const { return target_; }

  // Runs one Generate and calls on_event for every event until the stream
  // ends. OK only after a Done event. With request.delivery() ==
  // SHARED_MEMORY (Unix-socket targets only) tokens come through a ring in
  // shared memory; its errors (DATA_LOSS, UNAVAILABLE when the daemon
  // died) name the ring. CANCELLED when on_event returned
  // false or `cancel` was cancelled; the server's status otherwise (e.g.
  // INVALID_ARGUMENT naming the field, RESOURCE_EXHAUSTED when full).
  absl::Status Generate(const v1::GenerateRequest& request,
                        const GenerateCallback& on_event,
                        CancelToken* cancel = nullptr);

  // Token ids of `text` (BOS first when add_bos).
  absl::StatusOr<std::vector<int32_t>> Tokenize(absl::string_view text,
                                                bool add_bos = false);
  // Text (UTF-8 bytes) of token ids.
  absl::StatusOr<std::string> Detokenize(const std::vector<int32_t>& ids);
  absl::StatusOr<v1::ModelInfo> GetModelInfo();
  absl::StatusOr<v1::Stats> GetStats();
  // grpc.health.v1 Check of `service` ("" = the whole server). An unknown
  // service is NOT_FOUND.
  absl::StatusOr<HealthStatus> Health(absl::string_view service = "");

 private:
  Client(std::string target, ClientOptions options,
         std::shared_ptr<grpc::Channel> channel);
  // Sets the call deadline on a unary call's context, and the API key.
  void PrepareUnary(grpc::ClientContext* context) const;
  // Adds the API key (if any) to a call's metadata.
  void Authorize(grpc::ClientContext* context) const;
  // Attaches the ring `started` names, unlinks its name, and hands its
  // tokens to on_event until the ring is finished, on_event returns false
  // (*go_on), or `cancel` fires.
  absl::Status ReadRing(const v1::Started& started,
                        const GenerateCallback& on_event, CancelToken* cancel,
                        bool* go_on);
  // The absl::Status for a failed call of `rpc`.
  absl::Status Error(absl::string_view rpc, const grpc::Status& status) const;

  std::string target_;
  ClientOptions options_;
  std::string authorization_;  // "Bearer KEY" or ""
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Flashd::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// Maps a gRPC status code onto the absl code of the same meaning.
absl::StatusCode FromGrpcCode(grpc::StatusCode code);

}  // namespace flashd::client

#endif  // FLASHD_CLIENT_CLIENT_H_
