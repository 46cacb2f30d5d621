// Forward::EvalSteps runs the tokens of several sequences (prompt chunks
// and decoded tokens) in one pass; each sequence must get what it gets
// alone.
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
  Forward forward(*lm->model, &pool, 64, 16);
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 10, 20, 30}, {1, 7}, {1, 99, 98, 97, 96, 95}};
  const int decode = 5;
  // Cosine similarity of logits `got` and `want`.
  const auto cosine = [&](const float* got, const std::vector<float>& want) {
    double dot = 0, na = 0, nb = 0;
    for (int32_t v = 0; v < c.n_vocab; ++v) {
      dot += static_cast<double>(got[v]) * want[v];
      na += static_cast<double>(got[v]) * got[v];
      nb += static_cast<double>(want[v]) * want[v];
    }
    return dot / std::sqrt(na * nb);
  };
  // Alone: prompt, then `decode` fixed tokens, one at a time.
  std::vector<std::vector<float>> alone, alone_prompt;
  for (const auto& p : prompts) {
    KvCache kv(c, 64);
    ASSERT_TRUE(forward.Eval(kv, p, false).ok());
    alone_prompt.emplace_back(forward.logits(0), forward.logits(0) + c.n_vocab);
    for (int i = 0; i < decode; ++i) {
      const int32_t tok = 40 + i;
      ASSERT_TRUE(forward.Eval(kv, {&tok, 1}, false).ok());
      alone.emplace_back(forward.logits(0), forward.logits(0) + c.n_vocab);
    }
  }
  // Together: the three prompts in one pass (12 rows), then one pass per
  // decode step; sequence 2 joins one step late, its prompt sharing the
  // pass with the others' first decoded tokens.
  std::vector<KvCache> kvs;
  for (size_t s = 0; s < prompts.size(); ++s) kvs.emplace_back(c, 64);
  {
    std::vector<Forward::Step> steps;
    for (size_t s = 0; s < 2; ++s) steps.push_back({&kvs[s], prompts[s]});
    ASSERT_TRUE(forward.EvalSteps(steps).ok());
    for (size_t s = 0; s < 2; ++s) {
      EXPECT_GT(cosine(forward.logits(static_cast<int32_t>(s)), alone_prompt[s]),
                0.99999);
    }
  }
  std::vector<int32_t> tokens(decode);
  for (int i = 0; i < decode; ++i) tokens[i] = 40 + i;
  for (int i = 0; i <= decode; ++i) {
    std::vector<Forward::Step> steps;
    std::vector<size_t> seq;
    for (size_t s = 0; s < prompts.size(); ++s) {
      const int step = s == 2 ? i - 1 : i;  // sequence 2 runs one late
      if (step == -1) {
        steps.push_back({&kvs[s], prompts[s]});
      } else if (step < decode) {
        steps.push_back({&kvs[s], absl::MakeConstSpan(&tokens[step], 1)});
      } else {
        continue;
      }
      seq.push_back(s);
    }
    ASSERT_TRUE(forward.EvalSteps(steps).ok());
    for (size_t r = 0; r < seq.size(); ++r) {
      const size_t s = seq[r];
      const int step = s == 2 ? i - 1 : i;
      const std::vector<float>& want =
          step == -1 ? alone_prompt[s] : alone[s * decode + step];
      // Batched and single-token kernels may round differently.
      EXPECT_GT(cosine(forward.logits(static_cast<int32_t>(r)), want), 0.99999)
          << "seq " << s << " step " << step;
      EXPECT_EQ(kvs[s].n_past(), static_cast<int32_t>(prompts[s].size()) + step + 1);
    }
  }
  // Misuse is refused without advancing any cache.
  KvCache& k0 = kvs[0];
  const int32_t before = k0.n_past();
  const int32_t five = 5, out_of_vocab = c.n_vocab;
  const std::vector<int32_t> seventeen(17, 3);
  std::vector<Forward::Step> twice = {{&k0, {&five, 1}}, {&k0, {&five, 1}}};
  EXPECT_EQ(forward.EvalSteps(twice).code(), absl::StatusCode::kInvalidArgument);
  std::vector<Forward::Step> bad = {{&kvs[1], {&five, 1}}, {&k0, {&out_of_vocab, 1}}};
  EXPECT_EQ(forward.EvalSteps(bad).code(), absl::StatusCode::kInvalidArgument);
  std::vector<Forward::Step> too_many = {{&k0, seventeen}};
  EXPECT_EQ(forward.EvalSteps(too_many).code(), absl::StatusCode::kInvalidArgument);
  std::vector<Forward::Step> empty = {{&k0, {}}};
  EXPECT_EQ(forward.EvalSteps(empty).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(k0.n_past(), before);
  EXPECT_EQ(kvs[1].n_past(), static_cast<int32_t>(prompts[1].size()) + decode);
}

}  // namespace
}  // namespace flashd
