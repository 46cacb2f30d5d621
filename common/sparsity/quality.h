// What a sparsity setting costs: on evaluation text (separate from the
// calibration text), the fraction of neurons the predictor loads, its
// recall and precision against the exact (oracle) selection at the same
// keep fraction, and the perplexity and KL divergence of next-token
// distributions against the dense model, for the predictor and the oracle.
#ifndef FLASHD_COMMON_SPARSITY_QUALITY_H_
#define FLASHD_COMMON_SPARSITY_QUALITY_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/thread_pool.h"
#include "common/engine/forward.h"
#include "common/model/model.h"
#include "common/sparsity/calibration.h"
#include "common/sparsity/sparsity_file.h"

namespace flashd {

// The predictor's selection in one layer, over all evaluation tokens.
struct LayerSelectionStats {
  double fraction_loaded = 0;  // predicted neurons / (tokens × n_ff)
  double recall = 0;           // Σ|pred ∩ oracle| / Σ|oracle|
  double precision = 0;        // Σ|pred ∩ oracle| / Σ|pred|
};

struct SettingReport {
  double keep = 1.0;
  // Layer means of the selection statistics, and the quality numbers.
  SettingStats stats;
  std::vector<LayerSelectionStats> layers;  // n_layer
};

// Perplexity and mean KL(dense || run) over predicted positions.
struct Perplexity {
  double ppl = 0;
  double kl = 0;
  int64_t positions = 0;
};

// Runs `eval` through `forward` (the resident `model`; no selector or
// observer set) in lockstep: dense, then per setting of `profile` with its
// PredictedSelector and with an OracleSelector, each on its own KV cache.
// Recall and precision compare, at every layer and token, the predictor's
// selection with the oracle's on the same FFN input. Writes each setting's
// stats into `profile` and the eval token count; returns the reports in
// setting order. `pool` is forward's pool. Errors: empty evaluation set,
// Eval errors (the hooks are removed from `forward` in every case).
absl::StatusOr<std::vector<SettingReport>> MeasureQuality(
    const Model& model, Forward& forward, ThreadPool* pool,
    const Sequences& eval, SparsityProfile& profile);

// Perplexity of `selector` (null: dense) on `eval`, and KL against dense;
// for tests and single settings. Same preconditions as MeasureQuality.
absl::StatusOr<Perplexity> MeasurePerplexity(const Model& model,
                                             Forward& forward,
                                             const Sequences& eval,
                                             NeuronSelector* selector);

}  // namespace flashd

#endif  // FLASHD_COMMON_SPARSITY_QUALITY_H_
