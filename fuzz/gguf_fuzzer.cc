// Feeds arbitrary bytes to the GGUF parser (GgufFile::Parse). Checks that
// parsing never crashes, that every typed getter works on every key it
// accepted, and that every tensor it accepted lies inside the file (every
// byte of every tensor is read, so ASan catches a view past the end).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/base/mapped_file.h"
#include "common/gguf/gguf_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd;
  auto file = MappedFile::FromString(
      std::string_view(reinterpret_cast<const char*>(data), size));
  auto gguf = GgufFile::Parse(std::move(file));
  if (!gguf.ok()) return 0;
  const GgufFile& g = **gguf;
  for (const std::string& key : g.keys()) {
    (void)g.GetUint(key);
    (void)g.GetUint32(key);
    (void)g.GetInt(key);
    (void)g.GetFloat(key);
    (void)g.GetBool(key);
    (void)g.GetString(key);
    (void)g.GetStringArray(key);
    (void)g.GetFloatArray(key);
    (void)g.GetIntArray(key);
  }
  volatile uint8_t sink = 0;
  uint8_t x = 0;
  for (const GgufTensorInfo& t : g.tensors()) {
    const uint8_t* p = g.TensorData(t);
    for (uint64_t i = 0; i < t.n_bytes; ++i) x ^= p[i];
    (void)g.FindTensor(t.name);
  }
  sink = x;
  (void)sink;
  return 0;
}
