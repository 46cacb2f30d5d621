// Batch invariance of the kernels: a weight row times an activation gives
// the same bits whether it is computed alone (one row, one token: the decode
// path) or inside a product of any number of rows and tokens at any position
// (prefill, and the daemon's batch of several sessions). The forward pass
// relies on this to give each sequence the same logits whatever else runs
// with it (docs/determinism.md).
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels.h"
#include "gtest/gtest.h"
#include "tests/isa_test_util.h"

namespace flashd::kernels {
namespace {

using ::flashd::testing::ScopedIsa;
using ::flashd::testing::SupportedIsas;

constexpr GgmlType kWeightTypes[] = {
    GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ8_0,
    GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ6_K,
};

std::vector<float> RandomFloats(int64_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  return x;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

class GemmBatchInvarianceTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(GemmBatchInvarianceTest, EveryRowAndTokenAsAlone) {
  const GgmlType wtype = GetParam();
  const GgmlType atype = VecDotType(wtype);
  constexpr int64_t kRows = 50;
  constexpr int64_t kTokens = 24;
  const int block = Traits(wtype).block_size;
  // An attention width, an FFN width, and short rows that end in a partial
  // step of the kernels (7 and 2 blocks of 32; 3 and 1 of 256).
  const int64_t short_rows[2] = {block == 1 ? 100 : block * (block == 32 ? 7 : 3),
                                 block == 1 ? 7 : block * (block == 32 ? 2 : 1)};
  for (int64_t n : {int64_t{2048}, int64_t{5632}, short_rows[0], short_rows[1]}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const size_t w_stride = RowSize(wtype, n);
    const size_t a_stride = RowSize(atype, n);
    std::vector<uint8_t> w(w_stride * kRows);
    std::vector<uint8_t> a(a_stride * kTokens);
    for (int64_t r = 0; r < kRows; ++r) {
      const std::vector<float> x = RandomFloats(n, 100 + r, 0.05f);
      FromFloat(wtype, x.data(), w.data() + r * w_stride, n);
    }
    for (int64_t t = 0; t < kTokens; ++t) {
      const std::vector<float> x = RandomFloats(n, 200 + t, 2.0f);
      QuantizeActivations(atype, x.data(), a.data() + t * a_stride, n);
    }
    for (Isa isa : SupportedIsas()) {
      SCOPED_TRACE(std::string(IsaName(isa)));
      ScopedIsa scoped(isa);
      std::vector<float> alone(kRows * kTokens);
      for (int64_t t = 0; t < kTokens; ++t) {
        for (int64_t r = 0; r < kRows; ++r) {
          Gemm(wtype, n, w.data() + r * w_stride, w_stride, 1,
               a.data() + t * a_stride, a_stride, 1, &alone[t * kRows + r], 1);
        }
      }
      struct Shape {
        int64_t r0, nr, t0, nt;
      };
      const Shape shapes[] = {{0, kRows, 0, 1},  {0, kRows, 0, 2},
                              {0, kRows, 0, 3},  {5, 33, 1, 4},
                              {0, 16, 0, 5},     {3, 17, 7, 6},
                              {0, kRows, 0, 7},  {1, 48, 0, 8},
                              {0, kRows, 2, 13}, {0, 32, 0, 16},
                              {0, kRows, 0, kTokens}};
      for (const Shape& s : shapes) {
        SCOPED_TRACE("rows " + std::to_string(s.r0) + "+" +
                     std::to_string(s.nr) + " tokens " + std::to_string(s.t0) +
                     "+" + std::to_string(s.nt));
        std::vector<float> out(s.nr * s.nt);
        Gemm(wtype, n, w.data() + s.r0 * w_stride, w_stride, s.nr,
             a.data() + s.t0 * a_stride, a_stride, s.nt, out.data(), s.nr);
        int failures = 0;
        for (int64_t t = 0; t < s.nt; ++t) {
          for (int64_t r = 0; r < s.nr; ++r) {
            const float want = alone[(s.t0 + t) * kRows + s.r0 + r];
            const float got = out[t * s.nr + r];
            if (Bits(got) != Bits(want) && ++failures <= 3) {
              ADD_FAILURE() << "row " << s.r0 + r << " token " << s.t0 + t
                            << ": " << got << " in the batch, " << want
                            << " alone";
            }
          }
        }
        ASSERT_EQ(failures, 0);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WeightTypes, GemmBatchInvarianceTest,
                         ::testing::ValuesIn(kWeightTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& info) {
                           return std::string(Traits(info.param).name);
                         });

TEST(AxpyBlockBatchInvarianceTest, EveryTokenAsAlone) {
  constexpr int64_t k = 37, n = 2048 + 5, nt = 9;
  const std::vector<float> w = RandomFloats(k * n, 1, 0.05f);
  const std::vector<float> acts = RandomFloats(nt * k, 2, 1.0f);
  const std::vector<float> y0 = RandomFloats(nt * n, 3, 1.0f);
  for (Isa isa : SupportedIsas()) {
    SCOPED_TRACE(std::string(IsaName(isa)));
    ScopedIsa scoped(isa);
    std::vector<float> batch = y0;
    AxpyBlockF32(k, w.data(), n, acts.data(), k, nt, batch.data(), n, n);
    for (int64_t t = 0; t < nt; ++t) {
      std::vector<float> alone(y0.begin() + t * n, y0.begin() + (t + 1) * n);
      AxpyBlockF32(k, w.data(), n, acts.data() + t * k, k, 1, alone.data(), n,
                   n);
      EXPECT_EQ(0, std::memcmp(alone.data(), batch.data() + t * n,
                               n * sizeof(float)))
          << "token " << t;
    }
  }
}

}  // namespace
}  // namespace flashd::kernels
