// GgufFile on malformed inputs built in memory: every error is a Status
// naming the field, never a crash. Includes a seeded mutation fuzz loop.
#include "common/gguf/gguf_file.h"

#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace flashd {
namespace {

constexpr uint64_t kHeaderBytes = 24;

// Little-endian byte builder for hand-made GGUF files.
class Bytes {
 public:
  template <typename T>
  Bytes& Put(T v) {
    s_.append(reinterpret_cast<const char*>(&v), sizeof(v));
    return *this;
  }
  Bytes& U32(uint32_t v) { return Put(v); }
  Bytes& U64(uint64_t v) { return Put(v); }
  Bytes& Str(std::string_view v) {
    U64(v.size());
    s_.append(v);
    return *this;
  }
  Bytes& Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    s_.append("GGUF");
    return U32(version).U64(n_tensors).U64(n_kv);
  }
  Bytes& KvU32(std::string_view key, uint32_t v) {
    return Str(key).U32(uint32_t(GgufType::kUint32)).U32(v);
  }
  Bytes& KvStr(std::string_view key, std::string_view v) {
    return Str(key).U32(uint32_t(GgufType::kString)).Str(v);
  }
  Bytes& Tensor(std::string_view name, const std::vector<uint64_t>& dims,
                uint32_t type, uint64_t offset) {
    Str(name).U32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) U64(d);
    return U32(type).U64(offset);
  }
  Bytes& PadTo(size_t alignment) {
    s_.resize((s_.size() + alignment - 1) / alignment * alignment, '\0');
    return *this;
  }
  Bytes& Fill(size_t n, char c) {
    s_.append(n, c);
    return *this;
  }
  size_t size() const { return s_.size(); }
  const std::string& str() const { return s_; }

 private:
  std::string s_;
};

absl::StatusOr<std::unique_ptr<GgufFile>> ParseBytes(std::string_view bytes) {
  return GgufFile::Parse(MappedFile::FromString(bytes));
}

// Expects INVALID_ARGUMENT whose message contains every one of `parts`.
void ExpectError(std::string_view bytes,
                 const std::vector<std::string>& parts) {
  auto f = ParseBytes(bytes);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  for (const std::string& p : parts) {
    EXPECT_NE(f.status().message().find(p), std::string::npos)
        << "missing '" << p << "' in: " << f.status().message();
  }
}

// Small valid file: 3 kvs, an f32 [8] and a q8_0 [32] tensor; the last
// tensor ends exactly at the end of the file (no trailing padding), so any
// truncation is detectable.
std::string ValidFile() {
  Bytes b;
  b.Header(2, 3)
      .KvStr("general.architecture", "llama")
      .KvU32("llama.block_count", 4)
      .Str("tokenizer.ggml.tokens")
      .U32(uint32_t(GgufType::kArray))
      .U32(uint32_t(GgufType::kString))
      .U64(2)
      .Str("<s>")
      .Str("hi")
      .Tensor("a", {8}, uint32_t(GgmlType::kF32), 0)
      .Tensor("b", {32, 1}, uint32_t(GgmlType::kQ8_0), 32)
      .PadTo(32)
      .Fill(32, 'a')
      .Fill(34, 'b');
  return b.str();
}

TEST(GgufFileTest, ParsesValidFile) {
  const std::string bytes = ValidFile();
  auto f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 3u);
  EXPECT_EQ((*f)->alignment(), 32u);
  EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");
  EXPECT_EQ(*(*f)->GetUint32("llama.block_count"), 4u);
  EXPECT_EQ(*(*f)->GetStringArray("tokenizer.ggml.tokens"),
            (std::vector<std::string>{"<s>", "hi"}));
  ASSERT_EQ((*f)->tensors().size(), 2u);
  const GgufTensorInfo* b = (*f)->FindTensor("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->type, GgmlType::kQ8_0);
  EXPECT_EQ(b->n_bytes, 34u);
  EXPECT_EQ(b->file_offset + b->n_bytes, bytes.size());
  EXPECT_EQ((*f)->TensorData(*b)[0], 'b');
  EXPECT_EQ((*f)->TensorData((*f)->tensors()[0])[31], 'a');
}

TEST(GgufFileTest, RefusesBadMagic) {
  std::string bytes = ValidFile();
  bytes[3] = 'L';
  ExpectError(bytes, {"bad magic \"GGUL\"", "not a GGUF file"});
}

TEST(GgufFileTest, RefusesOtherVersions) {
  ExpectError(Bytes().Header(0, 0, 1).str(), {"version 1 is not supported"});
  ExpectError(Bytes().Header(0, 0, 99).str(), {"unsupported version 99"});
  ExpectError(Bytes().Header(0, 0, 0x03000000).str(), {"big-endian"});
  EXPECT_TRUE(ParseBytes(Bytes().Header(0, 0, 2).str()).ok());
}

TEST(GgufFileTest, EveryTruncationIsAnError) {
  const std::string bytes = ValidFile();
  ASSERT_TRUE(ParseBytes(bytes).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto f = ParseBytes(std::string_view(bytes).substr(0, n));
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(f.status().message().substr(0, 6), "gguf: ") << f.status();
  }
}

TEST(GgufFileTest, TruncationMessageNamesFieldAndOffsets) {
  const std::string bytes = Bytes()
                                .Header(1, 0)
                                .Str("blk.0.ffn_up.weight")
                                .U32(2)
                                .U64(256)
                                .U32(7)  // half of dims[1]
                                .str();
  const uint64_t dims1_at = kHeaderBytes + 8 + 19 + 4 + 8;
  ExpectError(bytes, {absl::StrCat("gguf: truncated: tensor info 0 "
                                   "(blk.0.ffn_up.weight) dims[1] needs 8 "
                                   "bytes at offset ",
                                   dims1_at, ", file has ", bytes.size())});
}

TEST(GgufFileTest, RefusesAbsurdCounts) {
  ExpectError(Bytes().Header(0, uint64_t{1} << 62).Fill(64, 0).str(),
              {"kv count 4611686018427387904 is impossible"});
  ExpectError(Bytes().Header(uint64_t{1} << 62, 0).Fill(64, 0).str(),
              {"tensor count 4611686018427387904 is impossible"});
  ExpectError(Bytes().Header(3, 2).Fill(120, 0).str(),
              {"2 key/values and 3 tensor infos cannot fit"});
}

TEST(GgufFileTest, RefusesStringsRunningPastEof) {
  ExpectError(Bytes().Header(0, 1).U64(uint64_t{1} << 63).Fill(20, 'k').str(),
              {"kv 0 key needs 9223372036854775808 bytes"});
  ExpectError(Bytes()
                  .Header(0, 1)
                  .Str("general.name")
                  .U32(uint32_t(GgufType::kString))
                  .U64(100)
                  .Fill(10, 'x')
                  .str(),
              {"kv 0 (general.name) string value needs 100 bytes"});
  ExpectError(Bytes().Header(1, 0).U64(uint64_t{1} << 63).Fill(40, 'n').str(),
              {"tensor info 0 name needs 9223372036854775808 bytes"});
}

TEST(GgufFileTest, RefusesAbsurdArrayCounts) {
  auto array = [](GgufType elem, uint64_t count) {
    return Bytes()
        .Header(0, 1)
        .Str("tokenizer.ggml.scores")
        .U32(uint32_t(GgufType::kArray))
        .U32(uint32_t(elem))
        .U64(count)
        .Fill(64, 0)
        .str();
  };
  ExpectError(array(GgufType::kFloat32, uint64_t{1} << 61),
              {"kv 0 (tokenizer.ggml.scores) array of float32 count "
               "2305843009213693952 is impossible"});
  ExpectError(array(GgufType::kString, uint64_t{1} << 61),
              {"array of string count 2305843009213693952"});
  ExpectError(Bytes()
                  .Header(0, 1)
                  .Str("tokenizer.ggml.tokens")
                  .U32(uint32_t(GgufType::kArray))
                  .U32(uint32_t(GgufType::kString))
                  .U64(2)
                  .Str("<s>")
                  .U64(5)
                  .Fill(2, 'x')
                  .str(),
              {"kv 0 (tokenizer.ggml.tokens) string element 1 needs 5 bytes"});
  ExpectError(array(GgufType::kArray, 1), {"nested arrays are not supported"});
  ExpectError(array(static_cast<GgufType>(13), 1), {"unknown element type 13"});
}

// Empty numeric arrays are valid and read as empty vectors (under UBSan,
// copying zero floats into an empty vector must not pass it a null pointer).
TEST(GgufFileTest, EmptyArraysReadAsEmpty) {
  const std::string bytes = Bytes()
                                .Header(0, 2)
                                .Str("f")
                                .U32(uint32_t(GgufType::kArray))
                                .U32(uint32_t(GgufType::kFloat32))
                                .U64(0)
                                .Str("i")
                                .U32(uint32_t(GgufType::kArray))
                                .U32(uint32_t(GgufType::kInt32))
                                .U64(0)
                                .str();
  auto f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<std::vector<float>> floats = (*f)->GetFloatArray("f");
  ASSERT_TRUE(floats.ok()) << floats.status();
  EXPECT_TRUE(floats->empty());
  absl::StatusOr<std::vector<int32_t>> ints = (*f)->GetIntArray("i");
  ASSERT_TRUE(ints.ok()) << ints.status();
  EXPECT_TRUE(ints->empty());
}

TEST(GgufFileTest, RefusesBadValues) {
  ExpectError(Bytes().Header(0, 1).Str("k").U32(13).Fill(16, 0).str(),
              {"kv 0 (k) has unknown value type 13"});
  ExpectError(
      Bytes().Header(0, 1).Str("k").U32(7).Put<uint8_t>(2).Fill(16, 0).str(),
      {"kv 0 (k) bool value 2 is not 0 or 1"});
  ExpectError(Bytes().Header(0, 1).Str("").U32(4).U32(1).Fill(16, 0).str(),
              {"kv 0 has an empty key"});
  ExpectError(Bytes().Header(0, 2).KvU32("a", 1).KvU32("a", 2).str(),
              {"duplicate key 'a' (kv 1)"});
}

// One tensor with the given shape/type/offset and 4 KiB of data.
std::string OneTensor(const std::vector<uint64_t>& dims, uint32_t type,
                      uint64_t offset, size_t data = 4096) {
  return Bytes()
      .Header(1, 0)
      .Tensor("blk.0.attn_q.weight", dims, type, offset)
      .PadTo(32)
      .Fill(data, 0)
      .str();
}

TEST(GgufFileTest, RefusesBadTensorShapes) {
  const uint32_t f32 = uint32_t(GgmlType::kF32);
  ExpectError(OneTensor({1, 1, 1, 1, 1}, f32, 0),
              {"tensor info 0 (blk.0.attn_q.weight) n_dims 5 out of range"});
  ExpectError(OneTensor({}, f32, 0), {"n_dims 0 out of range"});
  ExpectError(OneTensor({4, 0}, f32, 0), {"dims[1] = 0 must be positive"});
  ExpectError(OneTensor({uint64_t{1} << 63}, f32, 0),
              {"dims[0] = -9223372036854775808 must be positive"});
  ExpectError(
      OneTensor({uint64_t{1} << 32, uint64_t{1} << 32, 1u << 31}, f32, 0),
      {"element count overflows: dims [4294967296, 4294967296, "
       "2147483648]"});
  ExpectError(OneTensor({uint64_t{1} << 62}, uint32_t(GgmlType::kF64), 0),
              {"byte size overflows"});
  ExpectError(
      OneTensor({100, 2}, uint32_t(GgmlType::kQ4_K), 0),
      {"of type q4_K: ne[0] = 100 is not a multiple of the block size 256"});
}

TEST(GgufFileTest, RefusesUnknownTypesButKeepsUnsupportedOnes) {
  ExpectError(
      OneTensor({32}, 200, 0),
      {"tensor info 0 (blk.0.attn_q.weight) has unknown ggml type id 200"});
  ExpectError(OneTensor({32}, 4, 0), {"unknown ggml type id 4"});
  auto f = ParseBytes(OneTensor({256}, uint32_t(GgmlType::kQ5_K), 0));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->tensors()[0].type, GgmlType::kQ5_K);
  EXPECT_EQ((*f)->tensors()[0].n_bytes, 176u);
}

TEST(GgufFileTest, RefusesBadTensorPlacement) {
  const uint32_t f32 = uint32_t(GgmlType::kF32);
  ExpectError(OneTensor({8}, f32, 16),
              {"(blk.0.attn_q.weight) offset 16 is not a multiple of the "
               "alignment 32"});
  const std::string past = OneTensor({1024, 2}, f32, 0);
  ExpectError(
      past, {"gguf: tensor blk.0.attn_q.weight data [offset 96, +8192) exceeds "
             "file size 4192 (file truncated?)"});
  ExpectError(OneTensor({8}, f32, ~uint64_t{31}), {"exceeds file size"});
  ExpectError(Bytes()
                  .Header(2, 0)
                  .Tensor("x", {8}, f32, 0)
                  .Tensor("x", {8}, f32, 32)
                  .PadTo(32)
                  .Fill(64, 0)
                  .str(),
              {"duplicate tensor name 'x' (tensor infos 0 and 1)"});
}

TEST(GgufFileTest, HonoursAndValidatesAlignment) {
  auto with_alignment = [](uint32_t a) {
    return Bytes()
        .Header(1, 1)
        .KvU32("general.alignment", a)
        .Tensor("t", {8}, uint32_t(GgmlType::kF32), 0)
        .PadTo(a ? a : 1)
        .Fill(32, 0)
        .str();
  };
  auto f = ParseBytes(with_alignment(256));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->alignment(), 256u);
  EXPECT_EQ((*f)->data_offset(), 256u);
  ExpectError(with_alignment(0), {"general.alignment = 0 must be a nonzero "
                                  "power of two"});
  ExpectError(with_alignment(48), {"general.alignment = 48"});
  ExpectError(Bytes().Header(0, 1).KvStr("general.alignment", "32").str(),
              {"key 'general.alignment' has type string"});
}

TEST(GgufFileTest, TypedGettersConvertOnlyWhenTheValueFits) {
  const std::string bytes = Bytes()
                                .Header(0, 6)
                                .KvU32("u32", 4000000000u)
                                .Str("neg")
                                .U32(uint32_t(GgufType::kInt32))
                                .Put<int32_t>(-1)
                                .Str("big")
                                .U32(uint32_t(GgufType::kUint64))
                                .U64(~uint64_t{0})
                                .Str("f")
                                .U32(uint32_t(GgufType::kFloat32))
                                .Put<float>(0.5f)
                                .KvStr("s", "text")
                                .Str("ints")
                                .U32(uint32_t(GgufType::kArray))
                                .U32(uint32_t(GgufType::kInt8))
                                .U64(2)
                                .Put<int8_t>(-3)
                                .Put<int8_t>(4)
                                .str();
  auto f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(*g.GetInt("u32"), 4000000000);
  EXPECT_EQ(*g.GetInt("neg"), -1);
  EXPECT_EQ(*g.GetFloat("neg"), -1.0);
  EXPECT_EQ(*g.GetFloat("f"), 0.5);
  EXPECT_EQ(*g.GetIntArray("ints"), (std::vector<int32_t>{-3, 4}));
  EXPECT_EQ(g.GetUint("absent").status().code(), absl::StatusCode::kNotFound);
  auto msg = [](const absl::Status& s) { return std::string(s.message()); };
  EXPECT_EQ(msg(g.GetUint("neg").status()),
            "gguf: key 'neg' = -1 (int32) does not fit uint64");
  EXPECT_EQ(msg(g.GetUint32("big").status()),
            "gguf: key 'big' = 18446744073709551615 (uint64) does not fit "
            "uint32");
  EXPECT_EQ(msg(g.GetInt("big").status()),
            "gguf: key 'big' = 18446744073709551615 (uint64) does not fit "
            "int64");
  EXPECT_EQ(msg(g.GetString("u32").status()),
            "gguf: key 'u32' has type uint32, expected string");
  EXPECT_EQ(msg(g.GetUint("f").status()),
            "gguf: key 'f' has type float32, expected uint64");
  EXPECT_EQ(msg(g.GetBool("s").status()),
            "gguf: key 's' has type string, expected bool");
  EXPECT_EQ(msg(g.GetStringArray("ints").status()),
            "gguf: key 'ints' has type array[int8], expected array[string]");
  EXPECT_EQ(msg(g.GetFloatArray("s").status()),
            "gguf: key 's' has type string, expected array[float32] or "
            "array[float64]");
}

// The reader sizes tensors with ggml's type table (common/kernels).
TEST(GgufFileTest, GgmlTypeTraitsMatchGgml) {
  struct Want {
    uint32_t id;
    const char* name;
    int block_size, type_size;
  };
  const Want wants[] = {
      {0, "f32", 1, 4},         {1, "f16", 1, 2},
      {2, "q4_0", 32, 18},      {3, "q4_1", 32, 20},
      {6, "q5_0", 32, 22},      {7, "q5_1", 32, 24},
      {8, "q8_0", 32, 34},      {9, "q8_1", 32, 36},
      {10, "q2_K", 256, 84},    {11, "q3_K", 256, 110},
      {12, "q4_K", 256, 144},   {13, "q5_K", 256, 176},
      {14, "q6_K", 256, 210},   {15, "q8_K", 256, 292},
      {16, "iq2_xxs", 256, 66}, {20, "iq4_nl", 32, 18},
      {23, "iq4_xs", 256, 136}, {28, "f64", 1, 8},
      {29, "iq1_m", 256, 56},   {30, "bf16", 1, 2},
  };
  for (const Want& w : wants) {
    std::optional<TypeTraits> t = GetTypeTraits(w.id);
    ASSERT_TRUE(t.has_value()) << w.id;
    EXPECT_EQ(t->name, w.name);
    EXPECT_EQ(t->block_size, w.block_size) << w.name;
    EXPECT_EQ(t->type_size, w.type_size) << w.name;
    EXPECT_EQ(TypeName(w.id), w.name);
  }
  std::vector<std::string_view> supported;
  for (uint32_t id = 0; id < 64; ++id) {
    if (auto t = GetTypeTraits(id); t && t->supported)
      supported.push_back(t->name);
  }
  EXPECT_EQ(supported,
            (std::vector<std::string_view>{"f32", "f16", "q4_0", "q8_0", "q4_K",
                                           "q6_K", "q8_K", "bf16"}));
  for (uint32_t id : {4u, 5u, 31u, 200u}) EXPECT_FALSE(GetTypeTraits(id)) << id;
  EXPECT_EQ(TypeName(200), "type#200");
  EXPECT_EQ(TypeName(200).data(), TypeName(200).data());  // interned
  EXPECT_EQ(RowSize(GgmlType::kQ4_K, 512), 288u);
}

// Reads everything a caller could read from a parsed file.
void TouchEverything(const GgufFile& f) {
  for (const std::string& key : f.keys()) {
    ASSERT_NE(f.Find(key), nullptr);
    (void)f.GetUint(key);
    (void)f.GetInt(key);
    (void)f.GetFloat(key);
    (void)f.GetString(key);
    (void)f.GetStringArray(key);
    (void)f.GetFloatArray(key);
    (void)f.GetIntArray(key);
  }
  unsigned sum = 0;
  for (const GgufTensorInfo& t : f.tensors()) {
    const uint8_t* p = f.TensorData(t);
    for (uint64_t i = 0; i < t.n_bytes; ++i) sum += p[i];
  }
  EXPECT_GE(sum, 0u);
}

TEST(GgufFileTest, SurvivesRandomMutations) {
  const std::string valid = ValidFile();
  std::mt19937 rng(20240611);
  int parsed = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes = valid;
    const int n_mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < n_mutations; ++m) {
      const size_t pos = rng() % bytes.size();
      switch (rng() % 4) {
        case 0:
          bytes[pos] = static_cast<char>(rng());
          break;
        case 1:
          bytes[pos] = static_cast<char>(bytes[pos] ^ (1 << (rng() % 8)));
          break;
        case 2:
          bytes[pos] = static_cast<char>(0xff);
          break;
        default:
          bytes.resize(pos + 1);
          break;
      }
    }
    auto f = ParseBytes(bytes);
    if (f.ok()) {
      ++parsed;
      TouchEverything(**f);
    } else {
      EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument)
          << f.status();
    }
  }
  EXPECT_GT(parsed, 0);  // some mutations only touch tensor data
}

}  // namespace
}  // namespace flashd
