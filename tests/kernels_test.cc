// Tests of common/kernels: every ISA the CPU has against GemmReference,
// quantization round trips and hand-made blocks with known values.
#include "common/kernels/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/base/fp16.h"
#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels_internal.h"
#include "gtest/gtest.h"
#include "tests/isa_test_util.h"

namespace flashd::kernels {
namespace {

constexpr GgmlType kWeightTypes[] = {
    GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ8_0,
    GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ6_K,
};

// Every type AxpyRow and ToFloat take.
constexpr GgmlType kRowTypes[] = {
    GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ8_0,
    GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ6_K, GgmlType::kQ8_K,
};

std::string Name(GgmlType type) { return std::string(Traits(type).name); }

using ::flashd::testing::ScopedIsa;
using ::flashd::testing::SupportedIsas;

std::vector<float> RandomFloats(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  return x;
}

std::vector<uint8_t> Quantize(GgmlType type, const float* x, int64_t n) {
  std::vector<uint8_t> out(RowSize(type, n));
  FromFloat(type, x, out.data(), n);
  return out;
}

std::vector<float> Dequantize(GgmlType type, const void* row, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  ToFloat(type, row, out.data(), n);
  return out;
}

// Row lengths to test a weight type with: block multiples up to an FFN
// width (5632 = 22 * 256), and odd lengths for the plain float types.
std::vector<int64_t> GemmLengths(GgmlType type) {
  const int block = Traits(type).block_size;
  if (block == 1) return {1, 7, 32, 100, 256, 512, 2048, 5632};
  if (block == 32) return {32, 64, 256, 512, 2048, 5632};
  return {256, 512, 2048, 5632};
}

// ------------------------------------------------------------------ Gemm

class GemmTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(GemmTest, MatchesReferenceOnEveryIsa) {
  const GgmlType wtype = GetParam();
  const GgmlType atype = VecDotType(wtype);
  constexpr int64_t kMaxRows = 33;
  constexpr int64_t kMaxTokens = 8;
  constexpr size_t kPad = 20;  // strides are not the row size
  constexpr float kSentinel = -12345.0f;

  for (int64_t n : GemmLengths(wtype)) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const size_t w_stride = RowSize(wtype, n) + kPad;
    const size_t a_stride = RowSize(atype, n) + kPad;
    std::vector<uint8_t> w(w_stride * kMaxRows, 0xCD);
    std::vector<uint8_t> a(a_stride * kMaxTokens, 0xCD);
    std::vector<std::vector<float>> w_deq;
    std::vector<std::vector<float>> a_deq;
    for (int64_t r = 0; r < kMaxRows; ++r) {
      const std::vector<float> x = RandomFloats(n, 1000 + r, 0.05f);
      FromFloat(wtype, x.data(), w.data() + r * w_stride, n);
      w_deq.push_back(Dequantize(wtype, w.data() + r * w_stride, n));
    }
    for (int64_t t = 0; t < kMaxTokens; ++t) {
      std::vector<float> x = RandomFloats(n, 2000 + t, 2.0f);
      if (t == 2) {  // an all-zero block (scale 0) in one activation
        for (int64_t i = 0; i < std::min<int64_t>(n, 256); ++i) x[i] = 0;
      }
      QuantizeActivations(atype, x.data(), a.data() + t * a_stride, n);
      a_deq.push_back(Dequantize(atype, a.data() + t * a_stride, n));
    }

    std::vector<float> ref(kMaxRows * kMaxTokens);
    GemmReference(wtype, n, w.data(), w_stride, kMaxRows, a.data(), a_stride,
                  kMaxTokens, ref.data(), kMaxRows);
    std::vector<double> abs_sum(kMaxRows * kMaxTokens);
    for (int64_t t = 0; t < kMaxTokens; ++t) {
      for (int64_t r = 0; r < kMaxRows; ++r) {
        double s = 0;
        double dot = 0;
        for (int64_t i = 0; i < n; ++i) {
          const double p = static_cast<double>(w_deq[r][i]) * a_deq[t][i];
          s += std::fabs(p);
          dot += p;
        }
        abs_sum[t * kMaxRows + r] = s;
        ASSERT_NEAR(ref[t * kMaxRows + r], dot, 1e-6 * s + 1e-30)
            << "GemmReference r=" << r << " t=" << t;
      }
    }

    for (Isa isa : SupportedIsas()) {
      ScopedIsa scoped(isa);
      for (int64_t nr : {1, 3, 7, 17, 33}) {
        for (int64_t nt : {1, 2, 3, 5, 8}) {
          SCOPED_TRACE(std::string(IsaName(isa)) + " nr=" + std::to_string(nr) +
                       " nt=" + std::to_string(nt));
          const size_t out_stride = static_cast<size_t>(nr) + 3;
          std::vector<float> out(out_stride * nt, kSentinel);
          Gemm(wtype, n, w.data(), w_stride, nr, a.data(), a_stride, nt,
               out.data(), out_stride);
          int failures = 0;
          for (int64_t t = 0; t < nt; ++t) {
            for (size_t r = 0; r < out_stride; ++r) {
              const float got = out[t * out_stride + r];
              if (static_cast<int64_t>(r) >= nr) {
                EXPECT_EQ(got, kSentinel) << "wrote padding t=" << t;
                continue;
              }
              const float want = ref[t * kMaxRows + r];
              const double tol = 1e-4 * abs_sum[t * kMaxRows + r] + 1e-30;
              if (!(std::fabs(got - want) <= tol) && ++failures <= 5) {
                ADD_FAILURE() << "r=" << r << " t=" << t << " got " << got
                              << " want " << want << " tol " << tol;
              }
            }
          }
          ASSERT_EQ(failures, 0);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WeightTypes, GemmTest,
                         ::testing::ValuesIn(kWeightTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& info) {
                           return Name(info.param);
                         });

TEST(GemmDeterminismTest, SameInputSameOutput) {
  constexpr int64_t n = 2048;
  constexpr int64_t nr = 17;
  constexpr int64_t nt = 5;
  for (GgmlType wtype : kWeightTypes) {
    const GgmlType atype = VecDotType(wtype);
    const size_t w_stride = RowSize(wtype, n);
    const size_t a_stride = RowSize(atype, n);
    std::vector<uint8_t> w(w_stride * nr);
    std::vector<uint8_t> a(a_stride * nt);
    const std::vector<float> wx = RandomFloats(n * nr, 7);
    const std::vector<float> ax = RandomFloats(n * nt, 8);
    for (int64_t r = 0; r < nr; ++r) {
      FromFloat(wtype, wx.data() + r * n, w.data() + r * w_stride, n);
    }
    for (int64_t t = 0; t < nt; ++t) {
      QuantizeActivations(atype, ax.data() + t * n, a.data() + t * a_stride, n);
    }
    for (Isa isa : SupportedIsas()) {
      SCOPED_TRACE(Name(wtype) + " " + std::string(IsaName(isa)));
      ScopedIsa scoped(isa);
      std::vector<float> first(nr * nt);
      std::vector<float> second(nr * nt);
      Gemm(wtype, n, w.data(), w_stride, nr, a.data(), a_stride, nt,
           first.data(), nr);
      Gemm(wtype, n, w.data(), w_stride, nr, a.data(), a_stride, nt,
           second.data(), nr);
      EXPECT_EQ(0, std::memcmp(first.data(), second.data(),
                               first.size() * sizeof(float)));
    }
  }
}

TEST(QuantizeDeterminismTest, SameInputSameBytes) {
  const std::vector<float> x = RandomFloats(4096, 9);
  for (GgmlType type : kRowTypes) {
    SCOPED_TRACE(Name(type));
    EXPECT_EQ(Quantize(type, x.data(), 4096), Quantize(type, x.data(), 4096));
  }
}

// ------------------------------------------------------- round-trip bounds

// Largest |x| in each block of `block` elements.
std::vector<float> BlockAmax(const std::vector<float>& x, int block) {
  std::vector<float> amax(x.size() / block, 0.0f);
  for (size_t i = 0; i < x.size(); ++i) {
    amax[i / block] = std::max(amax[i / block], std::fabs(x[i]));
  }
  return amax;
}

TEST(RoundTripTest, Q8_0ErrorWithinHalfStep) {
  constexpr int64_t n = 4096;
  const std::vector<float> x = RandomFloats(n, 11);
  const std::vector<float> amax = BlockAmax(x, kQK8_0);
  for (Isa isa : SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    const std::vector<uint8_t> q = Quantize(GgmlType::kQ8_0, x.data(), n);
    const std::vector<float> y = Dequantize(GgmlType::kQ8_0, q.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      // Half a step, plus the fp16 rounding of the scale (127 steps of
      // 2^-11 relative each at most).
      const float step = amax[i / kQK8_0] / 127;
      ASSERT_LE(std::fabs(x[i] - y[i]), step * (0.5f + 127.0f / 2048) + 1e-7f)
          << "i=" << i;
    }
  }
}

TEST(RoundTripTest, Q4_0ErrorWithinOneStep) {
  constexpr int64_t n = 4096;
  const std::vector<float> x = RandomFloats(n, 12);
  const std::vector<float> amax = BlockAmax(x, kQK4_0);
  const std::vector<uint8_t> q = Quantize(GgmlType::kQ4_0, x.data(), n);
  const std::vector<float> y = Dequantize(GgmlType::kQ4_0, q.data(), n);
  double err2 = 0;
  double x2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    // Half a step, except the extreme opposite to the block's signed max,
    // which is clamped from level 16 to 15: one step.
    const float step = amax[i / kQK4_0] / 8;
    ASSERT_LE(std::fabs(x[i] - y[i]), step * 1.01f) << "i=" << i;
    err2 += (x[i] - y[i]) * (x[i] - y[i]);
    x2 += x[i] * x[i];
  }
  EXPECT_LT(std::sqrt(err2 / x2), 0.12);
}

TEST(RoundTripTest, Q8_KErrorWithinHalfStep) {
  constexpr int64_t n = 4096;
  const std::vector<float> x = RandomFloats(n, 13, 3.0f);
  const std::vector<float> amax = BlockAmax(x, kQK_K);
  for (Isa isa : SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    const std::vector<uint8_t> q = Quantize(GgmlType::kQ8_K, x.data(), n);
    const std::vector<float> y = Dequantize(GgmlType::kQ8_K, q.data(), n);
    const auto* blocks = reinterpret_cast<const BlockQ8_K*>(q.data());
    for (int64_t i = 0; i < n; ++i) {
      const float step = amax[i / kQK_K] / 127;
      ASSERT_LE(std::fabs(x[i] - y[i]), step * 0.5001f + 1e-7f) << "i=" << i;
    }
    for (int64_t b = 0; b < n / kQK_K; ++b) {
      for (int g = 0; g < kQK_K / 16; ++g) {
        int sum = 0;
        for (int l = 0; l < 16; ++l) sum += blocks[b].qs[16 * g + l];
        ASSERT_EQ(blocks[b].bsums[g], sum) << "block " << b << " group " << g;
      }
    }
  }
}

// K-quants have no simple per-element bound (the scales are searched);
// check the relative RMS error and that no element is far off.
void ExpectKQuantError(GgmlType type, double max_rel_rms, float max_rel_err) {
  constexpr int64_t n = 256 * 64;
  const std::vector<float> x = RandomFloats(n, 14);
  const std::vector<float> amax = BlockAmax(x, kQK_K);
  const std::vector<uint8_t> q = Quantize(type, x.data(), n);
  const std::vector<float> y = Dequantize(type, q.data(), n);
  double err2 = 0;
  double x2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    err2 += (x[i] - y[i]) * (x[i] - y[i]);
    x2 += x[i] * x[i];
    ASSERT_LE(std::fabs(x[i] - y[i]), max_rel_err * amax[i / kQK_K])
        << "i=" << i;
  }
  EXPECT_LT(std::sqrt(err2 / x2), max_rel_rms);
}

TEST(RoundTripTest, Q4_KError) {
  ExpectKQuantError(GgmlType::kQ4_K, 0.10, 0.10f);
}

TEST(RoundTripTest, Q6_KError) {
  ExpectKQuantError(GgmlType::kQ6_K, 0.025, 0.03f);
}

TEST(RoundTripTest, FloatTypesRelativeError) {
  constexpr int64_t n = 1000;  // not a multiple of any SIMD width
  const std::vector<float> x = RandomFloats(n, 15, 10.0f);
  for (Isa isa : SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    const std::vector<float> f32 = Dequantize(
        GgmlType::kF32, Quantize(GgmlType::kF32, x.data(), n).data(), n);
    const std::vector<float> f16 = Dequantize(
        GgmlType::kF16, Quantize(GgmlType::kF16, x.data(), n).data(), n);
    const std::vector<float> bf16 = Dequantize(
        GgmlType::kBF16, Quantize(GgmlType::kBF16, x.data(), n).data(), n);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(f32[i], x[i]);
      ASSERT_LE(std::fabs(f16[i] - x[i]), std::fabs(x[i]) * 0x1p-11f + 0x1p-25f)
          << "i=" << i;
      ASSERT_LE(std::fabs(bf16[i] - x[i]), std::fabs(x[i]) * 0x1p-8f)
          << "i=" << i;
    }
  }
}

TEST(RoundTripTest, AllZeroBlocksStayZero) {
  const std::vector<float> zeros(512, 0.0f);
  for (GgmlType type : kRowTypes) {
    SCOPED_TRACE(Name(type));
    const std::vector<uint8_t> q = Quantize(type, zeros.data(), 512);
    for (float v : Dequantize(type, q.data(), 512)) ASSERT_EQ(v, 0.0f);
  }
}

// FromFloat is the ggml reference on every ISA, byte for byte (files we
// write must not depend on the machine).
TEST(FromFloatTest, WeightQuantizationIsTheReferenceOnEveryIsa) {
  constexpr int64_t n = 2048;
  const std::vector<float> x = RandomFloats(n, 17, 4.0f);
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_K,
                        GgmlType::kQ6_K, GgmlType::kQ8_K, GgmlType::kF16}) {
    std::vector<uint8_t> ref(RowSize(type, n));
    internal::QuantizeRowRef(type, x.data(), ref.data(), n);
    for (Isa isa : SupportedIsas()) {
      SCOPED_TRACE(Name(type) + " " + std::string(IsaName(isa)));
      ScopedIsa scoped(isa);
      std::vector<uint8_t> got(ref.size());
      FromFloat(type, x.data(), got.data(), n);
      EXPECT_EQ(got, ref);
    }
  }
}

// QuantizeActivations may use a SIMD quantizer; it must agree with the
// reference up to ties (one level) and store the same scales.
TEST(FromFloatTest, ActivationQuantizersMatchReference) {
  constexpr int64_t n = 2048;
  const std::vector<float> x = RandomFloats(n, 16, 4.0f);
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ8_K}) {
    std::vector<uint8_t> ref(RowSize(type, n));
    internal::QuantizeRowRef(type, x.data(), ref.data(), n);
    for (Isa isa : SupportedIsas()) {
      SCOPED_TRACE(Name(type) + " " + std::string(IsaName(isa)));
      ScopedIsa scoped(isa);
      std::vector<uint8_t> got(RowSize(type, n));
      QuantizeActivations(type, x.data(), got.data(), n);
      if (type == GgmlType::kQ8_0) {
        const auto* g = reinterpret_cast<const BlockQ8_0*>(got.data());
        const auto* r = reinterpret_cast<const BlockQ8_0*>(ref.data());
        for (int64_t b = 0; b < n / kQK8_0; ++b) {
          ASSERT_EQ(g[b].d, r[b].d) << "block " << b;
          for (int j = 0; j < kQK8_0; ++j) {
            ASSERT_LE(std::abs(g[b].qs[j] - r[b].qs[j]), 1) << b << "/" << j;
          }
        }
      } else {
        const auto* g = reinterpret_cast<const BlockQ8_K*>(got.data());
        const auto* r = reinterpret_cast<const BlockQ8_K*>(ref.data());
        for (int64_t b = 0; b < n / kQK_K; ++b) {
          ASSERT_NEAR(g[b].d, r[b].d, std::fabs(r[b].d) * 1e-6f) << b;
          for (int j = 0; j < kQK_K; ++j) {
            ASSERT_LE(std::abs(g[b].qs[j] - r[b].qs[j]), 1) << b << "/" << j;
          }
          for (int k = 0; k < kQK_K / 16; ++k) {
            int sum = 0;
            for (int l = 0; l < 16; ++l) sum += g[b].qs[16 * k + l];
            ASSERT_EQ(g[b].bsums[k], sum) << b << "/" << k;
          }
        }
      }
    }
  }
}

// ------------------------------------------------------- known-value blocks

TEST(KnownValuesTest, Q4_0NibbleOrder) {
  BlockQ4_0 block;
  block.d = 0x3C00;  // 1.0
  for (int j = 0; j < 16; ++j) {
    block.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  }
  const std::vector<float> y = Dequantize(GgmlType::kQ4_0, &block, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], j - 8) << j;       // low nibble of byte j: element j
    EXPECT_EQ(y[j + 16], 7 - j) << j;  // high nibble: element j + 16
  }
}

TEST(KnownValuesTest, Q4_0QuantizesAgainstSignedMax) {
  // Largest magnitude negative: d = -4 / -8 = 0.5, it gets level 0.
  float x[32] = {-4.0f, 4.0f, 0.0f, 1.0f, -1.0f, 0.25f, 0.26f};
  BlockQ4_0 block;
  internal::QuantizeRowRef(GgmlType::kQ4_0, x, &block, 32);
  EXPECT_EQ(block.d, 0x3800);  // 0.5
  EXPECT_EQ(block.qs[0] & 0xF, 0);
  EXPECT_EQ(block.qs[1] & 0xF, 15);  // 16.5 truncates to 16, clamped to 15
  EXPECT_EQ(block.qs[2] & 0xF, 8);
  EXPECT_EQ(block.qs[3] & 0xF, 10);  // 1 / 0.5 + 8.5 = 10.5 -> 10
  EXPECT_EQ(block.qs[4] & 0xF, 6);   // -2 + 8.5 = 6.5 -> 6
  EXPECT_EQ(block.qs[5] & 0xF, 9);   // 0.5 + 8.5 = 9.0 -> 9
  EXPECT_EQ(block.qs[6] & 0xF, 9);   // 0.52 + 8.5 -> 9
  EXPECT_EQ(block.qs[0] >> 4, 8);    // element 16 is 0
  const std::vector<float> y = Dequantize(GgmlType::kQ4_0, &block, 32);
  EXPECT_EQ(y[0], -4.0f);
  EXPECT_EQ(y[1], 3.5f);

  // Largest magnitude positive (first of a tie wins): d = -0.5.
  float z[32] = {4.0f, -4.0f, 1.0f};
  internal::QuantizeRowRef(GgmlType::kQ4_0, z, &block, 32);
  EXPECT_EQ(block.d, 0xB800);  // -0.5
  const std::vector<float> w = Dequantize(GgmlType::kQ4_0, &block, 32);
  EXPECT_EQ(w[0], 4.0f);
  EXPECT_EQ(w[1], -3.5f);
  EXPECT_EQ(w[2], 1.0f);
}

TEST(KnownValuesTest, Q8_0) {
  BlockQ8_0 block;
  block.d = 0x3400;  // 0.25
  for (int j = 0; j < 32; ++j) block.qs[j] = static_cast<int8_t>(j * 8 - 128);
  const std::vector<float> y = Dequantize(GgmlType::kQ8_0, &block, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (j * 8 - 128) * 0.25f) << j;

  // amax 127 gives d = 1; roundf rounds halves away from zero.
  float x[32] = {127.0f, 2.5f, -2.5f, 0.49f, 126.5f, -127.0f};
  internal::QuantizeRowRef(GgmlType::kQ8_0, x, &block, 32);
  EXPECT_EQ(block.d, 0x3C00);
  EXPECT_EQ(block.qs[0], 127);
  EXPECT_EQ(block.qs[1], 3);
  EXPECT_EQ(block.qs[2], -3);
  EXPECT_EQ(block.qs[3], 0);
  EXPECT_EQ(block.qs[4], 127);
  EXPECT_EQ(block.qs[5], -127);
}

TEST(KnownValuesTest, Q8_K) {
  // The signed extreme maps to -127: d = -max / 127.
  std::vector<float> x(256, 0.0f);
  x[0] = 127.0f;
  x[1] = 2.5f;   // -2.5 rounds to even: -2
  x[2] = 3.5f;   // -3.5 -> -4
  x[3] = -1.0f;  // 1
  x[16] = -127.0f;
  BlockQ8_K block;
  internal::QuantizeRowRef(GgmlType::kQ8_K, x.data(), &block, 256);
  EXPECT_EQ(block.d, -1.0f);
  EXPECT_EQ(block.qs[0], -127);
  EXPECT_EQ(block.qs[1], -2);
  EXPECT_EQ(block.qs[2], -4);
  EXPECT_EQ(block.qs[3], 1);
  EXPECT_EQ(block.qs[16], 127);
  EXPECT_EQ(block.bsums[0], -127 - 2 - 4 + 1);
  EXPECT_EQ(block.bsums[1], 127);
  const std::vector<float> y = Dequantize(GgmlType::kQ8_K, &block, 256);
  EXPECT_EQ(y[0], 127.0f);
  EXPECT_EQ(y[1], 2.0f);
  EXPECT_EQ(y[2], 4.0f);
}

TEST(KnownValuesTest, Q4_KScalesAndLayout) {
  const int sc[8] = {1, 2, 3, 63, 17, 33, 48, 5};
  const int m[8] = {0, 1, 62, 7, 16, 32, 63, 9};
  // The same values packed by hand: sub-blocks 0-3 in the low 6 bits of
  // bytes 0-3 (scale) and 4-7 (min); sub-blocks 4-7 as nibbles of bytes
  // 8-11 with their top 2 bits in the high bits of bytes 0-3 and 4-7.
  BlockQ4_K block;
  const uint8_t packed[12] = {0x41, 0x82, 0xC3, 0x3F, 0x40, 0x81,
                              0xFE, 0x07, 0x01, 0x01, 0xF0, 0x95};
  std::memcpy(block.scales, packed, sizeof(packed));
  block.d = 0x3C00;     // 1.0
  block.dmin = 0x3800;  // 0.5
  auto level = [](int e) { return (e * 7 + 3) % 16; };
  // Each 64 elements: 32 bytes, low nibbles then high nibbles.
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      block.qs[32 * c + l] = static_cast<uint8_t>(
          level(64 * c + l) | (level(64 * c + 32 + l) << 4));
    }
  }
  const std::vector<float> y = Dequantize(GgmlType::kQ4_K, &block, 256);
  for (int e = 0; e < 256; ++e) {
    const int j = e / 32;
    EXPECT_EQ(y[e], 1.0f * sc[j] * level(e) - 0.5f * m[j]) << e;
  }
}

TEST(KnownValuesTest, Q6_KLayout) {
  BlockQ6_K block;
  std::memset(&block, 0, sizeof(block));
  block.d = 0x3800;  // 0.5
  int8_t sc[16];
  for (int g = 0; g < 16; ++g) {
    sc[g] = static_cast<int8_t>((g % 2 ? -1 : 1) * (g + 1) * 7);
    block.scales[g] = sc[g];
  }
  auto level = [](int e) { return (e * 13 + 5) % 64; };
  // Per 128 elements: element 32 * k + l (k = 0..3) keeps its low 4 bits in
  // ql[l + 32 * (k & 1)] (low nibble for k < 2, high for k >= 2) and its
  // top 2 bits in bits 2k, 2k+1 of qh[l].
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128;
    const int k = (e % 128) / 32;
    const int l = e % 32;
    const int q = level(e);
    uint8_t& low = block.ql[64 * h + l + 32 * (k & 1)];
    low |= static_cast<uint8_t>((q & 0xF) << (k >= 2 ? 4 : 0));
    block.qh[32 * h + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
  }
  const std::vector<float> y = Dequantize(GgmlType::kQ6_K, &block, 256);
  for (int e = 0; e < 256; ++e) {
    EXPECT_EQ(y[e], 0.5f * sc[e / 16] * (level(e) - 32)) << e;
  }
}

TEST(RoundTripTest, KQuantsRequantizeNearlyStably) {
  // Dequantized values of a quantized block quantize back to a block that
  // dequantizes to the same values (the scale search is stable on them).
  const std::vector<float> x = RandomFloats(1024, 17);
  for (GgmlType type : {GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    SCOPED_TRACE(Name(type));
    const std::vector<float> once =
        Dequantize(type, Quantize(type, x.data(), 1024).data(), 1024);
    const std::vector<float> twice =
        Dequantize(type, Quantize(type, once.data(), 1024).data(), 1024);
    double err2 = 0;
    double x2 = 0;
    for (int i = 0; i < 1024; ++i) {
      err2 += (once[i] - twice[i]) * (once[i] - twice[i]);
      x2 += once[i] * once[i];
    }
    EXPECT_LT(std::sqrt(err2 / x2), 1e-3);
  }
}

// ---------------------------------------------------------- fp16 and bf16

struct HalfCase {
  float f;
  uint16_t h;
};

constexpr HalfCase kHalfCases[] = {
    {0.0f, 0x0000},
    {-0.0f, 0x8000},
    {1.0f, 0x3C00},
    {-2.0f, 0xC000},
    {65504.0f, 0x7BFF},
    {65519.99f, 0x7BFF},
    {65520.0f, 0x7C00},  // halfway to the next binade: rounds to inf
    {1e9f, 0x7C00},
    {-std::numeric_limits<float>::infinity(), 0xFC00},
    {0x1p-24f, 0x0001},
    {0x1p-25f, 0x0000},    // tie: to even (0)
    {0x1.8p-24f, 0x0002},  // 1.5 ulps: tie to even (2)
    {0x1p-14f, 0x0400},    // smallest normal
    {0x1p-14f - 0x1p-24f, 0x03FF},
    {1.0f + 0x1p-11f, 0x3C00},  // tie: to even
    {1.0f + 0x1.8p-10f, 0x3C02},
    {1e-10f, 0x0000},
    {-3.140625f, 0xC248},
};

TEST(HalfTest, ToFloatSpecialValues) {
  const uint16_t bits[] = {0x0001, 0x03FF, 0x0400, 0x7BFF,
                           0x7C00, 0xFC00, 0x8000, 0x3555};
  const float want[] = {0x1p-24f,
                        0x3FFp-24f,
                        0x1p-14f,
                        65504.0f,
                        std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity(),
                        -0.0f,
                        0x1.554p-2f};
  std::vector<float> y(8);
  ToFloat(GgmlType::kF16, bits, y.data(), 8);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(y[i], want[i]) << i;
    EXPECT_EQ(std::signbit(y[i]), std::signbit(want[i])) << i;
  }
  const uint16_t nan = 0x7E00;
  ToFloat(GgmlType::kF16, &nan, y.data(), 1);
  EXPECT_TRUE(std::isnan(y[0]));
}

TEST(HalfTest, FromFloatRoundsToNearestEvenOnEveryIsa) {
  // Repeat the cases so the vector paths see them at every lane and tail.
  std::vector<float> x;
  std::vector<uint16_t> want;
  for (int rep = 0; rep < 3; ++rep) {
    for (const HalfCase& c : kHalfCases) {
      x.push_back(c.f);
      want.push_back(c.h);
    }
  }
  x.push_back(std::numeric_limits<float>::quiet_NaN());
  const int64_t n = static_cast<int64_t>(x.size());
  for (Isa isa : SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    std::vector<uint16_t> via_convert(x.size());
    std::vector<uint16_t> via_from_float(x.size());
    F32ToF16(x.data(), via_convert.data(), n);
    FromFloat(GgmlType::kF16, x.data(), via_from_float.data(), n);
    for (size_t i = 0; i + 1 < x.size(); ++i) {
      EXPECT_EQ(via_convert[i], want[i]) << "F32ToF16 of " << x[i];
      EXPECT_EQ(via_from_float[i], want[i]) << "FromFloat of " << x[i];
    }
    for (uint16_t h : {via_convert.back(), via_from_float.back()}) {
      EXPECT_EQ(h & 0x7C00, 0x7C00);
      EXPECT_NE(h & 0x03FF, 0);
    }
  }
}

TEST(HalfTest, ExhaustiveHalfRoundTrip) {
  // Every finite half converts to a float that converts back to itself.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00) continue;
    const uint16_t bits = static_cast<uint16_t>(h);
    float f;
    ToFloat(GgmlType::kF16, &bits, &f, 1);
    uint16_t back;
    F32ToF16(&f, &back, 1);
    ASSERT_EQ(back, bits) << std::hex << h;
  }
}

// The kernels convert halves with their own (vectorizable) code; every
// half must come out as ToFloat has it.
TEST(HalfTest, KernelsConvertEveryHalfExactly) {
  std::vector<uint16_t> all(0x10000);
  for (uint32_t h = 0; h < 0x10000; ++h) all[h] = static_cast<uint16_t>(h);
  const std::vector<float> want =
      Dequantize(GgmlType::kF16, all.data(), 0x10000);
  const std::vector<float> ones(0x10000, 1.0f);
  for (Isa isa : SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    std::vector<float> via_axpy_row(0x10000, 0.0f);
    AxpyRow(GgmlType::kF16, 1.0f, all.data(), via_axpy_row.data(), 0x10000);
    std::vector<float> via_axpy_f16(0x10000, 0.0f);
    AxpyF16(1.0f, all.data(), via_axpy_f16.data(), 0x10000);
    for (uint32_t h = 0; h < 0x10000; ++h) {
      if (std::isnan(want[h])) {
        ASSERT_TRUE(std::isnan(via_axpy_row[h])) << std::hex << h;
        ASSERT_TRUE(std::isnan(via_axpy_f16[h])) << std::hex << h;
        continue;
      }
      ASSERT_EQ(via_axpy_row[h], want[h]) << std::hex << h;
      ASSERT_EQ(via_axpy_f16[h], want[h]) << std::hex << h;
      // One-element dots see each value alone (no inf - inf in a sum).
      ASSERT_EQ(DotF16F32(&all[h], &ones[h], 1), want[h]) << std::hex << h;
    }
  }
}

TEST(Bf16Test, Conversions) {
  const float x[] = {1.0f,
                     1.0f + 0x1p-8f,
                     1.0f + 0x1.8p-7f,
                     -2.5f,
                     std::numeric_limits<float>::infinity(),
                     std::numeric_limits<float>::quiet_NaN()};
  for (Isa isa : SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    uint16_t y[6];
    FromFloat(GgmlType::kBF16, x, y, 6);
    EXPECT_EQ(y[0], 0x3F80);
    EXPECT_EQ(y[1], 0x3F80);  // tie: to even
    EXPECT_EQ(y[2], 0x3F82);  // 1.5 ulps: tie to even
    EXPECT_EQ(y[3], 0xC020);
    EXPECT_EQ(y[4], 0x7F80);
    EXPECT_EQ(y[5] & 0x7F80, 0x7F80);
    EXPECT_NE(y[5] & 0x007F, 0);
    float back[4];
    ToFloat(GgmlType::kBF16, y, back, 4);
    EXPECT_EQ(back[0], 1.0f);
    EXPECT_EQ(back[2], 1.0f + 0x1p-6f);
    EXPECT_EQ(back[3], -2.5f);
  }
}

// ------------------------------------------------------ attention helpers

TEST(AttentionHelpersTest, DotF16F32MatchesDouble) {
  for (int64_t n : {1, 7, 8, 15, 16, 17, 33, 64, 100, 128, 1000}) {
    const std::vector<float> kf = RandomFloats(n, 20);
    const std::vector<float> q = RandomFloats(n, 21);
    std::vector<uint16_t> k(n);
    for (int64_t i = 0; i < n; ++i) k[i] = FloatToHalf(kf[i]);
    double want = 0;
    double abs_sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double p = static_cast<double>(HalfToFloat(k[i])) * q[i];
      want += p;
      abs_sum += std::fabs(p);
    }
    for (Isa isa : SupportedIsas()) {
      SCOPED_TRACE(std::string(IsaName(isa)) + " n=" + std::to_string(n));
      ScopedIsa scoped(isa);
      EXPECT_NEAR(DotF16F32(k.data(), q.data(), n), want, 1e-5 * abs_sum);
    }
  }
}

TEST(AttentionHelpersTest, AxpyF16MatchesScalar) {
  for (int64_t n : {1, 7, 8, 15, 16, 17, 33, 64, 100, 128, 1000}) {
    const std::vector<float> vf = RandomFloats(n, 22);
    const std::vector<float> y0 = RandomFloats(n, 23);
    std::vector<uint16_t> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = FloatToHalf(vf[i]);
    constexpr float a = -0.731f;
    for (Isa isa : SupportedIsas()) {
      SCOPED_TRACE(std::string(IsaName(isa)) + " n=" + std::to_string(n));
      ScopedIsa scoped(isa);
      std::vector<float> y = y0;
      AxpyF16(a, v.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const float term = a * HalfToFloat(v[i]);
        ASSERT_NEAR(y[i], y0[i] + term,
                    1e-6f * (std::fabs(y0[i]) + std::fabs(term)))
            << i;
      }
    }
  }
}

// ------------------------------------------------------------------- axpy

TEST(AxpyRowTest, MatchesToFloat) {
  for (GgmlType type : kRowTypes) {
    const int block = Traits(type).block_size;
    std::vector<int64_t> lengths = {256, 5632};
    if (block == 1) lengths = {1, 37, 256, 1000};
    if (block == 32) lengths = {32, 96, 256, 5632};
    for (int64_t n : lengths) {
      const std::vector<float> x = RandomFloats(n, 30);
      const std::vector<uint8_t> row = Quantize(type, x.data(), n);
      const std::vector<float> deq = Dequantize(type, row.data(), n);
      const std::vector<float> y0 = RandomFloats(n, 31);
      constexpr float a = 1.37f;
      for (Isa isa : SupportedIsas()) {
        SCOPED_TRACE(Name(type) + " " + std::string(IsaName(isa)) +
                     " n=" + std::to_string(n));
        ScopedIsa scoped(isa);
        std::vector<float> y = y0;
        AxpyRow(type, a, row.data(), y.data(), n);
        for (int64_t i = 0; i < n; ++i) {
          const float term = a * deq[i];
          ASSERT_NEAR(y[i], y0[i] + term,
                      2e-6f * (std::fabs(y0[i]) + std::fabs(term)))
              << i;
        }
      }
    }
  }
}

// --------------------------------------------------------------- dispatch

TEST(DispatchTest, IsaNamesAndSelection) {
  EXPECT_EQ(IsaName(Isa::kScalar), "scalar");
  EXPECT_EQ(IsaName(Isa::kAvx2), "avx2");
  EXPECT_EQ(IsaName(Isa::kAvx512), "avx512");
  EXPECT_LE(ActiveIsa(), DetectIsa());
  for (Isa isa : SupportedIsas()) {
    ScopedIsa scoped(isa);
    EXPECT_EQ(ActiveIsa(), isa);
  }
}

TEST(DispatchTest, VecDotTypes) {
  EXPECT_EQ(VecDotType(GgmlType::kF32), GgmlType::kF32);
  EXPECT_EQ(VecDotType(GgmlType::kF16), GgmlType::kF16);
  EXPECT_EQ(VecDotType(GgmlType::kBF16), GgmlType::kBF16);
  EXPECT_EQ(VecDotType(GgmlType::kQ8_0), GgmlType::kQ8_0);
  EXPECT_EQ(VecDotType(GgmlType::kQ4_0), GgmlType::kQ8_0);
  EXPECT_EQ(VecDotType(GgmlType::kQ4_K), GgmlType::kQ8_K);
  EXPECT_EQ(VecDotType(GgmlType::kQ6_K), GgmlType::kQ8_K);
}

TEST(DispatchTest, ScalarTableIsComplete) {
  const internal::IsaKernels& t = internal::ScalarKernels();
  for (GgmlType type : kWeightTypes) {
    EXPECT_NE(t.gemm[static_cast<int>(type)], nullptr) << Name(type);
    EXPECT_NE(t.from_float[static_cast<int>(VecDotType(type))], nullptr)
        << Name(type);
  }
  for (GgmlType type : kRowTypes) {
    EXPECT_NE(t.axpy_row[static_cast<int>(type)], nullptr) << Name(type);
  }
  EXPECT_NE(t.dot_f16_f32, nullptr);
  EXPECT_NE(t.axpy_f16, nullptr);
  EXPECT_NE(t.f32_to_f16, nullptr);
}

// FLASHD_ISA is read once per process, so each case runs in a fresh one.
TEST(DispatchDeathTest, EnvironmentLowersTheIsa) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const struct {
    const char* value;
    Isa want;
  } cases[] = {
      {"scalar", Isa::kScalar},
      {"avx2", std::min(Isa::kAvx2, DetectIsa())},
      {"avx512", DetectIsa()},
      {"bogus", DetectIsa()},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.value);
    setenv("FLASHD_ISA", c.value, 1);
    EXPECT_EXIT(std::exit(static_cast<int>(ActiveIsa())),
                ::testing::ExitedWithCode(static_cast<int>(c.want)), "");
  }
  unsetenv("FLASHD_ISA");
}

TEST(DispatchDeathTest, ForcingAnUnsupportedIsaIsABug) {
  if (DetectIsa() == Isa::kAvx512) GTEST_SKIP() << "CPU supports every ISA";
  EXPECT_DEATH(SetIsaForTesting(Isa::kAvx512), "check failed");
}


// Grouped-query attention against a double-precision reference, for group
// sizes around the 8-head fast path, head sizes with tails, many lengths.
TEST(AttendF16Test, MatchesReferenceOnEveryIsa) {
  for (int32_t n_q : {1, 3, 4, 8, 12, 16}) {
    for (int32_t hd : {4, 32, 64, 80}) {
      for (int32_t n_keys : {1, 17, 200}) {
        const size_t stride = static_cast<size_t>(hd) * 3 + 5;
        const std::vector<float> q = RandomFloats(n_q * hd, 101 + hd, 1.0f);
        const std::vector<float> kf = RandomFloats(n_keys * stride, 7, 1.0f);
        const std::vector<float> vf = RandomFloats(n_keys * stride, 9, 1.0f);
        std::vector<uint16_t> k(kf.size()), v(vf.size());
        for (size_t i = 0; i < kf.size(); ++i) {
          k[i] = FloatToHalf(kf[i]);
          v[i] = FloatToHalf(vf[i]);
        }
        const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
        std::vector<double> want(n_q * hd, 0.0);
        for (int32_t g = 0; g < n_q; ++g) {
          std::vector<double> w(n_keys);
          double mx = -1e300, sum = 0;
          for (int32_t p = 0; p < n_keys; ++p) {
            double d = 0;
            for (int32_t i = 0; i < hd; ++i) {
              d += static_cast<double>(q[g * hd + i]) * HalfToFloat(k[p * stride + i]);
            }
            w[p] = d * scale;
            mx = std::max(mx, w[p]);
          }
          for (double& x : w) sum += (x = std::exp(x - mx));
          for (int32_t p = 0; p < n_keys; ++p) {
            for (int32_t i = 0; i < hd; ++i) {
              want[g * hd + i] += w[p] / sum * HalfToFloat(v[p * stride + i]);
            }
          }
        }
        for (Isa isa : SupportedIsas()) {
          SCOPED_TRACE(::testing::Message() << IsaName(isa) << " n_q=" << n_q
                                          << " hd=" << hd << " keys=" << n_keys);
          ScopedIsa scoped(isa);
          std::vector<float> scores(n_q * n_keys), out(n_q * hd, -1.0f);
          AttendF16(q.data(), n_q, hd, k.data(), v.data(), stride, n_keys,
                    scale, scores.data(), out.data());
          for (size_t i = 0; i < out.size(); ++i) {
            ASSERT_NEAR(out[i], want[i], 2e-5 + 2e-5 * std::fabs(want[i])) << i;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace flashd::kernels
