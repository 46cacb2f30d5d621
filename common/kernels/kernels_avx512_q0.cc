// AVX-512 prefill GEMM (nt > 1) for Q8_0 and Q4_0 weights x Q8_0
// activations, over per-call repacked operands.
//
// Layout. Sixteen weight rows share a zmm, one row per dword lane: for one
// block b, register k (k = 0..7) holds elements 4k..4k+3 of the 16 rows'
// block b as unsigned bytes (Q4_0 nibbles as they are, Q8_0 values + 128).
// vpdpbusd of register k against a broadcast dword of one token's
// activations (its elements 4k..4k+3) adds into each row's dword, so eight
// vpdpbusd leave the 16 rows' exact block sums in one zmm, and one cvt, one
// mul and one fma apply the block's scales (16 rows x d_w times the
// token's d_a). Per 16 rows x 32 elements x token that is 8 integer + 3
// float operations, no shuffles; the activation operand is a memory
// broadcast.
//
// Per Gemm call each thread prepares, in thread-local scratch that only
// ever grows (to about kChunkBytes plus one row tile's packed weights):
//  - per token chunk, the chunk's activations: the 32 values, d as float
//    and the bias -kOffset * sum(values) (the weights' unsigned offset,
//    folded in as the start value of the block's integer sum);
//  - per token chunk and row tile, the tile's weights in the layout above
//    (a 4x4 128-bit lane transpose per block of 16 rows), while the
//    previous tile software-prefetches them (NextTilePrefetch).
// Both are small next to the tile work they feed: each packed block is
// used by every token of the chunk.
// Scales apply as float(d_w * d_a) * sumi, as in ggml, and blocks are
// summed in the decode kernel's order (four chains, see PackedTile).

#include "common/kernels/immintrin_quiet.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels_avx512_q0.h"

namespace flashd::kernels::internal {
namespace {

// Rows per packed group: one per dword lane of a zmm.
constexpr int kGroupRows = 16;
// Row groups and tokens per register tile: kGroups x kTokens accumulators
// plus as many block sums.
constexpr int kGroups = 2;
constexpr int kTokens = 6;
// Bytes of prepared activations per token chunk; the chunk is swept once
// per row tile, which repacks its weights once per chunk. 768 KiB (with up
// to 380 KiB of packed weights, against a 1 MiB L2 on Zen 4) measured a
// little better than 384 or 512 KiB: fewer repacks outweigh the L2 misses.
constexpr size_t kChunkBytes = 768 << 10;

// One token's block of activations, prepared.
struct PreparedBlock {
  int8_t qs[kQK8_0];
  float d;
  int32_t bias;  // -kOffset * sum(qs)
};
static_assert(sizeof(PreparedBlock) == 40);

// Block b of a group of 16 weight rows: q[k] holds, in dword j, elements
// 4k..4k+3 of row j (unsigned); d[j] is row j's scale.
struct alignas(64) PackedBlock {
  uint8_t q[8][64];
  float d[kGroupRows];
};
static_assert(sizeof(PackedBlock) == 576);

// Per-thread scratch; grows to the largest call seen, never shrinks.
thread_local std::vector<PreparedBlock> t_acts;
thread_local std::vector<PackedBlock> t_packed;

template <typename T>
T* Grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// Zeros standing in for the missing rows of a partial group (reads up to
// one Q8_0 block).
alignas(64) constexpr uint8_t kZeroBlock[64] = {};

inline int32_t HorizontalSumI32(__m256i v) {
  __m128i x =
      _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(x);
}

// Prepares nt tokens of nb Q8_0 blocks (token t at a + t * a_stride) into
// out[t * nb + b].
void PrepareActs(int offset, int64_t nb, const uint8_t* a, size_t a_stride,
                 int64_t nt, PreparedBlock* out) {
  const __m256i k = _mm256_set1_epi8(static_cast<char>(offset));
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t t = 0; t < nt; ++t) {
    const auto* x = reinterpret_cast<const BlockQ8_0*>(a + t * a_stride);
    for (int64_t b = 0; b < nb; ++b, ++out) {
      const __m256i q =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->qs), q);
      out->d = _cvtsh_ss(x[b].d);
      out->bias = -HorizontalSumI32(_mm256_dpbusd_epi32(zero, k, q));
    }
  }
}

// Dword indices for vpermt2d: from two zmm of four 128-bit lanes (rows) x
// four dwords, dwords q0 and q0 + 1 of every row: [first's lanes' q0,
// second's lanes' q0, first's q0 + 1, second's q0 + 1].
struct DwordIndex {
  alignas(64) int32_t v[16];
};
constexpr DwordIndex PairIndex(int q0) {
  DwordIndex idx{};
  for (int k = 0; k < 16; ++k) {
    idx.v[k] = 16 * ((k / 4) % 2) + 4 * (k % 4) + q0 + k / 8;
  }
  return idx;
}
constexpr DwordIndex kPair01 = PairIndex(0);
constexpr DwordIndex kPair23 = PairIndex(2);

// 16 bytes at each of 16 rows' p[j] + offset, transposed: out[q] dword j =
// row j's dword q.
inline void Load16x16(const uint8_t* const* p, int offset, __m512i out[4]) {
  __m512i z[4];
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    __m512i v = _mm512_castsi128_si512(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[4 * g] + offset)));
#pragma GCC unroll 3
    for (int i = 1; i < 4; ++i) {
      v = _mm512_inserti32x4(v,
                             _mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                 p[4 * g + i] + offset)),
                             i);
    }
    z[g] = v;
  }
  const __m512i i01 = _mm512_load_si512(kPair01.v);
  const __m512i i23 = _mm512_load_si512(kPair23.v);
  const __m512i a = _mm512_permutex2var_epi32(z[0], i01, z[1]);
  const __m512i b = _mm512_permutex2var_epi32(z[0], i23, z[1]);
  const __m512i c = _mm512_permutex2var_epi32(z[2], i01, z[3]);
  const __m512i d = _mm512_permutex2var_epi32(z[2], i23, z[3]);
  out[0] = _mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(1, 0, 1, 0));
  out[1] = _mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(3, 2, 3, 2));
  out[2] = _mm512_shuffle_i64x2(b, d, _MM_SHUFFLE(1, 0, 1, 0));
  out[3] = _mm512_shuffle_i64x2(b, d, _MM_SHUFFLE(3, 2, 3, 2));
}

struct Q8_0Weights {
  static constexpr int kBlockBytes = sizeof(BlockQ8_0);
  static constexpr int kOffset = 0x80;
  // Block sums: sum((w + 128) * a) - 128 * sum(a).
  static void Pack(const uint8_t* const* p, PackedBlock* out) {
    const __m512i k80 = _mm512_set1_epi8(static_cast<char>(0x80));
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m512i q[4];
      Load16x16(p, 2 + 16 * h, q);
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        _mm512_store_si512(out->q[4 * h + k], _mm512_xor_si512(q[k], k80));
      }
    }
  }
};

struct Q4_0Weights {
  static constexpr int kBlockBytes = sizeof(BlockQ4_0);
  static constexpr int kOffset = 8;
  // Byte i holds element i (low nibble) and i + 16 (high nibble).
  static void Pack(const uint8_t* const* p, PackedBlock* out) {
    const __m512i k0F = _mm512_set1_epi8(0x0F);
    __m512i q[4];
    Load16x16(p, 2, q);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      _mm512_store_si512(out->q[k], _mm512_and_si512(q[k], k0F));
      _mm512_store_si512(out->q[4 + k],
                         _mm512_and_si512(_mm512_srli_epi16(q[k], 4), k0F));
    }
  }
};

// Packs nb blocks of `rows` (<= 16) rows at w into out[0..nb); missing rows
// are zero (scale 0).
template <typename W>
void PackGroup(const uint8_t* w, size_t w_stride, int rows, int64_t nb,
               PackedBlock* out) {
  const uint8_t* p[kGroupRows];
  int64_t step[kGroupRows];
  for (int j = 0; j < kGroupRows; ++j) {
    p[j] = j < rows ? w + j * w_stride : kZeroBlock;
    step[j] = j < rows ? W::kBlockBytes : 0;
  }
  for (int64_t b = 0; b < nb; ++b, ++out) {
    W::Pack(p, out);
    alignas(32) uint16_t d[kGroupRows];
    for (int j = 0; j < kGroupRows; ++j) {
      std::memcpy(&d[j], p[j], sizeof(uint16_t));
      p[j] += step[j];
    }
    _mm512_store_ps(out->d, _mm512_cvtph_ps(_mm256_load_si256(
                                reinterpret_cast<const __m256i*>(d))));
  }
}

// G groups of 16 rows (packed at w + g * nb) x T tokens (prepared at
// a + t * nb) over nb blocks; writes out[t * out_stride + r] for the first
// `rows` rows.
// Software prefetch of the next row tile's raw weights into L2, spread over
// the current tile's block steps so the next PackGroup reads from cache
// while this tile computes.
struct NextTilePrefetch {
  const uint8_t* next;
  const uint8_t* end;
  int lines_per_step;
  void Step() {
    for (int i = 0; i < lines_per_step && next < end; ++i, next += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(next), _MM_HINT_T1);
    }
  }
};

template <int G, int T>
void PackedTile(int64_t nb, const PackedBlock* w, const PreparedBlock* a,
                float* out, size_t out_stride, int rows,
                NextTilePrefetch* prefetch) {
  // Four chains (blocks b % 4 == c), one after the other, then
  // (chain 0 + chain 1) + (chain 2 + chain 3): the order of the decode
  // kernel (Q0Tile in kernels_avx512.cc), so a row's result does not depend
  // on how many tokens share the call.
  __m512 pair[G][T];   // chain 0 + chain 1
  __m512 third[G][T];  // chain 2
  for (int c = 0; c < 4; ++c) {
    __m512 acc[G][T];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[g][t] = _mm512_setzero_ps();
    }
    for (int64_t b = c; b < nb; b += 4) {
      const PackedBlock* wb = w + b;
      const PreparedBlock* ab = a + b;
      prefetch->Step();
      __m512i sumi[G][T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m512i bias = _mm512_set1_epi32(ab[t * nb].bias);
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) sumi[g][t] = bias;
      }
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) {
        __m512i wk[G];
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) wk[g] = _mm512_load_si512(wb[g * nb].q[k]);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          int32_t v;
          std::memcpy(&v, ab[t * nb].qs + 4 * k, sizeof(v));
          const __m512i av = _mm512_set1_epi32(v);
#pragma GCC unroll 4
          for (int g = 0; g < G; ++g) {
            sumi[g][t] = _mm512_dpbusd_epi32(sumi[g][t], wk[g], av);
          }
        }
      }
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) {
        const __m512 wd = _mm512_load_ps(wb[g * nb].d);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          acc[g][t] = _mm512_fmadd_ps(
              _mm512_cvtepi32_ps(sumi[g][t]),
              _mm512_mul_ps(wd, _mm512_set1_ps(ab[t * nb].d)), acc[g][t]);
        }
      }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        if (c == 0) {
          pair[g][t] = acc[g][t];
        } else if (c == 1) {
          pair[g][t] = _mm512_add_ps(pair[g][t], acc[g][t]);
        } else if (c == 2) {
          third[g][t] = acc[g][t];
        } else {
          acc[g][t] = _mm512_add_ps(pair[g][t],
                                    _mm512_add_ps(third[g][t], acc[g][t]));
          const int valid = std::clamp(rows - kGroupRows * g, 0, kGroupRows);
          const __mmask16 m = static_cast<__mmask16>((1u << valid) - 1);
          _mm512_mask_storeu_ps(out + t * out_stride + kGroupRows * g, m,
                                acc[g][t]);
        }
      }
    }
  }
}

using PackedTileFn = void (*)(int64_t nb, const PackedBlock* w,
                              const PreparedBlock* a, float* out,
                              size_t out_stride, int rows,
                              NextTilePrefetch* prefetch);

template <int G, size_t... Ts>
constexpr std::array<PackedTileFn, sizeof...(Ts)> MakeTileRow(
    std::index_sequence<Ts...>) {
  return {&PackedTile<G, static_cast<int>(Ts) + 1>...};
}
template <size_t... Gs>
constexpr auto MakeTileTable(std::index_sequence<Gs...>) {
  return std::array<std::array<PackedTileFn, kTokens>, sizeof...(Gs)>{
      MakeTileRow<static_cast<int>(Gs) + 1>(
          std::make_index_sequence<kTokens>())...};
}
// kTiles[G - 1][T - 1] = PackedTile<G, T>.
constexpr auto kTiles = MakeTileTable(std::make_index_sequence<kGroups>());

template <typename W>
void GemmPrefill(int64_t n, const void* w, size_t w_stride, int64_t nr,
                 const void* a, size_t a_stride, int64_t nt, float* out,
                 size_t out_stride) {
  const int64_t nb = n / kQK8_0;
  if (nb == 0) {
    for (int64_t t = 0; t < nt; ++t) {
      std::fill(out + t * out_stride, out + t * out_stride + nr, 0.0f);
    }
    return;
  }
  const auto* wb = static_cast<const uint8_t*>(w);
  const int64_t token_bytes = nb * static_cast<int64_t>(sizeof(PreparedBlock));
  // Equal chunks of at most kChunkBytes (but >= kTokens tokens), in whole
  // tiles.
  const int64_t max_chunk = std::max<int64_t>(
      kTokens, static_cast<int64_t>(kChunkBytes) / token_bytes);
  const int64_t chunks = (nt + max_chunk - 1) / max_chunk;
  const int64_t chunk =
      ((nt + chunks - 1) / chunks + kTokens - 1) / kTokens * kTokens;
  PreparedBlock* acts = Grow(t_acts, static_cast<size_t>(chunk * nb));
  PackedBlock* packed = Grow(t_packed, static_cast<size_t>(kGroups * nb));
  constexpr int64_t kTileRows = int64_t{kGroups} * kGroupRows;
  for (int64_t t0 = 0; t0 < nt; t0 += chunk) {
    const int64_t t1 = std::min(nt, t0 + chunk);
    PrepareActs(W::kOffset, nb, static_cast<const uint8_t*>(a) + t0 * a_stride,
                a_stride, t1 - t0, acts);
    for (int64_t r = 0; r < nr; r += kTileRows) {
      const int rows = static_cast<int>(std::min(kTileRows, nr - r));
      const int groups = (rows + kGroupRows - 1) / kGroupRows;
      for (int g = 0; g < groups; ++g) {
        PackGroup<W>(wb + (r + int64_t{g} * kGroupRows) * w_stride, w_stride,
                     std::min(kGroupRows, rows - g * kGroupRows), nb,
                     packed + g * nb);
      }
      // The next tile of this chunk, or the first of the next chunk.
      const int64_t next_r = r + kTileRows < nr ? r + kTileRows : 0;
      const int64_t next_rows =
          t1 < nt || next_r > 0 ? std::min(kTileRows, nr - next_r) : 0;
      const int64_t steps = (t1 - t0 + kTokens - 1) / kTokens * nb;
      const int64_t lines =
          (next_rows * static_cast<int64_t>(w_stride) + 63) / 64;
      NextTilePrefetch prefetch{wb + next_r * w_stride,
                                wb + (next_r + next_rows) * w_stride,
                                static_cast<int>((lines + steps - 1) / steps)};
      for (int64_t t = t0; t < t1; t += kTokens) {
        const int tn = static_cast<int>(std::min<int64_t>(kTokens, t1 - t));
        kTiles[groups - 1][tn - 1](nb, packed, acts + (t - t0) * nb,
                                   out + t * out_stride + r, out_stride, rows,
                                   &prefetch);
      }
    }
  }
}

}  // namespace

void GemmQ8_0PrefillAvx512(int64_t n, const void* w, size_t w_stride,
                           int64_t nr, const void* a, size_t a_stride,
                           int64_t nt, float* out, size_t out_stride) {
  GemmPrefill<Q8_0Weights>(n, w, w_stride, nr, a, a_stride, nt, out,
                           out_stride);
}

void GemmQ4_0PrefillAvx512(int64_t n, const void* w, size_t w_stride,
                           int64_t nr, const void* a, size_t a_stride,
                           int64_t nt, float* out, size_t out_stride) {
  GemmPrefill<Q4_0Weights>(n, w, w_stride, nr, a, a_stride, nt, out,
                           out_stride);
}

}  // namespace flashd::kernels::internal
