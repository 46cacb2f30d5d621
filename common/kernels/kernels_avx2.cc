// AVX2 (+FMA, F16C) kernels: register-blocked GEMM micro-kernels over ggml
// blocks, activation quantizers and vector helpers, for CPUs without
// AVX-512. Same structure as kernels_avx512.cc: `Tile<R, T>` keeps R x T
// ymm accumulators, decodes each weight block once per tile and uses it for
// T tokens. Without VNNI the int8 products go through vpmaddubsw (u8 x s8 ->
// saturating int16 pairs) as in ggml: Q8_0 uses the sign trick (|w| x
// sign(a, w)), the 4- and 6-bit types use their unsigned values and fold the
// offset in from activation sums; none of the int16 pair sums can saturate.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels_internal.h"

namespace flashd::kernels::internal {
namespace {

using TileFn = void (*)(int64_t n, const uint8_t* w, size_t w_stride,
                        const uint8_t* a, size_t a_stride, float* out,
                        size_t out_stride);

// Bytes of activations a prefill chunk keeps hot (well inside L2).
constexpr size_t kChunkBytes = 192 << 10;

inline float Half(uint16_t h) { return _cvtsh_ss(h); }

inline float HorizontalSum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

inline int32_t HorizontalSumI32(__m256i v) {
  __m128i x =
      _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(x);
}

inline float HorizontalMax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

template <int R, int T>
inline void StoreTile(const __m256 (&acc)[R][T], float* out,
                      size_t out_stride) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      out[t * out_stride + r] = HorizontalSum(acc[r][t]);
  }
}

template <int R, int T>
inline void ZeroTile(__m256 (&acc)[R][T]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
}

inline __m256i Load256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}
inline __m128i Load128(const void* p) {
  return _mm_loadu_si128(static_cast<const __m128i*>(p));
}

// Sums adjacent int16 pairs into int32.
inline __m256i PairSum(__m256i v) {
  return _mm256_madd_epi16(v, _mm256_set1_epi16(1));
}

// Software prefetch of a tile's weights, each row kPrefetchBytes / R ahead,
// continuing into the next tile's rows (see kernels_avx512.cc).
constexpr int64_t kPrefetchBytes = 12 << 10;

class TilePrefetcher {
 public:
  TilePrefetcher(const uint8_t* w, size_t w_stride, int rows, size_t row_bytes,
                 int64_t steps)
      : w_(w),
        w_stride_(static_cast<int64_t>(w_stride)),
        rows_(rows),
        row_bytes_(static_cast<int64_t>(row_bytes)),
        step_(static_cast<int64_t>(row_bytes) / std::max<int64_t>(steps, 1)),
        next_(kPrefetchBytes / rows),
        target_(next_) {}

  void Step() {
    target_ += step_;
    for (; next_ < target_; next_ += 64) {
      const uint8_t* p = next_ < row_bytes_
                             ? w_ + next_
                             : w_ + rows_ * w_stride_ + (next_ - row_bytes_);
      for (int r = 0; r < rows_; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(p + r * w_stride_),
                     _MM_HINT_T0);
      }
    }
  }

 private:
  const uint8_t* w_;
  int64_t w_stride_;
  int rows_;
  int64_t row_bytes_;
  int64_t step_;
  int64_t next_;
  int64_t target_;
};

// Driver: see kernels_avx512.cc.
template <typename K, size_t... Ts>
constexpr auto MakeTiles(std::index_sequence<Ts...>, bool full) {
  struct Table {
    TileFn fn[sizeof...(Ts)];
  };
  return full ? Table{{&K::template Tile<K::kRows, Ts + 1>...}}
              : Table{{&K::template Tile<1, Ts + 1>...}};
}

template <typename K>
void GemmDriver(int64_t n, const void* w, size_t w_stride, int64_t nr,
                const void* a, size_t a_stride, int64_t nt, float* out,
                size_t out_stride) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  if (nt == 1) {
    constexpr int kRd = K::kRowsDecode;
    int64_t r = 0;
    for (; r + kRd <= nr; r += kRd) {
      K::template Tile<kRd, 1>(n, wb + r * w_stride, w_stride, ab, a_stride,
                               out + r, out_stride);
    }
    for (; r < nr; ++r) {
      K::template Tile<1, 1>(n, wb + r * w_stride, w_stride, ab, a_stride,
                             out + r, out_stride);
    }
    return;
  }
  constexpr int kR = K::kRows;
  constexpr int kT = K::kTokens;
  static constexpr auto kFull =
      MakeTiles<K>(std::make_index_sequence<kT>(), true);
  static constexpr auto kOne =
      MakeTiles<K>(std::make_index_sequence<kT>(), false);
  int64_t chunk =
      static_cast<int64_t>(kChunkBytes / std::max<size_t>(a_stride, 1));
  chunk = std::max<int64_t>(kT, chunk / kT * kT);
  for (int64_t t0 = 0; t0 < nt; t0 += chunk) {
    const int64_t t1 = std::min(nt, t0 + chunk);
    for (int64_t r = 0; r < nr; r += kR) {
      const int64_t rn = std::min<int64_t>(kR, nr - r);
      for (int64_t t = t0; t < t1; t += kT) {
        const int tn = static_cast<int>(std::min<int64_t>(kT, t1 - t));
        const uint8_t* at = ab + t * a_stride;
        float* o = out + t * out_stride + r;
        if (rn == kR) {
          kFull.fn[tn - 1](n, wb + r * w_stride, w_stride, at, a_stride, o,
                           out_stride);
        } else {
          for (int64_t i = 0; i < rn; ++i) {
            kOne.fn[tn - 1](n, wb + (r + i) * w_stride, w_stride, at, a_stride,
                            o + i, out_stride);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Q8_0 x Q8_0 and Q4_0 x Q8_0: one block per ymm.

struct Q8_0Kernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 2;
  static constexpr int kTokens = 2;

  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride) {
    const int64_t nb = n / kQK8_0;
    __m256 acc[R][T];
    ZeroTile(acc);
    TilePrefetcher prefetch(w, w_stride, R, nb * sizeof(BlockQ8_0), nb);
    for (int64_t b = 0; b < nb; ++b) {
      prefetch.Step();
      __m256i wq[R], wabs[R];
      float dw[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const BlockQ8_0* x =
            reinterpret_cast<const BlockQ8_0*>(w + r * w_stride) + b;
        wq[r] = Load256(x->qs);
        wabs[r] = _mm256_sign_epi8(wq[r], wq[r]);
        dw[r] = Half(x->d);
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const BlockQ8_0* y =
            reinterpret_cast<const BlockQ8_0*>(a + t * a_stride) + b;
        const __m256i av = Load256(y->qs);
        const float da = Half(y->d);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m256i p =
              _mm256_maddubs_epi16(wabs[r], _mm256_sign_epi8(av, wq[r]));
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(PairSum(p)),
                                      _mm256_set1_ps(dw[r] * da), acc[r][t]);
        }
      }
    }
    StoreTile(acc, out, out_stride);
  }
};

struct Q4_0Kernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 2;
  static constexpr int kTokens = 2;

  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride) {
    const int64_t nb = n / kQK4_0;
    const __m256i k0F = _mm256_set1_epi8(0x0F);
    const __m256i k8 = _mm256_set1_epi8(8);
    __m256 acc[R][T];
    ZeroTile(acc);
    TilePrefetcher prefetch(w, w_stride, R, nb * sizeof(BlockQ4_0), nb);
    for (int64_t b = 0; b < nb; ++b) {
      prefetch.Step();
      __m256i wq[R];
      float dw[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const BlockQ4_0* x =
            reinterpret_cast<const BlockQ4_0*>(w + r * w_stride) + b;
        const __m128i q = Load128(x->qs);
        wq[r] =
            _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), k0F);
        dw[r] = Half(x->d);
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const BlockQ8_0* y =
            reinterpret_cast<const BlockQ8_0*>(a + t * a_stride) + b;
        const __m256i av = Load256(y->qs);
        const __m256i off = _mm256_maddubs_epi16(k8, av);  // 8 * pair sums
        const float da = Half(y->d);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m256i p =
              _mm256_sub_epi16(_mm256_maddubs_epi16(wq[r], av), off);
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(PairSum(p)),
                                      _mm256_set1_ps(dw[r] * da), acc[r][t]);
        }
      }
    }
    StoreTile(acc, out, out_stride);
  }
};

// ---------------------------------------------------------------------------
// Q4_K x Q8_K: per 64 elements, the low and high nibbles of 32 bytes are two
// 32-element sub-blocks; vpmaddubsw pair sums (<= 2*15*127) times the
// sub-block scale via vpmaddwd.

// Unpacks ggml's 12-byte Q4_K scales into sc[0..7], m[0..7] (as
// get_scale_min_k4).
inline void UnpackQ4KScales(const uint8_t* s, uint8_t out[16]) {
  constexpr uint32_t kMask1 = 0x3f3f3f3f;
  constexpr uint32_t kMask2 = 0x0f0f0f0f;
  constexpr uint32_t kMask3 = 0x03030303;
  uint32_t u[4];
  std::memcpy(u, s, 12);
  u[3] = ((u[2] >> 4) & kMask2) | (((u[1] >> 6) & kMask3) << 4);
  const uint32_t m_lo = u[1] & kMask1;
  u[1] = (u[2] & kMask2) | (((u[0] >> 6) & kMask3) << 4);
  u[2] = m_lo;
  u[0] &= kMask1;
  std::memcpy(out, u, 16);
}

struct Q4_KKernel {
  static constexpr int kRowsDecode = 2;
  static constexpr int kRows = 2;
  static constexpr int kTokens = 2;

  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride) {
    const int64_t nb = n / kQK_K;
    const __m256i k0F = _mm256_set1_epi8(0x0F);
    __m256 acc[R][T];
    ZeroTile(acc);
    TilePrefetcher prefetch(w, w_stride, R, nb * sizeof(BlockQ4_K), nb);
    for (int64_t i = 0; i < nb; ++i) {
      prefetch.Step();
      const BlockQ4_K* x[R];
      const BlockQ8_K* y[T];
      alignas(16) uint8_t sm[R][16];
      __m256i sumi[R][T];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        x[r] = reinterpret_cast<const BlockQ4_K*>(w + r * w_stride) + i;
        UnpackQ4KScales(x[r]->scales, sm[r]);
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        y[t] = reinterpret_cast<const BlockQ8_K*>(a + t * a_stride) + i;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) sumi[r][t] = _mm256_setzero_si256();
      }
#pragma GCC unroll 1
      for (int p = 0; p < 4; ++p) {
        __m256i lo[R], hi[R], slo[R], shi[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m256i q = Load256(x[r]->qs + 32 * p);
          lo[r] = _mm256_and_si256(q, k0F);
          hi[r] = _mm256_and_si256(_mm256_srli_epi16(q, 4), k0F);
          slo[r] = _mm256_set1_epi16(sm[r][2 * p]);
          shi[r] = _mm256_set1_epi16(sm[r][2 * p + 1]);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256i a0 = Load256(y[t]->qs + 64 * p);
          const __m256i a1 = Load256(y[t]->qs + 64 * p + 32);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const __m256i p0 =
                _mm256_madd_epi16(_mm256_maddubs_epi16(lo[r], a0), slo[r]);
            const __m256i p1 =
                _mm256_madd_epi16(_mm256_maddubs_epi16(hi[r], a1), shi[r]);
            sumi[r][t] = _mm256_add_epi32(sumi[r][t], _mm256_add_epi32(p0, p1));
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        // [m0, m0, m1, m1, ...] against the 16 bsums.
        const __m128i m8 =
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm[r] + 8));
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        const float dw = Half(x[r]->d);
        const float dmin = Half(x[r]->dmin);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256 m =
              _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, Load256(y[t]->bsums)));
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r][t]),
                                      _mm256_set1_ps(dw * y[t]->d), acc[r][t]);
          acc[r][t] =
              _mm256_fnmadd_ps(m, _mm256_set1_ps(dmin * y[t]->d), acc[r][t]);
        }
      }
    }
    StoreTile(acc, out, out_stride);
  }
};

// ---------------------------------------------------------------------------
// Q6_K x Q8_K: four ymm of unsigned 6-bit values per 128 elements;
// vpmaddubsw pair sums (<= 2*63*127) times the 16-element scales via
// vpmaddwd; the -32 offset comes from the bsums.

struct Q6_KKernel {
  static constexpr int kRowsDecode = 2;
  static constexpr int kRows = 2;
  static constexpr int kTokens = 2;

  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride) {
    const int64_t nb = n / kQK_K;
    const __m256i k0F = _mm256_set1_epi8(0x0F);
    const __m256i k30 = _mm256_set1_epi8(0x30);
    __m256 acc[R][T];
    ZeroTile(acc);
    TilePrefetcher prefetch(w, w_stride, R, nb * sizeof(BlockQ6_K), nb);
    for (int64_t i = 0; i < nb; ++i) {
      prefetch.Step();
      const BlockQ6_K* x[R];
      const BlockQ8_K* y[T];
      __m256i sc16[R];  // the 16 scales as int16
      __m256i sumi[R][T];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        x[r] = reinterpret_cast<const BlockQ6_K*>(w + r * w_stride) + i;
        sc16[r] = _mm256_cvtepi8_epi16(Load128(x[r]->scales));
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        y[t] = reinterpret_cast<const BlockQ8_K*>(a + t * a_stride) + i;
        const __m256i bsums = Load256(y[t]->bsums);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          sumi[r][t] = _mm256_slli_epi32(_mm256_madd_epi16(sc16[r], bsums), 5);
          sumi[r][t] = _mm256_sub_epi32(_mm256_setzero_si256(), sumi[r][t]);
        }
      }
#pragma GCC unroll 1
      for (int h = 0; h < 2; ++h) {
#pragma GCC unroll 1
        for (int k = 0; k < 2; ++k) {
          // Quarters 2k and 2k+1 of this half: elements 32*(2k)..+63.
          __m256i q0[R], q1[R], s0[R], s1[R];
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const __m256i ql = Load256(x[r]->ql + 64 * h + 32 * 0);
            const __m256i ql1 = Load256(x[r]->ql + 64 * h + 32);
            const __m256i qh = Load256(x[r]->qh + 32 * h);
            if (k == 0) {  // elements 0-31 and 32-63
              q0[r] = _mm256_or_si256(
                  _mm256_and_si256(ql, k0F),
                  _mm256_and_si256(_mm256_slli_epi16(qh, 4), k30));
              q1[r] = _mm256_or_si256(
                  _mm256_and_si256(ql1, k0F),
                  _mm256_and_si256(_mm256_slli_epi16(qh, 2), k30));
            } else {  // elements 64-95 and 96-127
              q0[r] = _mm256_or_si256(
                  _mm256_and_si256(_mm256_srli_epi16(ql, 4), k0F),
                  _mm256_and_si256(qh, k30));
              q1[r] = _mm256_or_si256(
                  _mm256_and_si256(_mm256_srli_epi16(ql1, 4), k0F),
                  _mm256_and_si256(_mm256_srli_epi16(qh, 2), k30));
            }
            // Groups of 16: q0 covers 8h + 4k + {0, 1}, q1 8h + 4k + {2, 3}.
            const int g = 8 * h + 4 * k;
            s0[r] = _mm256_set_m128i(
                _mm_set1_epi16(static_cast<int16_t>(x[r]->scales[g + 1])),
                _mm_set1_epi16(static_cast<int16_t>(x[r]->scales[g])));
            s1[r] = _mm256_set_m128i(
                _mm_set1_epi16(static_cast<int16_t>(x[r]->scales[g + 3])),
                _mm_set1_epi16(static_cast<int16_t>(x[r]->scales[g + 2])));
          }
#pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            const uint8_t* aq =
                reinterpret_cast<const uint8_t*>(y[t]->qs) + 128 * h + 64 * k;
            const __m256i a0 = Load256(aq);
            const __m256i a1 = Load256(aq + 32);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
              const __m256i p0 =
                  _mm256_madd_epi16(_mm256_maddubs_epi16(q0[r], a0), s0[r]);
              const __m256i p1 =
                  _mm256_madd_epi16(_mm256_maddubs_epi16(q1[r], a1), s1[r]);
              sumi[r][t] =
                  _mm256_add_epi32(sumi[r][t], _mm256_add_epi32(p0, p1));
            }
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float dw = Half(x[r]->d);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r][t]),
                                      _mm256_set1_ps(dw * y[t]->d), acc[r][t]);
        }
      }
    }
    StoreTile(acc, out, out_stride);
  }
};

// ---------------------------------------------------------------------------
// Float weights: 8 elements per step; tails go through a zero-padded copy.

struct F16Kernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 3;
  static constexpr int kTokens = 3;
  static constexpr int kElemBytes = 2;
  static __m256 Load(const uint8_t* p) { return _mm256_cvtph_ps(Load128(p)); }
};

struct Bf16Kernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 3;
  static constexpr int kTokens = 3;
  static constexpr int kElemBytes = 2;
  static __m256 Load(const uint8_t* p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(Load128(p)), 16));
  }
};

struct F32Kernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 3;
  static constexpr int kTokens = 3;
  static constexpr int kElemBytes = 4;
  static __m256 Load(const uint8_t* p) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
};

template <typename E>
struct FloatKernel {
  static constexpr int kRowsDecode = E::kRowsDecode;
  static constexpr int kRows = E::kRows;
  static constexpr int kTokens = E::kTokens;

  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride) {
    constexpr int kB = E::kElemBytes;
    __m256 acc[R][T];
    ZeroTile(acc);
    auto step = [&](const uint8_t* const* wp, const uint8_t* const* ap) {
      __m256 wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = E::Load(wp[r]);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m256 av = E::Load(ap[t]);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          acc[r][t] = _mm256_fmadd_ps(wv[r], av, acc[r][t]);
      }
    };
    const uint8_t* wp[R];
    const uint8_t* ap[T];
    TilePrefetcher prefetch(w, w_stride, R, n * kB, (n + 7) / 8);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      prefetch.Step();
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wp[r] = w + r * w_stride + kB * i;
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) ap[t] = a + t * a_stride + kB * i;
      step(wp, ap);
    }
    if (i < n) {
      alignas(32) uint8_t wt[R][32] = {};
      alignas(32) uint8_t at[T][32] = {};
      const size_t bytes = static_cast<size_t>(n - i) * kB;
      for (int r = 0; r < R; ++r) {
        std::memcpy(wt[r], w + r * w_stride + kB * i, bytes);
        wp[r] = wt[r];
      }
      for (int t = 0; t < T; ++t) {
        std::memcpy(at[t], a + t * a_stride + kB * i, bytes);
        ap[t] = at[t];
      }
      step(wp, ap);
    }
    StoreTile(acc, out, out_stride);
  }
};

// ---------------------------------------------------------------------------
// Activation quantizers.

// As ggml's SIMD quantize_row_q8_0: d = amax / 127, q = round-to-nearest-even
// (x * (127 / amax)).
void FromFloatQ8_0(const float* x, void* vy, int64_t n) {
  auto* y = static_cast<BlockQ8_0*>(vy);
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < n / kQK8_0; ++b, x += kQK8_0) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(x + 8 * j);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[j]));
    }
    const float max_scalar = HorizontalMax(amax);
    const float d = max_scalar / 127.f;
    y[b].d = static_cast<uint16_t>(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
    const __m256 mul =
        _mm256_set1_ps(max_scalar != 0.0f ? 127.f / max_scalar : 0.0f);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      q[j] = _mm256_cvtps_epi32(
          _mm256_round_ps(_mm256_mul_ps(v[j], mul),
                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    // Packs interleave 128-bit lanes; the permute restores element order.
    const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs),
                        _mm256_permutevar8x32_epi32(
                            p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
}

// As ggml's quantize_row_q8_K_ref: the scale comes from the first element of
// largest magnitude, q = nearest(-127/max * x).
void FromFloatQ8_K(const float* x, void* vy, int64_t n) {
  auto* y = static_cast<BlockQ8_K*>(vy);
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    __m256 amax_v = _mm256_setzero_ps();
    for (int j = 0; j < kQK_K; j += 8) {
      amax_v = _mm256_max_ps(
          amax_v, _mm256_andnot_ps(sign_mask, _mm256_loadu_ps(x + j)));
    }
    const float amax = HorizontalMax(amax_v);
    if (!(amax > 0.0f)) {
      y[b].d = 0;
      std::memset(y[b].qs, 0, sizeof(y[b].qs));
      std::memset(y[b].bsums, 0, sizeof(y[b].bsums));
      continue;
    }
    float max = 0.0f;
    const __m256 amax_b = _mm256_set1_ps(amax);
    for (int j = 0; j < kQK_K; j += 8) {
      const int m = _mm256_movemask_ps(
          _mm256_cmp_ps(_mm256_andnot_ps(sign_mask, _mm256_loadu_ps(x + j)),
                        amax_b, _CMP_EQ_OQ));
      if (m != 0) {
        max = x[j + __builtin_ctz(static_cast<unsigned>(m))];
        break;
      }
    }
    const float iscale = -127.f / max;
    const __m256 mul = _mm256_set1_ps(iscale);
    const __m256i k127 = _mm256_set1_epi32(127);
    for (int g = 0; g < 16; ++g) {
      __m256i q0 =
          _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16 * g), mul));
      __m256i q1 = _mm256_cvtps_epi32(
          _mm256_mul_ps(_mm256_loadu_ps(x + 16 * g + 8), mul));
      q0 = _mm256_min_epi32(q0, k127);
      q1 = _mm256_min_epi32(q1, k127);
      y[b].bsums[g] =
          static_cast<int16_t>(HorizontalSumI32(_mm256_add_epi32(q0, q1)));
      const __m256i p16 =
          _mm256_packs_epi32(q0, q1);  // lanes: 0-3 8-11 | 4-7 12-15
      const __m128i p8 = _mm_packs_epi16(_mm256_castsi256_si128(p16),
                                         _mm256_extracti128_si256(p16, 1));
      // p8 = 0-3 8-11 4-7 12-15 -> restore order.
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16 * g),
                       _mm_shuffle_epi32(p8, _MM_SHUFFLE(3, 1, 2, 0)));
    }
    y[b].d = 1 / iscale;
  }
}

void FromFloatF16(const float* x, void* vy, int64_t n) {
  auto* y = static_cast<uint16_t*>(vy);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(y + i),
        _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  }
  if (i < n) {
    alignas(32) float in[8] = {};
    alignas(16) uint16_t res[8];
    std::memcpy(in, x + i, static_cast<size_t>(n - i) * sizeof(float));
    _mm_store_si128(
        reinterpret_cast<__m128i*>(res),
        _mm256_cvtps_ph(_mm256_load_ps(in), _MM_FROUND_TO_NEAREST_INT));
    std::memcpy(y + i, res, static_cast<size_t>(n - i) * sizeof(uint16_t));
  }
}

// Round to nearest even, NaN kept quiet (as FloatToBf16).
inline __m128i Bf16Round(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb =
      _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(
      _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))),
      16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i quiet =
      _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
  const __m256i res = _mm256_blendv_epi8(r, quiet, nan);
  // 32 -> 16 bits (values < 65536: packus is exact), then fix lane order.
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(
      _mm256_packus_epi32(res, res), _MM_SHUFFLE(3, 1, 2, 0)));
}

void FromFloatBf16(const float* x, void* vy, int64_t n) {
  auto* y = static_cast<uint16_t*>(vy);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     Bf16Round(_mm256_loadu_ps(x + i)));
  }
  if (i < n) {
    alignas(32) float in[8] = {};
    alignas(16) uint16_t res[8];
    std::memcpy(in, x + i, static_cast<size_t>(n - i) * sizeof(float));
    _mm_store_si128(reinterpret_cast<__m128i*>(res),
                    Bf16Round(_mm256_load_ps(in)));
    std::memcpy(y + i, res, static_cast<size_t>(n - i) * sizeof(uint16_t));
  }
}

// ---------------------------------------------------------------------------
// Vector helpers.

float DotF16F32(const uint16_t* k, const float* q, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(Load128(k + i)),
                           _mm256_loadu_ps(q + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(Load128(k + i + 8)),
                           _mm256_loadu_ps(q + i + 8), acc1);
  }
  float sum = HorizontalSum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += Half(k[i]) * q[i];
  return sum;
}

void AxpyF16(float a, const uint16_t* v, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_cvtph_ps(Load128(v + i)),
                                            _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * Half(v[i]);
}

void F32ToF16(const float* x, uint16_t* y, int64_t n) { FromFloatF16(x, y, n); }

inline void Axpy8(__m256 a, __m256 w, float* y) {
  _mm256_storeu_ps(y, _mm256_fmadd_ps(a, w, _mm256_loadu_ps(y)));
}

// 8 int8 -> 8 floats.
inline __m256 I8ToF32(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

void AxpyRowF32(float a, const void* row, float* y, int64_t n) {
  const auto* w = static_cast<const float*>(row);
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) Axpy8(av, _mm256_loadu_ps(w + i), y + i);
  for (; i < n; ++i) y[i] += a * w[i];
}

void AxpyRowF16(float a, const void* row, float* y, int64_t n) {
  AxpyF16(a, static_cast<const uint16_t*>(row), y, n);
}

void AxpyRowQ8_0(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ8_0*>(row);
  const __m256 av = _mm256_set1_ps(a);
  for (int64_t b = 0; b < n / kQK8_0; ++b, y += kQK8_0) {
    const __m256 d = _mm256_set1_ps(Half(x[b].d));
    for (int j = 0; j < 4; ++j)
      Axpy8(av, _mm256_mul_ps(d, I8ToF32(x[b].qs + 8 * j)), y + 8 * j);
  }
}

void AxpyRowQ4_0(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ4_0*>(row);
  const __m256 av = _mm256_set1_ps(a);
  const __m128i k0F = _mm_set1_epi8(0x0F);
  const __m128i k8 = _mm_set1_epi8(8);
  for (int64_t b = 0; b < n / kQK4_0; ++b, y += kQK4_0) {
    const __m256 d = _mm256_set1_ps(Half(x[b].d));
    const __m128i q = Load128(x[b].qs);
    alignas(16) int8_t v[32];
    _mm_store_si128(reinterpret_cast<__m128i*>(v),
                    _mm_sub_epi8(_mm_and_si128(q, k0F), k8));
    _mm_store_si128(reinterpret_cast<__m128i*>(v + 16),
                    _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), k0F), k8));
    for (int j = 0; j < 4; ++j)
      Axpy8(av, _mm256_mul_ps(d, I8ToF32(v + 8 * j)), y + 8 * j);
  }
}

void AxpyRowQ4_K(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ4_K*>(row);
  const __m256 av = _mm256_set1_ps(a);
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    uint8_t sm[16];
    UnpackQ4KScales(x[b].scales, sm);
    const float d = Half(x[b].d);
    const float dmin = Half(x[b].dmin);
    for (int j = 0; j < 8; ++j, y += 32) {
      const __m256 d1 = _mm256_set1_ps(d * sm[j]);
      const __m256 m1 = _mm256_set1_ps(dmin * sm[8 + j]);
      const int shift = 4 * (j & 1);
      const uint8_t* q = x[b].qs + 32 * (j / 2);
      for (int l = 0; l < 4; ++l) {
        const __m256i v = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * l)));
        const __m256i nib = _mm256_and_si256(_mm256_srli_epi32(v, shift),
                                             _mm256_set1_epi32(0xF));
        Axpy8(av, _mm256_fmsub_ps(d1, _mm256_cvtepi32_ps(nib), m1), y + 8 * l);
      }
    }
  }
}

void AxpyRowQ6_K(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ6_K*>(row);
  const __m256 av = _mm256_set1_ps(a);
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float d = Half(x[b].d);
    alignas(32) int8_t q[kQK_K];
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = x[b].ql + 64 * h;
      const uint8_t* qh = x[b].qh + 32 * h;
      int8_t* o = q + 128 * h;
      for (int l = 0; l < 32; ++l) {
        o[l] = static_cast<int8_t>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) -
                                   32);
        o[l + 32] = static_cast<int8_t>(
            ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
        o[l + 64] = static_cast<int8_t>(
            ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        o[l + 96] = static_cast<int8_t>(
            ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    }
    for (int g = 0; g < 16; ++g, y += 16) {
      const __m256 s = _mm256_set1_ps(d * x[b].scales[g]);
      Axpy8(av, _mm256_mul_ps(s, I8ToF32(q + 16 * g)), y);
      Axpy8(av, _mm256_mul_ps(s, I8ToF32(q + 16 * g + 8)), y + 8);
    }
  }
}

// The weight scale * q - min of 8 elements, rounded as written: the empty
// asm hides the product from GCC, which would otherwise contract it into
// the subtraction (C++ mode contracts by default).
template <bool kMin>
inline __m256 I8ScaledWeight(const int8_t* q, const float* scale,
                             const float* min) {
  __m256 w = _mm256_mul_ps(_mm256_loadu_ps(scale), I8ToF32(q));
  if constexpr (kMin) {
    __asm__("" : "+x"(w));
    w = _mm256_sub_ps(w, _mm256_loadu_ps(min));
  }
  return w;
}

template <bool kMin>
void AxpyI8ScaledImpl(float a, const int8_t* q, const float* scale,
                      const float* min, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Axpy8(av, I8ScaledWeight<kMin>(q + i, scale + i, kMin ? min + i : nullptr),
          y + i);
  }
  if (i < n) {
    // The tail through the same vector code, via zero-padded copies.
    const size_t len = static_cast<size_t>(n - i);
    alignas(32) int8_t qt[8] = {};
    alignas(32) float st[8] = {}, mt[8] = {}, yt[8] = {};
    std::memcpy(qt, q + i, len);
    std::memcpy(st, scale + i, len * sizeof(float));
    if (kMin) std::memcpy(mt, min + i, len * sizeof(float));
    std::memcpy(yt, y + i, len * sizeof(float));
    Axpy8(av, I8ScaledWeight<kMin>(qt, st, mt), yt);
    std::memcpy(y + i, yt, len * sizeof(float));
  }
}

void AxpyI8Scaled(float a, const int8_t* q, const float* scale,
                  const float* min, float* y, int64_t n) {
  if (min != nullptr) {
    AxpyI8ScaledImpl<true>(a, q, scale, min, y, n);
  } else {
    AxpyI8ScaledImpl<false>(a, q, scale, min, y, n);
  }
}

// kTokens tokens x 8 outputs of AxpyBlockF32 in registers; `mask` selects
// the valid outputs of a tail block. (Without the unroll pragmas GCC 12
// keeps acc[] in memory and stores it on every step.)
template <int kTokens>
void AxpyBlockF32Tile(int64_t k, const float* w, size_t w_stride,
                      const float* a, size_t a_stride, float* y,
                      size_t y_stride, __m256i mask) {
  __m256 acc[kTokens];
#pragma GCC unroll 8
  for (int t = 0; t < kTokens; ++t) {
    acc[t] = _mm256_maskload_ps(y + t * y_stride, mask);
  }
  for (int64_t j = 0; j < k; ++j) {
    const __m256 wv = _mm256_maskload_ps(w + j * w_stride, mask);
#pragma GCC unroll 8
    for (int t = 0; t < kTokens; ++t) {
      acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + t * a_stride + j), wv,
                               acc[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < kTokens; ++t) {
    _mm256_maskstore_ps(y + t * y_stride, mask, acc[t]);
  }
}

void AxpyBlockF32(int64_t k, const float* w, size_t w_stride, const float* a,
                  size_t a_stride, int64_t nt, float* y, size_t y_stride,
                  int64_t n) {
  constexpr int kMaxTokens = 4;
  // Token tiles innermost: the k weight vectors of an output block stay in
  // L1 for all tokens.
  for (int64_t r = 0; r < n; r += 8) {
    const int left = static_cast<int>(std::min<int64_t>(8, n - r));
    const __m256i mask = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int64_t t0 = 0; t0 < nt; t0 += kMaxTokens) {
      const int tn = static_cast<int>(std::min<int64_t>(kMaxTokens, nt - t0));
      const float* at = a + t0 * a_stride;
      float* yt = y + t0 * y_stride + r;
      switch (tn) {
        case 4:
          AxpyBlockF32Tile<4>(k, w + r, w_stride, at, a_stride, yt, y_stride,
                              mask);
          break;
        case 3:
          AxpyBlockF32Tile<3>(k, w + r, w_stride, at, a_stride, yt, y_stride,
                              mask);
          break;
        case 2:
          AxpyBlockF32Tile<2>(k, w + r, w_stride, at, a_stride, yt, y_stride,
                              mask);
          break;
        default:
          AxpyBlockF32Tile<1>(k, w + r, w_stride, at, a_stride, yt, y_stride,
                              mask);
          break;
      }
    }
  }
}

constexpr int Id(GgmlType t) { return static_cast<int>(t); }

IsaKernels MakeTable() {
  IsaKernels k;
  k.gemm[Id(GgmlType::kQ8_0)] = &GemmDriver<Q8_0Kernel>;
  k.gemm[Id(GgmlType::kQ4_0)] = &GemmDriver<Q4_0Kernel>;
  k.gemm[Id(GgmlType::kQ4_K)] = &GemmDriver<Q4_KKernel>;
  k.gemm[Id(GgmlType::kQ6_K)] = &GemmDriver<Q6_KKernel>;
  k.gemm[Id(GgmlType::kF16)] = &GemmDriver<FloatKernel<F16Kernel>>;
  k.gemm[Id(GgmlType::kBF16)] = &GemmDriver<FloatKernel<Bf16Kernel>>;
  k.gemm[Id(GgmlType::kF32)] = &GemmDriver<FloatKernel<F32Kernel>>;
  k.from_float[Id(GgmlType::kQ8_0)] = &FromFloatQ8_0;
  k.from_float[Id(GgmlType::kQ8_K)] = &FromFloatQ8_K;
  k.from_float[Id(GgmlType::kF16)] = &FromFloatF16;
  k.from_float[Id(GgmlType::kBF16)] = &FromFloatBf16;
  k.axpy_row[Id(GgmlType::kQ8_0)] = &AxpyRowQ8_0;
  k.axpy_row[Id(GgmlType::kQ4_0)] = &AxpyRowQ4_0;
  k.axpy_row[Id(GgmlType::kQ4_K)] = &AxpyRowQ4_K;
  k.axpy_row[Id(GgmlType::kQ6_K)] = &AxpyRowQ6_K;
  k.axpy_row[Id(GgmlType::kF16)] = &AxpyRowF16;
  k.axpy_row[Id(GgmlType::kF32)] = &AxpyRowF32;
  k.axpy_i8_scaled = &AxpyI8Scaled;
  k.axpy_block_f32 = &AxpyBlockF32;
  k.dot_f16_f32 = &DotF16F32;
  k.axpy_f16 = &AxpyF16;
  k.f32_to_f16 = &F32ToF16;
  return k;
}

}  // namespace

const IsaKernels& Avx2Kernels() {
  static const IsaKernels kTable = MakeTable();
  return kTable;
}

}  // namespace flashd::kernels::internal
