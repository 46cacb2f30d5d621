// Token sampling: repetition penalty, top-k, top-p, min-p, temperature, and
// a seeded draw; greedy when temperature <= 0. Same seed and settings give
// the same tokens.
#ifndef FLASHD_COMMON_ENGINE_SAMPLER_H_
#define FLASHD_COMMON_ENGINE_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace flashd {

// Defaults follow llama.cpp's command-line defaults.
struct SamplingParams {
  float temperature = 0.8f;     // <= 0: greedy (argmax)
  int32_t top_k = 40;           // <= 0: off
  float top_p = 0.95f;          // >= 1: off
  float min_p = 0.05f;          // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off; > 1 discourages repeats
  int32_t repeat_last_n = 64;   // how many recent tokens the penalty sees
  uint64_t seed = 0;

  // INVALID_ARGUMENT naming the field when a value is out of range.
  absl::Status Validate() const;
};

class Sampler {
 public:
  // Preallocates candidate storage for n_vocab tokens.
  Sampler(const SamplingParams& params, int32_t n_vocab);

  // Picks the next token from `logits` (n_vocab floats; modified in place by
  // the penalty). `history` is the sequence so far (prompt + generated).
  int32_t Sample(float* logits, absl::Span<const int32_t> history);

  const SamplingParams& params() const { return params_; }

 private:
  struct Candidate {
    float logit;
    int32_t id;
  };
  SamplingParams params_;
  int32_t n_vocab_;
  std::mt19937_64 rng_;
  std::vector<Candidate> candidates_;
  std::vector<float> probs_;
};

// Index of the largest value (first on ties).
int32_t ArgMax(const float* values, int32_t n);

}  // namespace flashd

#endif  // FLASHD_COMMON_ENGINE_SAMPLER_H_
