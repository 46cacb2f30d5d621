// Feeds arbitrary bytes to the two real tokenizers (the Llama SentencePiece
// vocabulary and stories260K's llama2.c vocabulary from the shared test
// data): the first byte picks one, the rest is encoded as text, decoded
// back, and also read as int32 ids (any value, in or out of range) to
// decode and to stream through Utf8Streamer. Checks that nothing crashes,
// that every id Encode returns is in the vocabulary, and that streamed
// output is valid UTF-8 the length of which is bounded.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>

#include "common/base/check.h"
#include "common/base/mapped_file.h"
#include "common/gguf/gguf_file.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/vocab.h"
#include "fuzz/fuzz_util.h"

namespace {

using flashd::Tokenizer;

std::unique_ptr<Tokenizer> Load(bool llama2c) {
  const std::string dir = flashd::fuzz::TestData();
  absl::StatusOr<flashd::Vocab> vocab;
  if (llama2c) {
    vocab = flashd::LoadVocabFromLlama2c(dir + "/models/tok512.bin", 512);
  } else {
    auto g = flashd::GgufFile::Open(dir + "/tokenizer/ggml-vocab-llama-spm.gguf");
    vocab = g.ok() ? flashd::LoadVocabFromGguf(**g) : g.status();
  }
  if (!vocab.ok()) {
    std::fprintf(stderr, "tokenizer_fuzzer: %s (set FLASHD_TEST_DATA)\n",
                 std::string(vocab.status().message()).c_str());
    std::abort();
  }
  return std::make_unique<Tokenizer>(*std::move(vocab));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer* const kSpm = Load(false).release();
  static const Tokenizer* const kLlama2c = Load(true).release();
  if (size < 1) return 0;
  const Tokenizer& tok = (data[0] & 1) ? *kLlama2c : *kSpm;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::vector<int32_t> ids = tok.Encode(text, (data[0] & 2) != 0);
  for (int32_t id : ids) FLASHD_CHECK(id >= 0 && id < tok.vocab().size());
  (void)tok.Decode(ids);

  std::vector<int32_t> raw(text.size() / 4);
  if (!raw.empty()) std::memcpy(raw.data(), text.data(), raw.size() * 4);
  (void)tok.Decode(raw);
  flashd::Utf8Streamer streamer;
  int32_t prev = tok.bos_id();
  for (int32_t id : raw) {
    (void)streamer.Push(tok.TokenBytes(prev, id));
    prev = id;
  }
  (void)streamer.Flush();
  (void)tok.PieceToId(text);
  return 0;
}
