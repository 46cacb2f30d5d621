// One generation request on the inference thread: its own KV cache,
// sampler, UTF-8 and stop-string state, and the channel its events go to.
// Only the inference thread touches a Session after it is enqueued.
#ifndef FLASHD_DAEMON_SERVER_SESSION_H_
#define FLASHD_DAEMON_SERVER_SESSION_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/engine/forward.h"
#include "common/engine/kv_cache.h"
#include "common/engine/sampler.h"
#include "common/shm/token_ring_writer.h"
#include "common/tokenizer/tokenizer.h"
#include "daemon/server/event_channel.h"
#include "daemon/server/stop_matcher.h"

namespace flashd::server {

// A validated request in native types (the service layer builds it).
struct SessionRequest {
  std::vector<int32_t> prompt;  // non-empty, every id in the vocabulary
  SamplingParams sampling;      // validated
  int32_t max_tokens = 256;     // > 0
  std::vector<std::string> stop;  // non-empty strings
  bool shared_memory = false;   // tokens go to a ring, not the stream
};

using Clock = std::chrono::steady_clock;

// With a token ring (shared-memory delivery) the tokens go to the ring and
// the channel carries only Started (naming the ring) and Done or the error;
// the ring is finished before Done is sent; the scheduler frees it with the
// session, or keeps it a little longer for a client yet to attach.
class Session {
 public:
  Session(std::string id, SessionRequest request,
          std::shared_ptr<EventChannel> channel,
          std::unique_ptr<shm::TokenRingWriter> ring,
          Clock::time_point enqueued);

  // KV positions this request can use: prompt + max_tokens, at most n_ctx.
  static int32_t ContextFor(const SessionRequest& request, int32_t n_ctx);

  // At admission, on the inference thread: allocates the KV cache of
  // ContextFor(n_ctx) positions and sends Started.
  void Admit(const ModelConfig& config, int32_t n_ctx, KvType kv_type);

  // The session's next step, to run in a Forward::EvalSteps pass with
  // other sessions' steps: the next prompt chunk (at most `max_tokens`
  // tokens, >= 1) or, once the prompt is evaluated, the last sampled token.
  Forward::Step NextStep(int32_t max_tokens);
  // Whether NextStep is one decoded token.
  bool decoding() const { return prompt_done_ == request_.prompt.size(); }
  // After EvalSteps ran NextStep() as step `row` successfully: advances the
  // prompt, and once it is evaluated samples and sends the next token.
  // Returns true when the session has ended (Done or an error was sent).
  // `stop_at_bos`: BOS also ends the generation (llama2.c models end
  // stories with it).
  bool CompleteStep(Forward& forward, int32_t row, const Tokenizer& tokenizer,
                    bool stop_at_bos);

  // Done was sent: the generation ran to its end.
  bool completed() const { return completed_; }
  // The client went away or cancelled: the caller should free the session.
  bool cancelled() const { return channel_->cancelled(); }
  // Sends an error as the stream's final status (e.g. on shutdown).
  void Fail(const absl::Status& status);

  // The session's token ring, for the scheduler to keep until the client
  // has attached (null without shared-memory delivery).
  std::unique_ptr<shm::TokenRingWriter> TakeRing() { return std::move(ring_); }

  const std::string& id() const { return id_; }
  int32_t generated() const { return generated_; }
  const SessionRequest& request() const { return request_; }

 private:
  // Samples after the prompt or a decoded token and sends the token (and
  // Done when it is the last). Returns true when the session ended.
  bool SampleAndSend(Forward& forward, int32_t row, const Tokenizer& tokenizer,
                     bool stop_at_bos);
  void SendDone(FinishReason reason);
  // Sends one token to the ring or the channel; false (after failing the
  // session) when the ring cannot take it.
  bool SendToken(int32_t id, int32_t index, std::string text);

  const std::string id_;
  const SessionRequest request_;
  std::shared_ptr<EventChannel> channel_;
  std::unique_ptr<shm::TokenRingWriter> ring_;  // null: tokens in the stream
  std::unique_ptr<KvCache> kv_;
  std::optional<Sampler> sampler_;
  std::vector<int32_t> history_;  // prompt + generated
  Utf8Streamer utf8_;
  StopMatcher stop_;
  size_t prompt_done_ = 0;  // prompt tokens evaluated
  size_t in_flight_ = 0;    // prompt tokens of the step NextStep gave
  int32_t prev_ = 0;        // last token (for TokenBytes' leading space)
  int32_t generated_ = 0;
  bool completed_ = false;

  Clock::time_point enqueued_;
  Clock::time_point started_;  // first forward pass
  Clock::time_point prefilled_;
  Clock::time_point first_token_;
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_SESSION_H_
