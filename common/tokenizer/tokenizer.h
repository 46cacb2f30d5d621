// Llama SentencePiece-BPE tokenizer (as llama.cpp's llm_tokenizer_spm) and
// llama2.c's tokenizer, with byte-fallback decoding to valid UTF-8.
#ifndef FLASHD_COMMON_TOKENIZER_TOKENIZER_H_
#define FLASHD_COMMON_TOKENIZER_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/tokenizer/vocab.h"

namespace flashd {

// Immutable after construction; Encode/Decode are thread-safe. Encode is
// O(n log n) in the text length (a heap of candidate merges, as llama.cpp).
class Tokenizer {
 public:
  // `vocab` should come from LoadVocabFromGguf / LoadVocabFromLlama2c;
  // missing scores/types are filled with 0 / kNormal and out-of-range
  // special ids never crash (they just never match).
  explicit Tokenizer(Vocab vocab);

  // Token ids of `text`; BOS first when `add_bos`. Matches llama.cpp's
  // llama_tokenize(parse_special=false) for GGUF vocabularies and llama2.c's
  // encode() for llama2.c vocabularies. Any bytes are accepted (invalid
  // UTF-8 falls back to byte tokens). The dummy-prefix space is added only
  // to non-empty text, so Encode("", false) is empty.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;

  // The raw bytes of one token as it should be printed after `prev` (the
  // leading space of the first piece after BOS is dropped, as llama2.c and
  // llama.cpp do; byte tokens give their byte; control tokens give "").
  std::string TokenBytes(int32_t prev, int32_t token) const;

  // Whole text of a sequence (bytes concatenated; may contain partial UTF-8
  // only if the ids do). The sequence is taken to start after BOS (whether
  // or not ids[0] is BOS), so the first piece loses its leading space like
  // llama.cpp's detokenize and llama2.c's printed output.
  std::string Decode(const std::vector<int32_t>& ids) const;

  // Id of `piece` exactly as stored in the vocabulary, or -1.
  int32_t PieceToId(std::string_view piece) const;

  const Vocab& vocab() const { return vocab_; }
  int32_t bos_id() const { return vocab_.bos_id; }
  int32_t eos_id() const { return vocab_.eos_id; }

 private:
  struct Symbol;
  void EncodeSpm(std::string_view text, std::vector<int32_t>* out) const;
  void EncodeLlama2c(std::string_view text, bool add_bos,
                     std::vector<int32_t>* out) const;
  // Merges adjacent symbols while some concatenation is a token, best score
  // first, leftmost on ties (llama.cpp's llm_tokenizer_spm work queue).
  void MergeSymbols(std::vector<Symbol>& symbols) const;

  Vocab vocab_;
  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
  std::array<int32_t, 256> byte_to_id_{};  // byte-fallback token per byte
  std::vector<int16_t> token_byte_;        // byte of a byte token, else -1
  // User-defined tokens (GGUF), longest first: llama.cpp splits them out of
  // the text before SentencePiece even when parse_special is false.
  std::vector<int32_t> user_defined_;
  int32_t space_id_ = -1;  // llama2.c dummy prefix " "
};

// Accumulates bytes and releases only complete UTF-8 sequences, so a stream
// of tokens can be printed piece by piece; invalid bytes become U+FFFD (one
// per maximal ill-formed subpart, as the Unicode standard recommends:
// overlongs, surrogates and code points above U+10FFFF are invalid).
class Utf8Streamer {
 public:
  // Appends bytes; returns the longest valid UTF-8 prefix now complete.
  std::string Push(std::string_view bytes);
  // Whatever is left (incomplete tail) as U+FFFD.
  std::string Flush();

 private:
  std::string pending_;
};

}  // namespace flashd

#endif  // FLASHD_COMMON_TOKENIZER_TOKENIZER_H_
