// In-memory view of a Llama-architecture model: hyperparameters and weight
// matrices that point into the mapped model file (or into buffers the model
// owns). One FFN neuron -- its gate row, up row and down column -- is
// addressable on its own (see FfnWeights).
#ifndef FLASHD_COMMON_MODEL_MODEL_H_
#define FLASHD_COMMON_MODEL_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/base/mapped_file.h"
#include "common/kernels/ggml_types.h"

namespace flashd {

struct ModelConfig {
  int32_t n_vocab = 0;
  int32_t n_embd = 0;     // model width
  int32_t n_ff = 0;       // FFN hidden width (neurons per layer)
  int32_t n_layer = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;  // < n_head for grouped-query attention
  int32_t head_dim = 0;   // n_embd / n_head
  int32_t n_rot = 0;      // rotary dimensions per head (== head_dim here)
  int32_t n_ctx_train = 0;
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;

  int32_t kv_dim() const { return n_head_kv * head_dim; }
};

// A 2-D weight matrix of `rows` rows of `cols` elements (ggml: ne[0] = cols,
// ne[1] = rows), row-major, every row `row_bytes` long. y = W x computes one
// output per row.
struct Matrix {
  GgmlType type = GgmlType::kF32;
  int64_t cols = 0;
  int64_t rows = 0;
  size_t row_bytes = 0;
  const uint8_t* data = nullptr;

  const uint8_t* Row(int64_t r) const { return data + r * row_bytes; }
  size_t bytes() const { return row_bytes * static_cast<size_t>(rows); }
};

// The SwiGLU FFN of one layer: out = down · (silu(gate · x) ⊙ (up · x)).
// Neuron i (0 <= i < n_ff) is gate row i, up row i and down column i.
// In the GGUF layout gate/up rows are contiguous and the down column is one
// element of each of the n_embd down rows (DownColumnBlock gives where);
// the flash layout stores the three together as one bundle.
struct FfnWeights {
  Matrix gate;  // (n_ff rows, n_embd cols)
  Matrix up;    // (n_ff rows, n_embd cols)
  Matrix down;  // (n_embd rows, n_ff cols)

  const uint8_t* GateRow(int64_t neuron) const { return gate.Row(neuron); }
  const uint8_t* UpRow(int64_t neuron) const { return up.Row(neuron); }
  // Dequantizes down column `neuron` into out[n_embd].
  void DownColumn(int64_t neuron, float* out) const;
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // (n_embd)
  Matrix wq;                         // (n_embd rows, n_embd cols)
  Matrix wk;                         // (kv_dim rows, n_embd cols)
  Matrix wv;                         // (kv_dim rows, n_embd cols)
  Matrix wo;                         // (n_embd rows, n_embd cols)
  const float* ffn_norm = nullptr;   // (n_embd)
  FfnWeights ffn;
};

class Model {
 public:
  ModelConfig config;
  Matrix tok_embd;                   // (n_vocab rows, n_embd cols)
  std::vector<LayerWeights> layers;  // n_layer
  const float* output_norm = nullptr;  // (n_embd)
  Matrix output;                     // (n_vocab rows, n_embd cols); may alias tok_embd
  std::string format;                // "gguf" or "llama2.c"
  std::string type_name;             // e.g. "q4_K" (most common matrix type)
  std::string name;                  // general.name when present

  // Bytes of all weight matrices and norms.
  size_t WeightBytes() const;

  // Keeps the mapping and converted buffers alive.
  std::shared_ptr<const MappedFile> file;
  std::vector<std::vector<float>> owned_floats;
};

}  // namespace flashd

#endif  // FLASHD_COMMON_MODEL_MODEL_H_
