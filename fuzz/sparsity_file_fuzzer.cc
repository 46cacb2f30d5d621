// Feeds arbitrary bytes to the .sparsity reader (SparsityProfile::Load).
// The model shape and source identity it is checked against are taken from
// the file's own keys (when they fit), so mutations get past the identity
// and shape checks into the thresholds and predictor tensors. Checks that
// a profile it accepts has every predictor weight inside the file (every
// row is dequantized) and a threshold per layer for every setting.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/base/check.h"
#include "common/base/mapped_file.h"
#include "common/gguf/gguf_file.h"
#include "common/sparsity/sparsity_file.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd;
  ModelConfig config;
  uint64_t identity = 0;
  {
    auto g = GgufFile::Parse(MappedFile::FromString(
        std::string_view(reinterpret_cast<const char*>(data), size)));
    if (!g.ok()) return 0;
    auto dim = [&](const char* key) {
      absl::StatusOr<uint32_t> v = (*g)->GetUint32(key);
      return v.ok() && *v <= (1u << 20) ? static_cast<int32_t>(*v) : 1;
    };
    config.n_layer = dim("flashd.sparsity.n_layer");
    config.n_embd = dim("flashd.sparsity.n_embd");
    config.n_ff = dim("flashd.sparsity.n_ff");
    identity = (*g)->GetUint("flashd.sparsity.source_identity").value_or(0);
  }
  fuzz::MemFile mem(data, size);
  auto profile = SparsityProfile::Load(mem.path(), config, identity);
  if (!profile.ok()) return 0;
  const Predictor& p = (*profile)->predictor();
  for (int32_t l = 0; l < p.n_layer(); ++l) {
    fuzz::TouchMatrix(p.gate(l));
    if (p.variant() == PredictorVariant::kGateUp) fuzz::TouchMatrix(p.up(l));
  }
  for (const SparsitySetting& s : (*profile)->setting_details()) {
    FLASHD_CHECK(s.thresholds.size() == static_cast<size_t>(config.n_layer));
  }
  return 0;
}
