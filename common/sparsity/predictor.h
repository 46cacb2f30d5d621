// A cheap predictor of which FFN neurons matter for a token: per layer a
// Q4_0 copy of the gate matrix (and optionally of the up matrix), scored
// against the Q8_0-quantized FFN input before any neuron is loaded.
#ifndef FLASHD_COMMON_SPARSITY_PREDICTOR_H_
#define FLASHD_COMMON_SPARSITY_PREDICTOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/thread_pool.h"
#include "common/model/model.h"

namespace flashd {

// What the predictor scores neuron i of a token by, from its low-bit copies
// ĝ_i = gate_i·x and û_i = up_i·x:
//   kGate:   |silu(ĝ_i)|         (gate copy only: half the memory)
//   kGateUp: |silu(ĝ_i) · û_i|  (the activation itself, approximately)
enum class PredictorVariant { kGate = 0, kGateUp = 1 };

// "gate" or "gate-up".
std::string_view PredictorVariantName(PredictorVariant variant);
// Inverse of PredictorVariantName; INVALID_ARGUMENT naming the bad value.
absl::StatusOr<PredictorVariant> ParsePredictorVariant(std::string_view name);

// Per-layer Q4_0 matrices (n_ff rows × n_embd) and the scoring kernel.
// Immutable once built, so one Predictor serves any number of selectors.
class Predictor {
 public:
  // The weight type of the copies.
  static constexpr GgmlType kType = GgmlType::kQ4_0;

  // Dequantizes the model's gate (and up) rows and requantizes them to Q4_0
  // with ggml's reference quantizer (rows split across `pool`). Errors:
  // INVALID_ARGUMENT when n_embd is not a multiple of 32 (Q4_0 blocks).
  static absl::StatusOr<Predictor> FromModel(const Model& model,
                                             PredictorVariant variant,
                                             ThreadPool* pool);

  // Wraps Q4_0 matrices owned elsewhere (e.g. a mapped .sparsity file);
  // `keepalive` keeps their memory alive. `up` is empty for kGate. The
  // caller has validated shapes and types.
  static Predictor FromMatrices(PredictorVariant variant,
                                std::vector<Matrix> gate,
                                std::vector<Matrix> up,
                                std::shared_ptr<const void> keepalive);

  Predictor() = default;
  Predictor(Predictor&&) = default;
  Predictor& operator=(Predictor&&) = default;

  PredictorVariant variant() const { return variant_; }
  int32_t n_layer() const { return static_cast<int32_t>(gate_.size()); }
  int64_t n_embd() const { return gate_.empty() ? 0 : gate_[0].cols; }
  int64_t n_ff() const { return gate_.empty() ? 0 : gate_[0].rows; }
  const Matrix& gate(int32_t layer) const { return gate_[layer]; }
  // Valid only for kGateUp.
  const Matrix& up(int32_t layer) const { return up_[layer]; }
  // Bytes of all Q4_0 copies: what the predictor costs in DRAM.
  size_t bytes() const;

  // Buffers Score needs for up to `max_batch` tokens, allocated once.
  class Scratch {
   public:
    Scratch(const Predictor& predictor, int32_t max_batch);
    int32_t max_batch() const { return max_batch_; }

   private:
    friend class Predictor;
    int32_t max_batch_;
    size_t act_stride_;          // bytes per token of Q8_0 input
    std::vector<uint8_t> acts_;  // [max_batch][act_stride_]
    std::vector<float> up_;      // [max_batch][n_ff] (kGateUp)
  };

  // scores[t * n_ff + i] = score of neuron i for token t (see
  // PredictorVariant), for the normed FFN inputs xb ([n_tokens][n_embd]).
  // n_tokens <= scratch.max_batch(). Neurons are split across `pool`'s
  // threads; must not be called from inside a pool job. No allocation.
  void Score(int32_t layer, const float* xb, int32_t n_tokens, Scratch& scratch,
             ThreadPool* pool, float* scores) const;

 private:
  PredictorVariant variant_ = PredictorVariant::kGateUp;
  std::vector<Matrix> gate_;                 // n_layer
  std::vector<Matrix> up_;                   // n_layer for kGateUp, else empty
  std::vector<std::vector<uint8_t>> owned_;  // storage when built here
  std::shared_ptr<const void> keepalive_;    // storage when wrapped
};

}  // namespace flashd

#endif  // FLASHD_COMMON_SPARSITY_PREDICTOR_H_
