// Checks shared by the .flash tests: a converted file against its source,
// bit for bit (resident tensors, gate/up rows, down columns as values).
#ifndef FLASHD_TESTS_FLASH_TEST_UTIL_H_
#define FLASHD_TESTS_FLASH_TEST_UTIL_H_

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/base/mapped_file.h"
#include "common/flash/flash_file.h"
#include "common/kernels/kernels.h"
#include "common/model/model_loader.h"
#include "gtest/gtest.h"

namespace flashd::flash::testing {

inline void ExpectConfigEq(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.n_vocab, b.n_vocab);
  EXPECT_EQ(a.n_embd, b.n_embd);
  EXPECT_EQ(a.n_ff, b.n_ff);
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.n_head, b.n_head);
  EXPECT_EQ(a.n_head_kv, b.n_head_kv);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.n_rot, b.n_rot);
  EXPECT_EQ(a.n_ctx_train, b.n_ctx_train);
  EXPECT_EQ(a.rms_eps, b.rms_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
}

// Value of neuron i's down column at row r as stored in its bundle.
inline float StoredDown(const BundleGeometry& g, const uint8_t* bundle,
                        const float* scale, const float* min, int32_t i,
                        int32_t r) {
  const uint8_t* down = bundle + g.down_offset();
  if (g.down.kind == DownFormat::Kind::kTyped) {
    float v;
    const size_t es = Traits(g.down.type).type_size;
    kernels::ToFloat(g.down.type, down + r * es, &v, 1);
    return v;
  }
  const float q = static_cast<int8_t>(down[r]);
  const size_t at = size_t(i / g.down.group) * g.n_embd + r;
  // ggml's expression order: (scale * q) - min, in float.
  return g.down.has_min ? scale[at] * q - min[at] : scale[at] * q;
}

// Compares `flash_path` with the model it was converted from: config,
// every resident tensor's bytes, every bundle's gate/up bytes and CRC, and
// every down column value bit for bit against kernels::ToFloat of the
// source's down rows. Returns the number of down values checked.
inline int64_t ExpectMatchesSource(const std::string& model_path,
                                   const std::string& tokenizer_path,
                                   const std::string& flash_path) {
  LoadOptions lo;
  lo.tokenizer_path = tokenizer_path;
  absl::StatusOr<LoadedModel> loaded = LoadModel(model_path, lo);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  absl::StatusOr<std::unique_ptr<FlashFile>> opened = FlashFile::Open(flash_path);
  EXPECT_TRUE(opened.ok()) << opened.status();
  absl::StatusOr<std::unique_ptr<MappedFile>> mapped = MappedFile::Open(flash_path);
  EXPECT_TRUE(mapped.ok()) << mapped.status();
  if (!loaded.ok() || !opened.ok() || !mapped.ok()) return 0;
  const Model& m = *loaded->model;
  const FlashFile& f = **opened;
  const FlashLayout& l = f.layout();
  const uint8_t* base = (*mapped)->data();
  ExpectConfigEq(l.config, m.config);
  EXPECT_EQ(l.type_name, m.type_name);

  auto same = [&](const TensorExtent& t, const void* src, size_t n,
                  const std::string& what) {
    EXPECT_EQ(t.extent.bytes, n) << what;
    if (t.extent.bytes != n) return;
    EXPECT_EQ(std::memcmp(base + t.extent.offset, src, n), 0) << what;
    absl::Status s = FlashFile::VerifyExtent(t.extent, base + t.extent.offset, what);
    EXPECT_TRUE(s.ok()) << s;
  };
  auto same_matrix = [&](const TensorExtent& t, const Matrix& mat,
                         const std::string& what) {
    EXPECT_EQ(t.type, mat.type) << what;
    EXPECT_EQ(t.cols, mat.cols) << what;
    EXPECT_EQ(t.rows, mat.rows) << what;
    same(t, mat.data, mat.bytes(), what);
  };
  const size_t norm_bytes = size_t(m.config.n_embd) * sizeof(float);
  same_matrix(l.token_embd, m.tok_embd, "token_embd");
  same_matrix(l.output, m.output, "output");
  same(l.output_norm, m.output_norm, norm_bytes, "output_norm");
  // Chunk CRCs of the streamed tensors, and none for the others.
  for (const TensorExtent* t : {&l.token_embd, &l.output}) {
    absl::Span<const uint32_t> crcs = f.ChunkCrcs(*t);
    const uint64_t c = kStreamChunkBytes;
    EXPECT_EQ(crcs.size(), (t->extent.bytes + c - 1) / c);
    int bad = 0;
    for (size_t k = 0; k < crcs.size(); ++k) {
      const uint64_t n = std::min<uint64_t>(c, t->extent.bytes - k * c);
      bad += Crc32c(base + t->extent.offset + k * c, n) != crcs[k];
    }
    EXPECT_EQ(bad, 0);
  }
  EXPECT_TRUE(f.ChunkCrcs(l.layers[0].wq).empty());
  if (m.output.data == m.tok_embd.data) {
    EXPECT_EQ(l.output.extent.offset, l.token_embd.extent.offset);
  } else {
    EXPECT_NE(l.output.extent.offset, l.token_embd.extent.offset);
  }

  const int32_t n_ff = m.config.n_ff, n_embd = m.config.n_embd;
  std::vector<float> row(n_ff);
  int64_t checked = 0;
  for (int32_t li = 0; li < m.config.n_layer; ++li) {
    SCOPED_TRACE(::testing::Message() << "layer " << li);
    const LayerWeights& w = m.layers[li];
    const LayerLayout& L = l.layers[li];
    same(L.attn_norm, w.attn_norm, norm_bytes, "attn_norm");
    same_matrix(L.wq, w.wq, "wq");
    same_matrix(L.wk, w.wk, "wk");
    same_matrix(L.wv, w.wv, "wv");
    same_matrix(L.wo, w.wo, "wo");
    same(L.ffn_norm, w.ffn_norm, norm_bytes, "ffn_norm");
    const BundleGeometry& g = L.geometry;
    EXPECT_EQ(g.gate_type, w.ffn.gate.type);
    EXPECT_EQ(g.up_type, w.ffn.up.type);
    EXPECT_EQ(g.gate_bytes, w.ffn.gate.row_bytes);
    EXPECT_EQ(g.up_bytes, w.ffn.up.row_bytes);
    EXPECT_EQ(L.bundles.bytes, uint64_t(n_ff) * g.bundle_bytes());
    for (const Extent* e : {&L.down_scale, &L.down_min, &L.bundle_crcs}) {
      if (e->bytes == 0) continue;
      absl::Status s = FlashFile::VerifyExtent(*e, base + e->offset, "table");
      EXPECT_TRUE(s.ok()) << s;
    }
    const uint8_t* bundles = base + L.bundles.offset;
    const size_t bb = g.bundle_bytes();
    int gate_up_bad = 0, crc_bad = 0;
    for (int32_t i = 0; i < n_ff; ++i) {
      const uint8_t* b = bundles + size_t(i) * bb;
      gate_up_bad += std::memcmp(b, w.ffn.GateRow(i), g.gate_bytes) != 0;
      gate_up_bad += std::memcmp(b + g.up_offset(), w.ffn.UpRow(i), g.up_bytes) != 0;
      crc_bad += !f.VerifyBundle(li, i, b).ok();
    }
    EXPECT_EQ(gate_up_bad, 0);
    EXPECT_EQ(crc_bad, 0);
    const auto* scale = reinterpret_cast<const float*>(base + L.down_scale.offset);
    const auto* min = reinterpret_cast<const float*>(base + L.down_min.offset);
    int64_t bad = 0;
    for (int32_t r = 0; r < n_embd; ++r) {
      kernels::ToFloat(w.ffn.down.type, w.ffn.down.Row(r), row.data(), n_ff);
      for (int32_t i = 0; i < n_ff; ++i) {
        const float v = StoredDown(g, bundles + size_t(i) * bb, scale, min, i, r);
        if (std::memcmp(&v, &row[i], sizeof(float)) != 0 && bad++ == 0) {
          ADD_FAILURE() << "down row " << r << " neuron " << i << ": stored "
                        << v << ", source " << row[i];
        }
        ++checked;
      }
    }
    EXPECT_EQ(bad, 0);
  }
  return checked;
}

}  // namespace flashd::flash::testing

#endif  // FLASHD_TESTS_FLASH_TEST_UTIL_H_
