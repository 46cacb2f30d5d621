#include "common/sparsity/calibration.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/engine/generator.h"
#include "common/engine/kv_cache.h"

namespace flashd {
namespace {

constexpr int kBinShift = 15;  // 32-bit float bits >> 15 = 16-bit key
constexpr int kBins = 1 << 16;

uint32_t BinOf(float v) {
  return (std::bit_cast<uint32_t>(v) & 0x7FFFFFFFu) >> kBinShift;
}
float BinLower(uint32_t b) { return std::bit_cast<float>(b << kBinShift); }
float BinUpper(uint32_t b) {
  // The largest finite bins end where the next begins; inf/NaN bins have
  // no width.
  const float lo = BinLower(b);
  if (!std::isfinite(lo)) return lo;
  const float hi = std::bit_cast<float>((b + 1) << kBinShift);
  return std::isfinite(hi) ? hi : std::numeric_limits<float>::max();
}

int32_t LongestSequence(const Sequences& seqs) {
  size_t n = 0;
  for (const auto& s : seqs) n = std::max(n, s.size());
  return static_cast<int32_t>(n);
}

}  // namespace

int64_t CountTokens(const Sequences& seqs) {
  int64_t n = 0;
  for (const auto& s : seqs) n += static_cast<int64_t>(s.size());
  return n;
}

absl::StatusOr<Sequences> SampleText(const Model& model, Forward& forward,
                                     const Tokenizer& tokenizer,
                                     int64_t n_tokens, int32_t max_len,
                                     uint64_t seed) {
  max_len = std::min(max_len, forward.n_ctx());
  if (max_len < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequences of at most ", max_len, " tokens cannot hold a target"));
  }
  KvCache kv(model.config, max_len, DefaultKvType(model));
  Sequences seqs;
  int64_t total = 0;
  for (uint64_t i = 0; n_tokens - total >= 2; ++i) {
    GenerateOptions options;
    options.max_tokens = static_cast<int32_t>(
        std::min<int64_t>(max_len - 1, n_tokens - total - 1));
    options.sampling.temperature = 1.0f;
    options.sampling.top_k = 0;
    options.sampling.top_p = 1.0f;
    options.sampling.min_p = 0.0f;
    options.sampling.seed = seed + i;
    options.stop_at_bos = true;
    const std::vector<int32_t> prompt = {tokenizer.bos_id()};
    absl::StatusOr<GenerateResult> r =
        Generate(forward, kv, tokenizer, prompt, options,
                 [](int32_t, bool) { return true; });
    if (!r.ok()) return r.status();
    std::vector<int32_t> seq = prompt;
    seq.insert(seq.end(), r->tokens.begin(), r->tokens.end());
    total += static_cast<int64_t>(seq.size());
    seqs.push_back(std::move(seq));
  }
  return seqs;
}

absl::StatusOr<Sequences> TextSequences(const Tokenizer& tokenizer,
                                        const std::string& text,
                                        int64_t n_tokens, int32_t max_len) {
  if (max_len < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequences of at most ", max_len, " tokens cannot hold a target"));
  }
  const std::vector<int32_t> ids = tokenizer.Encode(text, true);
  Sequences seqs;
  int64_t total = 0;
  size_t next = 0;
  while (total < n_tokens && next < ids.size()) {
    std::vector<int32_t> seq;
    if (next > 0) seq.push_back(tokenizer.bos_id());
    const int64_t room =
        std::min<int64_t>(max_len, n_tokens - total) - int64_t(seq.size());
    const size_t take = std::min<size_t>(room, ids.size() - next);
    seq.insert(seq.end(), ids.begin() + next, ids.begin() + next + take);
    next += take;
    total += static_cast<int64_t>(seq.size());
    if (seq.size() >= 2) seqs.push_back(std::move(seq));
  }
  if (total < n_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("the text has ", ids.size(), " tokens (", total,
                     " in sequences of ", max_len, "); ", n_tokens,
                     " were asked for: give more text or fewer tokens"));
  }
  return seqs;
}

ScoreHistogram::ScoreHistogram() : bins_(kBins, 0) {}

void ScoreHistogram::Add(const float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) ++bins_[BinOf(v[i])];
  count_ += static_cast<uint64_t>(n);
}

float ScoreHistogram::KeepThreshold(double keep) const {
  if (keep >= 1.0 || count_ == 0)
    return -std::numeric_limits<float>::infinity();
  if (keep <= 0.0) return std::numeric_limits<float>::infinity();
  const double target = keep * static_cast<double>(count_);
  double above = 0;  // values in bins above b
  for (int b = kBins - 1; b >= 0; --b) {
    if (bins_[b] == 0) continue;
    const double in_bin = static_cast<double>(bins_[b]);
    if (above + in_bin >= target) {
      // Values assumed spread evenly over [lower, upper): keep the top
      // (target - above) of them.
      const double r = (target - above) / in_bin;
      const double lo = BinLower(b), hi = BinUpper(b);
      return static_cast<float>(hi - r * (hi - lo));
    }
    above += in_bin;
  }
  return -std::numeric_limits<float>::infinity();
}

double ScoreHistogram::FractionAtLeast(float t) const {
  if (count_ == 0) return 0;
  if (!(t > 0)) return 1.0;  // every |value| >= 0
  const uint32_t tb = BinOf(t);
  double n = 0;
  for (uint32_t b = tb + 1; b < kBins; ++b) n += static_cast<double>(bins_[b]);
  const double lo = BinLower(tb), hi = BinUpper(tb);
  const double part = hi > lo ? (hi - t) / (hi - lo) : 1.0;
  n += part * static_cast<double>(bins_[tb]);
  return n / static_cast<double>(count_);
}

CalibrationRecorder::CalibrationRecorder(const Predictor* predictor,
                                         ThreadPool* pool, int32_t max_batch)
    : predictor_(predictor),
      pool_(pool),
      scratch_(*predictor, max_batch),
      scores_(static_cast<size_t>(max_batch) * predictor->n_ff()),
      predicted_(predictor->n_layer()),
      oracle_(predictor->n_layer()) {}

void CalibrationRecorder::Observe(int32_t layer, const float* xb,
                                  const float* act, const float*,
                                  int32_t n_tokens) {
  const int64_t n = n_tokens * predictor_->n_ff();
  predictor_->Score(layer, xb, n_tokens, scratch_, pool_, scores_.data());
  predicted_[layer].Add(scores_.data(), n);
  oracle_[layer].Add(act, n);  // Add takes |act|
}

absl::StatusOr<std::unique_ptr<SparsityProfile>> Calibrate(
    const Model& model, Forward& forward, ThreadPool* pool,
    const Sequences& calib, const CalibrateOptions& options) {
  if (options.keep.empty()) {
    return absl::InvalidArgumentError("no keep fractions to calibrate");
  }
  for (size_t i = 0; i < options.keep.size(); ++i) {
    const double k = options.keep[i];
    if (!(k > 0.0 && k <= 1.0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("keep fraction ", k, " is outside (0, 1]"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (std::fabs(options.keep[j] - k) < 1e-6) {
        return absl::InvalidArgumentError(
            absl::StrCat("keep fraction ", k, " is listed twice"));
      }
    }
  }
  if (CountTokens(calib) == 0) {
    return absl::InvalidArgumentError("the calibration text has no tokens");
  }
  absl::StatusOr<Predictor> predictor =
      Predictor::FromModel(model, options.variant, pool);
  if (!predictor.ok()) return predictor.status();

  CalibrationRecorder recorder(&*predictor, pool, forward.max_batch());
  KvCache kv(model.config, LongestSequence(calib), DefaultKvType(model));
  forward.set_observer(&recorder);
  for (const auto& seq : calib) {
    kv.Clear();
    absl::Status s =
        EvalPrompt(forward, kv, seq, false, [](int32_t, const float*) {});
    if (!s.ok()) {
      forward.set_observer(nullptr);
      return s;
    }
  }
  forward.set_observer(nullptr);

  std::vector<SparsitySetting> settings;
  for (double keep : options.keep) {
    SparsitySetting s;
    s.keep = keep;
    for (int32_t l = 0; l < model.config.n_layer; ++l) {
      s.thresholds.push_back(recorder.predicted(l).KeepThreshold(keep));
      s.oracle_thresholds.push_back(recorder.oracle(l).KeepThreshold(keep));
    }
    settings.push_back(std::move(s));
  }
  auto profile = std::make_unique<SparsityProfile>(
      std::move(*predictor), std::move(settings), options.source_identity);
  profile->set_token_counts(CountTokens(calib), 0);
  return profile;
}

}  // namespace flashd
