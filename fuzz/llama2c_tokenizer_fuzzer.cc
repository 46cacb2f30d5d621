// Feeds arbitrary bytes to llama2.c's tokenizer.bin reader
// (ParseLlama2cVocab). The first 4 bytes are the vocabulary size the
// checkpoint would claim (any int32, so huge claims are tried), the rest is
// the file. Checks that a vocabulary it accepts builds a tokenizer that
// encodes text and decodes every id.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/vocab.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd;
  if (size < 4) return 0;
  int32_t n_vocab;
  std::memcpy(&n_vocab, data, 4);
  auto vocab = ParseLlama2cVocab(
      std::string_view(reinterpret_cast<const char*>(data) + 4, size - 4), n_vocab);
  if (!vocab.ok()) return 0;
  Tokenizer tok(*std::move(vocab));
  std::vector<int32_t> ids = tok.Encode("Once upon a time \xe2\x82\xac\xff", true);
  for (int32_t id = 0; id < tok.vocab().size(); ++id) ids.push_back(id);
  (void)tok.Decode(ids);
  return 0;
}
