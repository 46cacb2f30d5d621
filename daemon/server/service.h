// The flashd.v1.Flashd service (gRPC callback API). Handlers run on gRPC's
// threads and only parse, validate and enqueue (Generate) or answer from
// immutable state (Tokenize, Detokenize, GetModelInfo) and the scheduler's
// snapshot (GetStats). Proto types stop here: the scheduler sees
// SessionRequest and SessionEvent.
#ifndef FLASHD_DAEMON_SERVER_SERVICE_H_
#define FLASHD_DAEMON_SERVER_SERVICE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/shm/token_ring_writer.h"
#include "daemon/server/peer_counter.h"
#include "daemon/server/request_parser.h"
#include "daemon/server/scheduler.h"
#include "daemon/server/tokenize_worker.h"
#include "daemon/server/unix_listener.h"
#include "flashd/v1/flashd.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace flashd::server {

// absl::Status -> grpc::Status (same code and message).
grpc::Status ToGrpcStatus(const absl::Status& status);

// Records of the token ring of `request` on a server with `n_ctx`
// positions per session and vocabulary pieces of at most `max_piece_bytes`:
// enough that the generation can never fill it (a power of two; at most
// kMaxRingCapacity). Sized by what the context lets the session generate,
// not by max_tokens alone, so a huge max_tokens costs nothing.
uint32_t RingCapacityFor(const SessionRequest& request, int32_t n_ctx,
                         size_t max_piece_bytes);

// What one request and one caller may take (the flags of `flashd serve`).
struct ServiceLimits {
  RequestLimits request;  // n_vocab and n_ctx are the model's
  int32_t max_streams_per_uid = 8;  // --max-streams-per-uid
  int32_t max_tokenize_jobs = 4;    // --max-tokenize-jobs
};

class FlashdService final : public v1::Flashd::CallbackService {
 public:
  // `model` and `scheduler` must outlive the service.
  FlashdService(const ServedModel& model, Scheduler* scheduler,
                const ServiceLimits& limits = {});

  // Streams Started, one TokenEvent per generated token, then Done. The
  // request's size is checked here; a prompt is tokenized and the session
  // enqueued on the tokenizer thread (TokenizeWorker), ids are enqueued at
  // once. A caller holds at most max_streams_per_uid streams. With
  // delivery SHARED_MEMORY the tokens go to a ring created here for the
  // calling uid (from SO_PEERCRED; FAILED_PRECONDITION off the Unix socket)
  // and Started names it. The reactor's OnCancel/OnDone cancels the
  // session; the inference thread frees its KV cache and ring before its
  // next step.
  grpc::ServerWriteReactor<v1::GenerateEvent>* Generate(
      grpc::CallbackServerContext* context,
      const v1::GenerateRequest* request) override;
  // Tokenizes on the tokenizer thread (RESOURCE_EXHAUSTED when its jobs
  // are taken).
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(
      grpc::CallbackServerContext* context,
      const v1::DetokenizeRequest* request,
      v1::DetokenizeResponse* response) override;
  // Server paths (the model file, the cache segment) only for callers on
  // the Unix socket; GetStats likewise.
  grpc::ServerUnaryReactor* GetModelInfo(
      grpc::CallbackServerContext* context,
      const v1::GetModelInfoRequest* request,
      v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::Stats* response) override;

  // Shutdown, first step: Generate calls from now on end at once with
  // UNAVAILABLE; streams already open run on.
  void StopGenerating();
  // Waits until every Generate stream has ended (its reactor's OnDone
  // ran) or `deadline` passes; true when none is left.
  bool WaitForStreams(std::chrono::steady_clock::time_point deadline);

  // Calls on connections that `listener` refused end RESOURCE_EXHAUSTED
  // with its reason. Set before the listener starts; may be null.
  void set_listener(const UnixListener* listener) { listener_ = listener; }

  // Shutdown, after gRPC's: runs the tokenizer jobs still queued and
  // stops its thread.
  void StopTokenizing() { tokenizer_.Stop(); }

  // Generate reactors call these from their constructor and OnDone.
  void StreamOpened();
  void StreamClosed();
  PeerCounter& streams() { return streams_; }

 private:
  // The refusal of the call's connection (see set_listener), or OK.
  absl::Status Refused(grpc::CallbackServerContext* context) const;
  // The uid of the client of the call `context` (Unix socket only).
  absl::StatusOr<uid_t> RingOwner(grpc::CallbackServerContext* context);
  // A ring for `uid`'s session `request`.
  absl::StatusOr<std::unique_ptr<shm::TokenRingWriter>> MakeRing(
      uid_t uid, const SessionRequest& request);
  // Parses (tokenizes) `request`, makes its ring for `ring_uid` (>= 0) and
  // enqueues it; errors end `channel`.
  void StartSession(const v1::GenerateRequest& request, int64_t ring_uid,
                    const std::shared_ptr<EventChannel>& channel);

  const ServedModel& model_;
  Scheduler* scheduler_;
  const UnixListener* listener_ = nullptr;
  RequestLimits limits_;
  PeerCounter streams_;
  const std::chrono::steady_clock::time_point started_;
  std::atomic<uint64_t> next_ring_id_{1};
  size_t max_piece_bytes_ = 0;  // longest vocabulary piece

  std::atomic<bool> generating_{true};  // false after StopGenerating()
  std::mutex streams_mu_;
  std::condition_variable streams_cv_;
  int64_t open_streams_ = 0;  // guarded by streams_mu_
  TokenizeWorker tokenizer_;  // last: its jobs use the members above
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_SERVICE_H_
