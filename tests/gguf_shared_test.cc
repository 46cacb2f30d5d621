// GgufFile on the real GGUF files in ../shared (label: model): metadata,
// tensor index, tensor data, and a byte-exact rewrite with GgufWriter.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/fp16.h"
#include "common/gguf/gguf_file.h"
#include "common/gguf/gguf_writer.h"
#include "gtest/gtest.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

using ::flashd::testing::SharedPath;

constexpr uint32_t kVocab = 32000;

std::unique_ptr<GgufFile> OpenOrDie(const std::string& path) {
  auto f = GgufFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

// Every GGUF file in ../shared carries the Llama vocabulary.
void ExpectLlamaVocab(const GgufFile& f) {
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetString("tokenizer.ggml.model"), "llama");
  auto tokens = f.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), kVocab);
  EXPECT_EQ((*tokens)[0], "<unk>");
  EXPECT_EQ((*tokens)[1], "<s>");
  EXPECT_EQ((*tokens)[2], "</s>");
  EXPECT_EQ(f.GetFloatArray("tokenizer.ggml.scores")->size(), kVocab);
  auto types = f.GetIntArray("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok()) << types.status();
  ASSERT_EQ(types->size(), kVocab);
  EXPECT_EQ((*types)[0], 2);  // unknown
  EXPECT_EQ((*types)[1], 3);  // control
  EXPECT_EQ(*f.GetUint32("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(*f.GetUint32("tokenizer.ggml.eos_token_id"), 2u);
  EXPECT_EQ(*f.GetUint32("tokenizer.ggml.unknown_token_id"), 0u);
}

// Tensors lie inside the file, aligned, without overlapping.
void ExpectSaneLayout(const GgufFile& f) {
  uint64_t prev_end = f.data_offset();
  for (const GgufTensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.file_offset % f.alignment(), 0u) << t.name;
    EXPECT_GE(t.file_offset, prev_end) << t.name;
    EXPECT_LE(t.file_offset + t.n_bytes, f.file().size()) << t.name;
    EXPECT_TRUE(Traits(t.type).supported)
        << t.name << " " << Traits(t.type).name;
    prev_end = t.file_offset + t.n_bytes;
  }
}

class TlSmallTest : public ::testing::TestWithParam<const char*> {};

TEST_P(TlSmallTest, MetadataAndTensors) {
  const std::string path =
      SharedPath(absl::StrCat("models/tl-small-", GetParam(), ".gguf"));
  FLASHD_REQUIRE_SHARED(path);
  auto f = OpenOrDie(path);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  ExpectLlamaVocab(*f);
  EXPECT_EQ(*f->GetUint32("llama.block_count"), 4u);
  EXPECT_EQ(*f->GetUint32("llama.embedding_length"), 256u);
  EXPECT_EQ(*f->GetUint32("llama.feed_forward_length"), 768u);
  EXPECT_EQ(*f->GetUint32("llama.attention.head_count"), 8u);
  EXPECT_EQ(*f->GetUint32("llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(*f->GetUint32("llama.rope.dimension_count"), 32u);
  EXPECT_EQ(*f->GetUint32("llama.context_length"), 2048u);
  EXPECT_FLOAT_EQ(*f->GetFloat("llama.attention.layer_norm_rms_epsilon"), 1e-5);
  EXPECT_EQ(*f->GetFloat("llama.rope.freq_base"), 10000.0);
  EXPECT_TRUE(*f->GetBool("tokenizer.ggml.add_bos_token"));

  ASSERT_EQ(f->tensors().size(), 39u);
  ExpectSaneLayout(*f);
  auto dims = [&](const std::string& name) {
    const GgufTensorInfo* t = f->FindTensor(name);
    return t ? t->dims : std::vector<int64_t>{};
  };
  EXPECT_EQ(dims("token_embd.weight"), (std::vector<int64_t>{256, kVocab}));
  EXPECT_EQ(dims("output.weight"), (std::vector<int64_t>{256, kVocab}));
  EXPECT_EQ(dims("output_norm.weight"), (std::vector<int64_t>{256}));
  for (int l = 0; l < 4; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    EXPECT_EQ(dims(p + "attn_norm.weight"), (std::vector<int64_t>{256}));
    EXPECT_EQ(dims(p + "attn_q.weight"), (std::vector<int64_t>{256, 256}));
    EXPECT_EQ(dims(p + "attn_k.weight"), (std::vector<int64_t>{256, 64}));
    EXPECT_EQ(dims(p + "attn_v.weight"), (std::vector<int64_t>{256, 64}));
    EXPECT_EQ(dims(p + "attn_output.weight"), (std::vector<int64_t>{256, 256}));
    EXPECT_EQ(dims(p + "ffn_norm.weight"), (std::vector<int64_t>{256}));
    EXPECT_EQ(dims(p + "ffn_gate.weight"), (std::vector<int64_t>{256, 768}));
    EXPECT_EQ(dims(p + "ffn_up.weight"), (std::vector<int64_t>{256, 768}));
    EXPECT_EQ(dims(p + "ffn_down.weight"), (std::vector<int64_t>{768, 256}));
  }
  // Norm weights are exactly 1 (f32 in every variant).
  const GgufTensorInfo* norm = f->FindTensor("output_norm.weight");
  ASSERT_NE(norm, nullptr);
  ASSERT_EQ(norm->type, GgmlType::kF32);
  for (size_t i = 0; i < 256; ++i) {
    float x;
    std::memcpy(&x, f->TensorData(*norm) + 4 * i, 4);
    ASSERT_EQ(x, 1.0f) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, TlSmallTest,
                         ::testing::Values("f16", "Q8_0", "Q4_0", "Q4_K_M"));

TEST(GgufSharedTest, TlSmallTensorTypes) {
  struct Want {
    const char* file;
    GgmlType embd, output, last_ffn_down;
  };
  const Want wants[] = {
      {"f16", GgmlType::kF16, GgmlType::kF16, GgmlType::kF16},
      {"Q8_0", GgmlType::kQ8_0, GgmlType::kQ8_0, GgmlType::kQ8_0},
      {"Q4_0", GgmlType::kQ4_0, GgmlType::kQ6_K, GgmlType::kQ4_0},
      {"Q4_K_M", GgmlType::kQ4_K, GgmlType::kQ6_K, GgmlType::kQ6_K},
  };
  for (const Want& w : wants) {
    const std::string path =
        SharedPath(absl::StrCat("models/tl-small-", w.file, ".gguf"));
    FLASHD_REQUIRE_SHARED(path);
    auto f = OpenOrDie(path);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->FindTensor("token_embd.weight")->type, w.embd) << w.file;
    EXPECT_EQ(f->FindTensor("output.weight")->type, w.output) << w.file;
    EXPECT_EQ(f->FindTensor("blk.3.ffn_down.weight")->type, w.last_ffn_down)
        << w.file;
  }
  auto q4km = OpenOrDie(SharedPath("models/tl-small-Q4_K_M.gguf"));
  ASSERT_NE(q4km, nullptr);
  EXPECT_EQ(static_cast<uint32_t>(q4km->FindTensor("output.weight")->type),
            14u);
  EXPECT_EQ(static_cast<uint32_t>(q4km->FindTensor("token_embd.weight")->type),
            12u);
  EXPECT_EQ(Traits(q4km->FindTensor("output.weight")->type).name, "q6_K");
  EXPECT_EQ(*q4km->GetUint32("general.file_type"), 15u);  // MOSTLY_Q4_K_M
}

TEST(GgufSharedTest, LlamaTinyRandom) {
  const std::string path = SharedPath("models/llama-2-tiny-random.gguf");
  FLASHD_REQUIRE_SHARED(path);
  auto f = OpenOrDie(path);
  ASSERT_NE(f, nullptr);
  ExpectLlamaVocab(*f);
  EXPECT_EQ(*f->GetUint32("llama.block_count"), 1u);
  EXPECT_EQ(*f->GetUint32("llama.embedding_length"), 8u);
  EXPECT_EQ(*f->GetUint32("llama.attention.head_count"), 2u);
  ASSERT_EQ(f->tensors().size(), 12u);
  ExpectSaneLayout(*f);
  const GgufTensorInfo* embd = f->FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::kF16);
  EXPECT_EQ(embd->dims, (std::vector<int64_t>{8, kVocab}));
  EXPECT_EQ(embd->n_bytes, 8u * kVocab * 2);
  for (uint64_t i = 0; i < embd->n_elements; ++i) {
    uint16_t h;
    std::memcpy(&h, f->TensorData(*embd) + 2 * i, 2);
    ASSERT_TRUE(std::isfinite(HalfToFloat(h))) << i;
  }
}

TEST(GgufSharedTest, VocabOnlyFile) {
  const std::string path = SharedPath("tokenizer/ggml-vocab-llama-spm.gguf");
  FLASHD_REQUIRE_SHARED(path);
  auto f = OpenOrDie(path);
  ASSERT_NE(f, nullptr);
  ExpectLlamaVocab(*f);
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(*f->GetUint32("llama.vocab_size"), kVocab);
  EXPECT_EQ(*f->GetString("tokenizer.ggml.pre"), "default");
  EXPECT_TRUE(*f->GetBool("tokenizer.ggml.add_bos_token"));
  EXPECT_FALSE(*f->GetBool("tokenizer.ggml.add_eos_token"));
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Copying every key and tensor through GgufWriter reproduces llama.cpp's
// file byte for byte (same layout, padding and key order).
TEST(GgufSharedTest, WriterReproducesLlamaCppFilesExactly) {
  // (The vocab-only file is left out: it was written without the padding
  // llama.cpp's writer puts after the tensor infos even with no tensors.)
  for (const char* name :
       {"models/tl-small-f16.gguf", "models/tl-small-Q8_0.gguf",
        "models/tl-small-Q4_0.gguf", "models/tl-small-Q4_K_M.gguf",
        "models/llama-2-tiny-random.gguf"}) {
    const std::string path = SharedPath(name);
    FLASHD_REQUIRE_SHARED(path);
    auto src = OpenOrDie(path);
    ASSERT_NE(src, nullptr);
    GgufWriter w(static_cast<uint32_t>(src->alignment()));
    for (const std::string& key : src->keys()) w.AddValue(key, *src->Find(key));
    for (const GgufTensorInfo& t : src->tensors()) {
      const uint8_t* data = src->TensorData(t);
      w.AddTensor(t.name, t.dims, t.type, [data](uint8_t* dst, size_t n) {
        std::memcpy(dst, data, n);
        return absl::OkStatus();
      });
    }
    const std::string out = ::testing::TempDir() + "gguf_shared_test_" +
                            std::to_string(getpid()) + ".gguf";
    ASSERT_TRUE(w.Write(out).ok());
    const std::string written = ReadAll(out);
    ::unlink(out.c_str());
    EXPECT_TRUE(written == src->file().bytes())
        << name << ": rewritten file differs (" << written.size() << " vs "
        << src->file().size() << " bytes)";
  }
}

}  // namespace
}  // namespace flashd
