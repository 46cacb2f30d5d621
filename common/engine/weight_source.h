// Hooks through which Forward's weights and FFN neurons can come from
// somewhere other than a resident Model: a WeightSource streams layers from
// flash (modes naive, layer, flash); a NeuronSelector chooses which FFN
// neurons each token runs (predicted sparsity); an FfnObserver sees FFN
// activations (calibration).
#ifndef FLASHD_COMMON_ENGINE_WEIGHT_SOURCE_H_
#define FLASHD_COMMON_ENGINE_WEIGHT_SOURCE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model/model.h"

namespace flashd {

// Chooses the FFN neurons each token runs; the others contribute 0 (as if
// their activation silu(gate)*up were 0). Owned by the caller.
class NeuronSelector {
 public:
  virtual ~NeuronSelector() = default;
  // `xb` is the normed FFN input of `n_tokens` tokens ([n_tokens][n_embd]).
  // Writes keep[t * n_ff + i] = 1 when neuron i runs for token t, else 0.
  // Called from the thread that calls Forward::Eval.
  virtual void Select(int32_t layer, const float* xb, int32_t n_tokens,
                      uint8_t* keep) = 0;
};

// Sees the FFN of every layer as Forward computes it (resident path only):
// the normed input xb ([n_tokens][n_embd]), act = silu(gate)*up and up
// ([n_tokens][n_ff] each), before any NeuronSelector mask is applied.
class FfnObserver {
 public:
  virtual ~FfnObserver() = default;
  virtual void Observe(int32_t layer, const float* xb, const float* act,
                       const float* up, int32_t n_tokens) = 0;
};

// Supplies weights to Forward when they are not all resident. Forward calls,
// per Eval: BeginEval; Embed; then for each layer AcquireLayer, the FFN
// (RunFfn when ffn_in_source(), else the LayerWeights' matrices),
// ReleaseLayer; then for each output chunk AcquireOutput / ReleaseOutput.
// Any error aborts the Eval and is returned by it (the KV cache then holds
// partial keys/values for the failed positions; n_past is not advanced).
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual absl::Status BeginEval(absl::Span<const int32_t> tokens) = 0;
  // Writes the embeddings of `tokens` as floats ([n][n_embd]).
  virtual absl::Status Embed(absl::Span<const int32_t> tokens, float* x) = 0;
  // Layer l's attention weights and norms (and FFN matrices when
  // !ffn_in_source()), valid until ReleaseLayer(l).
  virtual absl::StatusOr<const LayerWeights*> AcquireLayer(int32_t l) = 0;
  virtual void ReleaseLayer(int32_t l) = 0;
  // Whether RunFfn computes the FFN (bundle layouts) instead of Forward.
  virtual bool ffn_in_source() const = 0;
  // out[t] = FFN(xb[t]) for t < n_tokens ([n_tokens][n_embd]); `keep` as
  // NeuronSelector::Select wrote it, or null for every neuron. Called
  // between AcquireLayer(l) and ReleaseLayer(l).
  virtual absl::Status RunFfn(int32_t l, const float* xb, int32_t n_tokens,
                              const uint8_t* keep, float* out) = 0;
  // The output norm and the classifier in chunks of rows: chunk c covers
  // vocabulary rows [first_row, first_row + matrix->rows).
  virtual const float* output_norm() = 0;
  virtual int32_t output_chunks() const = 0;
  struct OutputChunk {
    const Matrix* matrix = nullptr;
    int64_t first_row = 0;
  };
  virtual absl::StatusOr<OutputChunk> AcquireOutput(int32_t chunk) = 0;
  virtual void ReleaseOutput(int32_t chunk) = 0;
};

}  // namespace flashd

#endif  // FLASHD_COMMON_ENGINE_WEIGHT_SOURCE_H_
