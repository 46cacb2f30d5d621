// Tokenizer tests: llama.cpp's SPM test vectors, llama.cpp's tokenization of
// the golden prompt, llama2.c's stories260K prompts and printed text,
// decoding, malformed vocabularies and the UTF-8 streamer.
#include "common/tokenizer/tokenizer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/gguf/gguf_file.h"
#include "common/gguf/gguf_writer.h"
#include "common/tokenizer/vocab.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::SizeIs;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<int32_t> ParseIds(const std::string& line) {
  std::vector<int32_t> ids;
  std::istringstream in(line);
  int32_t id;
  while (in >> id) ids.push_back(id);
  return ids;
}

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/tokenizer_test_" + std::to_string(getpid()) +
         "_" + name;
}

std::string StatusMessage(const absl::Status& s) {
  return std::string(s.message());
}

// ---------------------------------------------------------------------------
// GGUF (llama.cpp SPM) vocabularies.

class SpmVocabTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path =
        testing::SharedPath("tokenizer/ggml-vocab-llama-spm.gguf");
    if (!testing::Exists(path)) return;
    auto gguf = GgufFile::Open(path);
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    auto vocab = LoadVocabFromGguf(**gguf);
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    tokenizer_ = new Tokenizer(std::move(*vocab));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  void SetUp() override {
    FLASHD_REQUIRE_SHARED(
        testing::SharedPath("tokenizer/ggml-vocab-llama-spm.gguf"));
    ASSERT_NE(tokenizer_, nullptr);
  }
  static const Tokenizer& tok() { return *tokenizer_; }

  static Tokenizer* tokenizer_;
};
Tokenizer* SpmVocabTest::tokenizer_ = nullptr;

TEST_F(SpmVocabTest, VocabMetadata) {
  const Vocab& v = tok().vocab();
  EXPECT_EQ(v.size(), 32000);
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);
  EXPECT_EQ(v.unk_id, 0);
  EXPECT_TRUE(v.add_bos);
  EXPECT_TRUE(v.add_space_prefix);  // absent from the file: default
  EXPECT_FALSE(v.llama2c_style);
  EXPECT_EQ(v.types[0], TokenType::kUnknown);
  EXPECT_EQ(v.types[1], TokenType::kControl);
  EXPECT_EQ(v.types[3], TokenType::kByte);
  EXPECT_EQ(v.types[29871], TokenType::kNormal);
  EXPECT_EQ(v.pieces[29871], "\xE2\x96\x81");
  EXPECT_EQ(tok().PieceToId("\xE2\x96\x81"), 29871);
  EXPECT_EQ(tok().PieceToId("no such piece"), -1);
}

// The .inp file is a sequence of "<input>\n__ggml_vocab_test__\n" records
// (an input may itself contain or end in newlines); the .out file has one
// line of ids per input (without BOS), as llama.cpp's test-tokenizer-0.
TEST_F(SpmVocabTest, LlamaCppTestVectors) {
  const std::string base =
      testing::SharedPath("tokenizer/ggml-vocab-llama-spm.gguf");
  FLASHD_REQUIRE_SHARED(base + ".inp");
  const std::string inp = ReadFile(base + ".inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  size_t pos = 0;
  while (pos < inp.size()) {
    const size_t next = inp.find(sep, pos);
    ASSERT_NE(next, std::string::npos) << "unterminated record at " << pos;
    inputs.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::vector<std::vector<int32_t>> outputs;
  std::istringstream out(ReadFile(base + ".out"));
  for (std::string line; std::getline(out, line);) {
    outputs.push_back(ParseIds(line));
  }
  ASSERT_EQ(inputs.size(), 46u);
  ASSERT_EQ(inputs.size(), outputs.size());
  // Spot-check the framing: empty, whitespace-only and newline inputs.
  EXPECT_EQ(inputs[2], "");
  EXPECT_EQ(inputs[3], " ");
  EXPECT_EQ(inputs[6], "\t");
  EXPECT_EQ(inputs[7], "\n");
  EXPECT_EQ(inputs[8], "\n\n");
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(tok().Encode(inputs[i], /*add_bos=*/false), outputs[i])
        << "vector " << i << ": '" << inputs[i] << "'";
    std::vector<int32_t> with_bos = outputs[i];
    with_bos.insert(with_bos.begin(), 1);
    EXPECT_EQ(tok().Encode(inputs[i], /*add_bos=*/true), with_bos)
        << "vector " << i;
    // SentencePiece with byte fallback is lossless; the dummy prefix is the
    // leading space Decode removes.
    EXPECT_EQ(tok().Decode(outputs[i]), inputs[i]) << "vector " << i;
    EXPECT_EQ(tok().Decode(with_bos), inputs[i]) << "vector " << i;
  }
}

TEST_F(SpmVocabTest, DummyPrefixRules) {
  // "" makes no fragment in llama.cpp: no dummy prefix, just BOS if asked.
  EXPECT_THAT(tok().Encode("", false), SizeIs(0));
  EXPECT_THAT(tok().Encode("", true), ElementsAre(1));
  // Otherwise the prefix "▁" is prepended, even before a space.
  EXPECT_THAT(tok().Encode(" ", false), ElementsAre(259));        // "▁▁"
  EXPECT_THAT(tok().Encode("Hello", false), ElementsAre(15043));  // "▁Hello"
  // Control-token text is not special with parse_special=false.
  const std::vector<int32_t> s = tok().Encode("<s>", false);
  EXPECT_THAT(s, ::testing::Not(ElementsAre(1)));
}

TEST_F(SpmVocabTest, TokenBytes) {
  const int32_t hello = tok().PieceToId("\xE2\x96\x81Hello");
  ASSERT_GE(hello, 0);
  EXPECT_EQ(tok().TokenBytes(1, hello), "Hello");  // after BOS: stripped
  EXPECT_EQ(tok().TokenBytes(hello, hello), " Hello");
  EXPECT_EQ(tok().TokenBytes(hello, 1), "");  // control
  EXPECT_EQ(tok().TokenBytes(hello, 2), "");
  EXPECT_EQ(tok().TokenBytes(hello, 0), "");     // unknown
  EXPECT_EQ(tok().TokenBytes(hello, 13), "\n");  // <0x0A>
  EXPECT_EQ(tok().TokenBytes(hello, 3 + 0xE2), "\xE2");
  EXPECT_EQ(tok().TokenBytes(hello, -1), "");  // out of range
  EXPECT_EQ(tok().TokenBytes(hello, 32000), "");
  EXPECT_EQ(tok().Decode({-5, 1 << 30}), "");
}

TEST_F(SpmVocabTest, StreamsMultiByteCharactersSplitOverByteTokens) {
  // 🦙 (U+1F999) has no token: four byte tokens.
  const std::vector<int32_t> ids = tok().Encode("a\xF0\x9F\xA6\x99!", true);
  ASSERT_THAT(ids, ElementsAre(1, 263, 243, 162, 169, 156, 29991));
  Utf8Streamer streamer;
  std::vector<std::string> released;
  int32_t prev = ids[0];
  for (size_t i = 1; i < ids.size(); ++i) {
    released.push_back(streamer.Push(tok().TokenBytes(prev, ids[i])));
    prev = ids[i];
  }
  EXPECT_THAT(released, ElementsAre("a", "", "", "", "\xF0\x9F\xA6\x99", "!"));
  EXPECT_EQ(streamer.Flush(), "");
}

TEST_F(SpmVocabTest, InvalidUtf8UsesByteFallback) {
  // A lone continuation byte and a truncated sequence are single symbols
  // that are not tokens: byte tokens, and the bytes decode back.
  const std::string text = "x\x80y\xE2";
  const std::vector<int32_t> ids = tok().Encode(text, false);
  EXPECT_EQ(tok().Decode(ids), text);
  EXPECT_NE(std::find(ids.begin(), ids.end(), 3 + 0x80), ids.end());
  EXPECT_EQ(ids.back(), 3 + 0xE2);
}

TEST_F(SpmVocabTest, EncodesTenKilobytesFast) {
  std::string text;
  const std::string para =
      "The quick brown fox jumps over the lazy dog. Ünïcödé ✓ 🦙 "
      "naïve "
      "café, \t tabs and\nnewlines  with   runs of spaces; numbers 1234567.\n";
  while (text.size() < size_t{10} * 1024) text += para;
  // Warm up, then take the best of a few runs (shared machine).
  (void)tok().Encode(text, true);
  double best_ms = 1e9;
  std::vector<int32_t> ids;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    ids = tok().Encode(text, true);
    const auto t1 = std::chrono::steady_clock::now();
    best_ms = std::min(
        best_ms, std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  RecordProperty("encode_10kb_us", static_cast<int>(best_ms * 1000));
  EXPECT_LT(best_ms, 50.0) << text.size() << " bytes";
  EXPECT_EQ(tok().Decode(ids), text);
  // Repeating text tokenizes the same way each time (after the first).
  const std::vector<int32_t> one = tok().Encode(para + para, false);
  EXPECT_GT(one.size(), 10u);
}

// Straightforward references, O(n^2): rescan every adjacent pair after each
// merge, as llama2.c's run.c does, and compare with the heap-based Encode.
std::vector<std::string> RandomTexts(uint32_t seed, int n) {
  static const char* const kParts[] = {
      " ",   "  ",     "the",  " the", "Once", " upon",
      "a",   "b",      "ab",   "ing",  "\n",   "\t",
      ".",   ",",      "'s",   "é",    "€",    "🦙",
      "ü",   "中",     "\x80", "\xE2", "\xFF", "\xF0\x9F",
      "1",   "23",     "Lily", "dog",  "!!",   "\xE2\x96\x81",
      "<s>", "<0x41>", "   ",  "x"};
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&state]() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  std::vector<std::string> texts;
  for (int i = 0; i < n; ++i) {
    std::string t;
    const int len = static_cast<int>(next() % 24);
    for (int k = 0; k < len; ++k) {
      t += kParts[next() % (sizeof(kParts) / sizeof(kParts[0]))];
    }
    texts.push_back(std::move(t));
  }
  return texts;
}

bool IsValidUtf8(const std::string& text) {
  Utf8Streamer s;
  return s.Push(text) + s.Flush() == text;
}

std::vector<int32_t> NaiveSpm(const Tokenizer& tok, const std::string& raw) {
  const Vocab& v = tok.vocab();
  std::vector<int32_t> out;
  if (raw.empty()) return out;
  std::string text;
  for (char c : " " + raw) {
    if (c == ' ') {
      text += "\xE2\x96\x81";
    } else {
      text += c;
    }
  }
  std::vector<std::string> sym;
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = text[i];
    const size_t len = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    sym.push_back(text.substr(i, std::min(len, text.size() - i)));
    i += sym.back().size();
  }
  while (true) {
    int best = -1;
    float best_score = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      const int32_t id = tok.PieceToId(sym[i] + sym[i + 1]);
      if (id >= 0 && (best < 0 || v.scores[id] > best_score)) {
        best = static_cast<int>(i);
        best_score = v.scores[id];
      }
    }
    if (best < 0) break;
    sym[best] += sym[best + 1];
    sym.erase(sym.begin() + best + 1);
  }
  for (const std::string& s : sym) {
    const int32_t id = tok.PieceToId(s);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (unsigned char c : s) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "<0x%02X>", c);
      out.push_back(tok.PieceToId(buf));
    }
  }
  return out;
}

TEST_F(SpmVocabTest, MatchesNaiveGreedyOnRandomText) {
  for (const std::string& text : RandomTexts(1, 400)) {
    ASSERT_EQ(tok().Encode(text, false), NaiveSpm(tok(), text))
        << "'" << text << "'";
    // Lossless for valid UTF-8 without a literal "▁" (which decodes as a
    // space; and invalid UTF-8 can swallow part of an escaped space into a
    // byte-fallback symbol), as in llama.cpp.
    if (IsValidUtf8(text) && text.find("\xE2\x96\x81") == std::string::npos) {
      ASSERT_EQ(tok().Decode(tok().Encode(text, true)), text);
    }
  }
}

// llama.cpp's tokenization (BOS added) of golden/p1.txt for each tl-small
// model. p1.txt has no trailing newline; the prompt is the file's bytes.
TEST(TlSmallTest, P1MatchesLlamaCpp) {
  const std::string prompt_path = testing::SharedPath("golden/p1.txt");
  FLASHD_REQUIRE_SHARED(prompt_path);
  const std::string prompt = ReadFile(prompt_path);
  ASSERT_FALSE(prompt.empty());
  EXPECT_NE(prompt.back(), '\n');
  int checked = 0;
  for (const char* type : {"f16", "Q8_0", "Q4_0", "Q4_K_M"}) {
    const std::string model =
        testing::SharedPath(std::string("models/tl-small-") + type + ".gguf");
    const std::string ids_path =
        testing::SharedPath(std::string("golden/tl-small-") + type + ".p1.ids");
    FLASHD_REQUIRE_SHARED(model);
    FLASHD_REQUIRE_SHARED(ids_path);
    auto gguf = GgufFile::Open(model);
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    auto vocab = LoadVocabFromGguf(**gguf);
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    EXPECT_EQ(vocab->size(), 32000);
    Tokenizer tok(std::move(*vocab));
    const std::vector<int32_t> expected = ParseIds(ReadFile(ids_path));
    ASSERT_FALSE(expected.empty());
    EXPECT_EQ(tok.Encode(prompt, /*add_bos=*/true), expected) << type;
    // With a newline appended the ids would differ (a trailing <0x0A>).
    std::vector<int32_t> with_newline = tok.Encode(prompt + "\n", true);
    EXPECT_NE(with_newline, expected);
    EXPECT_EQ(with_newline.back(), 13);
    EXPECT_EQ(tok.Decode(expected), prompt);
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

// ---------------------------------------------------------------------------
// Hand-made vocabularies.

Vocab SmallSpmVocab() {
  Vocab v;
  auto add = [&v](std::string piece, float score, TokenType type) {
    v.pieces.push_back(std::move(piece));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<unk>", 0, TokenType::kUnknown);
  add("<s>", 0, TokenType::kControl);
  add("</s>", 0, TokenType::kControl);
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    add(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">", 0,
        TokenType::kByte);
  }
  add("\xE2\x96\x81", -10, TokenType::kNormal);  // 259 ▁
  add("a", -5, TokenType::kNormal);              // 260
  add("b", -5, TokenType::kNormal);              // 261
  add("ab", -1, TokenType::kNormal);             // 262
  add("ba", -1, TokenType::kNormal);             // 263
  add("\xE2\x96\x81"
      "a",
      -3, TokenType::kNormal);               // 264 ▁a
  add("<tag>", 0, TokenType::kUserDefined);  // 265
  return v;
}

TEST(SmallSpmTest, TiesMergeLeftmostFirst) {
  Vocab v = SmallSpmVocab();
  v.add_space_prefix = false;
  Tokenizer tok(std::move(v));
  // "aba": "ab" and "ba" score the same; the leftmost pair wins.
  EXPECT_THAT(tok.Encode("aba", false), ElementsAre(262, 260));
  // "bab": same rule gives "ba" + "b".
  EXPECT_THAT(tok.Encode("bab", false), ElementsAre(263, 261));
  // No dummy prefix when add_space_prefix is false.
  EXPECT_THAT(tok.Encode("a", false), ElementsAre(260));
}

TEST(SmallSpmTest, BestScoreWinsOverPosition) {
  Tokenizer tok(SmallSpmVocab());
  // "▁aab": pairs ▁a (-3), aa (none), ab (-1): "ab" first, then ▁a.
  EXPECT_THAT(tok.Encode("aab", false), ElementsAre(264, 262));
  // Characters without a token become byte tokens.
  EXPECT_THAT(tok.Encode("ac", false), ElementsAre(264, 3 + 'c'));
}

TEST(SmallSpmTest, UserDefinedTokensAreSplitOut) {
  Tokenizer tok(SmallSpmVocab());
  // As llama.cpp's tokenizer_st_partition: the user-defined token is its
  // own fragment; the text after it counts as "after special" and gets the
  // dummy prefix again.
  EXPECT_THAT(tok.Encode("a<tag>a", false), ElementsAre(264, 265, 264));
  EXPECT_THAT(tok.Encode("<tag>", false), ElementsAre(265));
  EXPECT_EQ(tok.Decode({264, 265, 264}), "a<tag> a");
}

TEST(SmallSpmTest, MissingScoresAndTypesAreTolerated) {
  Vocab v;
  v.pieces = {"<unk>", "<s>", "</s>", "x"};
  Tokenizer tok(std::move(v));  // no scores, no types, no byte tokens
  // "▁" has no token and no byte tokens exist: its three bytes fall back
  // to <unk>; nothing crashes.
  EXPECT_THAT(tok.Encode("x", false), ElementsAre(0, 0, 0, 3));
  EXPECT_EQ(tok.Decode({3}), "x");
}

// ---------------------------------------------------------------------------
// GGUF vocabulary validation (files written with GgufWriter).

struct GgufSpec {
  std::string model = "llama";
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "a"};
  std::vector<float> scores = {0, 0, 0, -1};
  std::vector<int32_t> types = {2, 3, 3, 1};
  bool with_scores = true;
  bool with_types = true;
  int32_t bos = -100;  // -100: key absent
  bool add_space_prefix_key = false;
};

absl::StatusOr<Vocab> VocabFromSpec(const GgufSpec& spec,
                                    const std::string& name) {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddString("tokenizer.ggml.model", spec.model);
  w.AddStringArray("tokenizer.ggml.tokens", spec.tokens);
  if (spec.with_scores) w.AddFloat32Array("tokenizer.ggml.scores", spec.scores);
  if (spec.with_types) {
    w.AddInt32Array("tokenizer.ggml.token_type", spec.types);
  }
  if (spec.bos != -100) w.AddInt32("tokenizer.ggml.bos_token_id", spec.bos);
  if (spec.add_space_prefix_key) {
    w.AddBool("tokenizer.ggml.add_space_prefix", false);
    w.AddBool("tokenizer.ggml.add_bos_token", false);
    w.AddUint32("tokenizer.ggml.eos_token_id", 3);
  }
  const std::string path = TempPath(name + ".gguf");
  absl::Status written = w.Write(path);
  if (!written.ok()) return written;
  auto gguf = GgufFile::Open(path);
  std::remove(path.c_str());
  if (!gguf.ok()) return gguf.status();
  return LoadVocabFromGguf(**gguf);
}

TEST(GgufVocabTest, RefusesGpt2ByName) {
  GgufSpec spec;
  spec.model = "gpt2";
  auto v = VocabFromSpec(spec, "gpt2");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StatusMessage(v.status()),
            "tokenizer model 'gpt2' is not supported (only 'llama' "
            "SentencePiece)");
}

TEST(GgufVocabTest, DefaultsWhenOptionalKeysAbsent) {
  GgufSpec spec;
  spec.with_scores = false;
  spec.with_types = false;
  auto v = VocabFromSpec(spec, "defaults");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_THAT(v->scores, ElementsAre(0, 0, 0, 0));
  EXPECT_THAT(v->types, ElementsAre(TokenType::kNormal, TokenType::kNormal,
                                    TokenType::kNormal, TokenType::kNormal));
  EXPECT_EQ(v->bos_id, 1);
  EXPECT_EQ(v->eos_id, 2);
  EXPECT_EQ(v->unk_id, 0);
  EXPECT_TRUE(v->add_bos);
  EXPECT_TRUE(v->add_space_prefix);
}

TEST(GgufVocabTest, ReadsFlagsAndIds) {
  GgufSpec spec;
  spec.add_space_prefix_key = true;
  spec.bos = 3;
  auto v = VocabFromSpec(spec, "flags");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->add_space_prefix);
  EXPECT_FALSE(v->add_bos);
  EXPECT_EQ(v->bos_id, 3);
  EXPECT_EQ(v->eos_id, 3);
  EXPECT_THAT(v->scores, ElementsAre(0, 0, 0, -1));
  EXPECT_EQ(v->types[0], TokenType::kUnknown);
}

TEST(GgufVocabTest, ErrorsArePrecise) {
  {
    GgufSpec spec;
    spec.scores = {0, 0, 0};
    auto v = VocabFromSpec(spec, "scores");
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(StatusMessage(v.status()),
              "tokenizer.ggml.scores has 3 entries but tokenizer.ggml.tokens "
              "has 4");
  }
  {
    GgufSpec spec;
    spec.types = {2, 3, 3, 1, 1};
    auto v = VocabFromSpec(spec, "types");
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()),
                HasSubstr("tokenizer.ggml.token_type has 5 entries"));
  }
  {
    GgufSpec spec;
    spec.types = {2, 3, 3, 9};
    auto v = VocabFromSpec(spec, "badtype");
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()),
                HasSubstr("tokenizer.ggml.token_type[3] = 9"));
  }
  {
    GgufSpec spec;
    spec.bos = 4;
    auto v = VocabFromSpec(spec, "bos");
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(StatusMessage(v.status()),
              "tokenizer.ggml.bos_token_id = 4 is out of range [0, 4)");
  }
  {
    GgufSpec spec;
    spec.bos = -1;
    auto v = VocabFromSpec(spec, "negbos");
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()),
                HasSubstr("tokenizer.ggml.bos_token_id = -1"));
  }
  {
    GgufSpec spec;
    spec.tokens = {"<unk>", "<s>"};
    spec.scores = {0, 0};
    spec.types = {2, 3};
    auto v = VocabFromSpec(spec, "short");  // default eos 2 does not exist
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()),
                HasSubstr("tokenizer.ggml.eos_token_id is absent"));
  }
  {
    GgufSpec spec;
    spec.types = {2, 3, 3, 6};  // "a" is no <0xXX>
    auto v = VocabFromSpec(spec, "byte");
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("token 3 'a'"));
  }
}

TEST(GgufVocabTest, NoTokenizerInFile) {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  const std::string path = TempPath("none.gguf");
  ASSERT_TRUE(w.Write(path).ok());
  auto gguf = GgufFile::Open(path);
  std::remove(path.c_str());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto v = LoadVocabFromGguf(**gguf);
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(StatusMessage(v.status()),
              HasSubstr("tokenizer.ggml.model is missing"));
}

// ---------------------------------------------------------------------------
// llama2.c vocabularies.

class Llama2cTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHD_REQUIRE_SHARED(testing::SharedPath("models/tok512.bin"));
    auto vocab =
        LoadVocabFromLlama2c(testing::SharedPath("models/tok512.bin"), 512);
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    tok_ = std::make_unique<Tokenizer>(std::move(*vocab));
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(Llama2cTest, VocabMetadata) {
  const Vocab& v = tok_->vocab();
  EXPECT_EQ(v.size(), 512);
  EXPECT_TRUE(v.llama2c_style);
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);
  EXPECT_EQ(v.unk_id, 0);
  EXPECT_TRUE(v.add_bos);
  EXPECT_EQ(v.pieces[1], "\n<s>\n");
  EXPECT_EQ(v.pieces[3], "<0x00>");
  EXPECT_EQ(v.types[3 + 0x41], TokenType::kByte);
  EXPECT_EQ(v.types[1], TokenType::kControl);
}

// .ids: the prompt's tokens (after BOS) then the generated ones, ending at
// the BOS that stopped generation or after 256 steps. .txt: what run.c
// printed: every token after BOS decoded with decode(prev, token) (the
// first piece loses its leading space), the final BOS not printed, then
// "\n".
struct Golden {
  const char* name;
  const char* prompt;
  size_t n_prompt;  // tokens of the prompt, without BOS
};

TEST_F(Llama2cTest, StoriesGoldenPromptsAndText) {
  const Golden goldens[] = {
      {"dog", "Once upon a time, there was a little dog", 0},
      {"park", "Tom and Sue went to the park", 0},
      {"empty", "", 0},
  };
  for (const Golden& g : goldens) {
    const std::string base =
        testing::SharedPath(std::string("golden/stories260K_greedy_") + g.name);
    FLASHD_REQUIRE_SHARED(base + ".ids");
    const std::vector<int32_t> ids = ParseIds(ReadFile(base + ".ids"));
    const std::string txt = ReadFile(base + ".txt");
    ASSERT_FALSE(ids.empty()) << g.name;

    const std::vector<int32_t> prompt = tok_->Encode(g.prompt, false);
    ASSERT_LE(prompt.size(), ids.size()) << g.name;
    EXPECT_EQ(prompt,
              std::vector<int32_t>(ids.begin(), ids.begin() + prompt.size()))
        << g.name;
    std::vector<int32_t> with_bos = prompt;
    with_bos.insert(with_bos.begin(), 1);
    EXPECT_EQ(tok_->Encode(g.prompt, true), with_bos) << g.name;
    if (*g.prompt == '\0') {
      EXPECT_TRUE(prompt.empty());
    }

    // Generation stops at BOS, which is listed but not printed.
    std::vector<int32_t> printed = ids;
    if (printed.back() == 1) printed.pop_back();
    EXPECT_EQ(std::find(printed.begin(), printed.end(), 1), printed.end());
    EXPECT_EQ(tok_->Decode(printed) + "\n", txt) << g.name;
    // The printed text starts with the prompt.
    EXPECT_EQ(txt.substr(0, std::strlen(g.prompt)), g.prompt) << g.name;

    // Piece by piece through the streamer gives the same text.
    Utf8Streamer streamer;
    std::string streamed;
    int32_t prev = 1;
    for (int32_t id : printed) {
      streamed += streamer.Push(tok_->TokenBytes(prev, id));
      prev = id;
    }
    streamed += streamer.Flush();
    EXPECT_EQ(streamed + "\n", txt) << g.name;
  }
  // The dog story ended at BOS; the other two ran all 256 steps.
  EXPECT_EQ(ParseIds(ReadFile(testing::SharedPath(
                         "golden/stories260K_greedy_dog.ids")))
                .back(),
            1);
}

TEST_F(Llama2cTest, PromptTokensAreRunCEncode) {
  // run.c's encode: " " dummy prefix, code points, greedy merges.
  EXPECT_THAT(tok_->Encode("", true), ElementsAre(1));
  EXPECT_THAT(tok_->Encode("", false), SizeIs(0));
  const std::vector<int32_t> dog =
      tok_->Encode("Once upon a time, there was a little dog", false);
  // " Once" " upon" " a" ... (11 tokens).
  EXPECT_THAT(
      dog, ElementsAre(403, 407, 261, 378, 432, 383, 286, 261, 376, 400, 428));
}

TEST_F(Llama2cTest, ByteFallbackRoundTrip) {
  // Characters missing from the 512-token vocabulary are byte tokens
  // (id = byte + 3) and decode back to the same bytes.
  const std::string text = "Zoë said: naïve — 🦙!";
  const std::vector<int32_t> ids = tok_->Encode(text, true);
  EXPECT_EQ(ids[0], 1);
  EXPECT_NE(std::find(ids.begin(), ids.end(), 3 + 0xF0), ids.end());
  EXPECT_EQ(tok_->Decode(ids), text);
  const std::vector<int32_t> plain = tok_->Encode("Tom and Sue", true);
  EXPECT_EQ(tok_->Decode(plain), "Tom and Sue");
}

TEST_F(Llama2cTest, TokenBytes) {
  const int32_t space_tom = tok_->PieceToId(" T");
  ASSERT_EQ(space_tom, 274);
  EXPECT_EQ(tok_->TokenBytes(1, space_tom), "T");  // run.c: after BOS
  EXPECT_EQ(tok_->TokenBytes(space_tom, space_tom), " T");
  EXPECT_EQ(tok_->TokenBytes(space_tom, 13), "\n");
  EXPECT_EQ(tok_->TokenBytes(space_tom, 1), "");
  EXPECT_EQ(tok_->TokenBytes(space_tom, 512), "");
}

// run.c's encode(), transcribed.
std::vector<int32_t> NaiveRunCEncode(const Tokenizer& tok,
                                     const std::string& text, bool bos) {
  const Vocab& v = tok.vocab();
  std::vector<int32_t> tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) tokens.push_back(tok.PieceToId(" "));
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((text[i] & 0xC0) != 0x80) buf.clear();
    buf += text[i];
    const char next = i + 1 < text.size() ? text[i + 1] : '\0';
    if ((next & 0xC0) == 0x80 && buf.size() < 4) continue;
    const int32_t id = tok.PieceToId(buf);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (unsigned char c : buf) tokens.push_back(c + 3);
    }
    buf.clear();
  }
  while (true) {
    float best_score = -1e10f;
    int best_id = -1, best_idx = -1;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      const int32_t id =
          tok.PieceToId(v.pieces[tokens[i]] + v.pieces[tokens[i + 1]]);
      if (id != -1 && v.scores[id] > best_score) {
        best_score = v.scores[id];
        best_id = id;
        best_idx = static_cast<int>(i);
      }
    }
    if (best_idx == -1) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  return tokens;
}

TEST_F(Llama2cTest, MatchesRunCEncodeOnRandomText) {
  for (const std::string& text : RandomTexts(2, 400)) {
    ASSERT_EQ(tok_->Encode(text, false), NaiveRunCEncode(*tok_, text, false))
        << "'" << text << "'";
    ASSERT_EQ(tok_->Encode(text, true), NaiveRunCEncode(*tok_, text, true))
        << "'" << text << "'";
    ASSERT_EQ(tok_->Decode(tok_->Encode(text, true)), text);
  }
}

TEST_F(Llama2cTest, EncodesTenKilobytesFast) {
  std::string text;
  while (text.size() < size_t{10} * 1024) {
    text += "Once upon a time, there was a little girl named Lily. Zoë! ";
  }
  double best_ms = 1e9;
  std::vector<int32_t> ids;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    ids = tok_->Encode(text, false);
    const auto t1 = std::chrono::steady_clock::now();
    best_ms = std::min(
        best_ms, std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  RecordProperty("encode_10kb_us", static_cast<int>(best_ms * 1000));
  EXPECT_LT(best_ms, 50.0);
  EXPECT_EQ(tok_->Decode(ids), text);
}

class Llama2cMalformedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHD_REQUIRE_SHARED(testing::SharedPath("models/tok512.bin"));
    bytes_ = ReadFile(testing::SharedPath("models/tok512.bin"));
    ASSERT_EQ(bytes_.size(), 6227u);
  }
  // Offset of token i's record (score).
  size_t RecordOffset(int i) const {
    size_t pos = 4;
    for (int k = 0; k < i; ++k) {
      int32_t len;
      std::memcpy(&len, bytes_.data() + pos + 4, 4);
      pos += 8 + len;
    }
    return pos;
  }
  std::string bytes_;
};

TEST_F(Llama2cMalformedTest, ParsesIntact) {
  auto v = ParseLlama2cVocab(bytes_, 512);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->size(), 512);
}

TEST_F(Llama2cMalformedTest, TruncatedAtSeveralPoints) {
  {
    auto v = ParseLlama2cVocab(bytes_.substr(0, 2), 512);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("max_token_length"));
  }
  {
    auto v = ParseLlama2cVocab(bytes_.substr(0, 4), 512);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("truncated at token 0"));
  }
  {
    // Inside token 100's score/length.
    auto v = ParseLlama2cVocab(bytes_.substr(0, RecordOffset(100) + 5), 512);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()),
                HasSubstr("truncated at token 100 of 512"));
  }
  {
    // Inside token 300's bytes.
    auto v = ParseLlama2cVocab(bytes_.substr(0, RecordOffset(300) + 9), 512);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()),
                HasSubstr("truncated at token 300 of 512: its length"));
  }
  {
    // One byte short.
    auto v = ParseLlama2cVocab(bytes_.substr(0, bytes_.size() - 1), 512);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("token 511"));
  }
  {
    // The checkpoint claims more tokens than the file has.
    auto v = ParseLlama2cVocab(bytes_, 513);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("token 512 of 513"));
  }
  {
    // Through the file API too.
    const std::string path = TempPath("trunc.bin");
    {
      std::ofstream out(path, std::ios::binary);
      out << bytes_.substr(0, RecordOffset(7) + 2);
    }
    auto v = LoadVocabFromLlama2c(path, 512);
    std::remove(path.c_str());
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr(path));
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("token 7"));
  }
}

TEST_F(Llama2cMalformedTest, NegativeAndHugeLengths) {
  auto set_len = [this](int token, int32_t len) {
    std::string b = bytes_;
    std::memcpy(&b[RecordOffset(token) + 4], &len, 4);
    return b;
  };
  {
    auto v = ParseLlama2cVocab(set_len(5, -1), 512);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()),
                HasSubstr("token 5 has negative length -1"));
  }
  {
    auto v = ParseLlama2cVocab(set_len(42, INT32_MIN), 512);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("token 42"));
  }
  {
    auto v = ParseLlama2cVocab(set_len(9, INT32_MAX), 512);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(
        StatusMessage(v.status()),
        HasSubstr("truncated at token 9 of 512: its length 2147483647"));
  }
  {
    std::string b = bytes_;
    const int32_t neg = -7;
    std::memcpy(&b[0], &neg, 4);
    auto v = ParseLlama2cVocab(b, 512);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("max_token_length"));
  }
}

TEST_F(Llama2cMalformedTest, TrailingBytesAndBadVocabSize) {
  {
    // 511 tokens read from a 512-token file: it belongs elsewhere.
    auto v = ParseLlama2cVocab(bytes_, 511);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("left after 511 tokens"));
  }
  for (int32_t n : {0, -3, 2}) {
    auto v = ParseLlama2cVocab(bytes_, n);
    ASSERT_FALSE(v.ok()) << n;
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("vocabulary size"));
  }
  {
    // Absurd n_vocab is an error, not a huge allocation.
    auto v = ParseLlama2cVocab(bytes_, INT32_MAX);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(StatusMessage(v.status()), HasSubstr("truncated at token 512"));
  }
  {
    auto v = LoadVocabFromLlama2c("/nonexistent/tokenizer.bin", 512);
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound);
  }
}

// ---------------------------------------------------------------------------
// Utf8Streamer.

TEST(Utf8StreamerTest, AsciiPassesThrough) {
  Utf8Streamer s;
  EXPECT_EQ(s.Push("hello"), "hello");
  EXPECT_EQ(s.Push(""), "");
  EXPECT_EQ(s.Flush(), "");
}

TEST(Utf8StreamerTest, HoldsSplitSequencesUntilComplete) {
  Utf8Streamer s;
  EXPECT_EQ(s.Push("caf\xC3"), "caf");
  EXPECT_EQ(s.Push("\xA9!"), "\xC3\xA9!");  // é
  EXPECT_EQ(s.Push("\xE2"), "");
  EXPECT_EQ(s.Push("\x82"), "");
  EXPECT_EQ(s.Push("\xAC"), "\xE2\x82\xAC");  // €
  EXPECT_EQ(s.Push("\xF0"), "");
  EXPECT_EQ(s.Push("\x9F"), "");
  EXPECT_EQ(s.Push("\xA6"), "");
  EXPECT_EQ(s.Push("\x99x"), "\xF0\x9F\xA6\x99x");  // 🦙
  EXPECT_EQ(s.Flush(), "");
}

TEST(Utf8StreamerTest, InvalidBytesBecomeReplacementCharacters) {
  const std::string r = "\xEF\xBF\xBD";
  Utf8Streamer s;
  EXPECT_EQ(s.Push("a\xFF"
                   "b"),
            "a" + r + "b");
  EXPECT_EQ(s.Push("\x80"), r);                          // lone continuation
  EXPECT_EQ(s.Push("\xC0\xAF"), r + r);                  // overlong
  EXPECT_EQ(s.Push("\xED\xA0\x80"), r + r + r);          // surrogate
  EXPECT_EQ(s.Push("\xF4\x90\x80\x80"), r + r + r + r);  // > U+10FFFF
  EXPECT_EQ(s.Push("\xE2\x28"), r + "(");  // broken 3-byte sequence
  EXPECT_EQ(s.Push("\xE2\x82"
                   "A"),
            r + "A");  // maximal subpart: one
  EXPECT_EQ(s.Flush(), "");
}

TEST(Utf8StreamerTest, FlushReplacesIncompleteTail) {
  const std::string r = "\xEF\xBF\xBD";
  Utf8Streamer s;
  EXPECT_EQ(s.Push("ok\xF0\x9F"), "ok");
  EXPECT_EQ(s.Flush(), r);
  EXPECT_EQ(s.Flush(), "");
  EXPECT_EQ(s.Push("\xA6"), r);  // the stream restarted: a stray byte
}

}  // namespace
}  // namespace flashd
