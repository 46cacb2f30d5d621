#include "common/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace flashd {
namespace {

std::vector<float> Logits() {
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[i] = std::sin(i * 1.3f) * 3.0f;
  return l;
}

TEST(Sampler, GreedyIsArgMax) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p, 100);
  std::vector<float> l = Logits();
  EXPECT_EQ(s.Sample(l.data(), {}), ArgMax(l.data(), 100));
}

TEST(Sampler, SameSeedSameTokens) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0;
  p.seed = 42;
  Sampler a(p, 100), b(p, 100);
  p.seed = 43;
  Sampler c(p, 100);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 50; ++i) {
    std::vector<float> l = Logits();
    ta.push_back(a.Sample(l.data(), {}));
    l = Logits();
    tb.push_back(b.Sample(l.data(), {}));
    l = Logits();
    tc.push_back(c.Sample(l.data(), {}));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 2.0f;
  p.top_k = 1;
  Sampler s(p, 100);
  for (int i = 0; i < 20; ++i) {
    std::vector<float> l = Logits();
    EXPECT_EQ(s.Sample(l.data(), {}), ArgMax(l.data(), 100));
  }
}

TEST(Sampler, TopKTopPMinPRestrictCandidates) {
  std::vector<float> l = Logits();
  std::vector<int> order(100);
  for (int i = 0; i < 100; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  SamplingParams p;
  p.temperature = 5.0f;  // flat, so restrictions are what keeps tokens out
  p.top_k = 3;
  p.top_p = 1.0f;
  p.min_p = 0;
  Sampler s(p, 100);
  for (int i = 0; i < 200; ++i) {
    std::vector<float> x = l;
    int32_t t = s.Sample(x.data(), {});
    EXPECT_TRUE(t == order[0] || t == order[1] || t == order[2]);
  }
  // min_p = 1 keeps only the top token.
  p.top_k = 0;
  p.min_p = 1.0f;
  Sampler m(p, 100);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> x = l;
    EXPECT_EQ(m.Sample(x.data(), {}), order[0]);
  }
  // A tiny top_p keeps only the top token.
  p.min_p = 0;
  p.top_p = 1e-6f;
  Sampler tp(p, 100);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> x = l;
    EXPECT_EQ(tp.Sample(x.data(), {}), order[0]);
  }
}

TEST(Sampler, RepeatPenaltyDemotesRecentTokens) {
  std::vector<float> l(10, 0.0f);
  l[3] = 2.0f;
  l[5] = 1.9f;
  SamplingParams p;
  p.temperature = 0;
  p.repeat_penalty = 1.5f;
  Sampler s(p, 10);
  std::vector<int32_t> history = {3, 3, 7};
  EXPECT_EQ(s.Sample(l.data(), history), 5);
  EXPECT_FLOAT_EQ(l[3], 2.0f / 1.5f);  // penalized once, not per occurrence
}

TEST(Sampler, ValidateNamesTheField) {
  SamplingParams p;
  p.top_p = 0;
  EXPECT_NE(p.Validate().message().find("top_p"), std::string::npos);
  p = {};
  p.min_p = 2;
  EXPECT_NE(p.Validate().message().find("min_p"), std::string::npos);
  p = {};
  p.temperature = NAN;
  EXPECT_NE(p.Validate().message().find("temperature"), std::string::npos);
  p = {};
  p.repeat_penalty = -1;
  EXPECT_NE(p.Validate().message().find("repeat_penalty"), std::string::npos);
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

}  // namespace
}  // namespace flashd
