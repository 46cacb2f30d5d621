// A SentencePiece-style vocabulary: pieces, scores, token types, specials.
#ifndef FLASHD_COMMON_TOKENIZER_VOCAB_H_
#define FLASHD_COMMON_TOKENIZER_VOCAB_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
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
  // llama2.c vocabularies: byte tokens are "<0xXX>" at id 3 + byte; pieces
  // use ' ' not '▁'. The file has no token types: the loader derives them
  // (unk kUnknown, bos/eos kControl, "<0xXX>" pieces kByte, else kNormal).
  bool llama2c_style = false;

  int32_t size() const { return static_cast<int32_t>(pieces.size()); }
};

// The byte of a byte-fallback piece "<0xXX>" (hex digits in either case),
// or -1 for any other piece.
int ParseBytePiece(std::string_view piece);

// Reads tokenizer.ggml.* from a GGUF (model "llama" only; others refused by
// name). Keys and defaults as llama.cpp: tokens (required), scores (0),
// token_type (normal), bos/eos/unknown_token_id (1/2/0), add_bos_token
// (true), add_space_prefix (true). INVALID_ARGUMENT naming the key when an
// array length disagrees with the token count, an id is out of range or a
// token type is unknown; errors of GgufFile's typed getters pass through.
absl::StatusOr<Vocab> LoadVocabFromGguf(const GgufFile& gguf);

// Reads llama2.c's tokenizer.bin: int32 max_token_length, then per token
// float32 score, int32 length, bytes. `n_vocab` comes from the checkpoint.
// Errors name the token index and byte offset for a truncated file, a
// negative or oversized length, or bytes left over after `n_vocab` tokens
// (a tokenizer.bin that belongs to another checkpoint).
absl::StatusOr<Vocab> LoadVocabFromLlama2c(const std::string& path,
                                           int32_t n_vocab);

// The same from the file's bytes (tests, fuzzers). `name` prefixes errors.
absl::StatusOr<Vocab> ParseLlama2cVocab(
    std::string_view bytes, int32_t n_vocab,
    std::string_view name = "tokenizer.bin");

}  // namespace flashd

#endif  // FLASHD_COMMON_TOKENIZER_VOCAB_H_
