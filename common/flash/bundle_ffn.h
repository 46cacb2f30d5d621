// The SwiGLU FFN computed over neuron bundles (flash layout) instead of
// whole matrices: any subset of a layer's neurons, in any order, in pieces
// as they arrive from flash.
#ifndef FLASHD_COMMON_FLASH_BUNDLE_FFN_H_
#define FLASHD_COMMON_FLASH_BUNDLE_FFN_H_

#include <cstdint>
#include <vector>

#include "common/base/thread_pool.h"
#include "common/flash/flash_format.h"
#include "common/model/model.h"

namespace flashd::flash {

// `count` bundles back to back at `data` (stride geometry.bundle_bytes()),
// bundle j being neuron ids[j] of the layer.
struct BundleSpan {
  const uint8_t* data = nullptr;
  const int32_t* ids = nullptr;
  int32_t count = 0;
};

// The kInt8Scaled down tables of one layer (null for kTyped).
struct DownTables {
  const float* scale = nullptr;  // [n_ff / group][n_embd]
  const float* min = nullptr;    // same shape, or null when !has_min
};

// Computes out[t] = sum over given neurons i (kept for token t) of
// silu(gate_i . x_t) * (up_i . x_t) * down_i. Usage per layer: Begin, then
// Add for each span (any number, any order, each neuron at most once),
// then Finish writes out. Gate/up products use the same kernels and
// quantized activations as the resident engine, so a dense pass differs
// from it only in the order of float additions in the down product.
// Preallocates everything; nothing is allocated per call.
class BundleFfn {
 public:
  // max_span: the largest `count` Add will see.
  BundleFfn(const ModelConfig& config, ThreadPool* pool, int32_t max_batch,
            int32_t max_span);

  // Starts a layer: quantizes xb ([n_tokens][n_embd]) for the geometry's
  // gate/up types and clears the accumulators. `keep` is null (all
  // neurons) or [n_tokens][n_ff] bytes as NeuronSelector::Select writes.
  void Begin(const BundleGeometry& geometry, const DownTables& tables,
             const float* xb, int32_t n_tokens, const uint8_t* keep);
  // Adds the span's neurons, using every pool thread.
  void Add(const BundleSpan& span);
  // Writes the sum into out ([n_tokens][n_embd]).
  void Finish(float* out);

  // Bytes of scratch held.
  size_t ScratchBytes() const;

 private:
  const ModelConfig config_;
  ThreadPool* pool_;
  const int32_t max_batch_;
  const int32_t max_span_;
  BundleGeometry geometry_;
  DownTables tables_;
  const uint8_t* keep_ = nullptr;
  int32_t n_tokens_ = 0;
  std::vector<uint8_t> gate_acts_, up_acts_;  // quantized xb
  size_t gate_stride_ = 0, up_stride_ = 0;
  std::vector<float> gate_, up_;  // [n_tokens][max_span]
  std::vector<float> partial_;    // [threads][n_tokens][n_embd]
  std::vector<float> column_;     // [threads][n_embd] dequantized column
};

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_BUNDLE_FFN_H_
