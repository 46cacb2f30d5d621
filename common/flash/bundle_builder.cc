#include "common/flash/bundle_builder.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/base/fp16.h"

namespace flashd::flash::internal {
namespace {

// ggml's get_scale_min_k4 (as kernels/quantize.cc's UnpackQ4KScaleMin):
// the 6-bit scale and min of sub-block j (0..7) of a Q4_K block.
inline void Q4KScaleMin(int j, const uint8_t* packed, uint8_t* scale,
                        uint8_t* min) {
  if (j < 4) {
    *scale = packed[j] & 63;
    *min = packed[j + 4] & 63;
  } else {
    *scale = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
    *min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
  }
}

}  // namespace

absl::StatusOr<BundleGeometry> GeometryFor(const FfnWeights& ffn,
                                           const ModelConfig& c) {
  BundleGeometry g;
  g.n_embd = c.n_embd;
  g.n_ff = c.n_ff;
  g.gate_type = ffn.gate.type;
  g.up_type = ffn.up.type;
  g.gate_bytes = ffn.gate.row_bytes;
  g.up_bytes = ffn.up.row_bytes;
  g.down_bytes = c.n_embd;  // one int8 code per row unless typed
  switch (ffn.down.type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      g.down = {DownFormat::Kind::kTyped, ffn.down.type, 0, false};
      g.down_bytes = size_t(Traits(ffn.down.type).type_size) * c.n_embd;
      break;
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
      g.down = {DownFormat::Kind::kInt8Scaled, GgmlType::kF32, 32, false};
      break;
    case GgmlType::kQ4_K:
      g.down = {DownFormat::Kind::kInt8Scaled, GgmlType::kF32, 32, true};
      break;
    case GgmlType::kQ6_K:
      g.down = {DownFormat::Kind::kInt8Scaled, GgmlType::kF32, 16, false};
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "type ", std::string(Traits(ffn.down.type).name),
          " has no exact neuron-bundle format (supported: f32, f16, bf16, "
          "q8_0, q4_0, q4_K, q6_K)"));
  }
  return g;
}

void DecodeQuantRow(GgmlType type, const uint8_t* row, int64_t n, int8_t* q,
                    float* scale, float* min) {
  switch (type) {
    case GgmlType::kQ8_0: {
      const auto* x = reinterpret_cast<const BlockQ8_0*>(row);
      for (int64_t b = 0; b < n / kQK8_0; ++b, q += kQK8_0) {
        scale[b] = HalfToFloat(x[b].d);
        min[b] = 0.0f;
        std::memcpy(q, x[b].qs, kQK8_0);
      }
      return;
    }
    case GgmlType::kQ4_0: {
      const auto* x = reinterpret_cast<const BlockQ4_0*>(row);
      for (int64_t b = 0; b < n / kQK4_0; ++b, q += kQK4_0) {
        scale[b] = HalfToFloat(x[b].d);
        min[b] = 0.0f;
        for (int j = 0; j < kQK4_0 / 2; ++j) {
          q[j] = static_cast<int8_t>((x[b].qs[j] & 0xF) - 8);
          q[j + kQK4_0 / 2] = static_cast<int8_t>((x[b].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case GgmlType::kQ4_K: {
      const auto* x = reinterpret_cast<const BlockQ4_K*>(row);
      for (int64_t b = 0; b < n / kQK_K; ++b, q += kQK_K) {
        const float d = HalfToFloat(x[b].d);
        const float dmin = HalfToFloat(x[b].dmin);
        for (int j = 0; j < 8; ++j) {
          uint8_t sc, m;
          Q4KScaleMin(j, x[b].scales, &sc, &m);
          scale[8 * b + j] = d * sc;  // ggml: d_lo = d * sc, m_lo = dmin * m
          min[8 * b + j] = dmin * m;
        }
        for (int c = 0; c < 4; ++c) {
          const uint8_t* qs = x[b].qs + 32 * c;
          for (int l = 0; l < 32; ++l) {
            q[64 * c + l] = static_cast<int8_t>(qs[l] & 0xF);
            q[64 * c + 32 + l] = static_cast<int8_t>(qs[l] >> 4);
          }
        }
      }
      return;
    }
    case GgmlType::kQ6_K: {
      const auto* x = reinterpret_cast<const BlockQ6_K*>(row);
      for (int64_t b = 0; b < n / kQK_K; ++b, q += kQK_K) {
        const float d = HalfToFloat(x[b].d);
        for (int j = 0; j < 16; ++j) {
          scale[16 * b + j] = d * x[b].scales[j];  // ggml: d * sc[s] * q
          min[16 * b + j] = 0.0f;
        }
        for (int h = 0; h < 2; ++h) {
          const uint8_t* ql = x[b].ql + 64 * h;
          const uint8_t* qh = x[b].qh + 32 * h;
          int8_t* y = q + 128 * h;
          for (int l = 0; l < 32; ++l) {
            y[l] = static_cast<int8_t>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            y[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            y[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            y[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
          }
        }
      }
      return;
    }
    default:
      FLASHD_CHECK(false && "DecodeQuantRow: not a kInt8Scaled source type");
  }
}

void BundleBuilder::Build(const FfnWeights& ffn, const BundleGeometry& g) {
  const int64_t n_ff = g.n_ff, n_embd = g.n_embd;
  const size_t bb = g.bundle_bytes();
  bundles_.resize(size_t(n_ff) * bb);
  uint8_t* b = bundles_.data();
  for (int64_t i = 0; i < n_ff; ++i) {
    std::memcpy(b + i * bb, ffn.GateRow(i), g.gate_bytes);
    std::memcpy(b + i * bb + g.up_offset(), ffn.UpRow(i), g.up_bytes);
  }
  // Row by row: consecutive rows write adjacent bytes of the same n_ff
  // cache lines, so the transposition stays in cache.
  uint8_t* down = b + g.down_offset();
  if (g.down.kind == DownFormat::Kind::kTyped) {
    const size_t es = Traits(g.down.type).type_size;
    for (int64_t r = 0; r < n_embd; ++r) {
      const uint8_t* row = ffn.down.Row(r);
      if (es == 4) {
        for (int64_t i = 0; i < n_ff; ++i) std::memcpy(down + i * bb + r * 4, row + i * 4, 4);
      } else {
        for (int64_t i = 0; i < n_ff; ++i) std::memcpy(down + i * bb + r * 2, row + i * 2, 2);
      }
    }
    scale_.clear();
    min_.clear();
  } else {
    const int64_t groups = n_ff / g.down.group;
    scale_.resize(size_t(groups) * n_embd);
    min_.resize(g.down.has_min ? scale_.size() : 0);
    q_.resize(n_ff);
    row_scale_.resize(groups);
    row_min_.resize(groups);
    for (int64_t r = 0; r < n_embd; ++r) {
      DecodeQuantRow(ffn.down.type, ffn.down.Row(r), n_ff, q_.data(),
                     row_scale_.data(), row_min_.data());
      for (int64_t i = 0; i < n_ff; ++i) down[i * bb + r] = static_cast<uint8_t>(q_[i]);
      for (int64_t k = 0; k < groups; ++k) scale_[k * n_embd + r] = row_scale_[k];
      if (g.down.has_min) {
        for (int64_t k = 0; k < groups; ++k) min_[k * n_embd + r] = row_min_[k];
      }
    }
  }
  crcs_.resize(n_ff);
  for (int64_t i = 0; i < n_ff; ++i) crcs_[i] = Crc32c(b + i * bb, bb);
}

}  // namespace flashd::flash::internal
