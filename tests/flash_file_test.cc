// The .flash format: CRC32C, conversion round trips for every source type
// (bit-exact resident tensors, bundles and down columns), and refusal of
// truncated, corrupted, mismatched or other-version files.
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/flash/flash_file.h"
#include "common/flash/flash_records.h"
#include "common/flash/flash_writer.h"
#include "common/gguf/gguf_file.h"
#include "common/gguf/gguf_writer.h"
#include "common/kernels/kernels.h"
#include "common/model/model_loader.h"
#include "common/model/model_maker.h"
#include "gtest/gtest.h"
#include "tests/flash_test_util.h"

namespace flashd::flash {
namespace {

using internal::FileHeader;
using internal::kHeaderBytes;

// ------------------------------------------------------------------ CRC32C

TEST(Crc32c, StandardVector) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(internal::Crc32cPortable("123456789", 9), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
}

TEST(Crc32c, HardwareMatchesTableAndChains) {
  std::mt19937 rng(7);
  std::vector<uint8_t> buf(5000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t start : {0, 1, 3, 7}) {
    for (size_t n : {0, 1, 7, 8, 9, 63, 64, 1000, 4093}) {
      const uint32_t hw = Crc32c(buf.data() + start, n);
      EXPECT_EQ(hw, internal::Crc32cPortable(buf.data() + start, n)) << start << "+" << n;
      const size_t half = n / 3;
      EXPECT_EQ(hw, Crc32c(buf.data() + start + half, n - half,
                           Crc32c(buf.data() + start, half)));
    }
  }
  std::printf("Crc32c uses %s\n", internal::Crc32cIsHardware() ? "SSE4.2" : "tables");
}

// ---------------------------------------------------------------- fixtures

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A llama2.c checkpoint (f32, shared classifier) and its tokenizer.bin.
void WriteLlama2c(const std::string& model, const std::string& tok) {
  const int32_t dim = 64, hid = 160, L = 2, heads = 4, kv_heads = 2, seq = 32;
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char s[8];
    std::snprintf(s, sizeof(s), "<0x%02X>", b);
    pieces.push_back(s);
  }
  for (char c = 'a'; c <= 'z'; ++c) {
    pieces.push_back(std::string(1, c));
    pieces.push_back(std::string(" ") + c);
  }
  for (const char* w : {" the", " cat", "at", " sat", "he", " on", " mat"}) pieces.push_back(w);
  const int32_t vocab = static_cast<int32_t>(pieces.size());
  std::string t;
  auto put = [](std::string& s, const void* p, size_t n) {
    s.append(static_cast<const char*>(p), n);
  };
  int32_t max_len = 8;
  put(t, &max_len, 4);
  for (int32_t i = 0; i < vocab; ++i) {
    const float score = i < 259 ? 0.0f : -static_cast<float>(i);
    const int32_t len = static_cast<int32_t>(pieces[i].size());
    put(t, &score, 4);
    put(t, &len, 4);
    t += pieces[i];
  }
  Spit(tok, t);

  std::string m;
  const int32_t header[7] = {dim, hid, L, heads, kv_heads, vocab, seq};
  put(m, header, sizeof(header));
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto floats = [&](int64_t n, bool norm) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = norm ? 1.0f + normal(rng) : normal(rng);
      put(m, &v, 4);
    }
  };
  const int64_t kv = int64_t{dim} / heads * kv_heads;
  floats(int64_t{vocab} * dim, false);
  floats(L * dim, true);
  floats(L * dim * dim, false);
  floats(L * dim * kv, false);
  floats(L * dim * kv, false);
  floats(L * dim * dim, false);
  floats(L * dim, true);
  floats(L * dim * hid, false);
  floats(L * hid * dim, false);
  floats(L * dim * hid, false);
  floats(dim, true);
  floats(int64_t{seq} * (dim / heads), false);  // freq_cis (ignored)
  Spit(model, m);
}

// Rewrites a GGUF with each tensor's type chosen by `type_for` (values
// converted through float; types without a quantizer are zero-filled).
absl::Status Retype(const std::string& src, const std::string& dst,
                    const std::function<GgmlType(const GgufTensorInfo&)>& type_for) {
  absl::StatusOr<std::unique_ptr<GgufFile>> g = GgufFile::Open(src);
  if (!g.ok()) return g.status();
  const GgufFile& in = **g;
  GgufWriter w;
  for (const std::string& key : in.keys()) w.AddValue(key, *in.Find(key));
  for (const GgufTensorInfo& t : in.tensors()) {
    const GgmlType to = type_for(t);
    GgufWriter::FillFn fill;
    if (Traits(to).supported) {
      fill = [&in, &t, to](uint8_t* out, size_t) {
        const int64_t cols = t.dims[0], rows = t.n_elements / cols;
        std::vector<float> tmp(cols);
        for (int64_t r = 0; r < rows; ++r) {
          kernels::ToFloat(t.type, in.TensorData(t) + r * RowSize(t.type, cols),
                           tmp.data(), cols);
          kernels::FromFloat(to, tmp.data(), out + r * RowSize(to, cols), cols);
        }
        return absl::OkStatus();
      };
    }
    w.AddTensor(t.name, t.dims, to, fill);
  }
  return w.Write(dst);
}

class FlashFileTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/flash_file_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = new std::string(tmpl);
    sources_ = new std::map<std::string, std::pair<std::string, std::string>>();
  }

  static const std::vector<std::string>& AllTypes() {
    static const std::vector<std::string> types = {"f32_llama2c", "f16", "bf16",
                                                   "q8_0",        "q4_0", "q4_k_m"};
    return types;
  }

  // The source model of `type` (model path, tokenizer path), made on first
  // use: make-model's tiny preset for f16/q8_0/q4_0/q4_k_m, the f16 one
  // retyped for bf16, a small llama2.c checkpoint for f32.
  static const std::pair<std::string, std::string>& Source(const std::string& type) {
    if (auto it = sources_->find(type); it != sources_->end()) return it->second;
    auto& entry = (*sources_)[type];
    if (type == "f32_llama2c") {
      WriteLlama2c(*dir_ + "/l2c.bin", *dir_ + "/l2c_tok.bin");
      entry = {*dir_ + "/l2c.bin", *dir_ + "/l2c_tok.bin"};
    } else if (type == "bf16") {
      entry = {*dir_ + "/bf16.gguf", ""};
      absl::Status s = Retype(Source("f16").first, entry.first, [](const GgufTensorInfo& t) {
        return t.dims.size() == 2 ? GgmlType::kBF16 : t.type;
      });
      EXPECT_TRUE(s.ok()) << s;
    } else {
      MakeModelOptions o;
      o.type = type;
      o.preset = "tiny";
      o.out_path = *dir_ + "/" + type + ".gguf";
      o.threads = 2;
      absl::Status s = MakeModel(o);
      EXPECT_TRUE(s.ok()) << s;
      entry = {o.out_path, ""};
    }
    return entry;
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    delete sources_;
  }

  // Converts `type`'s source once; returns the .flash path.
  static std::string Converted(const std::string& type) {
    const auto& [model, tok] = Source(type);
    const std::string out = *dir_ + "/" + type + ".flash";
    if (!std::filesystem::exists(out)) {
      ConvertOptions o;
      o.model_path = model;
      o.tokenizer_path = tok;
      o.out_path = out;
      absl::Status s = ConvertToFlash(o);
      EXPECT_TRUE(s.ok()) << s;
    }
    return out;
  }

  static absl::StatusOr<std::unique_ptr<FlashFile>> OpenBytes(const std::string& bytes) {
    const std::string path = *dir_ + "/mutant.flash";
    Spit(path, bytes);
    return FlashFile::Open(path);
  }

  static std::string* dir_;
  static std::map<std::string, std::pair<std::string, std::string>>* sources_;
};

std::string* FlashFileTest::dir_ = nullptr;
std::map<std::string, std::pair<std::string, std::string>>* FlashFileTest::sources_ =
    nullptr;

// ------------------------------------------------------------- round trips

TEST_F(FlashFileTest, RoundTripEveryType) {
  for (const std::string& type : AllTypes()) {
    SCOPED_TRACE(type);
    const auto& source = Source(type);
    uint64_t last = 0, total = 0;
    bool monotone = true;
    ConvertOptions o;
    o.model_path = source.first;
    o.tokenizer_path = source.second;
    o.out_path = *dir_ + "/rt_" + type + ".flash";
    o.progress = [&](uint64_t done, uint64_t t) {
      monotone &= done >= last;
      last = done;
      total = t;
    };
    absl::Status s = ConvertToFlash(o);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_TRUE(monotone);
    EXPECT_EQ(last, total);
    EXPECT_EQ(total, std::filesystem::file_size(o.out_path));
    EXPECT_FALSE(std::filesystem::exists(o.out_path + ".tmp"));
    EXPECT_FALSE(std::filesystem::exists(o.out_path + ".meta"));
    const int64_t checked =
        testing::ExpectMatchesSource(o.model_path, o.tokenizer_path, o.out_path);
    EXPECT_GT(checked, 0);

    absl::StatusOr<std::unique_ptr<FlashFile>> f = FlashFile::Open(o.out_path);
    ASSERT_TRUE(f.ok()) << f.status();
    const FlashLayout& l = (*f)->layout();
    EXPECT_EQ(l.version, kLayoutVersion);
    EXPECT_EQ((*f)->file_size() % kFlashAlign, 0u);
    absl::StatusOr<LoadedModel> lm = LoadModel(o.model_path, {o.tokenizer_path});
    ASSERT_TRUE(lm.ok());
    for (int32_t li = 0; li < l.config.n_layer; ++li) {
      const DownFormat& d = l.layers[li].geometry.down;
      const GgmlType src = lm->model->layers[li].ffn.down.type;
      switch (src) {
        case GgmlType::kQ8_0:
        case GgmlType::kQ4_0:
          EXPECT_TRUE(d.kind == DownFormat::Kind::kInt8Scaled && d.group == 32 && !d.has_min);
          break;
        case GgmlType::kQ4_K:
          EXPECT_TRUE(d.kind == DownFormat::Kind::kInt8Scaled && d.group == 32 && d.has_min);
          break;
        case GgmlType::kQ6_K:
          EXPECT_TRUE(d.kind == DownFormat::Kind::kInt8Scaled && d.group == 16 && !d.has_min);
          break;
        default:
          EXPECT_TRUE(d.kind == DownFormat::Kind::kTyped && d.type == src);
      }
      // One contiguous region per layer, in the documented order.
      const LayerLayout& L = l.layers[li];
      EXPECT_LT(L.attn_norm.extent.offset, L.wq.extent.offset);
      EXPECT_LT(L.ffn_norm.extent.offset, L.bundle_crcs.offset);
      EXPECT_LT(L.bundle_crcs.offset, L.bundles.offset);
      if (li + 1 < l.config.n_layer) {
        EXPECT_EQ(internal::AlignUp(L.bundles.offset + L.bundles.bytes),
                  l.layers[li + 1].attn_norm.extent.offset);
      }
    }
    // The tokenizer rebuilt from the embedded metadata is the source's.
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = (*f)->MakeTokenizer();
    ASSERT_TRUE(tok.ok()) << tok.status();
    const Vocab& a = (*tok)->vocab();
    const Vocab& b = lm->tokenizer->vocab();
    EXPECT_EQ(a.pieces, b.pieces);
    EXPECT_EQ(a.scores, b.scores);
    EXPECT_EQ(a.types, b.types);
    EXPECT_EQ(a.bos_id, b.bos_id);
    EXPECT_EQ(a.eos_id, b.eos_id);
    EXPECT_EQ(a.unk_id, b.unk_id);
    EXPECT_EQ(a.add_bos, b.add_bos);
    EXPECT_EQ(a.add_space_prefix, b.add_space_prefix);
    EXPECT_EQ(a.llama2c_style, b.llama2c_style);
    for (const char* text : {"", "the cat sat on the mat", "Hello, world!",
                             "h\xc3\xa9llo \xe2\x82\xac 12", "  two  spaces"}) {
      EXPECT_EQ((*tok)->Encode(text, true), lm->tokenizer->Encode(text, true)) << text;
    }
    EXPECT_TRUE((*f)->CheckSource(o.model_path).ok());
  }
}

TEST_F(FlashFileTest, LlamaCTiesOutputAndKeepsF32) {
  absl::StatusOr<std::unique_ptr<FlashFile>> f = FlashFile::Open(Converted("f32_llama2c"));
  ASSERT_TRUE(f.ok()) << f.status();
  const FlashLayout& l = (*f)->layout();
  EXPECT_EQ(l.output.extent.offset, l.token_embd.extent.offset);
  EXPECT_EQ(l.output.extent.crc32c, l.token_embd.extent.crc32c);
  EXPECT_EQ(l.token_embd.type, GgmlType::kF32);
  EXPECT_EQ(l.layers[0].wq.type, GgmlType::kF32);
  EXPECT_EQ(l.layers[0].geometry.down.type, GgmlType::kF32);
  EXPECT_EQ(l.name, "l2c");  // the file's stem (llama2.c has no name)
  EXPECT_EQ(l.config.n_ctx_train, 32);
}

// ------------------------------------------------------------- corruption

TEST_F(FlashFileTest, TruncatedFilesAreRefused) {
  const std::string good = Slurp(Converted("q8_0"));
  absl::StatusOr<std::unique_ptr<FlashFile>> f = OpenBytes(good);
  ASSERT_TRUE(f.ok()) << f.status();
  const FlashLayout& l = (*f)->layout();
  const uint64_t mid_layer = l.layers[1].bundles.offset + 1000;
  for (uint64_t size : {uint64_t{0}, uint64_t{5}, uint64_t{100}, kHeaderBytes - 1,
                        kHeaderBytes, kHeaderBytes + 100, l.token_embd.extent.offset,
                        mid_layer, good.size() - kFlashAlign, good.size() - 1}) {
    SCOPED_TRACE(size);
    absl::StatusOr<std::unique_ptr<FlashFile>> t = OpenBytes(good.substr(0, size));
    ASSERT_FALSE(t.ok());
    if (size >= 12) {
      EXPECT_TRUE(absl::IsDataLoss(t.status())) << t.status();
      EXPECT_NE(t.status().message().find("truncated"), std::string::npos) << t.status();
    }
  }
  EXPECT_FALSE(OpenBytes(good + std::string(kFlashAlign, '\0')).ok());
}

TEST_F(FlashFileTest, FlippedBundleBitIsDataLossNamingLayerAndNeuron) {
  const std::string good = Slurp(Converted("q4_k_m"));
  absl::StatusOr<std::unique_ptr<FlashFile>> f = OpenBytes(good);
  ASSERT_TRUE(f.ok()) << f.status();
  const LayerLayout& L = (*f)->layout().layers[2];
  const size_t bb = L.geometry.bundle_bytes();
  for (size_t at : {size_t{0}, L.geometry.up_offset() + 3, L.geometry.down_offset() + 17,
                    bb - 1}) {
    SCOPED_TRACE(at);
    std::string bad = good;
    const uint64_t bundle = L.bundles.offset + 5 * bb;
    bad[bundle + at] ^= 0x10;
    absl::StatusOr<std::unique_ptr<FlashFile>> g = OpenBytes(bad);
    ASSERT_TRUE(g.ok()) << g.status();  // bundles are checked when read
    const auto* bytes = reinterpret_cast<const uint8_t*>(bad.data() + bundle);
    absl::Status s = (*g)->VerifyBundle(2, 5, bytes);
    EXPECT_TRUE(absl::IsDataLoss(s)) << s;
    EXPECT_NE(s.message().find("layer 2 neuron 5"), std::string::npos) << s;
    EXPECT_NE(s.message().find(absl::StrCat("offset ", bundle)), std::string::npos) << s;
    EXPECT_TRUE((*g)->VerifyBundle(2, 6, bytes + bb).ok());
  }
  // A flipped table or resident tensor byte fails VerifyExtent.
  std::string bad = good;
  bad[L.down_scale.offset + 40] ^= 1;
  absl::Status s = FlashFile::VerifyExtent(
      L.down_scale, reinterpret_cast<const uint8_t*>(bad.data() + L.down_scale.offset),
      "layer 2 down_scale");
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_NE(s.message().find("layer 2 down_scale"), std::string::npos) << s;
}

TEST_F(FlashFileTest, FlippedHeaderManifestMetadataOrCrcTableBitFailsOpen) {
  const std::string good = Slurp(Converted("q4_0"));
  FileHeader h;
  std::memcpy(&h, good.data(), sizeof(h));
  absl::StatusOr<std::unique_ptr<FlashFile>> f = OpenBytes(good);
  ASSERT_TRUE(f.ok());
  const uint64_t crc_table = (*f)->layout().layers[3].bundle_crcs.offset + 9;
  internal::ManifestHead mh;
  std::memcpy(&mh, good.data() + h.manifest_offset, sizeof(mh));
  const std::pair<uint64_t, const char*> flips[] = {
      {0, "not a flash file"},
      {17, "header checksum"},
      {sizeof(FileHeader) - 1, "header checksum"},
      {2000, "header checksum"},  // padding is covered too
      {h.manifest_offset + 3, "manifest checksum"},
      {h.manifest_offset + h.manifest_bytes - 1, "manifest checksum"},
      {h.metadata_offset + 100, "metadata"},
      {crc_table, "layer 3 bundle CRC table"},
      {mh.token_embd_chunk_crcs.offset + 2, "token_embd chunk CRCs"},
      {mh.output_chunk_crcs.offset + mh.output_chunk_crcs.bytes - 1, "output chunk CRCs"}};
  for (const auto& [at, what] : flips) {
    SCOPED_TRACE(at);
    std::string bad = good;
    bad[at] ^= 0x04;
    absl::StatusOr<std::unique_ptr<FlashFile>> g = OpenBytes(bad);
    ASSERT_FALSE(g.ok());
    EXPECT_NE(g.status().message().find(what), std::string::npos) << g.status();
  }
}

TEST_F(FlashFileTest, OtherLayoutVersionIsRefusedByName) {
  std::string bad = Slurp(Converted("q4_0"));
  const uint32_t v = kLayoutVersion + 1;
  std::memcpy(bad.data() + offsetof(FileHeader, version), &v, 4);
  for (bool reseal : {false, true}) {
    if (reseal) {
      FileHeader h;
      std::memcpy(&h, bad.data(), sizeof(h));
      const std::string image = internal::EncodeHeader(h);
      bad.replace(0, kHeaderBytes, image);
    }
    absl::StatusOr<std::unique_ptr<FlashFile>> g = OpenBytes(bad);
    ASSERT_FALSE(g.ok());
    EXPECT_TRUE(absl::IsFailedPrecondition(g.status())) << g.status();
    EXPECT_NE(g.status().message().find(absl::StrCat(
                  "layout version ", v, "; this flashd reads ", kLayoutVersion,
                  "; re-run flashd convert")),
              std::string::npos)
        << g.status();
  }
}

// A manifest with valid checksums but wrong fields is still refused, field
// by field.
TEST_F(FlashFileTest, InconsistentManifestFieldsAreRefused) {
  const std::string good = Slurp(Converted("q8_0"));
  FileHeader h;
  std::memcpy(&h, good.data(), sizeof(h));
  const size_t layer1 = h.manifest_offset + sizeof(internal::ManifestHead) +
                        sizeof(internal::LayerRecord);
  using internal::LayerRecord;
  using internal::ManifestHead;
  struct Case {
    size_t at;
    uint64_t value;
    int width;
    const char* expect;
  };
  const Case cases[] = {
      {h.manifest_offset + offsetof(ManifestHead, n_embd), 300, 4, "inconsistent"},
      {h.manifest_offset + offsetof(ManifestHead, n_layer), 7, 4, "layers"},
      {h.manifest_offset + offsetof(ManifestHead, token_embd.type), 3, 4, "q4_1"},
      {h.manifest_offset + offsetof(ManifestHead, output_norm.type), 1, 4, "expected f32"},
      {h.manifest_offset + offsetof(ManifestHead, token_embd_chunk_crcs.bytes), 4, 8,
       "token_embd chunk CRCs has 4 bytes"},
      {layer1 + offsetof(LayerRecord, wq.rows), 255, 8, "layer 1 wq has shape"},
      {layer1 + offsetof(LayerRecord, wk.extent.offset), 4096 * 3, 8, "layer 1 wk"},
      {layer1 + offsetof(LayerRecord, wv.extent.offset), 12345, 8, "not a multiple"},
      {layer1 + offsetof(LayerRecord, bundles.offset), uint64_t{1} << 40, 8, "past the end"},
      {layer1 + offsetof(LayerRecord, down_group), 64, 4, "layer 1 down"},
      {layer1 + offsetof(LayerRecord, down_kind), 9, 4, "kind 9"},
      {layer1 + offsetof(LayerRecord, gate_bytes), 100, 8, "layer 1 gate"},
      {layer1 + offsetof(LayerRecord, bundle_crcs.bytes), 8, 8, "bundle_crcs has 8 bytes"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expect);
    std::string bad = good;
    std::memcpy(bad.data() + c.at, &c.value, c.width);
    FileHeader hb = h;
    hb.manifest_crc32c = Crc32c(bad.data() + h.manifest_offset, h.manifest_bytes);
    bad.replace(0, kHeaderBytes, internal::EncodeHeader(hb));
    absl::StatusOr<std::unique_ptr<FlashFile>> g = OpenBytes(bad);
    ASSERT_FALSE(g.ok());
    EXPECT_NE(g.status().message().find(c.expect), std::string::npos) << g.status();
  }
}

// ------------------------------------------------------- identity, errors

TEST_F(FlashFileTest, CheckSourceRefusesAnotherModel) {
  absl::StatusOr<std::unique_ptr<FlashFile>> f = FlashFile::Open(Converted("q8_0"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->CheckSource(Source("q8_0").first).ok());
  MakeModelOptions o;
  o.type = "q8_0";
  o.seed = 2;
  o.out_path = *dir_ + "/q8_0_seed2.gguf";
  ASSERT_TRUE(MakeModel(o).ok());
  absl::Status s = (*f)->CheckSource(o.out_path);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(s.message().find("different model file"), std::string::npos) << s;
  EXPECT_NE(s.message().find("re-run flashd convert"), std::string::npos) << s;
  EXPECT_FALSE((*f)->CheckSource(*dir_ + "/missing.gguf").ok());
  // The identity of the converted file itself is stable and file-specific.
  absl::StatusOr<std::unique_ptr<FlashFile>> again = FlashFile::Open(Converted("q8_0"));
  absl::StatusOr<std::unique_ptr<FlashFile>> other = FlashFile::Open(Converted("q4_0"));
  EXPECT_EQ((*f)->layout().identity, (*again)->layout().identity);
  EXPECT_NE((*f)->layout().identity, (*other)->layout().identity);
}

TEST_F(FlashFileTest, UnsupportedTypeIsRefusedByNameAndLeavesNoFile) {
  const std::string src = *dir_ + "/q5_0_down.gguf";
  ASSERT_TRUE(Retype(Source("q8_0").first, src, [](const GgufTensorInfo& t) {
                return t.name == "blk.1.ffn_down.weight" ? GgmlType::kQ5_0 : t.type;
              }).ok());
  ConvertOptions o;
  o.model_path = src;
  o.out_path = *dir_ + "/q5_0_down.flash";
  absl::Status s = ConvertToFlash(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("blk.1.ffn_down.weight"), std::string::npos) << s;
  EXPECT_NE(s.message().find("q5_0"), std::string::npos) << s;
  EXPECT_FALSE(std::filesystem::exists(o.out_path));
  EXPECT_FALSE(std::filesystem::exists(o.out_path + ".tmp"));

  o.model_path = *dir_ + "/no_such_model.gguf";
  s = ConvertToFlash(o);
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  EXPECT_NE(s.message().find("no_such_model.gguf"), std::string::npos) << s;

  o.model_path = Source("q8_0").first;
  o.out_path = *dir_ + "/no_such_dir/x.flash";
  s = ConvertToFlash(o);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no_such_dir/x.flash"), std::string::npos) << s;
}

TEST_F(FlashFileTest, NotAFlashFile) {
  absl::StatusOr<std::unique_ptr<FlashFile>> f = FlashFile::Open(Source("q8_0").first);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("not a flash file"), std::string::npos) << f.status();
  f = FlashFile::Open(*dir_ + "/missing.flash");
  EXPECT_TRUE(absl::IsNotFound(f.status())) << f.status();
}

}  // namespace
}  // namespace flashd::flash
