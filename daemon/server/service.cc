#include "daemon/server/service.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/shm/token_ring_layout.h"
#include "daemon/server/unix_listener.h"

namespace flashd::server {
namespace {

// Texts up to this size are tokenized at once on the gRPC thread (a few
// microseconds); longer ones on the tokenizer thread.
constexpr size_t kInlineTokenizeBytes = 4096;

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

// One Generate stream. Owns nothing but the message in flight and, once
// HoldStream was called, one of its caller's stream slots; deletes itself in
// OnDone (gRPC's rule for callback reactors).
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateEvent>,
                              public EventWriter {
 public:
  GenerateReactor(FlashdService* service, std::shared_ptr<EventChannel> channel)
      : service_(service), channel_(std::move(channel)) {
    service_->StreamOpened();
    channel_->Attach(this);
  }

  // The stream holds a slot of `caller` (PeerCounter), given back in OnDone.
  void HoldStream(std::string caller) { caller_ = std::move(caller); }

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
    if (!caller_.empty()) service->streams().Release(caller_);
    delete this;
    service->StreamClosed();
  }

 private:
  FlashdService* const service_;
  std::shared_ptr<EventChannel> channel_;
  std::string caller_;
  v1::GenerateEvent message_;  // valid until its write completes
};

void PushError(const std::shared_ptr<EventChannel>& channel,
               absl::Status status) {
  SessionEvent error;
  error.kind = SessionEvent::Kind::kError;
  error.error = std::move(status);
  channel->Push(std::move(error));
}

// `text` with every absolute path cut to its file name: what a remote
// caller may see of a message that names server files.
std::string HidePaths(const std::string& text) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    const bool starts = text[i] == '/' &&
                        (i == 0 || text[i - 1] == ' ' || text[i - 1] == '(');
    if (!starts) {
      out.push_back(text[i++]);
      continue;
    }
    size_t end = text.find_first_of(" ),;:", i);
    if (end == std::string::npos) end = text.size();
    const size_t slash = text.rfind('/', end - 1);
    out.append(text, slash + 1, end - slash - 1);
    i = end;
  }
  return out;
}

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
                             const ServiceLimits& limits)
    : model_(model),
      scheduler_(scheduler),
      limits_(limits.request),
      streams_(limits.max_streams_per_uid, "--max-streams-per-uid",
               "Generate streams"),
      started_(std::chrono::steady_clock::now()),
      tokenizer_(limits.max_tokenize_jobs) {
  limits_.n_vocab = model.forward->config().n_vocab;
  limits_.n_ctx = model.n_ctx;
  for (const std::string& piece : model.tokenizer->vocab().pieces) {
    max_piece_bytes_ = std::max(max_piece_bytes_, piece.size());
  }
}

grpc::ServerWriteReactor<v1::GenerateEvent>* FlashdService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto channel = std::make_shared<EventChannel>();
  auto* reactor = new GenerateReactor(this, channel);
  absl::Status status = Refused(context);
  if (status.ok()) status = PrecheckGenerateRequest(*request, limits_);
  if (status.ok() && !generating_.load()) {
    status = absl::UnavailableError(
        "flashd is shutting down and takes no new generations; retry once "
        "it is back");
  }
  const std::string caller = CallerOf(context->peer());
  if (status.ok()) {
    status = streams_.Acquire(caller);
    if (status.ok()) reactor->HoldStream(caller);
  }
  int64_t ring_uid = -1;
  if (status.ok() && request->delivery() == v1::SHARED_MEMORY) {
    absl::StatusOr<uid_t> uid = RingOwner(context);
    status = uid.status();
    if (uid.ok()) ring_uid = *uid;
  }
  if (status.ok()) {
    if (request->input_case() == v1::GenerateRequest::kPrompt &&
        request->prompt().size() > kInlineTokenizeBytes) {
      // Tokenizing takes time: on the tokenizer thread, with a copy of the
      // request (the call's own may go before the job runs).
      status = tokenizer_.Submit(
          caller, [this, copy = *request, ring_uid, channel] {
            if (!channel->cancelled()) StartSession(copy, ring_uid, channel);
          });
    } else {
      StartSession(*request, ring_uid, channel);
    }
  }
  if (!status.ok()) PushError(channel, std::move(status));
  return reactor;
}

void FlashdService::StartSession(const v1::GenerateRequest& request,
                                 int64_t ring_uid,
                                 const std::shared_ptr<EventChannel>& channel) {
  absl::StatusOr<SessionRequest> parsed =
      ParseGenerateRequest(request, *model_.tokenizer, limits_);
  absl::Status status = parsed.status();
  std::unique_ptr<shm::TokenRingWriter> ring;
  if (status.ok() && ring_uid >= 0) {
    absl::StatusOr<std::unique_ptr<shm::TokenRingWriter>> made =
        MakeRing(static_cast<uid_t>(ring_uid), *parsed);
    status = made.status();
    if (made.ok()) ring = std::move(*made);
  }
  if (status.ok()) {
    status = scheduler_->Enqueue(std::move(*parsed), channel, std::move(ring));
  }
  if (!status.ok()) PushError(channel, std::move(status));
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

absl::Status FlashdService::Refused(grpc::CallbackServerContext* context) const {
  if (listener_ == nullptr) return absl::OkStatus();
  return listener_->Refusal(context->peer());
}

absl::StatusOr<uid_t> FlashdService::RingOwner(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<PeerCredentials> cred = PeerOf(context->peer());
  if (!cred.ok()) return cred.status();
  if (context->IsCancelled()) {  // its descriptor may be another's by now
    return absl::CancelledError("the client went away");
  }
  return cred->uid;
}

absl::StatusOr<std::unique_ptr<shm::TokenRingWriter>> FlashdService::MakeRing(
    uid_t uid, const SessionRequest& request) {
  const uint64_t ring_id = next_ring_id_.fetch_add(1);
  absl::StatusOr<std::unique_ptr<shm::TokenRingWriter>> ring =
      shm::TokenRingWriter::Create(model_.shm_dir, shm::MakeTokenRingName(ring_id),
                                   RingCapacityFor(request, model_.n_ctx, max_piece_bytes_),
                                   ring_id, uid);
  if (!ring.ok()) {
    return absl::Status(ring.status().code(),
                        absl::StrCat("shared-memory delivery for uid ", uid,
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
  absl::Status checked = Refused(context);
  if (checked.ok()) checked = CheckTokenizeRequest(*request, limits_);
  if (!checked.ok()) return Answer(context, ToGrpcStatus(checked));
  if (request->text().size() <= kInlineTokenizeBytes) {
    for (int32_t id :
         model_.tokenizer->Encode(request->text(), request->add_bos())) {
      response->add_ids(id);
    }
    return Answer(context, grpc::Status::OK);
  }
  // The request and response stay valid until the reactor finishes.
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Status queued =
      tokenizer_.Submit(CallerOf(context->peer()), [this, request, response,
                                                   reactor] {
        for (int32_t id :
             model_.tokenizer->Encode(request->text(), request->add_bos())) {
          response->add_ids(id);
        }
        reactor->Finish(grpc::Status::OK);
      });
  if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
  return reactor;
}

grpc::ServerUnaryReactor* FlashdService::Detokenize(
    grpc::CallbackServerContext* context, const v1::DetokenizeRequest* request,
    v1::DetokenizeResponse* response) {
  absl::Status checked = Refused(context);
  if (checked.ok()) checked = CheckDetokenizeRequest(*request, limits_);
  if (!checked.ok()) return Answer(context, ToGrpcStatus(checked));
  const std::vector<int32_t> ids(request->ids().begin(), request->ids().end());
  response->set_text(model_.tokenizer->Decode(ids));
  return Answer(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* FlashdService::GetModelInfo(
    grpc::CallbackServerContext* context,
    const v1::GetModelInfoRequest* request, v1::ModelInfo* response) {
  if (absl::Status s = Refused(context); !s.ok()) {
    return Answer(context, ToGrpcStatus(s));
  }
  const ModelConfig& c = model_.forward->config();
  response->set_name(model_.name);
  // A remote caller learns nothing of the server's file system.
  const bool local = PeerOf(context->peer()).ok();
  if (local) response->set_path(model_.path);
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
  response->set_sparsity(local ? model_.sparsity : HidePaths(model_.sparsity));
  return Answer(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* FlashdService::GetStats(
    grpc::CallbackServerContext* context, const v1::GetStatsRequest* request,
    v1::Stats* response) {
  if (absl::Status refused = Refused(context); !refused.ok()) {
    return Answer(context, ToGrpcStatus(refused));
  }
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
    // Remote callers learn nothing of the server's files.
    if (PeerOf(context->peer()).ok()) {
      response->set_cache_segment(model_.source->cache_segment());
      response->set_cache_segment_state(model_.source->cache_segment_state());
    } else {
      response->set_cache_segment_state(
          HidePaths(model_.source->cache_segment_state()));
    }
    response->set_cache_warm_neurons(s.cache_warm_neurons);
  }
  response->set_uptime_s(std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - started_)
                             .count());
  return Answer(context, grpc::Status::OK);
}

}  // namespace flashd::server
