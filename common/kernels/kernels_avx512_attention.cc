// Grouped-query attention with AVX-512: every K and V row of the cache is
// converted from fp16 once and used for all query heads of its group; the
// softmax runs on vectors with a Cephes-style exp (about 1 ulp).
#include "common/kernels/kernels_avx512_attention.h"

#include "common/kernels/immintrin_quiet.h"

#include <algorithm>
#include <cmath>

namespace flashd::kernels::internal {
namespace {

constexpr int kGroup = 8;  // query heads scored together per K row

// e^x for x <= 0 (softmax after subtracting the max); inputs below -87
// flush toward 0.
inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(
      _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, with ln2 split in two for precision.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(
      _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

inline __mmask16 TailMask(int32_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff)
                    : static_cast<__mmask16>((1u << left) - 1);
}

inline __m512 LoadHalf(const uint16_t* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// Horizontal sums of a[0..7], returned as 8 floats in out[0..7], with a
// transposing tree (about 25 instructions for all eight, against ~80 for
// eight separate reductions).
inline void Reduce8(const __m512 a[8], float* out) {
  __m512 x[4];
  for (int i = 0; i < 4; ++i) {
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                         _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  }
  // Per 128-bit lane: y0 = partial sums of heads 0..3, y1 of heads 4..7.
  const __m512 y0 = _mm512_add_ps(
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x[0]),
                                          _mm512_castps_pd(x[1]))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x[0]),
                                          _mm512_castps_pd(x[1]))));
  const __m512 y1 = _mm512_add_ps(
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x[2]),
                                          _mm512_castps_pd(x[3]))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x[2]),
                                          _mm512_castps_pd(x[3]))));
  // Lanes [y0.0 + y0.1, y0.2 + y0.3, y1.0 + y1.1, y1.2 + y1.3].
  const __m512 w = _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, 0x88),
                                 _mm512_shuffle_f32x4(y0, y1, 0xDD));
  const __m512 z = _mm512_add_ps(w, _mm512_shuffle_f32x4(w, w, 0xB1));
  _mm_storeu_ps(out, _mm512_castps512_ps128(z));
  _mm_storeu_ps(out + 4, _mm512_extractf32x4_ps(z, 2));
}

// scores[g][p] = scale * q[g] . k_p for g in [g0, g0 + G).
void Scores(const float* q, int32_t g0, int32_t G, int32_t hd,
            const uint16_t* k, size_t kv_stride, int32_t n_keys, float scale,
            float* scores) {
  for (int32_t p = 0; p < n_keys; ++p) {
    const uint16_t* kp = k + p * kv_stride;
    __m512 acc[kGroup];
    for (int j = 0; j < kGroup; ++j) acc[j] = _mm512_setzero_ps();
    for (int32_t c = 0; c < hd; c += 16) {
      const __mmask16 m = TailMask(hd - c);
      const __m512 kf = LoadHalf(kp + c, m);
      for (int32_t j = 0; j < G; ++j) {
        const __m512 qv =
            _mm512_maskz_loadu_ps(m, q + static_cast<size_t>(g0 + j) * hd + c);
        acc[j] = _mm512_fmadd_ps(qv, kf, acc[j]);
      }
    }
    if (G == kGroup) {
      float sums[kGroup];
      Reduce8(acc, sums);
      for (int32_t j = 0; j < kGroup; ++j) {
        scores[static_cast<size_t>(g0 + j) * n_keys + p] = sums[j] * scale;
      }
      continue;
    }
    for (int32_t j = 0; j < G; ++j) {
      scores[static_cast<size_t>(g0 + j) * n_keys + p] =
          _mm512_reduce_add_ps(acc[j]) * scale;
    }
  }
}

// Replaces s[0..n) by softmax(s).
void Softmax(float* s, int32_t n) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int32_t i = 0; i < n; i += 16) {
    vmax = _mm512_max_ps(
        vmax, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), TailMask(n - i),
                                   s + i));
  }
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  __m512 vsum = _mm512_setzero_ps();
  for (int32_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    const __m512 e = Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + i), mx));
    _mm512_mask_storeu_ps(s + i, m, e);
    vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
  for (int32_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    _mm512_mask_storeu_ps(s + i, m,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + i), inv));
  }
}

}  // namespace

void AttendF16Avx512(const float* q, int32_t n_q, int32_t hd,
                     const uint16_t* k, const uint16_t* v, size_t kv_stride,
                     int32_t n_keys, float scale, float* scores, float* out) {
  for (int32_t g0 = 0; g0 < n_q; g0 += kGroup) {
    Scores(q, g0, std::min(kGroup, n_q - g0), hd, k, kv_stride, n_keys, scale,
           scores);
  }
  for (int32_t g = 0; g < n_q; ++g) {
    Softmax(scores + static_cast<size_t>(g) * n_keys, n_keys);
  }
  // out[g][c..c+16) accumulates in registers over all positions, four heads
  // at a time; each V chunk is converted once per four heads.
  constexpr int kHeads = 4;
  for (int32_t c = 0; c < hd; c += 16) {
    const __mmask16 m = TailMask(hd - c);
    for (int32_t g0 = 0; g0 < n_q; g0 += kHeads) {
      const int32_t G = std::min(kHeads, n_q - g0);
      __m512 acc[kHeads] = {_mm512_setzero_ps(), _mm512_setzero_ps(),
                            _mm512_setzero_ps(), _mm512_setzero_ps()};
      const float* s0 = scores + static_cast<size_t>(g0) * n_keys;
      for (int32_t p = 0; p < n_keys; ++p) {
        const __m512 vf = LoadHalf(v + p * kv_stride + c, m);
        for (int32_t j = 0; j < G; ++j) {
          acc[j] = _mm512_fmadd_ps(
              _mm512_set1_ps(s0[static_cast<size_t>(j) * n_keys + p]), vf,
              acc[j]);
        }
      }
      for (int32_t j = 0; j < G; ++j) {
        _mm512_mask_storeu_ps(out + static_cast<size_t>(g0 + j) * hd + c, m,
                              acc[j]);
      }
    }
  }
}

}  // namespace flashd::kernels::internal
