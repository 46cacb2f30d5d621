// Writes random-weight Llama GGUF models of preset shapes, quantized the
// way llama.cpp's quantizer lays out its common file types.
#ifndef FLASHD_COMMON_MODEL_MODEL_MAKER_H_
#define FLASHD_COMMON_MODEL_MODEL_MAKER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model.h"

namespace flashd {

// Shapes by name: "tinyllama-1.1b" (22 layers, 2048 wide, 5632 FFN, 32/4
// heads, 32000 vocab) and "tiny" (4 layers, 256 wide, 768 FFN, 8/2 heads,
// 32000 vocab: TinyLlama's architecture scaled down).
absl::StatusOr<ModelConfig> PresetConfig(const std::string& preset);

struct MakeModelOptions {
  std::string preset = "tiny";
  std::string type = "q8_0";  // f16 | q8_0 | q4_0 | q4_k_m
  std::string out_path;
  uint64_t seed = 1;
  // GGUF whose tokenizer.ggml.* vocabulary to embed; empty = a built-in
  // vocabulary of the preset's size (bytes, letters and letter n-grams).
  std::string vocab_path;
  // Called with (tensors written, total tensors).
  std::function<void(size_t, size_t)> progress;
  int threads = 2;
};

// Writes the model. Weights ~ N(0, 0.02), norms 1, as the shared tl-small
// test models. Deterministic for a given seed, whatever the thread count.
absl::Status MakeModel(const MakeModelOptions& options);

// The built-in vocabulary's pieces (size n_vocab >= 259+95).
std::vector<std::string> BuiltinVocabPieces(int32_t n_vocab);

}  // namespace flashd

#endif  // FLASHD_COMMON_MODEL_MODEL_MAKER_H_
