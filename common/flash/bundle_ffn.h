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
// quantized activations as the resident engine, and the activation
// silu(g) * u the same float expression, so each neuron's activation is
// bit-identical to Forward's. The down product is sum_i act_i * down_i in
// float over the stored (exact) down values, one partial sum per thread:
// thread i owns the neurons of the fixed id blocks i, i + threads, ...
// (it computes their activations too) and adds them in the order the spans
// bring them, and Finish adds the
// threads' sums in thread order. So the result depends on the neuron ids,
// their order across Add calls and the thread count, never on how the ids
// are split into spans or on the batch size (a single token takes a
// different down kernel with the same roundings): spans in increasing id
// order (a dense pass, with the cache holding a prefix of the layer's ids
// in increasing slot order) give the same bits as one span of every
// neuron. See docs/determinism.md.
// Against the resident engine: for float down types it differs only in
// the order of the float additions; for quantized down types the resident
// engine also quantizes the activations (to Q8_0/Q8_K) before its down
// dot products, which this class does not, so a dense pass differs from
// Forward by that quantization error as well. Neurons whose activation is
// exactly 0 (or that `keep` drops) add nothing and are skipped.
// Cost (TinyLlama Q8_0 shapes, 2 threads, weights in DRAM): a dense decode
// pass takes 1.1-1.4x the resident GateUpSilu + down time; a batch of 16
// about 3x, as its down product is float FMAs where the resident engine
// uses int8 dot products.
// Preallocates everything; nothing is allocated per call. Not thread-safe:
// one owner calls Begin/Add/Finish; Add uses every pool thread itself.
// Misuse (spans longer than max_span, ids outside [0, n_ff), a geometry
// that does not match the config, Add outside Begin..Finish) is a bug and
// fails a FLASHD_CHECK.
class BundleFfn {
 public:
  // max_span: the largest `count` Add will see.
  BundleFfn(const ModelConfig& config, ThreadPool* pool, int32_t max_batch,
            int32_t max_span);

  // Starts a layer: quantizes xb ([n_tokens][n_embd], 1 <= n_tokens <=
  // max_batch) for the geometry's gate/up types and clears the
  // accumulators. `keep` is null (all neurons) or [n_tokens][n_ff] bytes as
  // NeuronSelector::Select writes. `tables` and `keep` are read until
  // Finish; xb only here.
  void Begin(const BundleGeometry& geometry, const DownTables& tables,
             const float* xb, int32_t n_tokens, const uint8_t* keep);
  // Adds the span's neurons, using every pool thread.
  void Add(const BundleSpan& span);
  // Writes the sum into out ([n_tokens][n_embd]); a neuron no span
  // brought contributes nothing. Ends the layer.
  void Finish(float* out);

  // Bytes of scratch held.
  size_t ScratchBytes() const;

 private:
  // Bundles one thread takes at a time (one GEMM call for their gate/up
  // products, one block product for their down columns): kChunk for
  // batches, kDecodeChunk for 1 token.
  static constexpr int kChunk = 64;
  static constexpr int kDecodeChunk = 8;

  // Adds the span's bundles thread `ti` owns into its partial sums.
  void AddOwned(const BundleSpan& span, int ti);
  // Adds span bundles at[0..count) (increasing, at most kChunk) with thread
  // `ti`'s scratch.
  void AddChunk(const BundleSpan& span, const int32_t* at, int32_t count,
                int ti);
  // y += a * the down column of neuron `id` (its bytes at `column`).
  void AddColumn(float a, const uint8_t* column, int32_t id, float* y) const;
  // The down column of neuron `id` as n_embd floats (exact).
  void DequantizeColumn(const uint8_t* column, int32_t id, float* out) const;

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
  std::vector<float> gate_, up_;  // [threads][max_batch][kChunk]
  std::vector<float> partial_;    // [threads][max_batch][n_embd]
  std::vector<float> columns_;    // [threads][kChunk][n_embd] dequantized
  std::vector<int32_t> owned_;    // [threads][max_span]: span positions
};

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_BUNDLE_FFN_H_
