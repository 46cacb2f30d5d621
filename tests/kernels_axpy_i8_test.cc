// Tests of the kernels of the bundle FFN's down product: AxpyI8Scaled (the
// flash layout's kInt8Scaled down column) and AxpyBlockF32 (several
// neurons' columns for several tokens), on every ISA the CPU has, against
// the scalar table, sequential AxpyRow calls, and double.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels.h"
#include "common/kernels/kernels_internal.h"
#include "gtest/gtest.h"
#include "tests/isa_test_util.h"

namespace flashd::kernels {
namespace {

using ::flashd::testing::ScopedIsa;
using ::flashd::testing::SupportedIsas;

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// Random operands of length n. Scales and mins are arbitrary floats (not
// the exact products real sources give), so scale * q is generally inexact
// and a fused scale * q - min would show.
struct Operands {
  std::vector<int8_t> q;
  std::vector<float> scale, min, y;
};

Operands MakeOperands(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(-128, 127);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Operands o;
  for (int64_t i = 0; i < n; ++i) {
    o.q.push_back(static_cast<int8_t>(code(rng)));
    o.scale.push_back(0.01f * normal(rng));
    o.min.push_back(0.1f * normal(rng));
    o.y.push_back(normal(rng));
  }
  return o;
}

// With a = 1 and y = -0 the result is the weight itself on every ISA (1 * w
// and -0 + w are exact, fused or not, and keep the sign of a zero w), so the
// weight computation must match the formula as written bit for bit: the
// product scale * q rounded to float, then minus min.
TEST(AxpyI8ScaledTest, WeightIsRoundedAsWrittenOnEveryIsa) {
  for (int64_t n = 1; n <= 300; ++n) {
    const Operands o = MakeOperands(n, static_cast<uint32_t>(n));
    for (bool with_min : {false, true}) {
      const float* min = with_min ? o.min.data() : nullptr;
      for (Isa isa : SupportedIsas()) {
        SCOPED_TRACE(std::string(IsaName(isa)) + " n=" + std::to_string(n) +
                     (with_min ? " min" : " no min"));
        ScopedIsa scoped(isa);
        std::vector<float> y(n, -0.0f);
        AxpyI8Scaled(1.0f, o.q.data(), o.scale.data(), min, y.data(), n);
        for (int64_t i = 0; i < n; ++i) {
          volatile float product = o.scale[i] * static_cast<float>(o.q[i]);
          const float w = with_min ? product - o.min[i] : product;
          ASSERT_EQ(Bits(y[i]), Bits(w)) << i << ": " << y[i] << " vs " << w;
        }
      }
    }
  }
}

// General a and y: each ISA against the scalar table and against double.
// Both compute y + a * w from the same float w; the scalar table rounds
// a * w and then the sum (error <= 2^-24 |a w| + 2^-24 |y + a w|), the SIMD
// tables round once (fused; <= 2^-24 |y + a w|). So any two differ by at
// most 2^-24 |a w| + 2 * 2^-24 |y + a w| <= 3 * 2^-24 (|y| + |a w|) (about
// one ulp of the larger operand). Against double, each is within
// 2 * 2^-24 (|y| + |a w|). Both bounds hold to first order in 2^-24; the
// second-order terms are covered by evaluating them in double with a
// relative slack of 1e-6.
TEST(AxpyI8ScaledTest, MatchesScalarAndDoubleOnEveryIsa) {
  const double kUnit = std::ldexp(1.0, -24) * (1 + 1e-6);
  for (int64_t n = 1; n <= 300; ++n) {
    const Operands o = MakeOperands(n, 1000u + static_cast<uint32_t>(n));
    const float a = (n % 2 ? -1.0f : 1.0f) * (0.25f + 0.01f * n);
    for (bool with_min : {false, true}) {
      const float* min = with_min ? o.min.data() : nullptr;
      std::vector<float> scalar = o.y;
      {
        ScopedIsa scoped(Isa::kScalar);
        AxpyI8Scaled(a, o.q.data(), o.scale.data(), min, scalar.data(), n);
      }
      for (Isa isa : SupportedIsas()) {
        SCOPED_TRACE(std::string(IsaName(isa)) + " n=" + std::to_string(n) +
                     (with_min ? " min" : " no min"));
        ScopedIsa scoped(isa);
        std::vector<float> y = o.y;
        AxpyI8Scaled(a, o.q.data(), o.scale.data(), min, y.data(), n);
        for (int64_t i = 0; i < n; ++i) {
          volatile float product = o.scale[i] * static_cast<float>(o.q[i]);
          const float w = with_min ? product - o.min[i] : product;
          const double exact =
              static_cast<double>(o.y[i]) + static_cast<double>(a) * w;
          const double size = std::fabs(static_cast<double>(o.y[i])) +
                              std::fabs(static_cast<double>(a) * w);
          ASSERT_LE(std::fabs(static_cast<double>(y[i]) - scalar[i]),
                    3 * kUnit * size)
              << i << ": " << y[i] << " vs scalar " << scalar[i];
          ASSERT_LE(std::fabs(y[i] - exact), 2 * kUnit * size)
              << i << ": " << y[i] << " vs exact " << exact;
        }
        if (isa == Isa::kScalar) {
          for (int64_t i = 0; i < n; ++i)
            ASSERT_EQ(Bits(y[i]), Bits(scalar[i]));
        }
      }
    }
  }
}

// Lanes past n are neither read into the result nor written: a vector
// tail must not touch y[n..].
TEST(AxpyI8ScaledTest, WritesOnlyNElements) {
  for (int64_t n : {1, 7, 8, 9, 15, 16, 17, 31, 33}) {
    const Operands o = MakeOperands(n + 16, 7);
    for (Isa isa : SupportedIsas()) {
      SCOPED_TRACE(std::string(IsaName(isa)) + " n=" + std::to_string(n));
      ScopedIsa scoped(isa);
      std::vector<float> y = o.y;
      AxpyI8Scaled(2.0f, o.q.data(), o.scale.data(), o.min.data(), y.data(), n);
      for (int64_t i = n; i < n + 16; ++i) ASSERT_EQ(Bits(y[i]), Bits(o.y[i]));
    }
  }
}

// n = 0 and a = 0 change nothing (a = 0 adds +-0 to each y).
TEST(AxpyI8ScaledTest, EmptyAndZeroScaleAreNoOps) {
  const Operands o = MakeOperands(64, 9);
  for (Isa isa : SupportedIsas()) {
    SCOPED_TRACE(std::string(IsaName(isa)));
    ScopedIsa scoped(isa);
    std::vector<float> y = o.y;
    AxpyI8Scaled(3.0f, o.q.data(), o.scale.data(), o.min.data(), y.data(), 0);
    EXPECT_EQ(y, o.y);
    AxpyI8Scaled(0.0f, o.q.data(), o.scale.data(), o.min.data(), y.data(), 64);
    EXPECT_EQ(y, o.y);
  }
}

// The scalar table is the fallback of every ISA: it must have both.
TEST(AxpyI8ScaledTest, ScalarTableHasTheNewKernels) {
  EXPECT_NE(internal::ScalarKernels().axpy_i8_scaled, nullptr);
  EXPECT_NE(internal::ScalarKernels().axpy_block_f32, nullptr);
}

// ----------------------------------------------------------- AxpyBlockF32

// Operands with strides wider than the data (w_stride > n, a_stride > k,
// y_stride > n): padding must be neither read into results nor written.
struct BlockOperands {
  int64_t k, nt, n;
  size_t w_stride, a_stride, y_stride;
  std::vector<float> w, a, y;
};

BlockOperands MakeBlockOperands(int64_t k, int64_t nt, int64_t n,
                                uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  BlockOperands o{k,
                  nt,
                  n,
                  static_cast<size_t>(n + 3),
                  static_cast<size_t>(k + 2),
                  static_cast<size_t>(n + 5),
                  {},
                  {},
                  {}};
  o.w.resize(o.w_stride * k);
  o.a.resize(o.a_stride * nt);
  o.y.resize(o.y_stride * nt);
  for (float& v : o.w) v = normal(rng);
  for (float& v : o.a) v = normal(rng);
  for (float& v : o.y) v = normal(rng);
  // Some zero activations, as masked neurons give.
  for (size_t i = 0; i < o.a.size(); i += 5) o.a[i] = 0.0f;
  return o;
}

// y after AxpyBlockF32 is bit for bit y after k AxpyRow(kF32) calls per
// token in j order, on every ISA (each ISA's block kernel rounds each step
// as its own AxpyRow does: fused on AVX2/AVX-512, unfused in the scalar
// table); the padding between rows is untouched.
TEST(AxpyBlockF32Test, EqualsSequentialAxpyRowOnEveryIsa) {
  for (int64_t k : {1, 3, 8}) {
    for (int64_t nt : {1, 2, 3, 4, 5, 8, 9, 17}) {
      for (int64_t n : {1, 7, 8, 15, 16, 17, 33, 100, 256}) {
        const BlockOperands o = MakeBlockOperands(
            k, nt, n, static_cast<uint32_t>(k * 1000 + nt * 100 + n));
        for (Isa isa : SupportedIsas()) {
          SCOPED_TRACE(std::string(IsaName(isa)) + " k=" + std::to_string(k) +
                       " nt=" + std::to_string(nt) + " n=" + std::to_string(n));
          ScopedIsa scoped(isa);
          std::vector<float> block = o.y;
          AxpyBlockF32(k, o.w.data(), o.w_stride, o.a.data(), o.a_stride, nt,
                       block.data(), o.y_stride, n);
          std::vector<float> rows = o.y;
          for (int64_t t = 0; t < nt; ++t) {
            for (int64_t j = 0; j < k; ++j) {
              AxpyRow(GgmlType::kF32, o.a[t * o.a_stride + j],
                      o.w.data() + j * o.w_stride, rows.data() + t * o.y_stride,
                      n);
            }
          }
          for (size_t i = 0; i < block.size(); ++i) {
            ASSERT_EQ(Bits(block[i]), Bits(rows[i])) << i;
          }
        }
      }
    }
  }
}

// Against double: k roundings of a product (unless fused) and k of a sum,
// each at most 2^-24 of a value bounded by |y| + sum_j |a_j w_j| = S, so
// |error| <= 2k 2^-24 S (to first order; slack 1e-6 as above).
TEST(AxpyBlockF32Test, MatchesDoubleOnEveryIsa) {
  const double kUnit = std::ldexp(1.0, -24) * (1 + 1e-6);
  for (int64_t k : {1, 8, 40}) {
    const int64_t nt = 6, n = 77;
    const BlockOperands o = MakeBlockOperands(k, nt, n, 77);
    for (Isa isa : SupportedIsas()) {
      SCOPED_TRACE(std::string(IsaName(isa)) + " k=" + std::to_string(k));
      ScopedIsa scoped(isa);
      std::vector<float> y = o.y;
      AxpyBlockF32(k, o.w.data(), o.w_stride, o.a.data(), o.a_stride, nt,
                   y.data(), o.y_stride, n);
      for (int64_t t = 0; t < nt; ++t) {
        for (int64_t r = 0; r < n; ++r) {
          double exact = o.y[t * o.y_stride + r];
          double size = std::fabs(exact);
          for (int64_t j = 0; j < k; ++j) {
            const double term = static_cast<double>(o.a[t * o.a_stride + j]) *
                                o.w[j * o.w_stride + r];
            exact += term;
            size += std::fabs(term);
          }
          ASSERT_LE(std::fabs(y[t * o.y_stride + r] - exact),
                    2 * k * kUnit * size)
              << "t=" << t << " r=" << r;
        }
      }
    }
  }
}

}  // namespace
}  // namespace flashd::kernels
