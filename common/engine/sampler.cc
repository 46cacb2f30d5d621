#include "common/engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace flashd {

absl::Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature > 100.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature ", temperature, " must be finite and <= 100"));
  }
  if (!(top_p > 0.0f) || top_p > 1.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p ", top_p, " must be in (0, 1]"));
  }
  if (!(min_p >= 0.0f) || min_p > 1.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_p ", min_p, " must be in [0, 1]"));
  }
  if (!(repeat_penalty > 0.0f) || repeat_penalty > 10.0f) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repeat_penalty ", repeat_penalty, " must be in (0, 10]"));
  }
  if (repeat_last_n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("repeat_last_n ", repeat_last_n, " must be >= 0"));
  }
  return absl::OkStatus();
}

int32_t ArgMax(const float* values, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; ++i) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

Sampler::Sampler(const SamplingParams& params, int32_t n_vocab)
    : params_(params), n_vocab_(n_vocab), rng_(params.seed) {
  candidates_.reserve(n_vocab);
  probs_.reserve(n_vocab);
}

int32_t Sampler::Sample(float* logits, absl::Span<const int32_t> history) {
  // Repetition penalty (llama.cpp's rule: divide positive logits, multiply
  // negative ones), once per distinct recent token.
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n > 0) {
    const size_t n = std::min<size_t>(history.size(), params_.repeat_last_n);
    for (size_t i = history.size() - n; i < history.size(); ++i) {
      const int32_t id = history[i];
      if (id < 0 || id >= n_vocab_) continue;
      bool seen = false;
      for (size_t j = history.size() - n; j < i; ++j) seen |= history[j] == id;
      if (seen) continue;
      float& l = logits[id];
      l = l > 0 ? l / params_.repeat_penalty : l * params_.repeat_penalty;
    }
  }
  if (params_.temperature <= 0.0f) return ArgMax(logits, n_vocab_);

  // Candidates sorted by logit, cut by top-k.
  candidates_.clear();
  for (int32_t i = 0; i < n_vocab_; ++i) candidates_.push_back({logits[i], i});
  auto by_logit = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = params_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep,
                      candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);

  // Probabilities at temperature 1 for the top-p / min-p cuts (llama.cpp
  // applies them before temperature in its default chain).
  auto softmax = [&](float temp) {
    probs_.resize(candidates_.size());
    const float max_l = candidates_[0].logit;
    double sum = 0.0;
    for (size_t i = 0; i < candidates_.size(); ++i) {
      probs_[i] = std::exp((candidates_[i].logit - max_l) / temp);
      sum += probs_[i];
    }
    for (float& p : probs_) p = static_cast<float>(p / sum);
  };
  softmax(1.0f);
  if (params_.top_p < 1.0f) {
    double cum = 0.0;
    size_t cut = candidates_.size();
    for (size_t i = 0; i < candidates_.size(); ++i) {
      cum += probs_[i];
      if (cum >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    candidates_.resize(cut);
    probs_.resize(cut);
  }
  if (params_.min_p > 0.0f) {
    const float threshold = probs_[0] * params_.min_p;
    size_t cut = 1;
    while (cut < probs_.size() && probs_[cut] >= threshold) ++cut;
    candidates_.resize(cut);
  }
  softmax(params_.temperature);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const double r = uniform(rng_);
  double cum = 0.0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    cum += probs_[i];
    if (r < cum) return candidates_[i].id;
  }
  return candidates_.back().id;
}

}  // namespace flashd
