// make-model writes GGUFs that load, run, are deterministic, and carry
// llama.cpp's per-tensor type choices.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/engine/forward.h"
#include "common/engine/generator.h"
#include "common/gguf/gguf_file.h"
#include "common/model/model_loader.h"
#include "common/model/model_maker.h"
#include "gtest/gtest.h"

namespace flashd {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Make(const std::string& type, uint64_t seed, int threads,
                 const std::string& tag) {
  MakeModelOptions o;
  o.preset = "tiny";
  o.type = type;
  o.seed = seed;
  o.threads = threads;
  o.out_path = ::testing::TempDir() + "/make_" + type + "_" + tag + ".gguf";
  absl::Status s = MakeModel(o);
  EXPECT_TRUE(s.ok()) << s;
  return o.out_path;
}

TEST(MakeModel, EveryTypeLoadsAndGenerates) {
  for (const char* type : {"f16", "q8_0", "q4_0", "q4_k_m"}) {
    SCOPED_TRACE(type);
    const std::string path = Make(type, 3, 2, "run");
    absl::StatusOr<LoadedModel> lm = LoadModel(path);
    ASSERT_TRUE(lm.ok()) << lm.status();
    EXPECT_EQ(lm->model->config.n_layer, 4);
    EXPECT_EQ(lm->model->config.n_vocab, 32000);
    ThreadPool pool(2);
    Forward forward(*lm->model, &pool, 64, 8);
    KvCache kv(lm->model->config, 64);
    GenerateOptions go;
    go.max_tokens = 8;
    go.sampling.seed = 1;
    std::vector<int32_t> prompt = lm->tokenizer->Encode("hello there", true);
    absl::StatusOr<GenerateResult> r = Generate(
        forward, kv, *lm->tokenizer, prompt, go, [](int32_t, bool) { return true; });
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->tokens.empty());
    std::remove(path.c_str());
  }
}

TEST(MakeModel, DeterministicAcrossThreadCounts) {
  const std::string a = Make("q4_0", 9, 1, "a");
  const std::string b = Make("q4_0", 9, 2, "b");
  const std::string c = Make("q4_0", 10, 2, "c");
  EXPECT_EQ(Slurp(a), Slurp(b));
  EXPECT_NE(Slurp(a), Slurp(c));
  for (const auto& p : {a, b, c}) std::remove(p.c_str());
}

TEST(MakeModel, Q4KMUsesLlamaCppTypeMix) {
  const std::string path = Make("q4_k_m", 1, 2, "mix");
  absl::StatusOr<std::unique_ptr<GgufFile>> g = GgufFile::Open(path);
  ASSERT_TRUE(g.ok()) << g.status();
  auto type_of = [&](const std::string& name) {
    const GgufTensorInfo* t = (*g)->FindTensor(name);
    EXPECT_NE(t, nullptr) << name;
    return t ? t->type : GgmlType::kF32;
  };
  // 4 layers: llama.cpp gives layers 2 and 3 more bits (as tl-small-Q4_K_M).
  EXPECT_EQ(type_of("output.weight"), GgmlType::kQ6_K);
  EXPECT_EQ(type_of("token_embd.weight"), GgmlType::kQ4_K);
  EXPECT_EQ(type_of("blk.0.ffn_down.weight"), GgmlType::kQ4_K);
  EXPECT_EQ(type_of("blk.2.ffn_down.weight"), GgmlType::kQ6_K);
  EXPECT_EQ(type_of("blk.3.attn_v.weight"), GgmlType::kQ6_K);
  EXPECT_EQ(type_of("blk.1.attn_q.weight"), GgmlType::kQ4_K);
  EXPECT_EQ(type_of("blk.1.ffn_norm.weight"), GgmlType::kF32);
  std::remove(path.c_str());
}

TEST(MakeModel, RefusesUnknownPresetAndType) {
  MakeModelOptions o;
  o.out_path = ::testing::TempDir() + "/never.gguf";
  o.preset = "llama-70b";
  EXPECT_NE(MakeModel(o).message().find("llama-70b"), std::string::npos);
  o.preset = "tiny";
  o.type = "q3_k";
  EXPECT_NE(MakeModel(o).message().find("q3_k"), std::string::npos);
}

TEST(MakeModel, BuiltinVocabularyIsUnique) {
  std::vector<std::string> p = BuiltinVocabPieces(32000);
  ASSERT_EQ(p.size(), 32000u);
  std::sort(p.begin(), p.end());
  EXPECT_EQ(std::adjacent_find(p.begin(), p.end()), p.end());
}

}  // namespace
}  // namespace flashd
