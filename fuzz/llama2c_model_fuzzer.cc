// Feeds arbitrary bytes to the llama2.c checkpoint loader (ModelFromLlama2c,
// as `flashd run`/`convert` on a .bin). Checks that a header it accepts
// describes weights inside the file: every weight of the model is read.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/base/mapped_file.h"
#include "common/model/model_loader.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd;
  auto model = ModelFromLlama2c(MappedFile::FromString(
      std::string_view(reinterpret_cast<const char*>(data), size)));
  if (model.ok()) fuzz::TouchModel(**model);
  return 0;
}
