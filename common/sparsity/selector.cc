#include "common/sparsity/selector.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "common/base/check.h"
#include "common/kernels/kernels.h"

namespace flashd {
namespace {

constexpr int64_t kRowAlign = 16;

// Largest activation row any layer's `pick(ffn)` matrix consumes.
template <typename Pick>
size_t MaxActStride(const Model& model, Pick pick) {
  size_t stride = 0;
  for (const LayerWeights& l : model.layers) {
    const Matrix& m = pick(l.ffn);
    stride = std::max(stride, RowSize(kernels::VecDotType(m.type), m.cols));
  }
  return stride;
}

}  // namespace

void ThresholdMask(const float* scores, int64_t n, float threshold,
                   uint8_t* keep) {
  for (int64_t i = 0; i < n; ++i) keep[i] = !(scores[i] < threshold);
}

PredictedSelector::PredictedSelector(const Predictor* predictor,
                                     std::vector<float> thresholds,
                                     ThreadPool* pool, int32_t max_batch)
    : predictor_(predictor),
      thresholds_(std::move(thresholds)),
      pool_(pool),
      scratch_(*predictor, max_batch),
      scores_(static_cast<size_t>(max_batch) * predictor->n_ff()) {
  FLASHD_CHECK(static_cast<int32_t>(thresholds_.size()) ==
               predictor->n_layer());
}

void PredictedSelector::Select(int32_t layer, const float* xb, int32_t n_tokens,
                               uint8_t* keep) {
  predictor_->Score(layer, xb, n_tokens, scratch_, pool_, scores_.data());
  ThresholdMask(scores_.data(), n_tokens * predictor_->n_ff(),
                thresholds_[layer], keep);
}

OracleSelector::OracleSelector(const Model* model,
                               std::vector<float> thresholds, ThreadPool* pool,
                               int32_t max_batch)
    : model_(model),
      thresholds_(std::move(thresholds)),
      pool_(pool),
      max_batch_(max_batch) {
  const ModelConfig& c = model->config;
  FLASHD_CHECK(static_cast<int32_t>(thresholds_.size()) == c.n_layer);
  gate_acts_.resize(
      MaxActStride(
          *model, [](const FfnWeights& f) -> const Matrix& { return f.gate; }) *
      max_batch);
  up_acts_.resize(
      MaxActStride(*model,
                   [](const FfnWeights& f) -> const Matrix& { return f.up; }) *
      max_batch);
  gate_.resize(static_cast<size_t>(max_batch) * c.n_ff);
  up_.resize(static_cast<size_t>(max_batch) * c.n_ff);
}

void OracleSelector::Select(int32_t layer, const float* xb, int32_t n_tokens,
                            uint8_t* keep) {
  FLASHD_CHECK(n_tokens > 0 && n_tokens <= max_batch_);
  const FfnWeights& ffn = model_->layers[layer].ffn;
  const int64_t n_embd = model_->config.n_embd, n_ff = model_->config.n_ff;
  const GgmlType gate_vec = kernels::VecDotType(ffn.gate.type);
  const GgmlType up_vec = kernels::VecDotType(ffn.up.type);
  const size_t gate_stride = RowSize(gate_vec, n_embd);
  const size_t up_stride = RowSize(up_vec, n_embd);
  for (int32_t t = 0; t < n_tokens; ++t) {
    kernels::QuantizeActivations(gate_vec, xb + t * n_embd,
                                 gate_acts_.data() + t * gate_stride, n_embd);
    kernels::QuantizeActivations(up_vec, xb + t * n_embd,
                                 up_acts_.data() + t * up_stride, n_embd);
  }
  const float threshold = thresholds_[layer];
  pool_->ParallelFor(n_ff, kRowAlign, [&](int64_t b, int64_t e) {
    kernels::Gemm(ffn.gate.type, n_embd, ffn.gate.Row(b), ffn.gate.row_bytes,
                  e - b, gate_acts_.data(), gate_stride, n_tokens,
                  gate_.data() + b, n_ff);
    kernels::Gemm(ffn.up.type, n_embd, ffn.up.Row(b), ffn.up.row_bytes, e - b,
                  up_acts_.data(), up_stride, n_tokens, up_.data() + b, n_ff);
    for (int32_t t = 0; t < n_tokens; ++t) {
      const float* g = gate_.data() + t * n_ff;
      const float* u = up_.data() + t * n_ff;
      uint8_t* k = keep + t * n_ff;
      for (int64_t i = b; i < e; ++i) {
        const float act = std::fabs(g[i] / (1.0f + std::exp(-g[i])) * u[i]);
        k[i] = !(act < threshold);
      }
    }
  });
}

}  // namespace flashd
