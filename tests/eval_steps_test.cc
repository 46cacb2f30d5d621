// Forward::EvalSteps runs one token of several sequences in one pass; each
// sequence must get what it gets alone.
#include <cmath>
#include <string>
#include <vector>

#include "common/engine/forward.h"
#include "common/model/model_loader.h"
#include "common/model/model_maker.h"
#include "gtest/gtest.h"

namespace flashd {
namespace {

TEST(EvalStepsTest, EachSequenceGetsWhatItGetsAlone) {
  MakeModelOptions o;
  o.preset = "tiny";
  o.type = "q8_0";
  o.out_path = ::testing::TempDir() + "/eval_steps.gguf";
  ASSERT_TRUE(MakeModel(o).ok());
  absl::StatusOr<LoadedModel> lm = LoadModel(o.out_path);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const ModelConfig& c = lm->model->config;
  ThreadPool pool(2);
  Forward forward(*lm->model, &pool, 64, 8);
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 10, 20, 30}, {1, 7}, {1, 99, 98, 97, 96, 95}};
  const int decode = 5;
  // Alone: prompt, then `decode` greedy... fixed tokens, one at a time.
  std::vector<std::vector<float>> alone;
  for (const auto& p : prompts) {
    KvCache kv(c, 64);
    ASSERT_TRUE(forward.Eval(kv, p, false).ok());
    for (int i = 0; i < decode; ++i) {
      const int32_t tok = 40 + i;
      ASSERT_TRUE(forward.Eval(kv, {&tok, 1}, false).ok());
      alone.emplace_back(forward.logits(0), forward.logits(0) + c.n_vocab);
    }
  }
  // Together: prompts alone, then one EvalSteps per decode step.
  std::vector<KvCache> kvs;
  for (size_t s = 0; s < prompts.size(); ++s) kvs.emplace_back(c, 64);
  for (size_t s = 0; s < prompts.size(); ++s) {
    ASSERT_TRUE(forward.Eval(kvs[s], prompts[s], false).ok());
  }
  for (int i = 0; i < decode; ++i) {
    std::vector<Forward::Step> steps;
    for (size_t s = 0; s < prompts.size(); ++s) {
      steps.push_back({&kvs[s], 40 + i});
    }
    ASSERT_TRUE(forward.EvalSteps(steps).ok());
    for (size_t s = 0; s < prompts.size(); ++s) {
      const std::vector<float>& want = alone[s * decode + i];
      const float* got = forward.logits(static_cast<int32_t>(s));
      double dot = 0, na = 0, nb = 0;
      for (int32_t v = 0; v < c.n_vocab; ++v) {
        dot += static_cast<double>(got[v]) * want[v];
        na += static_cast<double>(got[v]) * got[v];
        nb += static_cast<double>(want[v]) * want[v];
      }
      // Batched and single-token kernels may round differently.
      EXPECT_GT(dot / std::sqrt(na * nb), 0.99999) << "seq " << s << " step " << i;
      EXPECT_EQ(kvs[s].n_past(), static_cast<int32_t>(prompts[s].size()) + i + 1);
    }
  }
  // Misuse is refused without advancing any cache.
  KvCache& k0 = kvs[0];
  const int32_t before = k0.n_past();
  std::vector<Forward::Step> twice = {{&k0, 5}, {&k0, 6}};
  EXPECT_EQ(forward.EvalSteps(twice).code(), absl::StatusCode::kInvalidArgument);
  std::vector<Forward::Step> bad = {{&k0, c.n_vocab}};
  EXPECT_EQ(forward.EvalSteps(bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(k0.n_past(), before);
}

}  // namespace
}  // namespace flashd
