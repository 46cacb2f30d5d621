// A model's sparsity profile: the predictor, per-setting per-layer
// thresholds and what calibration measured, and the .sparsity file (GGUF)
// that carries them next to the model. The flash engine loads it with
// SparsityProfile::Load and serves with MakeSelector(keep).
#ifndef FLASHD_COMMON_SPARSITY_SPARSITY_FILE_H_
#define FLASHD_COMMON_SPARSITY_SPARSITY_FILE_H_

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/base/thread_pool.h"
#include "common/engine/weight_source.h"
#include "common/model/model.h"
#include "common/sparsity/predictor.h"

namespace flashd {

// The keep fraction the flash engine uses unless told otherwise: the
// smallest calibrated fraction whose perplexity cost on stories260K, with
// the gate-up predictor, measured <= 1% (+0.75..+0.87% over four seeds of
// 2048 sampled tokens; keep 0.75 cost +1.13..+1.23%). Fixed here, not
// re-chosen per model: a random-weight model's perplexity barely moves, so
// a per-model choice would pick absurd sparsity. Keep 1.0 ("dense-exact")
// means no selector: nothing approximated.
inline constexpr double kDefaultKeep = 0.8;

// The keep fractions `flashd calibrate` calibrates by default.
inline const std::vector<double>& DefaultKeepFractions() {
  static const std::vector<double> kFractions = {0.9, 0.8, 0.7, 0.6, 0.5};
  return kFractions;
}

// The .sparsity file's format version (flashd.sparsity.version).
inline constexpr uint32_t kSparsityVersion = 1;

// What calibration measured for one setting on its evaluation text; NaN
// when not measured (a profile written before MeasureQuality ran).
struct SettingStats {
  static constexpr double kUnset = std::numeric_limits<double>::quiet_NaN();
  double fraction_loaded = kUnset;  // mean |predicted| / n_ff
  double recall = kUnset;           // |predicted ∩ oracle| / |oracle|
  double precision = kUnset;        // |predicted ∩ oracle| / |predicted|
  double ppl_dense = kUnset;
  double ppl_sparse = kUnset;  // with the predictor's selector
  double ppl_oracle = kUnset;  // with exact thresholds at the same keep
  double kl_sparse = kUnset;   // mean KL(dense || predicted), nats
  double kl_oracle = kUnset;   // mean KL(dense || oracle), nats
};

// One target keep fraction and its thresholds.
struct SparsitySetting {
  double keep = 1.0;  // target fraction of neurons kept, in (0, 1]
  // Per layer: keep neuron i when predictor score >= thresholds[l].
  std::vector<float> thresholds;
  // Per layer: the same fraction by the exact |silu(gate)·up| (the oracle
  // the predictor is measured against).
  std::vector<float> oracle_thresholds;
  SettingStats stats;
};

class SparsityProfile {
 public:
  SparsityProfile(Predictor predictor, std::vector<SparsitySetting> settings,
                  uint64_t source_identity);

  // Reads `path` (into DRAM) and validates it: GGUF structure, version,
  // that it was calibrated for the model whose flash::SourceIdentity is
  // `expected_source_identity` (else FAILED_PRECONDITION "... was
  // calibrated for a different model; re-run flashd calibrate"), shapes
  // against `config`, threshold counts, predictor tensors (type Q4_0,
  // n_ff × n_embd) and their checksum. Errors name the path and field.
  static absl::StatusOr<std::unique_ptr<SparsityProfile>> Load(
      const std::string& path, const ModelConfig& config,
      uint64_t expected_source_identity);

  // The PredictorBytes() that Load(path, config, ...) would give, from the
  // file's header alone (the predictor variant; nothing else is checked or
  // read, which Load still does). Errors name the path.
  static absl::StatusOr<size_t> PeekPredictorBytes(const std::string& path,
                                                   const ModelConfig& config);

  // Writes the profile as a GGUF file (via path.tmp, then rename).
  absl::Status Write(const std::string& path) const;

  // The calibrated keep fractions, in file order.
  std::vector<double> settings() const;
  const std::vector<SparsitySetting>& setting_details() const {
    return settings_;
  }
  std::vector<SparsitySetting>& mutable_setting_details() { return settings_; }
  // The setting whose keep equals `keep` (to 1e-6); NOT_FOUND listing the
  // calibrated ones otherwise.
  absl::StatusOr<const SparsitySetting*> FindSetting(double keep) const;

  const Predictor& predictor() const { return predictor_; }
  // DRAM the predictor takes (counts against the flash engine's budget).
  size_t PredictorBytes() const { return predictor_.bytes(); }
  uint64_t source_identity() const { return source_identity_; }
  // Calibration and evaluation token counts (informational; 0 if unknown).
  int64_t calib_tokens() const { return calib_tokens_; }
  int64_t eval_tokens() const { return eval_tokens_; }
  void set_token_counts(int64_t calib, int64_t eval) {
    calib_tokens_ = calib;
    eval_tokens_ = eval;
  }

  // A selector for setting `keep` over this profile's predictor, with
  // buffers for `max_batch` tokens, scoring on `pool`. The profile and
  // pool must outlive it. NOT_FOUND when `keep` was not calibrated.
  absl::StatusOr<std::unique_ptr<NeuronSelector>> MakeSelector(
      double keep, ThreadPool* pool, int32_t max_batch) const;

 private:
  Predictor predictor_;
  std::vector<SparsitySetting> settings_;
  uint64_t source_identity_;
  int64_t calib_tokens_ = 0;
  int64_t eval_tokens_ = 0;
};

// The default .sparsity path for a model: its path with the extension
// replaced ("m/tl.gguf" -> "m/tl.sparsity"; no extension: appended).
std::string DefaultSparsityPath(const std::string& model_path);

}  // namespace flashd

#endif  // FLASHD_COMMON_SPARSITY_SPARSITY_FILE_H_
