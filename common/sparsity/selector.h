// NeuronSelectors that keep the neurons whose score reaches a per-layer
// threshold: PredictedSelector scores with the low-bit Predictor (what the
// flash engine runs), OracleSelector with the exact activation (what the
// predictor approximates; used to measure it).
#ifndef FLASHD_COMMON_SPARSITY_SELECTOR_H_
#define FLASHD_COMMON_SPARSITY_SELECTOR_H_

#include <cstdint>
#include <vector>

#include "common/base/thread_pool.h"
#include "common/engine/weight_source.h"
#include "common/model/model.h"
#include "common/sparsity/predictor.h"

namespace flashd {

// Writes keep[i] = !(scores[i] < threshold) for i < n: a threshold of
// -infinity keeps every neuron (NaN scores included).
void ThresholdMask(const float* scores, int64_t n, float threshold,
                   uint8_t* keep);

// Keeps neuron i of token t in layer l when the predictor's score reaches
// thresholds[l]. Buffers are sized for `max_batch` tokens at construction;
// Select allocates nothing. `predictor` and `pool` must outlive it; Select
// runs its scoring on `pool`, so it must be called from the pool's owner
// thread (as Forward::Eval does), not from inside a pool job.
class PredictedSelector : public NeuronSelector {
 public:
  PredictedSelector(const Predictor* predictor, std::vector<float> thresholds,
                    ThreadPool* pool, int32_t max_batch);

  void Select(int32_t layer, const float* xb, int32_t n_tokens,
              uint8_t* keep) override;

  // Scores of the last Select call ([n_tokens][n_ff]).
  const float* last_scores() const { return scores_.data(); }
  const std::vector<float>& thresholds() const { return thresholds_; }

 private:
  const Predictor* predictor_;
  std::vector<float> thresholds_;  // per layer
  ThreadPool* pool_;
  Predictor::Scratch scratch_;
  std::vector<float> scores_;  // [max_batch][n_ff]
};

// Keeps neuron i when the exact |silu(gate_i·x) · (up_i·x)| -- computed
// from the model's own matrices, as Forward computes it -- reaches
// thresholds[l]. Costs a second gate/up product per layer: for measuring
// the best any predictor could do at a threshold, not for serving.
class OracleSelector : public NeuronSelector {
 public:
  OracleSelector(const Model* model, std::vector<float> thresholds,
                 ThreadPool* pool, int32_t max_batch);

  void Select(int32_t layer, const float* xb, int32_t n_tokens,
              uint8_t* keep) override;

 private:
  const Model* model_;
  std::vector<float> thresholds_;
  ThreadPool* pool_;
  int32_t max_batch_;
  std::vector<uint8_t> gate_acts_;  // quantized xb for the gate's type
  std::vector<uint8_t> up_acts_;    // quantized xb for the up's type
  std::vector<float> gate_;         // [max_batch][n_ff]: then |act|
  std::vector<float> up_;           // [max_batch][n_ff]
};

}  // namespace flashd

#endif  // FLASHD_COMMON_SPARSITY_SELECTOR_H_
