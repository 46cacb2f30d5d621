// Llama SentencePiece-BPE tokenizer (as llama.cpp's llm_tokenizer_spm) and
// llama2.c's tokenizer, with byte-fallback decoding to valid UTF-8.
#ifndef FLASHD_COMMON_TOKENIZER_TOKENIZER_H_
#define FLASHD_COMMON_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/tokenizer/vocab.h"

namespace flashd {

class Tokenizer {
 public:
  explicit Tokenizer(Vocab vocab);

  // Token ids of `text`; BOS first when `add_bos`. Matches llama.cpp's
  // llama_tokenize(parse_special=false) for GGUF vocabularies and llama2.c's
  // encode() for llama2.c vocabularies.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;

  // The raw bytes of one token as it should be printed after `prev` (the
  // leading space of the first piece after BOS is dropped, as llama2.c and
  // llama.cpp do; byte tokens give their byte; control tokens give "").
  std::string TokenBytes(int32_t prev, int32_t token) const;

  // Whole text of a sequence (bytes concatenated; may contain partial UTF-8
  // only if the ids do).
  std::string Decode(const std::vector<int32_t>& ids) const;

  const Vocab& vocab() const { return vocab_; }
  int32_t bos_id() const { return vocab_.bos_id; }
  int32_t eos_id() const { return vocab_.eos_id; }

 private:
  Vocab vocab_;
  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
};

// Accumulates bytes and releases only complete UTF-8 sequences, so a stream
// of tokens can be printed piece by piece; invalid bytes become U+FFFD.
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
