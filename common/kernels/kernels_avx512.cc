// AVX-512 kernels (F/BW/VL/DQ + VNNI + BF16): register-blocked GEMM
// micro-kernels over ggml blocks, activation quantizers and vector helpers.
//
// GEMM design. Every weight type has a `Tile<R, T>` micro-kernel that walks
// one K range for R weight rows and T activation tokens, keeping R x T zmm
// accumulators in registers: each weight block is loaded and decoded once
// per tile and used T times, each activation block is loaded once and used R
// times. Decode (nt == 1) uses tall tiles (kRowsDecode x 1) so several rows
// stream at once with independent accumulators; prefill uses kRows x kTokens
// tiles and walks tokens in chunks whose activations stay in L2 while a row
// tile's weights stay in L1.
//
// Integer dot products use vpdpbusd (u8 x s8). The unsigned operand is the
// weight: Q8_0 weights are offset by +128 (xor 0x80), Q4_0/Q4_K nibbles and
// Q6_K 6-bit values are unsigned already; the offset times the activation
// sum is folded into the accumulator's start value, so sums are exact.
// Q8_0/Q4_0 lay four blocks across a zmm pair (see Q0Tile) so one float
// fma serves four blocks; K-quants scale 16/32-element sub-block sums with
// vpdpwssd. Weight rows are software-prefetched (TilePrefetcher): decode
// runs at DRAM bandwidth (bench/kernels_bench.cc measures it).
// Per-block float scales are applied as in ggml (float(d_w * d_a) * sumi),
// so results differ from the reference only by float summation order.
// Q8_0/Q4_0 prefill (nt > 1) does not use these tiles: it repacks weights
// and activations per call (kernels_avx512_q0.cc).
//
// Batch invariance: every (row, token) result is the same bits whatever the
// tile shape, the number of rows and tokens in the call, and the row's and
// token's position in it (docs/determinism.md). A tile's accumulator for
// (r, t) sees the same operations in the same order for any R and T, and
// the K-quant decode and prefill tiles are one template; the Q8_0/Q4_0
// repacked prefill sums blocks in Q0Tile's order (BlockSums, SumChains).
// tests/kernels_batch_invariance_test.cc checks it on every ISA.

#include "common/kernels/immintrin_quiet.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels_avx512_attention.h"
#include "common/kernels/kernels_avx512_q0.h"
#include "common/kernels/kernels_internal.h"

namespace flashd::kernels::internal {
namespace {

using TileFn = void (*)(int64_t n, const uint8_t* w, size_t w_stride,
                        const uint8_t* a, size_t a_stride, float* out,
                        size_t out_stride);

// Bytes of activations a prefill chunk keeps hot (well inside L2).
constexpr size_t kChunkBytes = 384 << 10;

inline float Half(uint16_t h) { return _cvtsh_ss(h); }

// Horizontal reductions (GCC 12's _mm512_reduce_* trip
// -Wmaybe-uninitialized).
inline __m128 Fold512(__m512 v, __m128 (*op)(__m128, __m128)) {
  const __m512 h = _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2));
  const __m128 lo = _mm512_castps512_ps128(v);
  const __m128 q1 = _mm512_castps512_ps128(_mm512_shuffle_f32x4(v, v, 1));
  const __m128 q2 = _mm512_castps512_ps128(h);
  const __m128 q3 = _mm512_castps512_ps128(_mm512_shuffle_f32x4(h, h, 1));
  __m128 x = op(op(lo, q1), op(q2, q3));
  x = op(x, _mm_movehl_ps(x, x));
  return op(x, _mm_movehdup_ps(x));
}
inline float HorizontalSum(__m512 v) {
  return _mm_cvtss_f32(
      Fold512(v, [](__m128 a, __m128 b) { return _mm_add_ps(a, b); }));
}
inline float HorizontalMax(__m512 v) {
  return _mm_cvtss_f32(
      Fold512(v, [](__m128 a, __m128 b) { return _mm_max_ps(a, b); }));
}
inline int32_t HorizontalSumI32(__m512i v) {
  const __m256i s = _mm256_add_epi32(_mm512_castsi512_si256(v),
                                     _mm512_extracti64x4_epi64(v, 1));
  __m128i x =
      _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(x);
}

// Writes out[t * out_stride + r] = sum of acc[r][t].
template <int R, int T>
inline void StoreTile(const __m512 (&acc)[R][T], float* out,
                      size_t out_stride) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      out[t * out_stride + r] = HorizontalSum(acc[r][t]);
  }
}

template <int R, int T>
inline void ZeroTile(__m512 (&acc)[R][T]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
}

// 64-bit lanes of four 16-bit shift counts, for vpsrlvw/vpsllvw.
constexpr int64_t kW0 = 0;
constexpr int64_t kW2 = 0x0002000200020002;
constexpr int64_t kW4 = 0x0004000400040004;

// Software prefetch of a tile's weights. A tile reads R rows in lockstep,
// which the hardware prefetchers follow poorly (short interleaved streams),
// so each row is prefetched kPrefetchBytes / R ahead of the reads; past a
// row's end the stream continues into the same row of the next tile
// (R * w_stride further), so a new tile starts on prefetched lines.
// kPrefetchBytes = 12 KiB in flight measured best (6-24 KiB tried).
constexpr int64_t kPrefetchBytes = 12 << 10;

class TilePrefetcher {
 public:
  // The tile's rows start at w + r * w_stride and are read over row_bytes
  // in `steps` equal steps.
  TilePrefetcher(const uint8_t* w, size_t w_stride, int rows, size_t row_bytes,
                 int64_t steps)
      : w_(w),
        w_stride_(static_cast<int64_t>(w_stride)),
        rows_(rows),
        row_bytes_(static_cast<int64_t>(row_bytes)),
        ahead_(kPrefetchBytes / rows),
        step_(static_cast<int64_t>(row_bytes) / std::max<int64_t>(steps, 1)),
        next_(ahead_),
        target_(ahead_) {}

  // Call once per step, before its loads.
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
  int64_t ahead_;
  int64_t step_;
  int64_t next_;
  int64_t target_;
};

// Tile<R, 1..kTokens> of kernel K, R = kRows (full) or 1.
template <typename K, size_t... Ts>
constexpr auto MakeTiles(std::index_sequence<Ts...>, bool full) {
  struct Table {
    TileFn fn[sizeof...(Ts)];
  };
  return full ? Table{{&K::template Tile<K::kRows, Ts + 1>...}}
              : Table{{&K::template Tile<1, Ts + 1>...}};
}

// Runs Tile<R, T> of kernel K over the whole problem. Decode (nt == 1):
// kRowsDecode-row tiles. Prefill: chunks of tokens; within a chunk, each
// kRows-row tile sweeps all the chunk's tokens kTokens at a time (rows left
// over go one by one).
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
// Q8_0 and Q4_0 weights x Q8_0 activations, four blocks per step. A block's
// 32 elements are split in halves: "lo" holds elements 0-15 of blocks
// b..b+3 in its four 128-bit lanes, "hi" elements 16-31, so two vpdpbusd
// leave block b+k's sum in lane k and one cvt + fma applies the four blocks'
// scales (a zmm of [d_b x4, d_b+1 x4, ...]). Blocks have fp16 scales at
// even byte offsets, so vpermt2w (AVX512BW) gathers the halves and the
// scales straight from unaligned loads of the packed blocks.

// Word-permute indices, built at compile time. Source words 0-31 come from
// the first load, 32-63 from the second.
struct WordIndex {
  alignas(64) uint16_t v[32];
};

// Q8_0 (34-byte blocks). lo: loads at bytes 0 and 56; hi: at 16 and 72.
// Block k's element-half h starts at word 17k + 1 + 8h.
constexpr WordIndex Q8_0HalfIndex(int h) {
  WordIndex idx{};
  const int first_base = h == 0 ? 0 : 8;     // first load's word offset
  const int second_base = h == 0 ? 28 : 36;  // second load's word offset
  for (int j = 0; j < 32; ++j) {
    const int w = 17 * (j / 8) + 1 + 8 * h + j % 8;
    idx.v[j] = static_cast<uint16_t>(
        w - first_base < 32 ? w - first_base : 32 + w - second_base);
  }
  return idx;
}
// Scales of Q8_0 blocks k = 0..3 (word 17k), each x4, from loads at 0, 56.
constexpr WordIndex Q8_0ScaleIndex() {
  WordIndex idx{};
  for (int j = 0; j < 16; ++j) {
    const int w = 17 * (j / 4);
    idx.v[j] = static_cast<uint16_t>(w < 32 ? w : 32 + w - 28);
  }
  return idx;
}
// Q4_0 (18-byte blocks), loads at bytes 0 and 8: block k's 16 bytes of
// nibbles at word 9k + 1, its scale at word 9k.
constexpr WordIndex Q4_0NibbleIndex() {
  WordIndex idx{};
  for (int j = 0; j < 32; ++j) {
    const int w = 9 * (j / 8) + 1 + j % 8;
    idx.v[j] = static_cast<uint16_t>(w < 32 ? w : 32 + w - 4);
  }
  return idx;
}
constexpr WordIndex Q4_0ScaleIndex() {
  WordIndex idx{};
  for (int j = 0; j < 16; ++j) idx.v[j] = static_cast<uint16_t>(9 * (j / 4));
  return idx;
}

constexpr WordIndex kQ8_0Lo = Q8_0HalfIndex(0);
constexpr WordIndex kQ8_0Hi = Q8_0HalfIndex(1);
constexpr WordIndex kQ8_0Scale = Q8_0ScaleIndex();
constexpr WordIndex kQ4_0Nibbles = Q4_0NibbleIndex();
constexpr WordIndex kQ4_0Scale = Q4_0ScaleIndex();

inline __m512i LoadIndex(const WordIndex& idx) {
  return _mm512_load_si512(idx.v);
}

// 64 bytes at p + offset, or only those below p + valid (the rest zero) when
// `masked`; the last step of a row must not read past its blocks.
inline __m512i Load64(const uint8_t* p, int offset, bool masked,
                      int64_t valid) {
  if (!masked) return _mm512_loadu_si512(p + offset);
  const int64_t left = valid - offset;
  const __mmask64 m = left <= 0    ? 0
                      : left >= 64 ? ~__mmask64{0}
                                   : (__mmask64{1} << left) - 1;
  return _mm512_maskz_loadu_epi8(m, p + offset);
}

// Four Q8_0 blocks at p (`count` of them valid when masked): halves and
// scales as described above.
struct Q8_0x4 {
  __m512i lo;
  __m512i hi;
  __m512 d;
};
inline Q8_0x4 LoadQ8_0x4(const uint8_t* p, bool masked, int count) {
  const int64_t valid = int64_t{count} * sizeof(BlockQ8_0);
  const __m512i l0 = Load64(p, 0, masked, valid);
  const __m512i l1 = Load64(p, 56, masked, valid);
  const __m512i l2 = Load64(p, 16, masked, valid);
  const __m512i l3 = Load64(p, 72, masked, valid);
  Q8_0x4 r;
  r.lo = _mm512_permutex2var_epi16(l0, LoadIndex(kQ8_0Lo), l1);
  r.hi = _mm512_permutex2var_epi16(l2, LoadIndex(kQ8_0Hi), l3);
  r.d = _mm512_cvtph_ps(_mm512_castsi512_si256(
      _mm512_permutex2var_epi16(l0, LoadIndex(kQ8_0Scale), l1)));
  return r;
}

// Q8_0 / Q4_0 summation order, shared with the prefill GEMM
// (kernels_avx512_q0.cc) so that a row's result does not depend on the
// number of tokens: a block's integer dot product is exact; block b's
// float(sum) * (d_w * d_a) is added by fma into chain b % 4, in increasing
// b from +0; the result is (chain 0 + chain 1) + (chain 2 + chain 3).
//
// BlockSums: from vpdpbusd partial sums with block k's in 128-bit lane k,
// each lane's total in all its dwords (exact).
inline __m512i BlockSums(__m512i v) {
  v = _mm512_add_epi32(
      v, _mm512_shuffle_epi32(v, static_cast<_MM_PERM_ENUM>(
                                     _MM_SHUFFLE(2, 3, 0, 1))));
  return _mm512_add_epi32(
      v, _mm512_shuffle_epi32(
             v, static_cast<_MM_PERM_ENUM>(_MM_SHUFFLE(1, 0, 3, 2))));
}
// The result from accumulators whose 128-bit lane k holds chain k.
inline float SumChains(__m512 acc) {
  const __m128 c0 = _mm512_castps512_ps128(acc);
  const __m128 c1 = _mm512_extractf32x4_ps(acc, 1);
  const __m128 c2 = _mm512_extractf32x4_ps(acc, 2);
  const __m128 c3 = _mm512_extractf32x4_ps(acc, 3);
  return _mm_cvtss_f32(_mm_add_ss(_mm_add_ss(c0, c1), _mm_add_ss(c2, c3)));
}

// Shared tile of the two kernels. W::Load(row, masked, count) returns the
// weights as unsigned bytes (lo, hi) and scales; kOffset is what W added to
// make them unsigned (subtracted through the activation sums).
template <typename W, int R, int T>
void Q0Tile(int64_t n, const uint8_t* w, size_t w_stride, const uint8_t* a,
            size_t a_stride, float* out, size_t out_stride) {
  const int64_t nb = n / kQK8_0;
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(W::kOffset));
  const __m512i zero = _mm512_setzero_si512();
  __m512 acc[R][T];
  ZeroTile(acc);
  TilePrefetcher prefetch(w, w_stride, R, nb * W::kBlockBytes, (nb + 3) / 4);
  auto step = [&](int64_t b, bool masked, int count) {
    prefetch.Step();
    Q8_0x4 wq[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      wq[r] = W::Load(w + r * w_stride + b * W::kBlockBytes, masked, count);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const Q8_0x4 av =
          LoadQ8_0x4(a + t * a_stride + b * sizeof(BlockQ8_0), masked, count);
      // -kOffset * (sum of each lane's activations).
      const __m512i bias = _mm512_sub_epi32(
          zero, _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, offset, av.lo),
                                    offset, av.hi));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512i sumi = _mm512_dpbusd_epi32(
            _mm512_dpbusd_epi32(bias, wq[r].lo, av.lo), wq[r].hi, av.hi);
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(BlockSums(sumi)),
                                    _mm512_mul_ps(wq[r].d, av.d), acc[r][t]);
      }
    }
  };
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) step(b, false, 4);
  if (b < nb) step(b, true, static_cast<int>(nb - b));
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) out[t * out_stride + r] = SumChains(acc[r][t]);
  }
}

struct Q8_0Weights {
  static constexpr int kBlockBytes = sizeof(BlockQ8_0);
  static constexpr int kOffset = 0x80;
  static Q8_0x4 Load(const uint8_t* p, bool masked, int count) {
    Q8_0x4 q = LoadQ8_0x4(p, masked, count);
    const __m512i k80 = _mm512_set1_epi8(static_cast<char>(0x80));
    q.lo = _mm512_xor_si512(q.lo, k80);  // +128: unsigned
    q.hi = _mm512_xor_si512(q.hi, k80);
    return q;
  }
};

struct Q4_0Weights {
  static constexpr int kBlockBytes = sizeof(BlockQ4_0);
  static constexpr int kOffset = 8;
  static Q8_0x4 Load(const uint8_t* p, bool masked, int count) {
    const int64_t valid = int64_t{count} * kBlockBytes;
    const __m512i l0 = Load64(p, 0, masked, valid);
    const __m512i l1 = Load64(p, 8, masked, valid);
    const __m512i k0F = _mm512_set1_epi8(0x0F);
    const __m512i q =
        _mm512_permutex2var_epi16(l0, LoadIndex(kQ4_0Nibbles), l1);
    Q8_0x4 r;
    r.lo = _mm512_and_si512(q, k0F);
    r.hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), k0F);
    r.d = _mm512_cvtph_ps(_mm512_castsi512_si256(
        _mm512_permutexvar_epi16(LoadIndex(kQ4_0Scale), l0)));
    return r;
  }
};

// Only the decode tiles (kRowsDecode x 1) run: GemmQ8_0/GemmQ4_0 below send
// nt > 1 to the repacking prefill path, so kRows/kTokens merely satisfy
// GemmDriver.
struct Q8_0Kernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 4;
  static constexpr int kTokens = 3;
  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride) {
    Q0Tile<Q8_0Weights, R, T>(n, w, w_stride, a, a_stride, out, out_stride);
  }
};

struct Q4_0Kernel {
  static constexpr int kRowsDecode = 8;
  static constexpr int kRows = 3;
  static constexpr int kTokens = 3;
  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride) {
    Q0Tile<Q4_0Weights, R, T>(n, w, w_stride, a, a_stride, out, out_stride);
  }
};

// ---------------------------------------------------------------------------
// Q4_K weights x Q8_K activations. Per super-block: 4 zmm of 64 nibbles (two
// 32-element sub-blocks each); vpdpbusd lane sums (|sum| <= 4*15*128, fits
// int16) are scaled by the 6-bit sub-block scale with vpdpwssd against
// (scale, 0) word pairs; the mins term comes from the activation bsums.

// Unpacks ggml's 12-byte Q4_K scales into sc[0..7], m[0..7] (as
// get_scale_min_k4).
inline __m128i UnpackQ4KScales(const uint8_t* s) {
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
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
}

// UnpackQ4KScales for the current super-blocks of up to four rows at once:
// 128-bit lane r holds row r's sc[0..7], m[0..7].
template <int R>
inline __m512i UnpackQ4KScalesX4(const BlockQ4_K* const* x) {
  static_assert(R <= 4);
  // 16 bytes from each row's scales: 12 of scales, 4 of qs (ignored).
  __m512i v = _mm512_zextsi128_si512(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[0]->scales)));
#pragma GCC unroll 4
  for (int r = 1; r < R; ++r) {
    v = _mm512_mask_broadcast_i32x4(
        v, static_cast<__mmask16>(0xF << (4 * r)),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[r]->scales)));
  }
  // Dwords u0, u1, u2 (bytes 0-3, 4-7, 8-11) per lane; out = [u0 & 0x3f..,
  // (u2 & 0x0f..) | ((u0 >> 6) & 3..) << 4, u1 & 0x3f..,
  // ((u2 >> 4) & 0x0f..) | ((u1 >> 6) & 3..) << 4].
  const __m512i lo = _mm512_srlv_epi32(
      _mm512_shuffle_epi32(v,
                           static_cast<_MM_PERM_ENUM>(_MM_SHUFFLE(2, 1, 2, 0))),
      _mm512_set4_epi32(4, 0, 0, 0));
  const __m512i hi = _mm512_and_si512(
      _mm512_srli_epi32(_mm512_shuffle_epi32(v, static_cast<_MM_PERM_ENUM>(
                                                    _MM_SHUFFLE(1, 1, 0, 0))),
                        2),
      _mm512_set4_epi32(0x30303030, 0, 0x30303030, 0));
  const __m512i mask =
      _mm512_set4_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f);
  return _mm512_ternarylogic_epi32(lo, mask, hi, 0xEA);  // (lo & mask) | hi
}

// Word indices into the 32 words that two rows' unpacked scales widen to
// (row k's sc at words 16k..16k+7, m at 16k+8..16k+15): that row's mins as
// [m0, m0, m1, m1, ...].
constexpr WordIndex Q4KMinWords(int k) {
  WordIndex idx{};
  for (int j = 0; j < 32; ++j) {
    idx.v[j] = static_cast<uint16_t>(16 * k + 8 + (j % 16) / 2);
  }
  return idx;
}
constexpr WordIndex kQ4KMinWords[2] = {Q4KMinWords(0), Q4KMinWords(1)};

// Scale words: 64 bytes of nibbles (pairs 2g, 2g+1) give
// lo = sub-blocks (4g | 4g+2) and hi = (4g+1 | 4g+3) in the low | high 256
// bits; vpackssdw of their vpdpbusd sums puts, in 128-bit lane k, sub-block
// 4g + 2 * (k / 2) in words 0-3 and the next sub-block in words 4-7. These
// indices pick row k's matching sc (see Q4KScaleWords for the word layout).
constexpr WordIndex Q4KPackScaleWords(int k, int g) {
  WordIndex idx{};
  for (int j = 0; j < 32; ++j) {
    const int sub = 4 * g + 2 * (j / 16) + (j % 8) / 4;
    idx.v[j] = static_cast<uint16_t>(16 * k + sub);
  }
  return idx;
}
constexpr WordIndex kQ4KPackScaleWords[2][2] = {
    {Q4KPackScaleWords(0, 0), Q4KPackScaleWords(0, 1)},
    {Q4KPackScaleWords(1, 0), Q4KPackScaleWords(1, 1)}};

struct Q4_KKernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 2;
  static constexpr int kTokens = 4;

  // One tile of R <= 4 rows x T tokens, used for decode (T = 1, R =
  // kRowsDecode) and prefill alike, so that every (row, token) sums the
  // same lanes in the same order whatever the tile's shape. Per 128
  // elements, row and token: two vpdpbusd, one vpackssdw (sums fit int16)
  // and one vpdpwssd against the packed sub-block scales; per row one
  // 64-byte load and and/shift/and, per token two loads and two shuffles.
  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride) {
    static_assert(R <= 4);
    const int64_t nb = n / kQK_K;
    const __m512i k0F = _mm512_set1_epi8(0x0F);
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[R][T];
    ZeroTile(acc);
    TilePrefetcher prefetch(w, w_stride, R, nb * sizeof(BlockQ4_K), nb);
    for (int64_t i = 0; i < nb; ++i) {
      prefetch.Step();
      const BlockQ4_K* x[R];
      const BlockQ8_K* y[T];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        x[r] = reinterpret_cast<const BlockQ4_K*>(w + r * w_stride) + i;
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        y[t] = reinterpret_cast<const BlockQ8_K*>(a + t * a_stride) + i;
      }
      __m512i words[(R + 1) / 2];
      {
        const __m512i packed = UnpackQ4KScalesX4<R>(x);
        words[0] = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(packed));
        if constexpr (R > 2) {
          words[1] = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(packed, 1));
        }
      }
      __m512i sumi[R][T];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) sumi[r][t] = zero;
      }
#pragma GCC unroll 2
      for (int g = 0; g < 2; ++g) {
        __m512i lo[R], hi[R], sc[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m512i v = _mm512_loadu_si512(x[r]->qs + 64 * g);
          lo[r] = _mm512_and_si512(v, k0F);
          hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), k0F);
          sc[r] = _mm512_permutexvar_epi16(
              LoadIndex(kQ4KPackScaleWords[r % 2][g]), words[r / 2]);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m512i a0 = _mm512_loadu_si512(y[t]->qs + 128 * g);
          const __m512i a1 = _mm512_loadu_si512(y[t]->qs + 128 * g + 64);
          const __m512i alo =
              _mm512_shuffle_i64x2(a0, a1, _MM_SHUFFLE(1, 0, 1, 0));
          const __m512i ahi =
              _mm512_shuffle_i64x2(a0, a1, _MM_SHUFFLE(3, 2, 3, 2));
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const __m512i s =
                _mm512_packs_epi32(_mm512_dpbusd_epi32(zero, lo[r], alo),
                                   _mm512_dpbusd_epi32(zero, hi[r], ahi));
            sumi[r][t] = _mm512_dpwssd_epi32(sumi[r][t], s, sc[r]);
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256i mins = _mm512_castsi512_si256(_mm512_permutexvar_epi16(
            LoadIndex(kQ4KMinWords[r % 2]), words[r / 2]));
        const float dw = Half(x[r]->d);
        const float dmin = Half(x[r]->dmin);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256i bsums =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[t]->bsums));
          const __m256 m = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, bsums));
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[r][t]),
                                      _mm512_set1_ps(dw * y[t]->d), acc[r][t]);
          acc[r][t] =
              _mm512_fnmadd_ps(_mm512_zextps256_ps512(m),
                               _mm512_set1_ps(dmin * y[t]->d), acc[r][t]);
        }
      }
    }
    StoreTile(acc, out, out_stride);
  }
};

// ---------------------------------------------------------------------------
// Q6_K weights x Q8_K activations. Per 128-element half: 64 bytes of ql and
// 32 of qh give two zmm of unsigned 6-bit values; vpdpbusd lane sums fit
// int16 (4*63*128) and are scaled per 16 elements with vpdpwssd; the -32
// offset is folded in from the bsums.

// Scale words: vpackssdw of half h's q0 and q1 vpdpbusd
// sums puts, in 128-bit lane k, 16-element group k of q0 (scale 8h + k) in
// words 0-3 and of q1 (scale 8h + 4 + k) in words 4-7.
constexpr WordIndex Q6KPackScaleWords(int h) {
  WordIndex idx{};
  for (int j = 0; j < 32; ++j) {
    idx.v[j] = static_cast<uint16_t>(8 * h + j / 8 + 4 * ((j % 8) / 4));
  }
  return idx;
}
constexpr WordIndex kQ6KPackScaleWords[2] = {Q6KPackScaleWords(0),
                                             Q6KPackScaleWords(1)};

struct Q6_KKernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 2;
  static constexpr int kTokens = 4;

  // One tile of R rows x T tokens, used for decode (T = 1, R =
  // kRowsDecode) and prefill alike, so that every (row, token) sums the
  // same lanes in the same order whatever the tile's shape. Per 128
  // elements, row and token: two vpdpbusd, one vpackssdw (sums fit int16)
  // and one vpdpwssd against the packed 16-element scales; q0/q1 are built
  // once per row, the activations loaded once per token.
  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride) {
    const int64_t nb = n / kQK_K;
    const __m512i k0F = _mm512_set1_epi8(0x0F);
    const __m512i k30 = _mm512_set1_epi8(0x30);
    const __m512i shr =
        _mm512_set_epi64(kW2, kW2, kW2, kW2, kW0, kW0, kW0, kW0);
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[R][T];
    ZeroTile(acc);
    TilePrefetcher prefetch(w, w_stride, R, nb * sizeof(BlockQ6_K), nb);
    for (int64_t i = 0; i < nb; ++i) {
      prefetch.Step();
      const BlockQ6_K* x[R];
      const BlockQ8_K* y[T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        y[t] = reinterpret_cast<const BlockQ8_K*>(a + t * a_stride) + i;
      }
      __m512i sc16[R];
      __m512i sumi[R][T];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        x[r] = reinterpret_cast<const BlockQ6_K*>(w + r * w_stride) + i;
        const __m256i s16 = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[r]->scales)));
        sc16[r] = _mm512_castsi256_si512(s16);
        const __m256i neg32 = _mm256_sub_epi16(_mm256_setzero_si256(),
                                               _mm256_slli_epi16(s16, 5));
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256i bsums = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(y[t]->bsums));
          sumi[r][t] =
              _mm512_zextsi256_si512(_mm256_madd_epi16(neg32, bsums));
        }
      }
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m512i q0[R], q1[R], sc[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m512i ql = _mm512_loadu_si512(x[r]->ql + 64 * h);
          const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(x[r]->qh + 32 * h)));
          // hs: qh >> (0 | 2); its bits 4-5 are q1's high bits, and
          // hs << 4 brings q0's (qh bits 0-1 | 2-3) to bits 4-5.
          const __m512i hs = _mm512_srlv_epi16(qh, shr);
          const __m512i h0 = _mm512_and_si512(_mm512_slli_epi16(hs, 4), k30);
          const __m512i h1 = _mm512_and_si512(hs, k30);
          q0[r] = _mm512_ternarylogic_epi32(ql, k0F, h0, 0xEA);
          q1[r] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4), k0F, h1,
                                            0xEA);
          sc[r] = _mm512_permutexvar_epi16(LoadIndex(kQ6KPackScaleWords[h]),
                                           sc16[r]);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m512i a0 = _mm512_loadu_si512(y[t]->qs + 128 * h);
          const __m512i a1 = _mm512_loadu_si512(y[t]->qs + 128 * h + 64);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const __m512i s =
                _mm512_packs_epi32(_mm512_dpbusd_epi32(zero, q0[r], a0),
                                   _mm512_dpbusd_epi32(zero, q1[r], a1));
            sumi[r][t] = _mm512_dpwssd_epi32(sumi[r][t], s, sc[r]);
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float dw = Half(x[r]->d);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[r][t]),
                                      _mm512_set1_ps(dw * y[t]->d), acc[r][t]);
        }
      }
    }
    StoreTile(acc, out, out_stride);
  }
};

// ---------------------------------------------------------------------------
// Float weights: F16 x F16, BF16 x BF16 (vdpbf16ps), F32 x F32.

struct F16Kernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 4;
  static constexpr int kTokens = 4;
  static constexpr int kStep = 16;
  static constexpr int kElemBytes = 2;

  static __m512 Load(const uint8_t* p, int64_t i) {
    return _mm512_cvtph_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i)));
  }
  static __m512 LoadTail(const uint8_t* p, int64_t i, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p + 2 * i));
  }
  static __m512 Fma(__m512 w, __m512 a, __m512 acc) {
    return _mm512_fmadd_ps(w, a, acc);
  }

  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride);
};

struct Bf16Kernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 4;
  static constexpr int kTokens = 4;
  static constexpr int kStep = 32;
  static constexpr int kElemBytes = 2;

  static __m512 Load(const uint8_t* p, int64_t i) {
    return _mm512_castsi512_ps(_mm512_loadu_si512(p + 2 * i));
  }
  static __m512 LoadTail(const uint8_t* p, int64_t i, __mmask32 m) {
    return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, p + 2 * i));
  }
  static __m512 Fma(__m512 w, __m512 a, __m512 acc) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(w),
                            reinterpret_cast<__m512bh&>(a));
  }

  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride);
};

struct F32Kernel {
  static constexpr int kRowsDecode = 4;
  static constexpr int kRows = 4;
  static constexpr int kTokens = 4;
  static constexpr int kStep = 16;
  static constexpr int kElemBytes = 4;

  static __m512 Load(const uint8_t* p, int64_t i) {
    return _mm512_loadu_ps(p + 4 * i);
  }
  static __m512 LoadTail(const uint8_t* p, int64_t i, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, p + 4 * i);
  }
  static __m512 Fma(__m512 w, __m512 a, __m512 acc) {
    return _mm512_fmadd_ps(w, a, acc);
  }

  template <int R, int T>
  static void Tile(int64_t n, const uint8_t* w, size_t w_stride,
                   const uint8_t* a, size_t a_stride, float* out,
                   size_t out_stride);
};

// Shared body of the float tiles: kStep elements per load.
template <typename K, int R, int T>
void FloatTile(int64_t n, const uint8_t* w, size_t w_stride, const uint8_t* a,
               size_t a_stride, float* out, size_t out_stride) {
  __m512 acc[R][T];
  ZeroTile(acc);
  TilePrefetcher prefetch(w, w_stride, R, n * K::kElemBytes,
                          (n + K::kStep - 1) / K::kStep);
  auto step = [&](auto load, int64_t i) {
    prefetch.Step();
    __m512 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = load(w + r * w_stride, i);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m512 av = load(a + t * a_stride, i);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][t] = K::Fma(wv[r], av, acc[r][t]);
    }
  };
  int64_t i = 0;
  for (; i + K::kStep <= n; i += K::kStep) {
    step([](const uint8_t* p, int64_t j) { return K::Load(p, j); }, i);
  }
  if (i < n) {
    const uint64_t m = (uint64_t{1} << (n - i)) - 1;
    step([m](const uint8_t* p, int64_t j) { return K::LoadTail(p, j, m); }, i);
  }
  StoreTile(acc, out, out_stride);
}

template <int R, int T>
void F16Kernel::Tile(int64_t n, const uint8_t* w, size_t w_stride,
                     const uint8_t* a, size_t a_stride, float* out,
                     size_t out_stride) {
  FloatTile<F16Kernel, R, T>(n, w, w_stride, a, a_stride, out, out_stride);
}
template <int R, int T>
void Bf16Kernel::Tile(int64_t n, const uint8_t* w, size_t w_stride,
                      const uint8_t* a, size_t a_stride, float* out,
                      size_t out_stride) {
  FloatTile<Bf16Kernel, R, T>(n, w, w_stride, a, a_stride, out, out_stride);
}
template <int R, int T>
void F32Kernel::Tile(int64_t n, const uint8_t* w, size_t w_stride,
                     const uint8_t* a, size_t a_stride, float* out,
                     size_t out_stride) {
  FloatTile<F32Kernel, R, T>(n, w, w_stride, a, a_stride, out, out_stride);
}

// ---------------------------------------------------------------------------
// Activation quantizers.

// As ggml's SIMD quantize_row_q8_0: d = amax / 127, q = round-to-nearest-even
// (x * (127 / amax)).
void FromFloatQ8_0(const float* x, void* vy, int64_t n) {
  auto* y = static_cast<BlockQ8_0*>(vy);
  const __m512 sign_mask = _mm512_set1_ps(-0.0f);
  for (int64_t b = 0; b < n / kQK8_0; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + b * kQK8_0);
    const __m512 v1 = _mm512_loadu_ps(x + b * kQK8_0 + 16);
    const __m512 amax = _mm512_max_ps(_mm512_andnot_ps(sign_mask, v0),
                                      _mm512_andnot_ps(sign_mask, v1));
    const float max_scalar = HorizontalMax(amax);
    const float d = max_scalar / 127.f;
    y[b].d = static_cast<uint16_t>(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
    const float id = max_scalar != 0.0f ? 127.f / max_scalar : 0.0f;
    const __m512 mul = _mm512_set1_ps(id);
    const __m512i i0 = _mm512_cvt_roundps_epi32(
        _mm512_mul_ps(v0, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i i1 = _mm512_cvt_roundps_epi32(
        _mm512_mul_ps(v1, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs),
                     _mm512_cvtsepi32_epi8(i0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16),
                     _mm512_cvtsepi32_epi8(i1));
  }
}

// As ggml's quantize_row_q8_K_ref (which x86 ggml uses as is): the scale
// comes from the first element of largest magnitude, q = nearest(-127/max*x).
void FromFloatQ8_K(const float* x, void* vy, int64_t n) {
  auto* y = static_cast<BlockQ8_K*>(vy);
  const __m512 sign_mask = _mm512_set1_ps(-0.0f);
  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    __m512 amax_v = _mm512_setzero_ps();
    for (int j = 0; j < kQK_K; j += 16) {
      amax_v = _mm512_max_ps(
          amax_v, _mm512_andnot_ps(sign_mask, _mm512_loadu_ps(x + j)));
    }
    const float amax = HorizontalMax(amax_v);
    if (!(amax > 0.0f)) {
      y[b].d = 0;
      std::memset(y[b].qs, 0, sizeof(y[b].qs));
      std::memset(y[b].bsums, 0, sizeof(y[b].bsums));
      continue;
    }
    float max = 0.0f;
    const __m512 amax_b = _mm512_set1_ps(amax);
    for (int j = 0; j < kQK_K; j += 16) {
      const __mmask16 m = _mm512_cmp_ps_mask(
          _mm512_andnot_ps(sign_mask, _mm512_loadu_ps(x + j)), amax_b,
          _CMP_EQ_OQ);
      if (m != 0) {
        max = x[j + __builtin_ctz(m)];
        break;
      }
    }
    const float iscale = -127.f / max;
    const __m512 mul = _mm512_set1_ps(iscale);
    const __m512i k127 = _mm512_set1_epi32(127);
    alignas(64) int32_t sums[16];
    for (int g = 0; g < 16; ++g) {
      __m512i q = _mm512_cvt_roundps_epi32(
          _mm512_mul_ps(_mm512_loadu_ps(x + 16 * g), mul),
          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_min_epi32(q, k127);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16 * g),
                       _mm512_cvtsepi32_epi8(q));
      sums[g] = HorizontalSumI32(q);
    }
    for (int g = 0; g < 16; ++g) y[b].bsums[g] = static_cast<int16_t>(sums[g]);
    y[b].d = 1 / iscale;
  }
}

void FromFloatF16(const float* x, void* vy, int64_t n) {
  auto* y = static_cast<uint16_t*>(vy);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(
        reinterpret_cast<__m256i*>(y + i),
        _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(y + i, m,
                             _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i),
                                             _MM_FROUND_TO_NEAREST_INT));
  }
}

// Round to nearest even, NaN kept quiet (as FloatToBf16; vcvtneps2bf16
// would flush subnormals).
inline __m256i Bf16Round(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb =
      _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))),
      16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16),
                           _mm512_set1_epi32(64));
  return _mm512_cvtepi32_epi16(r);
}

void FromFloatBf16(const float* x, void* vy, int64_t n) {
  auto* y = static_cast<uint16_t*>(vy);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        Bf16Round(_mm512_loadu_ps(x + i)));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(y + i, m,
                             Bf16Round(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

// ---------------------------------------------------------------------------
// Vector helpers.

float DotF16F32(const uint16_t* k, const float* q, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps();
  __m512 acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(
                               reinterpret_cast<const __m256i*>(k + i))),
                           _mm512_loadu_ps(q + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(
                               reinterpret_cast<const __m256i*>(k + i + 16))),
                           _mm512_loadu_ps(q + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m =
        static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
    acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, k + i)),
                           _mm512_maskz_loadu_ps(m, q + i), acc0);
  }
  return HorizontalSum(_mm512_add_ps(acc0, acc1));
}

void AxpyF16(float a, const uint16_t* v, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(
        y + i, _mm512_fmadd_ps(av,
                               _mm512_cvtph_ps(_mm256_loadu_si256(
                                   reinterpret_cast<const __m256i*>(v + i))),
                               _mm512_loadu_ps(y + i)));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(
        y + i, m,
        _mm512_fmadd_ps(av, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, v + i)),
                        _mm512_maskz_loadu_ps(m, y + i)));
  }
}

void F32ToF16(const float* x, uint16_t* y, int64_t n) { FromFloatF16(x, y, n); }

// y[i] += a * w[i] for 16 dequantized weights.
inline void Axpy16(__m512 a, __m512 w, float* y) {
  _mm512_storeu_ps(y, _mm512_fmadd_ps(a, w, _mm512_loadu_ps(y)));
}

void AxpyRowF32(float a, const void* row, float* y, int64_t n) {
  const auto* w = static_cast<const float*>(row);
  const __m512 av = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) Axpy16(av, _mm512_loadu_ps(w + i), y + i);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m,
                          _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, w + i),
                                          _mm512_maskz_loadu_ps(m, y + i)));
  }
}

void AxpyRowF16(float a, const void* row, float* y, int64_t n) {
  AxpyF16(a, static_cast<const uint16_t*>(row), y, n);
}

void AxpyRowQ8_0(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ8_0*>(row);
  const __m512 av = _mm512_set1_ps(a);
  for (int64_t b = 0; b < n / kQK8_0; ++b, y += kQK8_0) {
    const __m512 d = _mm512_set1_ps(Half(x[b].d));
    const __m256i q =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs));
    Axpy16(av,
           _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                _mm256_castsi256_si128(q)))),
           y);
    Axpy16(av,
           _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                _mm256_extracti128_si256(q, 1)))),
           y + 16);
  }
}

void AxpyRowQ4_0(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ4_0*>(row);
  const __m512 av = _mm512_set1_ps(a);
  const __m128i k0F = _mm_set1_epi8(0x0F);
  const __m128i k8 = _mm_set1_epi8(8);
  for (int64_t b = 0; b < n / kQK4_0; ++b, y += kQK4_0) {
    const __m512 d = _mm512_set1_ps(Half(x[b].d));
    const __m128i q =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].qs));
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, k0F), k8);
    const __m128i hi =
        _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), k0F), k8);
    Axpy16(av, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo))),
           y);
    Axpy16(av, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi))),
           y + 16);
  }
}

void AxpyRowQ4_K(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ4_K*>(row);
  const __m512 av = _mm512_set1_ps(a);
  const __m128i k0F = _mm_set1_epi8(0x0F);
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    uint8_t sm[16];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sm),
                     UnpackQ4KScales(x[b].scales));
    const float d = Half(x[b].d);
    const float dmin = Half(x[b].dmin);
    for (int j = 0; j < 8; ++j, y += 32) {
      const __m512 d1 = _mm512_set1_ps(d * sm[j]);
      const __m512 m1 = _mm512_set1_ps(dmin * sm[8 + j]);
      const __m128i q0 = _mm_loadu_si128(
          reinterpret_cast<const __m128i*>(x[b].qs + 32 * (j / 2)));
      const __m128i q1 = _mm_loadu_si128(
          reinterpret_cast<const __m128i*>(x[b].qs + 32 * (j / 2) + 16));
      const int shift = 4 * (j & 1);
      const __m128i n0 = _mm_and_si128(_mm_srli_epi16(q0, shift), k0F);
      const __m128i n1 = _mm_and_si128(_mm_srli_epi16(q1, shift), k0F);
      Axpy16(
          av,
          _mm512_fmsub_ps(d1, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(n0)), m1),
          y);
      Axpy16(
          av,
          _mm512_fmsub_ps(d1, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(n1)), m1),
          y + 16);
    }
  }
}

void AxpyRowQ6_K(float a, const void* row, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ6_K*>(row);
  const __m512 av = _mm512_set1_ps(a);
  const __m512i k0F = _mm512_set1_epi8(0x0F);
  const __m512i k30 = _mm512_set1_epi8(0x30);
  const __m512i k32 = _mm512_set1_epi8(32);
  const __m512i shl = _mm512_set_epi64(kW2, kW2, kW2, kW2, kW4, kW4, kW4, kW4);
  const __m512i shr = _mm512_set_epi64(kW2, kW2, kW2, kW2, kW0, kW0, kW0, kW0);
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float d = Half(x[b].d);
    for (int h = 0; h < 2; ++h, y += 128) {
      const __m512i ql = _mm512_loadu_si512(x[b].ql + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(x[b].qh + 32 * h)));
      const __m512i h0 = _mm512_and_si512(_mm512_sllv_epi16(qh, shl), k30);
      const __m512i h1 = _mm512_and_si512(_mm512_srlv_epi16(qh, shr), k30);
      alignas(64) int8_t q[128];
      _mm512_store_si512(
          q,
          _mm512_sub_epi8(_mm512_ternarylogic_epi32(ql, k0F, h0, 0xEA), k32));
      _mm512_store_si512(
          q + 64, _mm512_sub_epi8(_mm512_ternarylogic_epi32(
                                      _mm512_srli_epi16(ql, 4), k0F, h1, 0xEA),
                                  k32));
      for (int g = 0; g < 8; ++g) {
        const __m512 s = _mm512_set1_ps(d * x[b].scales[8 * h + g]);
        const __m128i qg =
            _mm_load_si128(reinterpret_cast<const __m128i*>(q + 16 * g));
        Axpy16(av,
               _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(qg))),
               y + 16 * g);
      }
    }
  }
}

// The weight scale * q - min of 16 elements (masked lanes read as zero),
// rounded as written: the empty asm hides the product from GCC, which would
// otherwise contract it into the subtraction.
template <bool kMin>
inline __m512 I8ScaledWeight(__mmask16 m, const int8_t* q, const float* scale,
                             const float* min) {
  const __m512 qf =
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, q)));
  __m512 w = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, scale), qf);
  if constexpr (kMin) {
    __asm__("" : "+v"(w));
    w = _mm512_sub_ps(w, _mm512_maskz_loadu_ps(m, min));
  }
  return w;
}

template <bool kMin>
void AxpyI8ScaledImpl(float a, const int8_t* q, const float* scale,
                      const float* min, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    Axpy16(av,
           I8ScaledWeight<kMin>(0xFFFF, q + i, scale + i,
                                kMin ? min + i : nullptr),
           y + i);
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 w =
        I8ScaledWeight<kMin>(m, q + i, scale + i, kMin ? min + i : nullptr);
    _mm512_mask_storeu_ps(
        y + i, m, _mm512_fmadd_ps(av, w, _mm512_maskz_loadu_ps(m, y + i)));
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

// kTokens tokens x 16 outputs of AxpyBlockF32 in registers; `m` selects
// the valid outputs of a tail block. (Without the unroll pragmas GCC 12
// keeps acc[] in memory and stores it on every step.)
template <int kTokens>
void AxpyBlockF32Tile(int64_t k, const float* w, size_t w_stride,
                      const float* a, size_t a_stride, float* y,
                      size_t y_stride, __mmask16 m) {
  __m512 acc[kTokens];
#pragma GCC unroll 8
  for (int t = 0; t < kTokens; ++t) {
    acc[t] = _mm512_maskz_loadu_ps(m, y + t * y_stride);
  }
  for (int64_t j = 0; j < k; ++j) {
    const __m512 wv = _mm512_maskz_loadu_ps(m, w + j * w_stride);
#pragma GCC unroll 8
    for (int t = 0; t < kTokens; ++t) {
      acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(a[t * a_stride + j]), wv, acc[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < kTokens; ++t) {
    _mm512_mask_storeu_ps(y + t * y_stride, m, acc[t]);
  }
}

template <int... kTokens>
constexpr auto MakeAxpyBlockTiles(std::integer_sequence<int, kTokens...>) {
  using Fn = void (*)(int64_t, const float*, size_t, const float*, size_t,
                      float*, size_t, __mmask16);
  return std::array<Fn, sizeof...(kTokens)>{&AxpyBlockF32Tile<kTokens + 1>...};
}

void AxpyBlockF32(int64_t k, const float* w, size_t w_stride, const float* a,
                  size_t a_stride, int64_t nt, float* y, size_t y_stride,
                  int64_t n) {
  constexpr int kMaxTokens = 8;
  static constexpr auto kTiles =
      MakeAxpyBlockTiles(std::make_integer_sequence<int, kMaxTokens>());
  // Token tiles innermost: the k weight vectors of an output block stay in
  // L1 for all tokens.
  for (int64_t r = 0; r < n; r += 16) {
    const __mmask16 m = n - r >= 16
                            ? static_cast<__mmask16>(0xFFFF)
                            : static_cast<__mmask16>((1u << (n - r)) - 1);
    for (int64_t t0 = 0; t0 < nt; t0 += kMaxTokens) {
      const int tn = static_cast<int>(std::min<int64_t>(kMaxTokens, nt - t0));
      kTiles[tn - 1](k, w + r, w_stride, a + t0 * a_stride, a_stride,
                     y + t0 * y_stride + r, y_stride, m);
    }
  }
}

// Q8_0 / Q4_0: decode streams the weights as they are (Q0Tile); prefill
// repacks them per call (kernels_avx512_q0.cc).
void GemmQ8_0(int64_t n, const void* w, size_t w_stride, int64_t nr,
              const void* a, size_t a_stride, int64_t nt, float* out,
              size_t out_stride) {
  if (nt == 1) {
    GemmDriver<Q8_0Kernel>(n, w, w_stride, nr, a, a_stride, nt, out,
                           out_stride);
  } else {
    GemmQ8_0PrefillAvx512(n, w, w_stride, nr, a, a_stride, nt, out, out_stride);
  }
}
void GemmQ4_0(int64_t n, const void* w, size_t w_stride, int64_t nr,
              const void* a, size_t a_stride, int64_t nt, float* out,
              size_t out_stride) {
  if (nt == 1) {
    GemmDriver<Q4_0Kernel>(n, w, w_stride, nr, a, a_stride, nt, out,
                           out_stride);
  } else {
    GemmQ4_0PrefillAvx512(n, w, w_stride, nr, a, a_stride, nt, out, out_stride);
  }
}

constexpr int Id(GgmlType t) { return static_cast<int>(t); }

IsaKernels MakeTable() {
  IsaKernels k;
  k.gemm[Id(GgmlType::kQ8_0)] = &GemmQ8_0;
  k.gemm[Id(GgmlType::kQ4_0)] = &GemmQ4_0;
  k.gemm[Id(GgmlType::kQ4_K)] = &GemmDriver<Q4_KKernel>;
  k.gemm[Id(GgmlType::kQ6_K)] = &GemmDriver<Q6_KKernel>;
  k.gemm[Id(GgmlType::kF16)] = &GemmDriver<F16Kernel>;
  // The dispatcher asks for AVX-512 F/BW/VL/DQ/VNNI only; vdpbf16ps needs
  // AVX512_BF16 on top (absent before Cooper Lake / Zen 4).
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bf16")) {
    k.gemm[Id(GgmlType::kBF16)] = &GemmDriver<Bf16Kernel>;
  }
  k.gemm[Id(GgmlType::kF32)] = &GemmDriver<F32Kernel>;
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
  k.attend_f16 = &AttendF16Avx512;
  return k;
}

}  // namespace

const IsaKernels& Avx512Kernels() {
  static const IsaKernels kTable = MakeTable();
  return kTable;
}

}  // namespace flashd::kernels::internal
