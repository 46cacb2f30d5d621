// Feeds arbitrary bytes to the GGUF model loader: GgufFile::Parse, then
// ModelFromGguf and LoadVocabFromGguf, as `flashd run model.gguf` does.
// Checks that a model it accepts has every weight inside the file (each
// tensor is dequantized in full) and that its tokenizer encodes and
// decodes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/base/mapped_file.h"
#include "common/gguf/gguf_file.h"
#include "common/model/model_loader.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/vocab.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd;
  auto gguf = GgufFile::Parse(MappedFile::FromString(
      std::string_view(reinterpret_cast<const char*>(data), size)));
  if (!gguf.ok()) return 0;
  if (auto model = ModelFromGguf(**gguf); model.ok()) {
    fuzz::TouchModel(**model);
  }
  if (auto vocab = LoadVocabFromGguf(**gguf); vocab.ok()) {
    Tokenizer tok(*std::move(vocab));
    std::vector<int32_t> ids = tok.Encode("Hello world, <0x41> \xff\xfe", true);
    for (int32_t id = 0; id < tok.vocab().size() && id < 1024; ++id) ids.push_back(id);
    (void)tok.Decode(ids);
  }
  return 0;
}
