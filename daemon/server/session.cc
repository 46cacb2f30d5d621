#include "daemon/server/session.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace flashd::server {
namespace {

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

shm::FinishReason RingReason(FinishReason r) {
  switch (r) {
    case FinishReason::kEos:
    case FinishReason::kStopString:
      return shm::FinishReason::kStop;
    case FinishReason::kMaxTokens:
    case FinishReason::kContextFull:
      return shm::FinishReason::kLength;
    case FinishReason::kCancelled:
      return shm::FinishReason::kCancelled;
  }
  return shm::FinishReason::kError;
}

}  // namespace

Session::Session(std::string id, SessionRequest request,
                 std::shared_ptr<EventChannel> channel,
                 std::unique_ptr<shm::TokenRingWriter> ring,
                 Clock::time_point enqueued)
    : id_(std::move(id)),
      request_(std::move(request)),
      channel_(std::move(channel)),
      ring_(std::move(ring)),
      stop_(request_.stop),
      enqueued_(enqueued) {}

int32_t Session::ContextFor(const SessionRequest& request, int32_t n_ctx) {
  const int64_t want =
      static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  return static_cast<int32_t>(std::min<int64_t>(want, n_ctx));
}

void Session::Admit(const ModelConfig& config, int32_t n_ctx, KvType kv_type) {
  kv_ = std::make_unique<KvCache>(config, ContextFor(request_, n_ctx), kv_type);
  sampler_.emplace(request_.sampling, config.n_vocab);
  history_.reserve(static_cast<size_t>(ContextFor(request_, n_ctx)) + 1);
  history_ = request_.prompt;
  prev_ = request_.prompt.back();
  SessionEvent started;
  started.kind = SessionEvent::Kind::kStarted;
  started.session_id = id_;
  started.prompt_tokens = static_cast<int32_t>(request_.prompt.size());
  if (ring_ != nullptr) {
    started.shm_name = ring_->name();
    started.shm_path = ring_->path();
    started.shm_bytes = shm::TokenRingSegmentBytes(ring_->capacity());
    started.shm_session_id = ring_->session_id();
  }
  channel_->Push(std::move(started));
}

void Session::Fail(const absl::Status& status) {
  if (ring_ != nullptr && !ring_->finished()) {
    (void)ring_->Finish(status.code() == absl::StatusCode::kUnavailable
                            ? shm::FinishReason::kShutdown
                            : shm::FinishReason::kError);
  }
  SessionEvent e;
  e.kind = SessionEvent::Kind::kError;
  e.error = status;
  channel_->Push(std::move(e));
}

Forward::Step Session::NextStep(int32_t max_tokens) {
  if (decoding()) {
    in_flight_ = 0;
    return {kv_.get(), absl::MakeConstSpan(&history_.back(), 1)};
  }
  if (prompt_done_ == 0) started_ = Clock::now();
  in_flight_ = std::min<size_t>(std::max(max_tokens, 1),
                                request_.prompt.size() - prompt_done_);
  return {kv_.get(),
          absl::MakeConstSpan(request_.prompt.data() + prompt_done_, in_flight_)};
}

bool Session::CompleteStep(Forward& forward, int32_t row,
                           const Tokenizer& tokenizer, bool stop_at_bos) {
  if (in_flight_ > 0) {
    prompt_done_ += in_flight_;
    in_flight_ = 0;
    if (!decoding()) return false;
    prefilled_ = Clock::now();
  }
  return SampleAndSend(forward, row, tokenizer, stop_at_bos);
}

bool Session::SampleAndSend(Forward& forward, int32_t row,
                            const Tokenizer& tokenizer, bool stop_at_bos) {
  const int32_t next = sampler_->Sample(forward.mutable_logits(row), history_);
  history_.push_back(next);
  const int32_t index = generated_++;
  if (index == 0) first_token_ = Clock::now();
  const bool eos = next == tokenizer.eos_id() ||
                   (stop_at_bos && next == tokenizer.bos_id());
  bool stopped = false;
  std::string text;
  if (!eos) text = stop_.Push(utf8_.Push(tokenizer.TokenBytes(prev_, next)), &stopped);
  prev_ = next;

  std::optional<FinishReason> reason;
  if (eos) {
    reason = FinishReason::kEos;
  } else if (stopped) {
    reason = FinishReason::kStopString;
  } else if (generated_ >= request_.max_tokens) {
    reason = FinishReason::kMaxTokens;
  } else if (kv_->n_past() >= kv_->n_ctx()) {
    reason = FinishReason::kContextFull;  // no room to evaluate `next`
  }
  if (reason.has_value() && !stopped) {
    // The last token carries whatever text was still held back.
    bool tail_stopped = false;
    text += stop_.Push(utf8_.Flush(), &tail_stopped);
    if (tail_stopped) {
      reason = FinishReason::kStopString;
    } else {
      text += stop_.Flush();
    }
  }
  // The token that ends the generation (EOS, or the one completing a stop
  // string) is sent too, so ids match `flashd run --ids`.
  if (!SendToken(next, index, std::move(text))) return true;
  if (!reason.has_value()) return false;
  SendDone(*reason);
  return true;
}

bool Session::SendToken(int32_t id, int32_t index, std::string text) {
  if (ring_ == nullptr) {
    SessionEvent token;
    token.kind = SessionEvent::Kind::kToken;
    token.token_id = id;
    token.index = index;
    token.text = std::move(text);
    channel_->Push(std::move(token));
    return true;
  }
  const absl::Status s = ring_->Push(id, static_cast<uint32_t>(index), text);
  if (s.ok()) return true;
  // RingCapacityFor makes a full ring impossible (it bounds every token's
  // text); a broken one (the client truncated its segment) ends this
  // session only.
  Fail(absl::Status(s.code(), absl::StrCat("session ", id_, ": ", s.message())));
  return false;
}

void Session::SendDone(FinishReason reason) {
  const Clock::time_point now = Clock::now();
  SessionEvent done;
  done.kind = SessionEvent::Kind::kDone;
  done.reason = reason;
  SessionTimings& t = done.timings;
  t.queue_ms = Ms(enqueued_, started_);
  t.prefill_ms = Ms(started_, prefilled_);
  t.time_to_first_token_ms = Ms(enqueued_, first_token_);
  t.decode_ms = Ms(first_token_, now);
  t.prompt_tokens = static_cast<int32_t>(request_.prompt.size());
  t.generated_tokens = generated_;
  if (ring_ != nullptr) (void)ring_->Finish(RingReason(reason));
  completed_ = true;
  channel_->Push(std::move(done));
}

}  // namespace flashd::server
