#include "common/sparsity/predictor.h"

#include <cmath>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/kernels/kernels.h"

namespace flashd {
namespace {

// Rows per thread chunk (the Gemm tiles are 16 rows).
constexpr int64_t kRowAlign = 16;

// Requantizes `src` (any supported type) to a Q4_0 matrix in `storage`.
Matrix RequantizeQ4_0(const Matrix& src, std::vector<uint8_t>& storage,
                      ThreadPool* pool) {
  Matrix m;
  m.type = Predictor::kType;
  m.cols = src.cols;
  m.rows = src.rows;
  m.row_bytes = RowSize(m.type, m.cols);
  storage.resize(m.row_bytes * static_cast<size_t>(m.rows));
  m.data = storage.data();
  // One float row per thread, allocated once per matrix (not per call of a
  // hot path: this runs at calibration time).
  std::vector<std::vector<float>> rows(pool->size(),
                                       std::vector<float>(src.cols));
  pool->Run([&](int thread, int n_threads) {
    const int64_t per = (src.rows + n_threads - 1) / n_threads;
    const int64_t begin = std::min<int64_t>(src.rows, thread * per);
    const int64_t end = std::min<int64_t>(src.rows, begin + per);
    float* row = rows[thread].data();
    for (int64_t r = begin; r < end; ++r) {
      kernels::ToFloat(src.type, src.Row(r), row, src.cols);
      kernels::FromFloat(m.type, row, storage.data() + r * m.row_bytes,
                         src.cols);
    }
  });
  return m;
}

}  // namespace

std::string_view PredictorVariantName(PredictorVariant variant) {
  return variant == PredictorVariant::kGate ? "gate" : "gate-up";
}

absl::StatusOr<PredictorVariant> ParsePredictorVariant(std::string_view name) {
  if (name == "gate") return PredictorVariant::kGate;
  if (name == "gate-up") return PredictorVariant::kGateUp;
  return absl::InvalidArgumentError(absl::StrCat(
      "predictor '", std::string(name), "' is not one of gate, gate-up"));
}

absl::StatusOr<Predictor> Predictor::FromModel(const Model& model,
                                               PredictorVariant variant,
                                               ThreadPool* pool) {
  const ModelConfig& c = model.config;
  if (c.n_embd <= 0 || c.n_embd % kQK4_0 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_embd ", c.n_embd, " is not a multiple of ", kQK4_0,
                     ": the Q4_0 predictor needs whole blocks per row"));
  }
  if (c.n_ff <= 0 || c.n_layer <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model has n_ff ", c.n_ff, " and n_layer ", c.n_layer,
                     "; the predictor needs both positive"));
  }
  Predictor p;
  p.variant_ = variant;
  const int n_copies = variant == PredictorVariant::kGateUp ? 2 : 1;
  p.owned_.resize(static_cast<size_t>(c.n_layer) * n_copies);
  for (int32_t l = 0; l < c.n_layer; ++l) {
    const FfnWeights& ffn = model.layers[l].ffn;
    p.gate_.push_back(RequantizeQ4_0(ffn.gate, p.owned_[l * n_copies], pool));
    if (n_copies == 2) {
      p.up_.push_back(RequantizeQ4_0(ffn.up, p.owned_[l * n_copies + 1], pool));
    }
  }
  return p;
}

Predictor Predictor::FromMatrices(PredictorVariant variant,
                                  std::vector<Matrix> gate,
                                  std::vector<Matrix> up,
                                  std::shared_ptr<const void> keepalive) {
  FLASHD_CHECK(!gate.empty());
  FLASHD_CHECK(variant == PredictorVariant::kGateUp ? up.size() == gate.size()
                                                    : up.empty());
  Predictor p;
  p.variant_ = variant;
  p.gate_ = std::move(gate);
  p.up_ = std::move(up);
  p.keepalive_ = std::move(keepalive);
  return p;
}

size_t Predictor::bytes() const {
  size_t total = 0;
  for (const Matrix& m : gate_) total += m.bytes();
  for (const Matrix& m : up_) total += m.bytes();
  return total;
}

Predictor::Scratch::Scratch(const Predictor& predictor, int32_t max_batch)
    : max_batch_(max_batch),
      act_stride_(RowSize(kernels::VecDotType(kType), predictor.n_embd())),
      acts_(act_stride_ * static_cast<size_t>(max_batch)),
      up_(predictor.variant() == PredictorVariant::kGateUp
              ? static_cast<size_t>(max_batch) * predictor.n_ff()
              : 0) {
  FLASHD_CHECK(max_batch > 0);
}

void Predictor::Score(int32_t layer, const float* xb, int32_t n_tokens,
                      Scratch& scratch, ThreadPool* pool, float* scores) const {
  FLASHD_CHECK(layer >= 0 && layer < n_layer());
  FLASHD_CHECK(n_tokens > 0 && n_tokens <= scratch.max_batch_);
  const int64_t n_embd = this->n_embd(), n_ff = this->n_ff();
  const GgmlType act_type = kernels::VecDotType(kType);
  for (int32_t t = 0; t < n_tokens; ++t) {
    kernels::QuantizeActivations(act_type, xb + t * n_embd,
                                 scratch.acts_.data() + t * scratch.act_stride_,
                                 n_embd);
  }
  const Matrix& g = gate_[layer];
  const Matrix* u =
      variant_ == PredictorVariant::kGateUp ? &up_[layer] : nullptr;
  const uint8_t* acts = scratch.acts_.data();
  const size_t stride = scratch.act_stride_;
  float* up_out = scratch.up_.data();
  pool->ParallelFor(n_ff, kRowAlign, [&](int64_t b, int64_t e) {
    kernels::Gemm(kType, n_embd, g.Row(b), g.row_bytes, e - b, acts, stride,
                  n_tokens, scores + b, n_ff);
    if (u != nullptr) {
      kernels::Gemm(kType, n_embd, u->Row(b), u->row_bytes, e - b, acts, stride,
                    n_tokens, up_out + b, n_ff);
    }
    for (int32_t t = 0; t < n_tokens; ++t) {
      float* s = scores + t * n_ff;
      if (u != nullptr) {
        const float* up_t = up_out + t * n_ff;
        for (int64_t i = b; i < e; ++i) {
          s[i] = std::fabs(s[i] / (1.0f + std::exp(-s[i])) * up_t[i]);
        }
      } else {
        for (int64_t i = b; i < e; ++i) {
          s[i] = std::fabs(s[i] / (1.0f + std::exp(-s[i])));
        }
      }
    }
  });
}

}  // namespace flashd
