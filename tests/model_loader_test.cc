// Model-level validation: what the GGUF parser accepts but the engine
// cannot run is refused by name, with the numbers.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "common/gguf/gguf_writer.h"
#include "common/model/model_loader.h"
#include "common/model/model_maker.h"
#include "gtest/gtest.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

constexpr int kEmbd = 32, kFf = 64, kVocab = 400;

struct Spec {
  std::string arch = "llama";
  int head_count = 4;
  GgmlType ffn_up_type = GgmlType::kF32;
  int64_t ffn_up_rows = kFf;
  bool drop_attn_k = false;
};

// Writes a 1-layer F32 llama GGUF, altered by `spec`.
std::string WriteModel(const Spec& spec, const std::string& tag) {
  GgufWriter w;
  w.AddString("general.architecture", spec.arch);
  const std::string a = spec.arch;
  w.AddUint32(a + ".embedding_length", kEmbd);
  w.AddUint32(a + ".block_count", 1);
  w.AddUint32(a + ".feed_forward_length", kFf);
  w.AddUint32(a + ".attention.head_count", spec.head_count);
  w.AddUint32(a + ".attention.head_count_kv", 2);
  w.AddString("tokenizer.ggml.model", "llama");
  w.AddStringArray("tokenizer.ggml.tokens", BuiltinVocabPieces(kVocab));
  auto zeros = [](uint8_t* dst, size_t n) {
    std::memset(dst, 0, n);
    return absl::OkStatus();
  };
  auto mat = [&](const std::string& name, int64_t cols, int64_t rows,
                 GgmlType type = GgmlType::kF32) {
    w.AddTensor(name, {cols, rows}, type, zeros);
  };
  const int kv = kEmbd / spec.head_count * 2;
  mat("token_embd.weight", kEmbd, kVocab);
  w.AddTensor("output_norm.weight", {kEmbd}, GgmlType::kF32, zeros);
  w.AddTensor("blk.0.attn_norm.weight", {kEmbd}, GgmlType::kF32, zeros);
  w.AddTensor("blk.0.ffn_norm.weight", {kEmbd}, GgmlType::kF32, zeros);
  mat("blk.0.attn_q.weight", kEmbd, kEmbd);
  if (!spec.drop_attn_k) mat("blk.0.attn_k.weight", kEmbd, kv);
  mat("blk.0.attn_v.weight", kEmbd, kv);
  mat("blk.0.attn_output.weight", kEmbd, kEmbd);
  mat("blk.0.ffn_gate.weight", kEmbd, kFf);
  mat("blk.0.ffn_up.weight", kEmbd, spec.ffn_up_rows, spec.ffn_up_type);
  mat("blk.0.ffn_down.weight", kFf, kEmbd);
  const std::string path = ::testing::TempDir() + "/loader_" + tag + ".gguf";
  absl::Status s = w.Write(path);
  EXPECT_TRUE(s.ok()) << s;
  return path;
}

std::string LoadError(const std::string& path) {
  absl::StatusOr<LoadedModel> lm = LoadModel(path);
  std::remove(path.c_str());
  return lm.ok() ? "OK" : std::string(lm.status().message());
}

TEST(ModelLoader, ValidSmallModelLoads) {
  EXPECT_EQ(LoadError(WriteModel({}, "ok")), "OK");
}

TEST(ModelLoader, RefusesOtherArchitectureByName) {
  Spec s;
  s.arch = "gpt2";
  EXPECT_NE(LoadError(WriteModel(s, "arch")).find("'gpt2' is not supported"),
            std::string::npos);
}

TEST(ModelLoader, RefusesUnsupportedTensorTypeByName) {
  Spec s;
  s.ffn_up_type = GgmlType::kQ5_0;
  const std::string err = LoadError(WriteModel(s, "type"));
  EXPECT_NE(err.find("blk.0.ffn_up.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("q5_0"), std::string::npos) << err;
}

TEST(ModelLoader, RefusesWrongShapeWithNumbers) {
  Spec s;
  s.ffn_up_rows = kFf + 1;
  const std::string err = LoadError(WriteModel(s, "shape"));
  EXPECT_NE(err.find("blk.0.ffn_up.weight has shape [32, 65], expected [32, 64]"),
            std::string::npos)
      << err;
}

TEST(ModelLoader, RefusesMissingTensor) {
  Spec s;
  s.drop_attn_k = true;
  EXPECT_NE(LoadError(WriteModel(s, "missing")).find("lacks tensor blk.0.attn_k"),
            std::string::npos);
}

TEST(ModelLoader, RefusesHeadsThatDoNotDivide) {
  Spec s;
  s.head_count = 3;
  EXPECT_NE(LoadError(WriteModel(s, "heads")).find("not divisible by head count 3"),
            std::string::npos);
}

TEST(ModelLoader, TruncatedGgufNamesTheProblem) {
  const std::string path = WriteModel({}, "trunc");
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  bytes.resize(bytes.size() - 100);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  const std::string err = LoadError(path);
  EXPECT_NE(err.find("exceeds file size"), std::string::npos) << err;
}

TEST(ModelLoader, Llama2cHeaderAndTruncation) {
  const std::string path = ::testing::TempDir() + "/bad.bin";
  {
    int32_t header[7] = {64, 172, 5, 8, 4, 512, 512};
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    std::vector<float> some(1000, 0.0f);
    out.write(reinterpret_cast<const char*>(some.data()), some.size() * 4);
  }
  std::string err = LoadError(path);
  EXPECT_NE(err.find("llama2.c checkpoint truncated"), std::string::npos) << err;
  {
    int32_t header[7] = {64, -5, 5, 8, 4, 512, 512};
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
  }
  err = LoadError(path);
  EXPECT_NE(err.find("hidden_dim = -5"), std::string::npos) << err;
  {
    std::ofstream out(path, std::ios::binary);
    out << "abc";
  }
  err = LoadError(path);
  EXPECT_NE(err.find("too short"), std::string::npos) << err;
}

TEST(ModelLoader, MissingFileIsNotFound) {
  absl::StatusOr<LoadedModel> lm = LoadModel("/nonexistent/model.gguf");
  ASSERT_FALSE(lm.ok());
  EXPECT_EQ(lm.status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelLoader, SharedModelsLoad) {
  for (const char* name : {"tl-small-f16.gguf", "tl-small-Q8_0.gguf",
                           "tl-small-Q4_0.gguf", "tl-small-Q4_K_M.gguf",
                           "llama-2-tiny-random.gguf", "stories260K.bin"}) {
    const std::string path = testing::SharedPath(std::string("models/") + name);
    FLASHD_REQUIRE_SHARED(path);
    LoadOptions o;
    if (std::string(name) == "stories260K.bin") {
      o.tokenizer_path = testing::SharedPath("models/tok512.bin");
    }
    absl::StatusOr<LoadedModel> lm = LoadModel(path, o);
    EXPECT_TRUE(lm.ok()) << name << ": " << lm.status();
  }
}

}  // namespace
}  // namespace flashd
