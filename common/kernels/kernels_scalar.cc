// Portable kernels: the complete table every ISA falls back to, and
// GemmReference. The dot products follow ggml's generic (non-SIMD) vec_dot
// kernels: integer sums inside a block, float scales per block; plain float
// types multiply in float and accumulate in double.
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <cstring>

#include "common/base/check.h"
#include "common/base/fp16.h"
#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels.h"
#include "common/kernels/kernels_internal.h"

namespace flashd::kernels {
namespace internal {
namespace {

constexpr int Id(GgmlType type) { return static_cast<int>(type); }

// Elements converted per step by the chunked helpers below: a multiple of
// every block size, small enough for the stack.
constexpr int64_t kChunk = 512;

// Half -> float without branches (same result as HalfToFloat for every
// input, NaNs aside from their payload), so loops over halves vectorize.
// Normal numbers: exponent and mantissa moved into float position with the
// exponent rebiased by 224, then scaled by 2^-112 (exact; inf and NaN stay
// so). Subnormals: the mantissa m placed under the exponent of 0.5 gives
// 0.5 + m * 2^-24, and subtracting 0.5 leaves m * 2^-24 exactly.
inline float HalfToFloatFast(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;  // exponent and mantissa, sign shifted out
  const float normal = BitsToFloat((two_w >> 4) + (0xE0u << 23)) * 0x1p-112f;
  const float subnormal = BitsToFloat((two_w >> 17) | (126u << 23)) - 0.5f;
  // A mask, not ?:, so the compiler keeps it branch-free.
  const uint32_t is_subnormal = 0u - static_cast<uint32_t>(two_w < (1u << 27));
  const uint32_t bits = (FloatToBits(subnormal) & is_subnormal) |
                        (FloatToBits(normal) & ~is_subnormal);
  return BitsToFloat(sign | bits);
}

// ------------------------------------------------------------ dot products
// Each computes dot(row w, activation a) over n elements.

float DotF32(const void* w, const void* a, int64_t n) {
  const auto* x = static_cast<const float*>(w);
  const auto* y = static_cast<const float*>(a);
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int l = 0; l < 4; ++l)
      acc[l] += static_cast<double>(x[i + l] * y[i + l]);
  }
  for (; i < n; ++i) acc[0] += static_cast<double>(x[i] * y[i]);
  return static_cast<float>((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

// Converts a chunk of each operand to floats first (a loop the compiler
// vectorizes), then multiplies in float and accumulates in double.
template <float (*ToF32)(uint16_t)>
float DotHalfLike(const void* w, const void* a, int64_t n) {
  constexpr int64_t kStep = 256;
  const auto* x = static_cast<const uint16_t*>(w);
  const auto* y = static_cast<const uint16_t*>(a);
  float xf[kStep];
  float yf[kStep];
  double acc[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i < n; i += kStep) {
    const int64_t len = n - i < kStep ? n - i : kStep;
    for (int64_t j = 0; j < len; ++j) xf[j] = ToF32(x[i + j]);
    for (int64_t j = 0; j < len; ++j) yf[j] = ToF32(y[i + j]);
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) {
      for (int l = 0; l < 4; ++l) {
        acc[l] += static_cast<double>(xf[j + l] * yf[j + l]);
      }
    }
    for (; j < len; ++j) acc[0] += static_cast<double>(xf[j] * yf[j]);
  }
  return static_cast<float>((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

float DotQ8_0(const void* w, const void* a, int64_t n) {
  const auto* x = static_cast<const BlockQ8_0*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0;
  for (int64_t b = 0; b < n / kQK8_0; ++b) {
    int isum = 0;
    for (int j = 0; j < kQK8_0; ++j) isum += x[b].qs[j] * y[b].qs[j];
    sum += isum * (HalfToFloat(x[b].d) * HalfToFloat(y[b].d));
  }
  return sum;
}

float DotQ4_0(const void* w, const void* a, int64_t n) {
  constexpr int kHalf = kQK4_0 / 2;
  const auto* x = static_cast<const BlockQ4_0*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0;
  for (int64_t b = 0; b < n / kQK4_0; ++b) {
    // Unpack first: byte-wide loops the compiler vectorizes.
    int8_t q[kQK4_0];
    for (int j = 0; j < kHalf; ++j) {
      q[j] = static_cast<int8_t>((x[b].qs[j] & 0x0F) - 8);
      q[j + kHalf] = static_cast<int8_t>((x[b].qs[j] >> 4) - 8);
    }
    int isum = 0;
    for (int j = 0; j < kQK4_0; ++j) isum += q[j] * y[b].qs[j];
    sum += isum * HalfToFloat(x[b].d) * HalfToFloat(y[b].d);
  }
  return sum;
}

// Q4_K scales and mins as 8 plain bytes each (see quantize.cc for the
// packing).
void UnpackQ4KScalesMins(const uint8_t* packed, uint8_t* sc, uint8_t* m) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = packed[j] & 63;
    m[j] = packed[j + 4] & 63;
  }
  for (int j = 4; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>((packed[j + 4] & 0xF) |
                                 ((packed[j - 4] >> 6) << 4));
    m[j] = static_cast<uint8_t>((packed[j + 4] >> 4) | ((packed[j] >> 6) << 4));
  }
}

// x = d * sc * q - dmin * m, so dot = d * da * sum(sc * q * qa)
//                                   - dmin * da * sum(m * qa);
// the second sum comes from the activation's per-16 sums (bsums).
float DotQ4_K(const void* w, const void* a, int64_t n) {
  const auto* x = static_cast<const BlockQ4_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float sum = 0;
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    uint8_t sc[8];
    uint8_t m[8];
    UnpackQ4KScalesMins(x[b].scales, sc, m);
    const uint8_t* q = x[b].qs;
    const int8_t* qa = y[b].qs;
    int32_t isum = 0;
    for (int c = 0; c < kQK_K / 64; ++c, q += 32, qa += 64) {
      int32_t lo = 0;
      int32_t hi = 0;
      for (int l = 0; l < 32; ++l) {
        lo += (q[l] & 0xF) * qa[l];
        hi += (q[l] >> 4) * qa[l + 32];
      }
      isum += sc[2 * c] * lo + sc[2 * c + 1] * hi;
    }
    int32_t msum = 0;
    for (int g = 0; g < kQK_K / 16; ++g) msum += y[b].bsums[g] * m[g / 2];
    const float d = HalfToFloat(x[b].d) * y[b].d;
    const float dmin = HalfToFloat(x[b].dmin) * y[b].d;
    sum += d * isum;
    sum -= dmin * msum;
  }
  return sum;
}

float DotQ6_K(const void* w, const void* a, int64_t n) {
  const auto* x = static_cast<const BlockQ6_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float sum = 0;
  int8_t q[kQK_K];
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    for (int h = 0; h < kQK_K / 128; ++h) {
      const uint8_t* ql = x[b].ql + 64 * h;
      const uint8_t* qh = x[b].qh + 32 * h;
      int8_t* out = q + 128 * h;
      for (int l = 0; l < 32; ++l) {
        out[l] = static_cast<int8_t>(
            ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
        out[l + 32] = static_cast<int8_t>(
            ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
        out[l + 64] = static_cast<int8_t>(
            ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        out[l + 96] = static_cast<int8_t>(
            ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    }
    int32_t isum = 0;
    for (int g = 0; g < kQK_K / 16; ++g) {
      int32_t s = 0;
      for (int l = 0; l < 16; ++l) s += q[16 * g + l] * y[b].qs[16 * g + l];
      isum += x[b].scales[g] * s;
    }
    sum += HalfToFloat(x[b].d) * y[b].d * isum;
  }
  return sum;
}

// out[t * out_stride + r] = Dot(row r, activation t).
template <float (*Dot)(const void*, const void*, int64_t)>
void GemmRows(int64_t n, const void* w, size_t w_stride, int64_t nr,
              const void* a, size_t a_stride, int64_t nt, float* out,
              size_t out_stride_floats) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  for (int64_t r = 0; r < nr; ++r) {
    const uint8_t* row = wb + static_cast<size_t>(r) * w_stride;
    for (int64_t t = 0; t < nt; ++t) {
      out[static_cast<size_t>(t) * out_stride_floats + r] =
          Dot(row, ab + static_cast<size_t>(t) * a_stride, n);
    }
  }
}

// ------------------------------------------------------------- conversion

void F32FromFloat(const float* x, void* y, int64_t n) {
  std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
}

template <GgmlType kType>
void RefFromFloat(const float* x, void* y, int64_t n) {
  QuantizeRowRef(kType, x, y, n);
}

// ------------------------------------------------------------------ axpy

void AxpyRowF32(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const float*>(row);
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <float (*ToF32)(uint16_t)>
void AxpyRowHalfLike(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const uint16_t*>(row);
  for (int64_t i = 0; i < n; ++i) y[i] += a * ToF32(x[i]);
}

// Quantized rows: dequantize a chunk exactly as ToFloat does, then add it.
template <GgmlType kType>
void AxpyRowQuant(float a, const void* row, float* y, int64_t n) {
  const auto* src = static_cast<const uint8_t*>(row);
  const size_t chunk_bytes = RowSize(kType, kChunk);
  float buf[kChunk];
  for (int64_t i = 0; i < n; i += kChunk, src += chunk_bytes) {
    const int64_t len = n - i < kChunk ? n - i : kChunk;
    DequantizeRowRef(kType, src, buf, len);
    for (int64_t j = 0; j < len; ++j) y[i + j] += a * buf[j];
  }
}

// y += a * (scale * q - min): the weight as written, then the axpy. Built
// without FMA flags, so nothing here is fused.
void AxpyI8ScaledScalar(float a, const int8_t* q, const float* scale,
                        const float* min, float* y, int64_t n) {
  if (min != nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      const float w = scale[i] * static_cast<float>(q[i]) - min[i];
      y[i] += a * w;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float w = scale[i] * static_cast<float>(q[i]);
      y[i] += a * w;
    }
  }
}

// Each y element summed over j in order, rounded as AxpyRowF32 rounds.
void AxpyBlockF32Scalar(int64_t k, const float* w, size_t w_stride,
                        const float* a, size_t a_stride, int64_t nt, float* y,
                        size_t y_stride, int64_t n) {
  for (int64_t t = 0; t < nt; ++t) {
    float* yt = y + t * y_stride;
    const float* at = a + t * a_stride;
    for (int64_t r = 0; r < n; ++r) {
      float v = yt[r];
      for (int64_t j = 0; j < k; ++j) v += at[j] * w[j * w_stride + r];
      yt[r] = v;
    }
  }
}

// ------------------------------------------------------------- attention

float DotF16F32Scalar(const uint16_t* k, const float* q, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += HalfToFloatFast(k[i + l]) * q[i + l];
  }
  for (; i < n; ++i) acc[0] += HalfToFloatFast(k[i]) * q[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) +
         ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

void AxpyF16Scalar(float a, const uint16_t* v, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * HalfToFloatFast(v[i]);
}

void F32ToF16Scalar(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = FloatToHalf(x[i]);
}

// Softmax of s[0, n) in place, unnormalized: exponentiates against
// `max_score` and returns 1 / the sum, the weight every s[p] takes.
float SoftmaxUnnormalized(float* s, int32_t n, float max_score) {
  double sum = 0.0;
  for (int32_t p = 0; p < n; ++p) {
    s[p] = std::exp(s[p] - max_score);
    sum += s[p];
  }
  return static_cast<float>(1.0 / sum);
}

void AttendF16Scalar(const float* q, int32_t n_q, int32_t hd,
                     const uint16_t* k, const uint16_t* v, size_t kv_stride,
                     int32_t n_keys, float scale, float* scores, float* out) {
  for (int32_t g = 0; g < n_q; ++g) {
    float* s = scores + static_cast<size_t>(g) * n_keys;
    float max_score = -INFINITY;
    for (int32_t p = 0; p < n_keys; ++p) {
      s[p] = DotF16F32Scalar(k + p * kv_stride, q + g * hd, hd) * scale;
      max_score = s[p] > max_score ? s[p] : max_score;
    }
    const float inv = SoftmaxUnnormalized(s, n_keys, max_score);
    float* o = out + static_cast<size_t>(g) * hd;
    for (int32_t i = 0; i < hd; ++i) o[i] = 0.0f;
    for (int32_t p = 0; p < n_keys; ++p) {
      AxpyF16Scalar(s[p] * inv, v + p * kv_stride, o, hd);
    }
  }
}

IsaKernels MakeScalarTable() {
  IsaKernels t;
  t.gemm[Id(GgmlType::kF32)] = &GemmRows<DotF32>;
  t.gemm[Id(GgmlType::kF16)] = &GemmRows<DotHalfLike<HalfToFloatFast>>;
  t.gemm[Id(GgmlType::kBF16)] = &GemmRows<DotHalfLike<Bf16ToFloat>>;
  t.gemm[Id(GgmlType::kQ8_0)] = &GemmRows<DotQ8_0>;
  t.gemm[Id(GgmlType::kQ4_0)] = &GemmRows<DotQ4_0>;
  t.gemm[Id(GgmlType::kQ4_K)] = &GemmRows<DotQ4_K>;
  t.gemm[Id(GgmlType::kQ6_K)] = &GemmRows<DotQ6_K>;

  t.from_float[Id(GgmlType::kF32)] = &F32FromFloat;
  t.from_float[Id(GgmlType::kF16)] = &RefFromFloat<GgmlType::kF16>;
  t.from_float[Id(GgmlType::kBF16)] = &RefFromFloat<GgmlType::kBF16>;
  t.from_float[Id(GgmlType::kQ8_0)] = &RefFromFloat<GgmlType::kQ8_0>;
  t.from_float[Id(GgmlType::kQ8_K)] = &RefFromFloat<GgmlType::kQ8_K>;

  t.axpy_row[Id(GgmlType::kF32)] = &AxpyRowF32;
  t.axpy_row[Id(GgmlType::kF16)] = &AxpyRowHalfLike<HalfToFloatFast>;
  t.axpy_row[Id(GgmlType::kBF16)] = &AxpyRowHalfLike<Bf16ToFloat>;
  t.axpy_row[Id(GgmlType::kQ8_0)] = &AxpyRowQuant<GgmlType::kQ8_0>;
  t.axpy_row[Id(GgmlType::kQ4_0)] = &AxpyRowQuant<GgmlType::kQ4_0>;
  t.axpy_row[Id(GgmlType::kQ4_K)] = &AxpyRowQuant<GgmlType::kQ4_K>;
  t.axpy_row[Id(GgmlType::kQ6_K)] = &AxpyRowQuant<GgmlType::kQ6_K>;
  t.axpy_row[Id(GgmlType::kQ8_K)] = &AxpyRowQuant<GgmlType::kQ8_K>;

  t.axpy_i8_scaled = &AxpyI8ScaledScalar;
  t.axpy_block_f32 = &AxpyBlockF32Scalar;

  t.dot_f16_f32 = &DotF16F32Scalar;
  t.axpy_f16 = &AxpyF16Scalar;
  t.f32_to_f16 = &F32ToF16Scalar;
  t.attend_f16 = &AttendF16Scalar;
  return t;
}

}  // namespace

const IsaKernels& ScalarKernels() {
  static const IsaKernels table = MakeScalarTable();
  return table;
}

}  // namespace internal

void GemmReference(GgmlType wtype, int64_t n, const void* w, size_t w_stride,
                   int64_t nr, const void* a, size_t a_stride, int64_t nt,
                   float* out, size_t out_stride_floats) {
  const GgmlType atype = VecDotType(wtype);
  FLASHD_CHECK(n % Traits(wtype).block_size == 0);
  FLASHD_CHECK(n % Traits(atype).block_size == 0);
  const size_t w_chunk_bytes = RowSize(wtype, internal::kChunk);
  const size_t a_chunk_bytes = RowSize(atype, internal::kChunk);
  float wbuf[internal::kChunk];
  float abuf[internal::kChunk];
  for (int64_t r = 0; r < nr; ++r) {
    for (int64_t t = 0; t < nt; ++t) {
      const auto* wp = static_cast<const uint8_t*>(w) + r * w_stride;
      const auto* ap = static_cast<const uint8_t*>(a) + t * a_stride;
      double acc = 0;
      for (int64_t i = 0; i < n; i += internal::kChunk) {
        const int64_t len = n - i < internal::kChunk ? n - i : internal::kChunk;
        internal::DequantizeRowRef(wtype, wp, wbuf, len);
        internal::DequantizeRowRef(atype, ap, abuf, len);
        for (int64_t j = 0; j < len; ++j) {
          acc += static_cast<double>(wbuf[j]) * static_cast<double>(abuf[j]);
        }
        wp += w_chunk_bytes;
        ap += a_chunk_bytes;
      }
      out[static_cast<size_t>(t) * out_stride_floats + r] =
          static_cast<float>(acc);
    }
  }
}

namespace internal {

void AttendF32Portable(const float* q, int32_t n_q, int32_t hd,
                       const float* k, const float* v, size_t kv_stride,
                       int32_t n_keys, float scale, float* scores, float* out) {
  for (int32_t g = 0; g < n_q; ++g) {
    const float* qg = q + static_cast<size_t>(g) * hd;
    float max_score = -INFINITY;
    for (int32_t p = 0; p < n_keys; ++p) {
      const float* kp = k + p * kv_stride;
      float s = 0.0f;
      for (int32_t i = 0; i < hd; ++i) s += kp[i] * qg[i];
      scores[p] = s * scale;
      max_score = scores[p] > max_score ? scores[p] : max_score;
    }
    const float inv = SoftmaxUnnormalized(scores, n_keys, max_score);
    float* og = out + static_cast<size_t>(g) * hd;
    for (int32_t i = 0; i < hd; ++i) og[i] = 0.0f;
    for (int32_t p = 0; p < n_keys; ++p) {
      const float a = scores[p] * inv;
      const float* vp = v + p * kv_stride;
      for (int32_t i = 0; i < hd; ++i) og[i] += a * vp[i];
    }
  }
}

}  // namespace internal

}  // namespace flashd::kernels
