// Converts the shared real models (stories260K, llama2.c f32; tl-small
// Q4_K_M, llama.cpp's own quantizer mixing q4_K/q6_K) and checks the
// result against the source bit for bit: every bundle CRC, every gate/up
// row, every down column value, the tokenizer.
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "common/flash/flash_file.h"
#include "common/flash/flash_writer.h"
#include "common/model/model_loader.h"
#include "gtest/gtest.h"
#include "tests/flash_test_util.h"
#include "tests/test_data.h"

namespace flashd::flash {
namespace {

using ::flashd::testing::SharedPath;

class FlashSharedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/flash_shared_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Converts, checks the file against the source, returns it opened.
  std::unique_ptr<FlashFile> ConvertAndCheck(const std::string& model,
                                             const std::string& tok) {
    ConvertOptions o;
    o.model_path = model;
    o.tokenizer_path = tok;
    o.out_path = dir_ + "/out.flash";
    absl::Status s = ConvertToFlash(o);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return nullptr;
    const int64_t checked = testing::ExpectMatchesSource(model, tok, o.out_path);
    absl::StatusOr<LoadedModel> lm = LoadModel(model, {tok});
    EXPECT_TRUE(lm.ok()) << lm.status();
    const ModelConfig& c = lm->model->config;
    EXPECT_EQ(checked, int64_t{c.n_layer} * c.n_ff * c.n_embd);
    absl::StatusOr<std::unique_ptr<FlashFile>> f = FlashFile::Open(o.out_path);
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) return nullptr;
    EXPECT_TRUE((*f)->CheckSource(model).ok());
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = (*f)->MakeTokenizer();
    EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
    if (tokenizer.ok()) {
      for (const char* text : {"Once upon a time, there was a little dog",
                               "Tom and Sue went to the park.", "", "123 é ü"}) {
        EXPECT_EQ((*tokenizer)->Encode(text, true), lm->tokenizer->Encode(text, true))
            << text;
        EXPECT_EQ((*tokenizer)->Decode((*tokenizer)->Encode(text, false)),
                  lm->tokenizer->Decode(lm->tokenizer->Encode(text, false)));
      }
    }
    return *std::move(f);
  }

  std::string dir_;
};

TEST_F(FlashSharedTest, Stories260K) {
  const std::string model = SharedPath("models/stories260K.bin");
  const std::string tok = SharedPath("models/tok512.bin");
  FLASHD_REQUIRE_SHARED(model);
  FLASHD_REQUIRE_SHARED(tok);
  std::unique_ptr<FlashFile> f = ConvertAndCheck(model, tok);
  ASSERT_NE(f, nullptr);
  const FlashLayout& l = f->layout();
  EXPECT_EQ(l.config.n_embd, 64);
  EXPECT_EQ(l.config.n_ff, 172);
  EXPECT_EQ(l.config.n_layer, 5);
  EXPECT_EQ(l.config.n_ctx_train, 512);
  EXPECT_EQ(l.output.extent.offset, l.token_embd.extent.offset);  // shared classifier
  for (const LayerLayout& L : l.layers) {
    EXPECT_EQ(L.geometry.down.kind, DownFormat::Kind::kTyped);
    EXPECT_EQ(L.geometry.down.type, GgmlType::kF32);
    EXPECT_EQ(L.geometry.bundle_bytes(), 3u * 64 * 4);
  }
}

TEST_F(FlashSharedTest, TlSmallQ4KM) {
  const std::string model = SharedPath("models/tl-small-Q4_K_M.gguf");
  FLASHD_REQUIRE_SHARED(model);
  std::unique_ptr<FlashFile> f = ConvertAndCheck(model, "");
  ASSERT_NE(f, nullptr);
  int q4k = 0, q6k = 0;
  for (const LayerLayout& L : f->layout().layers) {
    EXPECT_EQ(L.geometry.down.kind, DownFormat::Kind::kInt8Scaled);
    if (L.geometry.down.has_min) {
      EXPECT_EQ(L.geometry.down.group, 32);
      ++q4k;
    } else {
      EXPECT_EQ(L.geometry.down.group, 16);
      ++q6k;
    }
  }
  EXPECT_GT(q4k, 0);
  EXPECT_GT(q6k, 0);
}

}  // namespace
}  // namespace flashd::flash
