#include "common/engine/generator.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace flashd {
namespace {
double Seconds(std::chrono::steady_clock::time_point a,
               std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

absl::Status EvalPrompt(
    Forward& forward, KvCache& kv, const std::vector<int32_t>& tokens,
    bool all_logits,
    absl::FunctionRef<void(int32_t, const float*)> on_logits) {
  const int32_t n = static_cast<int32_t>(tokens.size());
  for (int32_t i = 0; i < n; i += forward.max_batch()) {
    const int32_t m = std::min(forward.max_batch(), n - i);
    const bool last_chunk = i + m == n;
    absl::Status s = forward.Eval(
        kv, absl::MakeConstSpan(tokens.data() + i, m), all_logits);
    if (!s.ok()) return s;
    if (all_logits) {
      for (int32_t j = 0; j < m; ++j) on_logits(i + j, forward.logits(j));
    } else if (last_chunk) {
      on_logits(n - 1, forward.logits(0));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerateResult> Generate(
    Forward& forward, KvCache& kv, const Tokenizer& tokenizer,
    const std::vector<int32_t>& prompt, const GenerateOptions& options,
    absl::FunctionRef<bool(int32_t, bool)> on_token) {
  if (prompt.empty()) {
    return absl::InvalidArgumentError("prompt has no tokens");
  }
  if (absl::Status s = options.sampling.Validate(); !s.ok()) return s;
  const int32_t ctx = std::min(forward.n_ctx(), kv.n_ctx());
  if (static_cast<int32_t>(prompt.size()) >= ctx) {
    return absl::OutOfRangeError(absl::StrCat(
        "prompt of ", prompt.size(), " tokens does not fit the context of ",
        ctx, " positions"));
  }
  GenerateResult result;
  result.n_prompt = static_cast<int32_t>(prompt.size());
  result.tokens.reserve(options.max_tokens);
  Sampler sampler(options.sampling, forward.config().n_vocab);
  std::vector<int32_t> history = prompt;
  history.reserve(prompt.size() + options.max_tokens);

  kv.Clear();
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status s = EvalPrompt(forward, kv, prompt, false,
                              [](int32_t, const float*) {});
  if (!s.ok()) return s;
  const auto t_prefill = std::chrono::steady_clock::now();
  result.prefill_seconds = Seconds(t0, t_prefill);

  auto t_first = t_prefill;
  for (int32_t i = 0; i < options.max_tokens; ++i) {
    const int32_t next = sampler.Sample(forward.mutable_logits(0), history);
    if (i == 0) {
      t_first = std::chrono::steady_clock::now();
      result.first_token_seconds = Seconds(t0, t_first);
    }
    result.tokens.push_back(next);
    history.push_back(next);
    const bool eos = next == tokenizer.eos_id() ||
                     (options.stop_at_bos && next == tokenizer.bos_id());
    if (!on_token(next, eos)) {
      result.reason = StopReason::kCancelled;
      break;
    }
    if (eos) {
      result.reason = StopReason::kEos;
      break;
    }
    if (i + 1 == options.max_tokens) break;
    if (kv.n_past() >= ctx) {
      result.reason = StopReason::kContextFull;
      break;
    }
    s = forward.Eval(kv, absl::MakeConstSpan(&next, 1), false);
    if (!s.ok()) return s;
  }
  result.decode_seconds = Seconds(t_first, std::chrono::steady_clock::now());
  return result;
}

}  // namespace flashd
