// Golden-output tests on real and reference models from ../shared:
// stories260K greedy generations (llama2.c) must match exactly, tl-small
// logits must match llama.cpp's, for every kernel ISA this CPU has.
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/engine/forward.h"
#include "common/engine/generator.h"
#include "common/kernels/kernels.h"
#include "common/model/model_loader.h"
#include "gtest/gtest.h"
#include "tests/isa_test_util.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

using testing::ReadFileBytes;
using testing::ReadIds;
using testing::SharedPath;

using testing::ScopedIsa;
using testing::SupportedIsas;

struct StoriesCase {
  const char* name;
  const char* prompt;
};

class StoriesGolden : public ::testing::TestWithParam<StoriesCase> {};

TEST_P(StoriesGolden, GreedyMatchesLlama2c) {
  const std::string model_path = SharedPath("models/stories260K.bin");
  const std::string golden =
      SharedPath(std::string("golden/stories260K_greedy_") + GetParam().name +
                 ".ids");
  FLASHD_REQUIRE_SHARED(model_path);
  FLASHD_REQUIRE_SHARED(golden);
  LoadOptions options;
  options.tokenizer_path = SharedPath("models/tok512.bin");
  absl::StatusOr<LoadedModel> lm = LoadModel(model_path, options);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const std::vector<int32_t> expected = ReadIds(golden);
  ASSERT_FALSE(expected.empty());

  for (kernels::Isa isa : SupportedIsas()) {
    SCOPED_TRACE(std::string(kernels::IsaName(isa)));
    ScopedIsa guard(isa);
    ThreadPool pool(2);
    Forward forward(*lm->model, &pool, 256, 16);
    KvCache kv(lm->model->config, 256, DefaultKvType(*lm->model));
    std::vector<int32_t> prompt = lm->tokenizer->Encode(GetParam().prompt, true);
    ASSERT_FALSE(prompt.empty());
    // llama2.c runs 256 positions: the sequence after BOS has at most 256
    // tokens, and ends early when the model emits BOS.
    GenerateOptions go;
    go.sampling.temperature = 0;
    go.stop_at_bos = true;
    go.max_tokens = 256 - static_cast<int32_t>(prompt.size() - 1);
    absl::StatusOr<GenerateResult> r = Generate(
        forward, kv, *lm->tokenizer, prompt, go, [](int32_t, bool) { return true; });
    ASSERT_TRUE(r.ok()) << r.status();
    std::vector<int32_t> got(prompt.begin() + 1, prompt.end());
    got.insert(got.end(), r->tokens.begin(), r->tokens.end());
    EXPECT_EQ(got, expected);
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, StoriesGolden,
    ::testing::Values(StoriesCase{"empty", ""},
                      StoriesCase{"dog", "Once upon a time, there was a little dog"},
                      StoriesCase{"park", "Tom and Sue went to the park"}),
    [](const auto& info) { return std::string(info.param.name); });

struct LogitsCase {
  const char* type;
  double min_cosine;
};

class TlSmallLogits : public ::testing::TestWithParam<LogitsCase> {};

TEST_P(TlSmallLogits, MatchLlamaCpp) {
  const std::string type = GetParam().type;
  const std::string model_path = SharedPath("models/tl-small-" + type + ".gguf");
  const std::string ids_path = SharedPath("golden/tl-small-" + type + ".p1.ids");
  const std::string logits_path =
      SharedPath("golden/tl-small-" + type + ".p1.logits.f32");
  FLASHD_REQUIRE_SHARED(model_path);
  FLASHD_REQUIRE_SHARED(logits_path);
  absl::StatusOr<LoadedModel> lm = LoadModel(model_path);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const std::string prompt = ReadFileBytes(SharedPath("golden/p1.txt"));
  const std::vector<int32_t> ids = lm->tokenizer->Encode(prompt, true);
  EXPECT_EQ(ids, ReadIds(ids_path));

  const int32_t n_vocab = lm->model->config.n_vocab;
  const std::string raw = ReadFileBytes(logits_path);
  ASSERT_EQ(raw.size(), ids.size() * n_vocab * sizeof(float));
  const float* ref = reinterpret_cast<const float*>(raw.data());

  for (kernels::Isa isa : SupportedIsas()) {
    SCOPED_TRACE(std::string(kernels::IsaName(isa)));
    ScopedIsa guard(isa);
    ThreadPool pool(2);
    // A batch smaller than the prompt exercises chunked prefill too.
    Forward forward(*lm->model, &pool, 128, 16);
    KvCache kv(lm->model->config, 128);
    double worst = 1.0;
    int argmax_equal = 0;
    absl::Status s = EvalPrompt(
        forward, kv, ids, true, [&](int32_t pos, const float* row) {
          const float* want = ref + static_cast<size_t>(pos) * n_vocab;
          double dot = 0, na = 0, nb = 0;
          int32_t am = 0, bm = 0;
          for (int32_t i = 0; i < n_vocab; ++i) {
            dot += static_cast<double>(row[i]) * want[i];
            na += static_cast<double>(row[i]) * row[i];
            nb += static_cast<double>(want[i]) * want[i];
            if (row[i] > row[am]) am = i;
            if (want[i] > want[bm]) bm = i;
          }
          worst = std::min(worst, dot / std::sqrt(na * nb));
          argmax_equal += am == bm;
        });
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_GE(worst, GetParam().min_cosine);
    EXPECT_GE(argmax_equal, 0.95 * ids.size());
    RecordProperty("worst_cosine_" + std::string(kernels::IsaName(isa)),
                   std::to_string(worst));
    std::printf("[ %s %s ] worst cosine %.7f, argmax equal %d/%zu\n",
                type.c_str(), std::string(kernels::IsaName(isa)).c_str(),
                worst, argmax_equal, ids.size());
  }
}

INSTANTIATE_TEST_SUITE_P(All, TlSmallLogits,
                         ::testing::Values(LogitsCase{"f16", 0.99995},
                                           LogitsCase{"Q8_0", 0.9997},
                                           LogitsCase{"Q4_0", 0.9997},
                                           LogitsCase{"Q4_K_M", 0.9997}),
                         [](const auto& info) {
                           return std::string(info.param.type);
                         });

TEST(TinyRandomGguf, LoadsAndRuns) {
  const std::string path = SharedPath("models/llama-2-tiny-random.gguf");
  FLASHD_REQUIRE_SHARED(path);
  absl::StatusOr<LoadedModel> lm = LoadModel(path);
  ASSERT_TRUE(lm.ok()) << lm.status();
  EXPECT_EQ(lm->model->config.n_layer, 1);
  EXPECT_EQ(lm->model->config.n_embd, 8);
  ThreadPool pool(2);
  Forward forward(*lm->model, &pool, 64, 8);
  KvCache kv(lm->model->config, 64);
  GenerateOptions go;
  go.max_tokens = 20;
  go.sampling.seed = 7;
  std::vector<int32_t> prompt = lm->tokenizer->Encode("Hello world", true);
  absl::StatusOr<GenerateResult> r = Generate(
      forward, kv, *lm->tokenizer, prompt, go, [](int32_t, bool) { return true; });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->tokens.empty());
  for (int32_t i = 0; i < lm->model->config.n_vocab; ++i) {
    ASSERT_TRUE(std::isfinite(forward.logits(0)[i]));
  }
}

}  // namespace
}  // namespace flashd
