#include "daemon/server/service.h"

#include <algorithm>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/shm/token_ring_layout.h"
#include "daemon/server/unix_listener.h"
#include <utility>
#include <vector>

namespace flashd::server {
namespace {

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kMaxTokens: return v1::MAX_TOKENS;
    case FinishReason::kEos: return v1::EOS;
    case FinishReason::kStopString: return v1::STOP_STRING;
    case FinishReason::kContextFull: return v1::CONTEXT_FULL;
    case FinishReason::kCancelled: return v1::CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void ToProto(const SessionEvent& e, v1::GenerateEvent* out) {
  out->Clear();
  switch (e.kind) {
    case SessionEvent::Kind::kStarted: {
      v1::Started* s = out->mutable_started();
      s->set_session_id(e.session_id);
      s->set_prompt_tokens(e.prompt_tokens);
      if (!e.shm_name.empty()) {
        s->set_shm_name(e.shm_name);
        s->set_shm_path(e.shm_path);
        s->set_shm_bytes(e.shm_bytes);
        s->set_shm_session_id(e.shm_session_id);
      }
      break;
    }
    case SessionEvent::Kind::kToken: {
      v1::TokenEvent* t = out->mutable_token();
      t->set_id(e.token_id);
      t->set_text(e.text);
      t->set_index(e.index);
      break;
    }
    case SessionEvent::Kind::kDone: {
      v1::Done* d = out->mutable_done();
      d->set_reason(ToProto(e.reason));
      v1::Timings* t = d->mutable_timings();
      t->set_queue_ms(e.timings.queue_ms);
      t->set_prefill_ms(e.timings.prefill_ms);
      t->set_time_to_first_token_ms(e.timings.time_to_first_token_ms);
      t->set_decode_ms(e.timings.decode_ms);
      t->set_prompt_tokens(e.timings.prompt_tokens);
      t->set_generated_tokens(e.timings.generated_tokens);
      break;
    }
    case SessionEvent::Kind::kError:
      break;  // becomes the stream's status
  }
}

// One Generate stream. Owns nothing but the message in flight; deletes
// itself in OnDone (gRPC's rule for callback reactors).
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateEvent>,
                              public EventWriter {
 public:
  GenerateReactor(FlashdService* service, std::shared_ptr<EventChannel> channel)
      : service_(service), channel_(std::move(channel)) {
    service_->StreamOpened();
    channel_->Attach(this);
  }

  // EventWriter: called by the channel, one at a time.
  void StartEvent(const SessionEvent& event) override {
    if (event.kind == SessionEvent::Kind::kError) {
      Finish(ToGrpcStatus(event.error));
      return;
    }
    ToProto(event, &message_);
    if (event.last()) {
      StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      StartWrite(&message_);
    }
  }
  void FinishCancelled() override {
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "generation cancelled"));
  }

  // gRPC reactions.
  void OnWriteDone(bool ok) override { channel_->WriteDone(ok); }
  void OnCancel() override { channel_->Cancel(); }
  void OnDone() override {
    channel_->Detach();  // the session sees cancelled() and is freed
    FlashdService* service = service_;
    delete this;
    service->StreamClosed();
  }

 private:
  FlashdService* const service_;
  std::shared_ptr<EventChannel> channel_;
  v1::GenerateEvent message_;  // valid until its write completes
};

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                 const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

FlashdService::FlashdService(const ServedModel& model, Scheduler* scheduler,
                             int32_t default_max_tokens)
    : model_(model),
      scheduler_(scheduler),
      started_(std::chrono::steady_clock::now()) {
  limits_.n_vocab = model.forward->config().n_vocab;
  limits_.n_ctx = model.n_ctx;
  limits_.default_max_tokens = default_max_tokens;
  for (const std::string& piece : model.tokenizer->vocab().pieces) {
    max_piece_bytes_ = std::max(max_piece_bytes_, piece.size());
  }
}

grpc::ServerWriteReactor<v1::GenerateEvent>* FlashdService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto channel = std::make_shared<EventChannel>();
  auto* reactor = new GenerateReactor(this, channel);
  absl::StatusOr<SessionRequest> parsed =
      ParseGenerateRequest(*request, *model_.tokenizer, limits_);
  absl::Status status = parsed.status();
  if (status.ok() && !generating_.load()) {
    status = absl::UnavailableError(
        "flashd is shutting down and takes no new generations; retry once "
        "it is back");
  }
  std::unique_ptr<shm::TokenRingWriter> ring;
  if (status.ok() && parsed->shared_memory) {
    absl::StatusOr<std::unique_ptr<shm::TokenRingWriter>> made =
        MakeRing(context, *parsed);
    status = made.status();
    if (made.ok()) ring = std::move(*made);
  }
  if (status.ok()) {
    status = scheduler_->Enqueue(std::move(*parsed), channel, std::move(ring));
  }
  if (!status.ok()) {
    SessionEvent error;
    error.kind = SessionEvent::Kind::kError;
    error.error = status;
    channel->Push(std::move(error));
  }
  return reactor;
}

void FlashdService::StopGenerating() { generating_.store(false); }

bool FlashdService::WaitForStreams(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(streams_mu_);
  return streams_cv_.wait_until(lock, deadline, [&] { return open_streams_ == 0; });
}

void FlashdService::StreamOpened() {
  std::lock_guard<std::mutex> lock(streams_mu_);
  ++open_streams_;
}

void FlashdService::StreamClosed() {
  std::lock_guard<std::mutex> lock(streams_mu_);
  if (--open_streams_ == 0) streams_cv_.notify_all();
}

absl::StatusOr<std::unique_ptr<shm::TokenRingWriter>> FlashdService::MakeRing(
    grpc::CallbackServerContext* context, const SessionRequest& request) {
  absl::StatusOr<PeerCredentials> cred = PeerOf(context->peer());
  if (!cred.ok()) return cred.status();
  if (context->IsCancelled()) {  // its descriptor may be another's by now
    return absl::CancelledError("the client went away");
  }
  const uint64_t ring_id = next_ring_id_.fetch_add(1);
  absl::StatusOr<std::unique_ptr<shm::TokenRingWriter>> ring =
      shm::TokenRingWriter::Create(model_.shm_dir, shm::MakeTokenRingName(ring_id),
                                   RingCapacityFor(request, model_.n_ctx, max_piece_bytes_),
                                   ring_id, cred->uid);
  if (!ring.ok()) {
    return absl::Status(ring.status().code(),
                        absl::StrCat("shared-memory delivery for uid ", cred->uid,
                                     ": ", ring.status().message()));
  }
  return ring;
}

uint32_t RingCapacityFor(const SessionRequest& request, int32_t n_ctx,
                         size_t max_piece_bytes) {
  // Tokens the session can produce: max_tokens, and no more than its
  // context holds (the last sampled token is not evaluated).
  const int64_t room = int64_t{n_ctx} - static_cast<int64_t>(request.prompt.size()) + 1;
  const int64_t tokens = std::max<int64_t>(
      1, std::min<int64_t>(request.max_tokens, room));
  // A token's text is at most its piece, plus 3 bytes of a UTF-8 character
  // held back before it, plus text held back for a stop string.
  size_t longest_stop = 0;
  for (const std::string& s : request.stop) {
    longest_stop = std::max(longest_stop, s.size());
  }
  const uint64_t want =
      static_cast<uint64_t>(tokens) *
      shm::RecordsForText(max_piece_bytes + 3 + longest_stop);
  uint32_t capacity = shm::kMinRingCapacity;
  while (capacity < want && capacity < shm::kMaxRingCapacity) capacity *= 2;
  return capacity;
}

grpc::ServerUnaryReactor* FlashdService::Tokenize(
    grpc::CallbackServerContext* context, const v1::TokenizeRequest* request,
    v1::TokenizeResponse* response) {
  for (int32_t id : model_.tokenizer->Encode(request->text(), request->add_bos())) {
    response->add_ids(id);
  }
  return Answer(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* FlashdService::Detokenize(
    grpc::CallbackServerContext* context, const v1::DetokenizeRequest* request,
    v1::DetokenizeResponse* response) {
  const std::vector<int32_t> ids(request->ids().begin(), request->ids().end());
  if (absl::Status s = CheckIds(ids, limits_.n_vocab, "ids"); !s.ok()) {
    return Answer(context, ToGrpcStatus(s));
  }
  response->set_text(model_.tokenizer->Decode(ids));
  return Answer(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* FlashdService::GetModelInfo(
    grpc::CallbackServerContext* context,
    const v1::GetModelInfoRequest* request, v1::ModelInfo* response) {
  const ModelConfig& c = model_.forward->config();
  response->set_name(model_.name);
  response->set_path(model_.path);
  response->set_type(model_.type);
  response->set_mode(model_.mode);
  response->set_n_vocab(c.n_vocab);
  response->set_n_embd(c.n_embd);
  response->set_n_ff(c.n_ff);
  response->set_n_layer(c.n_layer);
  response->set_n_head(c.n_head);
  response->set_n_head_kv(c.n_head_kv);
  response->set_n_ctx(model_.n_ctx);
  response->set_dram_budget_bytes(model_.dram_budget);
  response->set_sparsity(model_.sparsity);
  return Answer(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* FlashdService::GetStats(
    grpc::CallbackServerContext* context, const v1::GetStatsRequest* request,
    v1::Stats* response) {
  const SchedulerStats s = scheduler_->Stats();
  response->set_sessions_active(s.sessions_active);
  response->set_sessions_queued(s.sessions_queued);
  response->set_sessions_total(s.sessions_total);
  response->set_tokens_generated(s.tokens_generated);
  response->set_kv_bytes_in_use(s.kv_bytes_in_use);
  response->set_kv_bytes_limit(s.kv_bytes_limit);
  response->set_cache_bytes(s.cache_bytes);
  response->set_cache_hit_rate(s.cache_hit_rate);
  response->set_flash_bytes_per_token(s.flash_bytes_per_token);
  response->set_read_mb_s(s.read_mb_s);
  response->set_shm_segments(shm::TokenRingWriter::live_rings());
  if (model_.shm_dir != nullptr) {
    response->set_shm_dir(model_.shm_dir->path());
    response->set_shm_dir_state(model_.shm_dir->note());
  }
  if (model_.source != nullptr) {
    response->set_cache_segment(model_.source->cache_segment());
    response->set_cache_segment_state(model_.source->cache_segment_state());
    response->set_cache_warm_neurons(s.cache_warm_neurons);
  }
  response->set_uptime_s(std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - started_)
                             .count());
  return Answer(context, grpc::Status::OK);
}

}  // namespace flashd::server
