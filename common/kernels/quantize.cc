// Reference conversions between floats and ggml rows: the quantizers follow
// ggml's quantize_row_*_ref step for step (same float operations in the same
// order, same rounding helpers), so a row we quantize is byte-identical to
// the one llama.cpp's reference path writes; the dequantizers follow
// dequantize_row_* the same way, so ToFloat agrees with ggml bit for bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "common/base/check.h"
#include "common/base/fp16.h"
#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels_internal.h"

namespace flashd::kernels::internal {
namespace {

// Below this magnitude a group counts as all zero (ggml's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// Round to nearest, ties to even, for |v| <= 2^22 - 1: adding 1.5 * 2^23
// pushes the fraction out of the mantissa, whose low 23 bits then hold
// v + 2^22. Same trick (and same results) as ggml's nearest_int.
inline int NearestInt(float v) {
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  return (bits & 0x007fffff) - 0x00400000;
}

// roundf (halves away from zero) for |v| < 2^31, without a libm call so the
// loop vectorizes: v - trunc(v) is exact in float.
inline int RoundHalfAway(float v) {
  const int t = static_cast<int>(v);
  const float frac = v - static_cast<float>(t);
  return t + (frac >= 0.5f) - (frac <= -0.5f);
}

// Unpacks the 6-bit scale and min of sub-block j (0..7) of a Q4_K block.
// Sub-blocks 0..3 keep theirs in the low 6 bits of bytes j and j + 4; 4..7
// keep the low 4 bits in the nibbles of byte j + 4 and the top 2 bits in the
// spare high bits of bytes j - 4 (scale) and j (min).
inline void UnpackQ4KScaleMin(int j, const uint8_t* packed, uint8_t* scale,
                              uint8_t* min) {
  if (j < 4) {
    *scale = packed[j] & 63;
    *min = packed[j + 4] & 63;
  } else {
    *scale = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
    *min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
  }
}

// Inverse of UnpackQ4KScaleMin for all 8 sub-blocks; sc and m are < 64.
void PackQ4KScalesMins(const uint8_t* sc, const uint8_t* m, uint8_t* packed) {
  for (int j = 0; j < 4; ++j) {
    packed[j] = sc[j];
    packed[j + 4] = m[j];
  }
  for (int j = 4; j < 8; ++j) {
    packed[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
    packed[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
    packed[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
  }
}

// ggml's make_qx_quants: symmetric quantization of n values to levels
// [-nmax, nmax - 1], stored biased by nmax in `levels`. The first scale maps
// the value of largest magnitude to -nmax; with rmse_type 1 (weights x^2)
// the scale is refit by least squares and 18 nearby starting scales are
// tried. Returns the scale (x ~= scale * (level - nmax)).
float MakeSymmetricQuants(int n, int nmax, const float* x, int8_t* levels) {
  float max = 0;
  float amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(levels, levels + n, int8_t{0});
    return 0.0f;
  }
  auto clamp_level = [nmax](int l) {
    return std::max(-nmax, std::min(nmax - 1, l));
  };

  float inv_scale = -nmax / max;
  float sum_lx = 0;
  float sum_l2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = clamp_level(NearestInt(inv_scale * x[i]));
    levels[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sum_lx += w * x[i] * l;
    sum_l2 += w * l * l;
  }
  float scale = sum_l2 ? sum_lx / sum_l2 : 0.0f;
  float best = scale * sum_lx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    inv_scale = -(nmax + 0.1f * step) / max;
    sum_lx = 0;
    sum_l2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clamp_level(NearestInt(inv_scale * x[i]));
      const float w = x[i] * x[i];
      sum_lx += w * x[i] * l;
      sum_l2 += w * l * l;
    }
    if (sum_l2 > 0 && sum_lx * sum_lx > best * sum_l2) {
      for (int i = 0; i < n; ++i) {
        levels[i] = static_cast<int8_t>(
            nmax + clamp_level(NearestInt(inv_scale * x[i])));
      }
      scale = sum_lx / sum_l2;
      best = scale * sum_lx;
    }
  }
  return scale;
}

// ggml's make_qkx2_quants with Q4_K's search parameters (rmin -1, rdelta 0.1,
// 21 candidate scales, squared error): asymmetric quantization of n values
// to levels [0, nmax] with x ~= scale * level - *neg_min. Each candidate
// scale's levels get a weighted least-squares fit of scale and min; the fit
// with the smallest weighted squared error wins. `scratch` holds n levels.
float MakeAffineQuants(int n, int nmax, const float* x, const float* weights,
                       uint8_t* levels, float* neg_min, uint8_t* scratch) {
  constexpr float kRmin = -1.0f;
  constexpr float kRdelta = 0.1f;
  constexpr int kSteps = 20;

  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(levels, levels + n, uint8_t{0});
    *neg_min = -min;
    return 0.0f;
  }
  auto clamp_level = [nmax](int l) { return std::max(0, std::min(nmax, l)); };

  float inv_scale = nmax / (max - min);
  float scale = 1 / inv_scale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    levels[i] =
        static_cast<uint8_t>(clamp_level(NearestInt(inv_scale * (x[i] - min))));
    const float diff = scale * levels[i] + min - x[i];
    best_error += weights[i] * (diff * diff);
  }
  for (int step = 0; step <= kSteps; ++step) {
    inv_scale = (kRmin + kRdelta * step + nmax) / (max - min);
    float sum_l = 0;
    float sum_l2 = 0;
    float sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clamp_level(NearestInt(inv_scale * (x[i] - min)));
      scratch[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0)) continue;  // also skips a NaN determinant, as ggml
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0) {
      this_min = 0;
      this_scale = sum_xl / sum_l2;
    }
    float error = 0;
    for (int i = 0; i < n; ++i) {
      const float diff = this_scale * scratch[i] + this_min - x[i];
      error += weights[i] * (diff * diff);
    }
    if (error < best_error) {
      std::copy(scratch, scratch + n, levels);
      best_error = error;
      scale = this_scale;
      min = this_min;
    }
  }
  *neg_min = -min;
  return scale;
}

// ---------------------------------------------------------------- Q8_0

void QuantizeQ8_0(const float* x, BlockQ8_0* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK8_0; ++b, x += kQK8_0) {
    float amax = 0;
    for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float inv_d = d ? 1.0f / d : 0.0f;
    y[b].d = FloatToHalf(d);
    for (int j = 0; j < kQK8_0; ++j) {
      y[b].qs[j] = static_cast<int8_t>(RoundHalfAway(x[j] * inv_d));
    }
  }
}

void DequantizeQ8_0(const BlockQ8_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK8_0; ++b, y += kQK8_0) {
    const float d = HalfToFloat(x[b].d);
    for (int j = 0; j < kQK8_0; ++j) y[j] = x[b].qs[j] * d;
  }
}

// ---------------------------------------------------------------- Q4_0

void QuantizeQ4_0(const float* x, BlockQ4_0* y, int64_t n) {
  constexpr int kHalf = kQK4_0 / 2;
  for (int64_t b = 0; b < n / kQK4_0; ++b, x += kQK4_0) {
    // The signed value of largest magnitude maps to level 0 (-8 * d), which
    // uses the one extra negative level of the asymmetric range [-8, 7].
    float amax = 0;
    float max = 0;
    for (int j = 0; j < kQK4_0; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float inv_d = d ? 1.0f / d : 0.0f;
    y[b].d = FloatToHalf(d);
    for (int j = 0; j < kHalf; ++j) {
      // Truncation of v + 8.5 rounds v to nearest; the opposite extreme
      // lands on 16 and is clamped to 15.
      const int lo = std::min(15, static_cast<int>(x[j] * inv_d + 8.5f));
      const int hi =
          std::min(15, static_cast<int>(x[j + kHalf] * inv_d + 8.5f));
      y[b].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void DequantizeQ4_0(const BlockQ4_0* x, float* y, int64_t n) {
  constexpr int kHalf = kQK4_0 / 2;
  for (int64_t b = 0; b < n / kQK4_0; ++b, y += kQK4_0) {
    const float d = HalfToFloat(x[b].d);
    for (int j = 0; j < kHalf; ++j) {
      y[j] = ((x[b].qs[j] & 0x0F) - 8) * d;
      y[j + kHalf] = ((x[b].qs[j] >> 4) - 8) * d;
    }
  }
}

// ---------------------------------------------------------------- Q4_K

void QuantizeQ4_K(const float* x, BlockQ4_K* y, int64_t n) {
  constexpr int kSub = 32;
  constexpr int kNumSub = kQK_K / kSub;
  uint8_t levels[kQK_K];
  uint8_t scratch[kSub];
  float weights[kSub];
  float scales[kNumSub];
  float mins[kNumSub];

  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    BlockQ4_K& out = y[b];
    float max_scale = 0;  // scales are >= 0 once the min is taken out
    float max_min = 0;
    for (int j = 0; j < kNumSub; ++j) {
      const float* xs = x + kSub * j;
      float sum_x2 = 0;
      for (int l = 0; l < kSub; ++l) sum_x2 += xs[l] * xs[l];
      const float rms = std::sqrt(sum_x2 / kSub);
      for (int l = 0; l < kSub; ++l) weights[l] = rms + std::fabs(xs[l]);
      scales[j] = MakeAffineQuants(kSub, 15, xs, weights, levels + kSub * j,
                                   &mins[j], scratch);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }

    // Quantize the sub-block scales and mins to 6 bits against their maxima.
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t sc6[kNumSub];
    uint8_t m6[kNumSub];
    for (int j = 0; j < kNumSub; ++j) {
      // As ggml: narrow to 8 bits first, then clamp.
      sc6[j] = std::min<uint8_t>(
          63, static_cast<uint8_t>(NearestInt(inv_scale * scales[j])));
      m6[j] = std::min<uint8_t>(
          63, static_cast<uint8_t>(NearestInt(inv_min * mins[j])));
    }
    PackQ4KScalesMins(sc6, m6, out.scales);
    out.d = FloatToHalf(max_scale / 63.f);
    out.dmin = FloatToHalf(max_min / 63.f);

    // Requantize each sub-block against the scale and min actually stored.
    // A sub-block whose stored scale is zero keeps its first-pass levels.
    for (int j = 0; j < kNumSub; ++j) {
      uint8_t sc;
      uint8_t m;
      UnpackQ4KScaleMin(j, out.scales, &sc, &m);
      const float d = HalfToFloat(out.d) * sc;
      if (!d) continue;
      const float dm = HalfToFloat(out.dmin) * m;
      for (int l = 0; l < kSub; ++l) {
        const int q = NearestInt((x[kSub * j + l] + dm) / d);
        levels[kSub * j + l] =
            static_cast<uint8_t>(std::max(0, std::min(15, q)));
      }
    }

    // Each 64 elements share 32 bytes: the first 32 in the low nibbles, the
    // next 32 in the high nibbles.
    for (int c = 0; c < kQK_K / 64; ++c) {
      const uint8_t* lv = levels + 64 * c;
      uint8_t* q = out.qs + 32 * c;
      for (int l = 0; l < 32; ++l) {
        q[l] = static_cast<uint8_t>(lv[l] | (lv[l + 32] << 4));
      }
    }
  }
}

void DequantizeQ4_K(const BlockQ4_K* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float d = HalfToFloat(x[b].d);
    const float dmin = HalfToFloat(x[b].dmin);
    const uint8_t* q = x[b].qs;
    for (int c = 0; c < kQK_K / 64; ++c, q += 32) {
      uint8_t sc;
      uint8_t m;
      UnpackQ4KScaleMin(2 * c, x[b].scales, &sc, &m);
      const float d_lo = d * sc;
      const float m_lo = dmin * m;
      UnpackQ4KScaleMin(2 * c + 1, x[b].scales, &sc, &m);
      const float d_hi = d * sc;
      const float m_hi = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d_lo * (q[l] & 0xF) - m_lo;
      for (int l = 0; l < 32; ++l) *y++ = d_hi * (q[l] >> 4) - m_hi;
    }
  }
}

// ---------------------------------------------------------------- Q6_K

void QuantizeQ6_K(const float* x, BlockQ6_K* y, int64_t n) {
  constexpr int kSub = 16;
  constexpr int kNumSub = kQK_K / kSub;
  int8_t levels[kQK_K];  // biased: level + 32 in [0, 63]
  float scales[kNumSub];

  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    BlockQ6_K& out = y[b];
    float max_scale = 0;  // signed scale of largest magnitude
    float max_abs_scale = 0;
    for (int j = 0; j < kNumSub; ++j) {
      scales[j] =
          MakeSymmetricQuants(kSub, 32, x + kSub * j, levels + kSub * j);
      const float abs_scale = std::fabs(scales[j]);
      if (abs_scale > max_abs_scale) {
        max_abs_scale = abs_scale;
        max_scale = scales[j];
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&out, 0, sizeof(out));
      continue;
    }

    // Sub-block scales become int8 against the largest; that one maps to
    // -128, so d carries the sign.
    const float inv_scale = -128.f / max_scale;
    out.d = FloatToHalf(1 / inv_scale);
    for (int j = 0; j < kNumSub; ++j) {
      out.scales[j] =
          static_cast<int8_t>(std::min(127, NearestInt(inv_scale * scales[j])));
    }

    // Requantize against the stored scales (zero-scale sub-blocks keep their
    // first-pass levels).
    for (int j = 0; j < kNumSub; ++j) {
      const float d = HalfToFloat(out.d) * out.scales[j];
      if (!d) continue;
      for (int l = 0; l < kSub; ++l) {
        const int q = NearestInt(x[kSub * j + l] / d);
        levels[kSub * j + l] =
            static_cast<int8_t>(std::max(-32, std::min(31, q)) + 32);
      }
    }

    // Each 128 elements: 64 bytes of low nibbles (elements +0 and +64 share
    // ql[l], +32 and +96 share ql[l + 32]) and 32 bytes holding the top two
    // bits of elements +0, +32, +64, +96 in bits 0-1, 2-3, 4-5, 6-7.
    for (int h = 0; h < kQK_K / 128; ++h) {
      const int8_t* lv = levels + 128 * h;
      uint8_t* ql = out.ql + 64 * h;
      uint8_t* qh = out.qh + 32 * h;
      for (int l = 0; l < 32; ++l) {
        const int q0 = lv[l];
        const int q1 = lv[l + 32];
        const int q2 = lv[l + 64];
        const int q3 = lv[l + 96];
        ql[l] = static_cast<uint8_t>((q0 & 0xF) | ((q2 & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((q1 & 0xF) | ((q3 & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((q0 >> 4) | ((q1 >> 4) << 2) |
                                     ((q2 >> 4) << 4) | ((q3 >> 4) << 6));
      }
    }
  }
}

void DequantizeQ6_K(const BlockQ6_K* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float d = HalfToFloat(x[b].d);
    for (int h = 0; h < kQK_K / 128; ++h, y += 128) {
      const uint8_t* ql = x[b].ql + 64 * h;
      const uint8_t* qh = x[b].qh + 32 * h;
      const int8_t* sc = x[b].scales + 8 * h;
      for (int l = 0; l < 32; ++l) {
        const int s = l / 16;
        const int q0 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q1 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[s] * q0;
        y[l + 32] = d * sc[s + 2] * q1;
        y[l + 64] = d * sc[s + 4] * q2;
        y[l + 96] = d * sc[s + 6] * q3;
      }
    }
  }
}

// ---------------------------------------------------------------- Q8_K

void QuantizeQ8_K(const float* x, BlockQ8_K* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    BlockQ8_K& out = y[b];
    float max = 0;
    float amax = 0;
    for (int j = 0; j < kQK_K; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    if (!amax) {
      std::memset(&out, 0, sizeof(out));
      continue;
    }
    // The signed extreme maps to -127 (so d is -max / 127 and may be
    // negative); ggml moved from -128 to -127 for its IQ kernels.
    const float inv_scale = -127.f / max;
    for (int j = 0; j < kQK_K; ++j) {
      out.qs[j] =
          static_cast<int8_t>(std::min(127, NearestInt(inv_scale * x[j])));
    }
    for (int g = 0; g < kQK_K / 16; ++g) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += out.qs[16 * g + l];
      out.bsums[g] = static_cast<int16_t>(sum);
    }
    out.d = 1 / inv_scale;
  }
}

void DequantizeQ8_K(const BlockQ8_K* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; ++b, y += kQK_K) {
    for (int j = 0; j < kQK_K; ++j) y[j] = x[b].d * x[b].qs[j];
  }
}

}  // namespace

void QuantizeRowRef(GgmlType type, const float* x, void* y, int64_t n) {
  FLASHD_DCHECK(n % Traits(type).block_size == 0);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
      return;
    case GgmlType::kF16: {
      auto* out = static_cast<uint16_t*>(y);
      for (int64_t i = 0; i < n; ++i) out[i] = FloatToHalf(x[i]);
      return;
    }
    case GgmlType::kBF16: {
      auto* out = static_cast<uint16_t*>(y);
      for (int64_t i = 0; i < n; ++i) out[i] = FloatToBf16(x[i]);
      return;
    }
    case GgmlType::kQ8_0:
      QuantizeQ8_0(x, static_cast<BlockQ8_0*>(y), n);
      return;
    case GgmlType::kQ4_0:
      QuantizeQ4_0(x, static_cast<BlockQ4_0*>(y), n);
      return;
    case GgmlType::kQ4_K:
      QuantizeQ4_K(x, static_cast<BlockQ4_K*>(y), n);
      return;
    case GgmlType::kQ6_K:
      QuantizeQ6_K(x, static_cast<BlockQ6_K*>(y), n);
      return;
    case GgmlType::kQ8_K:
      QuantizeQ8_K(x, static_cast<BlockQ8_K*>(y), n);
      return;
    default:
      break;
  }
  std::fprintf(stderr, "QuantizeRowRef: no quantizer for %.*s\n",
               static_cast<int>(Traits(type).name.size()),
               Traits(type).name.data());
  FLASHD_CHECK(false);
}

void DequantizeRowRef(GgmlType type, const void* x, float* y, int64_t n) {
  FLASHD_DCHECK(n % Traits(type).block_size == 0);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
      return;
    case GgmlType::kF16: {
      const auto* in = static_cast<const uint16_t*>(x);
      for (int64_t i = 0; i < n; ++i) y[i] = HalfToFloat(in[i]);
      return;
    }
    case GgmlType::kBF16: {
      const auto* in = static_cast<const uint16_t*>(x);
      for (int64_t i = 0; i < n; ++i) y[i] = Bf16ToFloat(in[i]);
      return;
    }
    case GgmlType::kQ8_0:
      DequantizeQ8_0(static_cast<const BlockQ8_0*>(x), y, n);
      return;
    case GgmlType::kQ4_0:
      DequantizeQ4_0(static_cast<const BlockQ4_0*>(x), y, n);
      return;
    case GgmlType::kQ4_K:
      DequantizeQ4_K(static_cast<const BlockQ4_K*>(x), y, n);
      return;
    case GgmlType::kQ6_K:
      DequantizeQ6_K(static_cast<const BlockQ6_K*>(x), y, n);
      return;
    case GgmlType::kQ8_K:
      DequantizeQ8_K(static_cast<const BlockQ8_K*>(x), y, n);
      return;
    default:
      break;
  }
  std::fprintf(stderr, "DequantizeRowRef: no dequantizer for %.*s\n",
               static_cast<int>(Traits(type).name.size()),
               Traits(type).name.data());
  FLASHD_CHECK(false);
}

}  // namespace flashd::kernels::internal
