// A SentencePiece-style vocabulary: pieces, scores, token types, specials.
#ifndef FLASHD_COMMON_TOKENIZER_VOCAB_H_
#define FLASHD_COMMON_TOKENIZER_VOCAB_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace flashd {

class GgufFile;

// Token types as GGUF's tokenizer.ggml.token_type stores them.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct Vocab {
  std::vector<std::string> pieces;  // UTF-8, "▁" (U+2581) for spaces
  std::vector<float> scores;
  std::vector<TokenType> types;
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t unk_id = 0;
  bool add_bos = true;
  bool add_space_prefix = true;  // SentencePiece "dummy prefix"
  // llama2.c vocabularies: byte tokens are "<0xXX>" at id 3 + byte, no
  // token types; pieces use ' ' not '▁'.
  bool llama2c_style = false;

  int32_t size() const { return static_cast<int32_t>(pieces.size()); }
};

// Reads tokenizer.ggml.* from a GGUF (model "llama" only; others refused by
// name).
absl::StatusOr<Vocab> LoadVocabFromGguf(const GgufFile& gguf);

// Reads llama2.c's tokenizer.bin: int32 max_token_length, then per token
// float32 score, int32 length, bytes. `n_vocab` comes from the checkpoint.
absl::StatusOr<Vocab> LoadVocabFromLlama2c(const std::string& path,
                                           int32_t n_vocab);

}  // namespace flashd

#endif  // FLASHD_COMMON_TOKENIZER_VOCAB_H_
