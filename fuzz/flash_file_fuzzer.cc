// Feeds arbitrary bytes to the .flash reader (FlashFile::Open: header,
// manifest, embedded metadata GGUF, CRC tables). The harness re-seals the
// header's file size, the manifest and metadata CRCs and the header CRC
// before opening, so mutations reach the manifest decoder instead of
// stopping at a checksum. Checks that a file it accepts has every extent
// inside the file (each is read in full and every bundle is verified against
// its CRC table) and that its embedded tokenizer works.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "common/base/check.h"
#include "common/flash/flash_file.h"
#include "common/flash/flash_records.h"
#include "fuzz/fuzz_util.h"

namespace {

using namespace flashd::flash;

// Recomputes what the converter seals, where the header lets us.
void Reseal(std::string& f) {
  if (f.size() < internal::kHeaderBytes) return;
  internal::FileHeader h;
  std::memcpy(&h, f.data(), sizeof(h));
  h.file_bytes = f.size();
  auto crc = [&f](uint64_t off, uint64_t n, uint32_t* out) {
    if (off <= f.size() && n <= f.size() - off) *out = Crc32c(f.data() + off, n);
  };
  crc(h.manifest_offset, h.manifest_bytes, &h.manifest_crc32c);
  crc(h.metadata_offset, h.metadata_bytes, &h.metadata_crc32c);
  std::memcpy(f.data(), &h, sizeof(h));
  h.header_crc32c = internal::HeaderCrc(std::string_view(f.data(), internal::kHeaderBytes));
  std::memcpy(f.data(), &h, sizeof(h));
}

// Reads extent `e` of `f` in full (ASan: it must be inside the file).
void Touch(const std::string& f, const Extent& e) {
  FLASHD_CHECK(e.offset <= f.size() && e.bytes <= f.size() - e.offset);
  (void)FlashFile::VerifyExtent(e, reinterpret_cast<const uint8_t*>(f.data()) + e.offset, "x");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  Reseal(bytes);
  flashd::fuzz::MemFile mem(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  auto file = FlashFile::Open(mem.path());
  if (!file.ok()) return 0;
  const FlashLayout& L = (*file)->layout();
  for (const TensorExtent* t : {&L.token_embd, &L.output_norm, &L.output}) {
    Touch(bytes, t->extent);
    (void)(*file)->ChunkCrcs(*t);
  }
  const auto* base = reinterpret_cast<const uint8_t*>(bytes.data());
  for (size_t l = 0; l < L.layers.size(); ++l) {
    const LayerLayout& layer = L.layers[l];
    for (const TensorExtent* t : {&layer.attn_norm, &layer.wq, &layer.wk, &layer.wv,
                                  &layer.wo, &layer.ffn_norm}) {
      Touch(bytes, t->extent);
    }
    for (const Extent* e : {&layer.down_scale, &layer.down_min, &layer.bundles,
                            &layer.bundle_crcs}) {
      Touch(bytes, *e);
    }
    const int32_t n_ff = L.config.n_ff;
    FLASHD_CHECK((*file)->bundle_crcs(l).size() == static_cast<size_t>(n_ff));
    const size_t bb = layer.geometry.bundle_bytes();
    FLASHD_CHECK(layer.bundles.bytes == static_cast<uint64_t>(n_ff) * bb);
    for (int32_t i = 0; i < n_ff; ++i) {
      const uint8_t* p = base + layer.bundles.offset + static_cast<uint64_t>(i) * bb;
      (void)(*file)->VerifyBundles(static_cast<int32_t>(l), &i, &p, 1);
    }
  }
  if (auto tok = (*file)->MakeTokenizer(); tok.ok()) {
    (void)(*tok)->Decode((*tok)->Encode("Once upon a time", true));
  }
  return 0;
}
