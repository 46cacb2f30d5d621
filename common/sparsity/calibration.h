// Calibration: text to calibrate on (sampled from the model or from a
// file), activation recording over the dense forward pass, and per-layer
// thresholds that keep a target fraction of neurons (CATS/TEAL style).
#ifndef FLASHD_COMMON_SPARSITY_CALIBRATION_H_
#define FLASHD_COMMON_SPARSITY_CALIBRATION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/thread_pool.h"
#include "common/engine/forward.h"
#include "common/engine/weight_source.h"
#include "common/model/model.h"
#include "common/sparsity/predictor.h"
#include "common/sparsity/sparsity_file.h"
#include "common/tokenizer/tokenizer.h"

namespace flashd {

// Token sequences, each starting with BOS, evaluated from an empty cache.
using Sequences = std::vector<std::vector<int32_t>>;

// Total tokens (positions) of `seqs`.
int64_t CountTokens(const Sequences& seqs);

// Samples text from the model itself: sequences from BOS at temperature 1
// (no top-k/top-p/min-p) with a fixed `seed` (sequence i uses seed + i),
// each at most `max_len` tokens (BOS included), ending early at EOS (and
// at BOS, which llama2.c models emit between stories), until n_tokens in
// total (n_tokens - 1 when only a lone BOS would fit). `forward` must run
// `model`, resident, with no selector or observer set.
absl::StatusOr<Sequences> SampleText(const Model& model, Forward& forward,
                                     const Tokenizer& tokenizer,
                                     int64_t n_tokens, int32_t max_len,
                                     uint64_t seed);

// Tokenizes `text` (BOS first) and splits it into sequences of at most
// `max_len` tokens, each starting with BOS, up to n_tokens in total.
// INVALID_ARGUMENT when the text has fewer than n_tokens tokens (saying how
// many it has).
absl::StatusOr<Sequences> TextSequences(const Tokenizer& tokenizer,
                                        const std::string& text,
                                        int64_t n_tokens, int32_t max_len);

// Histogram of non-negative scores keyed by the top 16 bits of their float
// representation (8 exponent + 8 mantissa bits: bins 0.4% wide relative to
// the value), so quantiles come from one streaming pass in fixed memory.
class ScoreHistogram {
 public:
  ScoreHistogram();
  // Adds |v[i]| for i < n.
  void Add(const float* v, int64_t n);
  uint64_t count() const { return count_; }
  // A threshold t such that about a fraction `keep` of the added values
  // are >= t (linear within the bin that straddles it). keep >= 1 gives
  // -infinity (keep all); keep <= 0 gives +infinity.
  float KeepThreshold(double keep) const;
  // The fraction of added values >= t (to bin resolution; for tests).
  double FractionAtLeast(float t) const;

 private:
  std::vector<uint64_t> bins_;  // 1 << 16
  uint64_t count_ = 0;
};

// Records, per layer, histograms of predictor scores and of the exact
// |silu(gate)·up| as the dense forward pass computes them (an FfnObserver).
// Buffers sized for `max_batch` tokens; Observe allocates nothing.
class CalibrationRecorder : public FfnObserver {
 public:
  CalibrationRecorder(const Predictor* predictor, ThreadPool* pool,
                      int32_t max_batch);
  void Observe(int32_t layer, const float* xb, const float* act,
               const float* up, int32_t n_tokens) override;

  const ScoreHistogram& predicted(int32_t layer) const {
    return predicted_[layer];
  }
  const ScoreHistogram& oracle(int32_t layer) const { return oracle_[layer]; }

 private:
  const Predictor* predictor_;
  ThreadPool* pool_;
  Predictor::Scratch scratch_;
  std::vector<float> scores_;
  std::vector<ScoreHistogram> predicted_;  // per layer
  std::vector<ScoreHistogram> oracle_;     // per layer
};

struct CalibrateOptions {
  std::vector<double> keep = DefaultKeepFractions();  // each in (0, 1]
  PredictorVariant variant = PredictorVariant::kGateUp;
  uint64_t source_identity = 0;  // flash::SourceIdentity of the model file
};

// Builds the predictor from `model`, runs `calib` through `forward` (which
// must run `model`, resident, with no selector) recording activations, and
// returns a profile whose thresholds keep each fraction of neurons on the
// calibration text (stats unset: see MeasureQuality). `pool` is forward's
// pool. Errors: keep fractions outside (0, 1] or repeated, an empty
// calibration set, model shapes the predictor cannot take, Eval errors.
absl::StatusOr<std::unique_ptr<SparsityProfile>> Calibrate(
    const Model& model, Forward& forward, ThreadPool* pool,
    const Sequences& calib, const CalibrateOptions& options);

}  // namespace flashd

#endif  // FLASHD_COMMON_SPARSITY_CALIBRATION_H_
