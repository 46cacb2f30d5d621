// Feeds arbitrary bytes to the neuron-cache segment attach: the bytes
// become the file "cache" in a directory of the harness's own, and CacheSegment::OpenOrCreate
// is asked for the layout the bytes' own header and layer records describe
// (when small), so mutations reach the warm-attach path. Checks that
// attach never crashes and that an attached segment's per-layer used count
// is within its capacity and its slot and id arrays lie inside the segment
// (every id is read).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/base/check.h"
#include "common/flash/cache_segment.h"
#include "fuzz/fuzz_shm_dir.h"

namespace {

// What the harness reads from the bytes, in the segment's own layout
// (magic 8, version 4, header_bytes 4, identity 8, total 8, n_layer 4,
// n_ff 4; then per layer capacity 4, used 4, bundle_bytes 8, offsets 16).
template <typename T>
T At(const uint8_t* data, size_t size, size_t offset) {
  T v{};
  if (offset + sizeof(T) <= size) std::memcpy(&v, data + offset, sizeof(T));
  return v;
}


}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using flashd::flash::CacheSegment;
  static const std::string kName = "cache";
  const uint64_t identity = At<uint64_t>(data, size, 16);
  // The engine always has at least one layer.
  const int32_t n_layer = std::clamp(At<int32_t>(data, size, 32), 1, 4);
  const int32_t n_ff = At<int32_t>(data, size, 36);
  std::vector<CacheSegment::LayerSpec> specs;
  for (int32_t l = 0; l < n_layer; ++l) {
    const size_t rec = 40 + 32 * static_cast<size_t>(l);
    specs.push_back({std::clamp(At<int32_t>(data, size, rec), 0, 64),
                     std::min<uint64_t>(At<uint64_t>(data, size, rec + 8), 8192)});
  }
  flashd::fuzz::WriteFile(kName, data, size);
  if (auto seg = CacheSegment::OpenOrCreate(flashd::fuzz::FuzzDir(), kName,
                                            identity, n_ff, specs);
      seg.ok()) {
    int64_t sum = 0;
    for (int32_t l = 0; l < n_layer; ++l) {
      const int32_t used = (*seg)->used(l);
      FLASHD_CHECK(used >= 0 && used <= specs[l].capacity);
      for (int32_t i = 0; i < specs[l].capacity; ++i) sum += (*seg)->ids(l)[i];
      if (specs[l].capacity > 0) {
        uint8_t* last = (*seg)->slots(l) + specs[l].capacity * specs[l].bundle_bytes;
        FLASHD_CHECK(last <= (*seg)->slots(0) + (*seg)->bytes());
        if (specs[l].bundle_bytes > 0) sum += last[-1];
      }
    }
    volatile int64_t sink = sum;
    (void)sink;
  }
  ::unlinkat(flashd::fuzz::FuzzDir()->fd(), kName.c_str(), 0);
  return 0;
}
