// Prompt-to-tokens generation loop over a Forward, a KvCache and a Sampler:
// chunked prefill, then one decode step per token, with timings.
#ifndef FLASHD_COMMON_ENGINE_GENERATOR_H_
#define FLASHD_COMMON_ENGINE_GENERATOR_H_

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "common/engine/forward.h"
#include "common/engine/sampler.h"
#include "common/tokenizer/tokenizer.h"

namespace flashd {

struct GenerateOptions {
  int32_t max_tokens = 256;  // generated tokens, not counting the prompt
  SamplingParams sampling;
  // Also stop when the model emits BOS (llama2.c models end stories so).
  bool stop_at_bos = false;
};

enum class StopReason { kMaxTokens, kEos, kContextFull, kCancelled };

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids, the stop token included
  StopReason reason = StopReason::kMaxTokens;
  int32_t n_prompt = 0;
  double prefill_seconds = 0;  // prompt evaluation
  double first_token_seconds = 0;  // start to first generated token
  double decode_seconds = 0;   // after the first token
};

// Evaluates `prompt` (must be non-empty; usually starts with BOS) from an
// empty `kv`, then samples up to max_tokens tokens. `on_token(id, is_stop)`
// sees each generated token as it is produced; returning false cancels.
absl::StatusOr<GenerateResult> Generate(
    Forward& forward, KvCache& kv, const Tokenizer& tokenizer,
    const std::vector<int32_t>& prompt, const GenerateOptions& options,
    absl::FunctionRef<bool(int32_t, bool)> on_token);

// Evaluates `tokens` in chunks of forward.max_batch() and calls
// on_logits(index, row) for every position's logits when `all_logits`, else
// only for the last. Used by `flashd logits` and by prefill.
absl::Status EvalPrompt(Forward& forward, KvCache& kv,
                        const std::vector<int32_t>& tokens, bool all_logits,
                        absl::FunctionRef<void(int32_t, const float*)> on_logits);

}  // namespace flashd

#endif  // FLASHD_COMMON_ENGINE_GENERATOR_H_
