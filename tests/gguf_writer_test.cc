// Round trips GgufWriter -> GgufFile: every value type, arrays, tensors of
// several ggml types, alignment, and the writer's error paths.
#include "common/gguf/gguf_writer.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/gguf/gguf_file.h"
#include "gtest/gtest.h"

namespace flashd {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "gguf_writer_test_" + std::to_string(getpid()) +
         "_" + name + ".gguf";
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Byte i of a tensor filled with Pattern(seed).
uint8_t PatternByte(uint8_t seed, size_t i) {
  return static_cast<uint8_t>(seed + i * 7);
}

GgufWriter::FillFn Pattern(uint8_t seed) {
  return [seed](uint8_t* dst, size_t n) {
    for (size_t i = 0; i < n; ++i) dst[i] = PatternByte(seed, i);
    return absl::OkStatus();
  };
}

// Writes `w` to a temp file and parses it back.
std::unique_ptr<GgufFile> WriteAndOpen(GgufWriter& w, const std::string& name) {
  const std::string path = TempPath(name);
  absl::Status s = w.Write(path);
  EXPECT_TRUE(s.ok()) << s;
  auto f = GgufFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  ::unlink(path.c_str());
  return f.ok() ? std::move(*f) : nullptr;
}

TEST(GgufWriterTest, RoundTripsEveryScalarType) {
  GgufWriter w;
  w.AddUint8("u8", 250);
  w.AddInt8("i8", -120);
  w.AddUint16("u16", 65000);
  w.AddInt16("i16", -32000);
  w.AddUint32("u32", 4000000000u);
  w.AddInt32("i32", -2000000000);
  w.AddUint64("u64", std::numeric_limits<uint64_t>::max());
  w.AddInt64("i64", std::numeric_limits<int64_t>::min());
  w.AddFloat32("f32", 1e-5f);
  w.AddFloat64("f64", 3.141592653589793);
  w.AddBool("yes", true);
  w.AddBool("no", false);
  w.AddString("str", "llama");
  w.AddString("empty", "");
  auto f = WriteAndOpen(w, "scalars");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->keys().size(), 14u);
  EXPECT_EQ(f->keys().front(), "u8");
  EXPECT_EQ(*f->GetUint("u8"), 250u);
  EXPECT_EQ(f->Find("u8")->type, GgufType::kUint8);
  EXPECT_EQ(*f->GetInt("i8"), -120);
  EXPECT_EQ(f->Find("i8")->type, GgufType::kInt8);
  EXPECT_EQ(*f->GetUint("u16"), 65000u);
  EXPECT_EQ(*f->GetInt("i16"), -32000);
  EXPECT_EQ(*f->GetUint32("u32"), 4000000000u);
  EXPECT_EQ(*f->GetInt("i32"), -2000000000);
  EXPECT_EQ(*f->GetUint("u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(*f->GetInt("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*f->GetFloat("f32"), static_cast<double>(1e-5f));
  EXPECT_EQ(f->Find("f32")->type, GgufType::kFloat32);
  EXPECT_EQ(*f->GetFloat("f64"), 3.141592653589793);
  EXPECT_EQ(*f->GetBool("yes"), true);
  EXPECT_EQ(*f->GetBool("no"), false);
  EXPECT_EQ(*f->GetString("str"), "llama");
  EXPECT_EQ(*f->GetString("empty"), "");
}

TEST(GgufWriterTest, RoundTripsArrays) {
  GgufWriter w;
  const std::vector<std::string> tokens = {"<unk>", "", "\xE2\x96\x81the",
                                           std::string("a\0b", 3)};
  w.AddStringArray("tokens", tokens);
  w.AddFloat32Array("scores", {0.5f, -1.25f, 1e30f});
  w.AddInt32Array("types", {1, -2, 3});
  w.AddInt32Array("none", {});
  const uint16_t u16[] = {1, 65535};
  w.AddRawArray("u16", GgufType::kUint16, 2,
                {reinterpret_cast<const char*>(u16), sizeof(u16)});
  const int64_t i64[] = {-5, 7};
  w.AddRawArray("i64", GgufType::kInt64, 2,
                {reinterpret_cast<const char*>(i64), sizeof(i64)});
  const double f64[] = {0.25, -8};
  w.AddRawArray("f64", GgufType::kFloat64, 2,
                {reinterpret_cast<const char*>(f64), sizeof(f64)});
  const uint8_t bools[] = {1, 0, 1};
  w.AddRawArray("bools", GgufType::kBool, 3,
                {reinterpret_cast<const char*>(bools), sizeof(bools)});
  const uint32_t big[] = {1, 3000000000u};
  w.AddRawArray("big", GgufType::kUint32, 2,
                {reinterpret_cast<const char*>(big), sizeof(big)});
  auto f = WriteAndOpen(w, "arrays");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(*f->GetStringArray("tokens"), tokens);
  EXPECT_EQ(*f->GetFloatArray("scores"),
            (std::vector<float>{0.5f, -1.25f, 1e30f}));
  EXPECT_EQ(*f->GetIntArray("types"), (std::vector<int32_t>{1, -2, 3}));
  EXPECT_TRUE(f->GetIntArray("none")->empty());
  EXPECT_EQ(*f->GetIntArray("u16"), (std::vector<int32_t>{1, 65535}));
  EXPECT_EQ(*f->GetIntArray("i64"), (std::vector<int32_t>{-5, 7}));
  EXPECT_EQ(*f->GetFloatArray("f64"), (std::vector<float>{0.25f, -8.f}));
  const GgufValue* b = f->Find("bools");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->elem_type, GgufType::kBool);
  EXPECT_EQ(b->count, 3u);
  EXPECT_EQ(b->raw, std::string_view("\1\0\1", 3));
  // Narrowing that does not fit is an error naming key, index and types.
  auto too_big = f->GetIntArray("big");
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("'big' element 1 = 3000000000"),
            std::string::npos)
      << too_big.status();
  EXPECT_NE(too_big.status().message().find("array[uint32]"),
            std::string::npos);
}

TEST(GgufWriterTest, RoundTripsTensorsOfSeveralTypes) {
  struct Spec {
    std::string name;
    std::vector<int64_t> dims;
    GgmlType type;
  };
  const std::vector<Spec> specs = {
      {"f32", {8, 3}, GgmlType::kF32},         {"f16", {5}, GgmlType::kF16},
      {"q8_0", {64, 2}, GgmlType::kQ8_0},      {"q4_0", {32}, GgmlType::kQ4_0},
      {"q4_K", {256, 2}, GgmlType::kQ4_K},     {"q6_K", {256}, GgmlType::kQ6_K},
      {"bf16", {3, 1, 1, 2}, GgmlType::kBF16}, {"q5_K", {256}, GgmlType::kQ5_K},
  };
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  for (size_t i = 0; i < specs.size(); ++i) {
    w.AddTensor(specs[i].name, specs[i].dims, specs[i].type,
                Pattern(static_cast<uint8_t>(i * 31)));
  }
  const std::string path = TempPath("tensors");
  ASSERT_TRUE(w.Write(path).ok());
  const std::string bytes = ReadAll(path);
  auto f = GgufFile::Open(path);
  ::unlink(path.c_str());
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->tensors().size(), specs.size());
  EXPECT_EQ((*f)->Find("general.alignment"), nullptr);
  EXPECT_EQ((*f)->alignment(), 32u);
  EXPECT_EQ((*f)->data_offset() % 32, 0u);
  uint64_t expected_offset = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const GgufTensorInfo* t = (*f)->FindTensor(specs[i].name);
    ASSERT_NE(t, nullptr) << specs[i].name;
    EXPECT_EQ(&(*f)->tensors()[i], t);
    EXPECT_EQ(t->type, specs[i].type);
    EXPECT_EQ(t->dims, specs[i].dims);
    uint64_t n = 1;
    for (int64_t d : specs[i].dims) n *= d;
    EXPECT_EQ(t->n_elements, n);
    const uint64_t rows = n / specs[i].dims[0];
    EXPECT_EQ(t->n_bytes, RowSize(specs[i].type, specs[i].dims[0]) * rows);
    EXPECT_EQ(t->offset, expected_offset);
    EXPECT_EQ(t->file_offset, (*f)->data_offset() + t->offset);
    const uint8_t* data = (*f)->TensorData(*t);
    for (size_t j = 0; j < t->n_bytes; ++j) {
      ASSERT_EQ(data[j], PatternByte(static_cast<uint8_t>(i * 31), j))
          << specs[i].name << " byte " << j;
    }
    // Padding up to the next alignment boundary is zeros.
    const uint64_t padded = (t->n_bytes + 31) / 32 * 32;
    for (uint64_t j = t->n_bytes; j < padded; ++j) {
      ASSERT_EQ(bytes[t->file_offset + j], 0) << specs[i].name;
    }
    expected_offset += padded;
  }
  EXPECT_EQ(bytes.size(), (*f)->data_offset() + expected_offset);
  EXPECT_EQ((*f)->FindTensor("missing"), nullptr);
}

TEST(GgufWriterTest, ExactLayoutOfSmallFile) {
  GgufWriter w;
  w.AddUint32("a", 7);
  const float values[] = {1.0f, 2.0f};
  w.AddTensor("t", {2}, GgmlType::kF32, [&](uint8_t* dst, size_t n) {
    EXPECT_EQ(n, sizeof(values));
    std::memcpy(dst, values, n);
    return absl::OkStatus();
  });
  const std::string path = TempPath("exact");
  ASSERT_TRUE(w.Write(path).ok());
  const std::string bytes = ReadAll(path);
  ::unlink(path.c_str());
  std::string want("GGUF\3\0\0\0", 8);
  want += std::string("\1\0\0\0\0\0\0\0", 8);           // tensor_count
  want += std::string("\1\0\0\0\0\0\0\0", 8);           // kv_count
  want += std::string("\1\0\0\0\0\0\0\0a", 9);          // key
  want += std::string("\4\0\0\0\7\0\0\0", 8);           // uint32 7
  want += std::string("\1\0\0\0\0\0\0\0t", 9);          // name
  want += std::string("\1\0\0\0\2\0\0\0\0\0\0\0", 12);  // n_dims, ne
  want += std::string("\0\0\0\0\0\0\0\0\0\0\0\0", 12);  // f32, offset
  want.resize(96, '\0');                                // pad to 32
  want.append(reinterpret_cast<const char*>(values), sizeof(values));
  want.resize(128, '\0');  // tail padding
  EXPECT_EQ(bytes, want);
}

TEST(GgufWriterTest, DropsTrailingUnitDimsLikeLlamaCpp) {
  GgufWriter w;
  w.AddTensor("col", {8, 1, 1}, GgmlType::kF32, Pattern(0));
  w.AddTensor("mid", {8, 1, 2}, GgmlType::kF32, Pattern(0));
  w.AddTensor("one", {1, 1}, GgmlType::kF32, Pattern(0));
  auto f = WriteAndOpen(w, "unit_dims");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->FindTensor("col")->dims, (std::vector<int64_t>{8}));
  EXPECT_EQ(f->FindTensor("mid")->dims, (std::vector<int64_t>{8, 1, 2}));
  EXPECT_EQ(f->FindTensor("one")->dims, (std::vector<int64_t>{1}));
}

TEST(GgufWriterTest, CustomAlignmentWritesKeyAndAlignsData) {
  GgufWriter w(64);
  w.AddString("general.name", "x");
  w.AddTensor("a", {3}, GgmlType::kF32, Pattern(1));
  w.AddTensor("b", {32}, GgmlType::kQ8_0, Pattern(2));
  auto f = WriteAndOpen(w, "align64");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(*f->GetUint32("general.alignment"), 64u);
  EXPECT_EQ(f->Find("general.alignment")->type, GgufType::kUint32);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->tensors()[1].offset, 64u);
}

TEST(GgufWriterTest, ExplicitAlignmentKeyMustAgree) {
  GgufWriter same(64);
  same.AddUint32("general.alignment", 64);
  auto f = WriteAndOpen(same, "align_same");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->keys().size(), 1u);
  GgufWriter other(64);
  other.AddUint32("general.alignment", 32);
  absl::Status s = other.Write(TempPath("align_other"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("general.alignment"), std::string::npos) << s;
}

TEST(GgufWriterTest, RefusesBadAlignment) {
  for (uint32_t a : {0u, 48u}) {
    GgufWriter w(a);
    absl::Status s = w.Write(TempPath("bad_align"));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("alignment " + std::to_string(a)),
              std::string::npos)
        << s;
  }
}

TEST(GgufWriterTest, ReplacesExistingKeyInPlace) {
  GgufWriter w;
  w.AddUint32("a", 1);
  w.AddString("b", "x");
  w.AddString("a", "now a string");
  auto f = WriteAndOpen(w, "replace");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->keys(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(*f->GetString("a"), "now a string");
}

TEST(GgufWriterTest, RefusesBadTensors) {
  struct Case {
    std::vector<int64_t> dims;
    GgmlType type;
    std::string want;
  };
  const std::vector<Case> cases = {
      {{0, 4}, GgmlType::kF32, "positive"},
      {{1, 1, 1, 1, 1}, GgmlType::kF32, "1 to 4 dims"},
      {{100}, GgmlType::kQ4_K, "block size 256"},
      {{4}, static_cast<GgmlType>(200), "unknown type id 200"},
  };
  for (const Case& c : cases) {
    GgufWriter w;
    w.AddTensor("bad", c.dims, c.type, Pattern(0));
    absl::Status s = w.Write(TempPath("bad_tensor"));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("'bad'"), std::string::npos) << s;
    EXPECT_NE(s.message().find(c.want), std::string::npos) << s;
  }
  GgufWriter dup;
  dup.AddTensor("x", {1}, GgmlType::kF32, Pattern(0));
  dup.AddTensor("x", {1}, GgmlType::kF32, Pattern(0));
  EXPECT_NE(dup.Write(TempPath("dup")).message().find("duplicate"),
            std::string::npos);
  GgufWriter raw;
  raw.AddRawArray("r", GgufType::kFloat32, 3, "12345678");
  absl::Status s = raw.Write(TempPath("raw"));
  EXPECT_NE(s.message().find("'r'"), std::string::npos) << s;
  EXPECT_NE(s.message().find("need 12 bytes, got 8"), std::string::npos) << s;
}

TEST(GgufWriterTest, FillErrorIsReturnedAndLeavesNoFile) {
  const std::string path = TempPath("fill_error");
  GgufWriter w;
  w.AddTensor("ok", {4}, GgmlType::kF32, Pattern(0));
  w.AddTensor("broken", {4}, GgmlType::kF32, [](uint8_t*, size_t) {
    return absl::DataLossError("source tensor unreadable");
  });
  absl::Status s = w.Write(path);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("'broken'"), std::string::npos) << s;
  EXPECT_NE(s.message().find("source tensor unreadable"), std::string::npos);
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
  EXPECT_NE(::access((path + ".tmp").c_str(), F_OK), 0);
}

TEST(GgufWriterTest, IoErrorNamesPathAndReason) {
  GgufWriter w;
  w.AddUint32("a", 1);
  absl::Status s = w.Write("/nonexistent-flashd-dir/model.gguf");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/nonexistent-flashd-dir/model.gguf.tmp"),
            std::string::npos)
      << s;
  EXPECT_NE(s.message().find("No such file or directory"), std::string::npos)
      << s;
}

TEST(GgufWriterTest, ReportsProgressPerTensor) {
  GgufWriter w;
  for (int i = 0; i < 3; ++i) {
    w.AddTensor(absl::StrCat("t", i), {4}, GgmlType::kF32, Pattern(0));
  }
  std::vector<std::pair<size_t, size_t>> calls;
  const std::string path = TempPath("progress");
  ASSERT_TRUE(w.Write(path, [&](size_t done, size_t total) {
                 calls.emplace_back(done, total);
               }).ok());
  ::unlink(path.c_str());
  EXPECT_EQ(calls,
            (std::vector<std::pair<size_t, size_t>>{{1, 3}, {2, 3}, {3, 3}}));
}

TEST(GgufWriterTest, AddValueCopiesAFileByteForByte) {
  GgufWriter w(64);
  w.AddUint8("u8", 1);
  w.AddInt8("i8", -1);
  w.AddUint16("u16", 2);
  w.AddInt16("i16", -2);
  w.AddUint32("u32", 3);
  w.AddInt32("i32", -3);
  w.AddUint64("u64", 4);
  w.AddInt64("i64", -4);
  w.AddFloat32("f32", 0.5f);
  w.AddFloat64("f64", 0.25);
  w.AddBool("b", true);
  w.AddString("s", "str");
  w.AddStringArray("sa", {"x", "yz"});
  w.AddFloat32Array("fa", {1, 2});
  w.AddInt32Array("ia", {3, 4});
  w.AddTensor("t", {64}, GgmlType::kQ8_0, Pattern(9));
  const std::string path = TempPath("copy_src");
  ASSERT_TRUE(w.Write(path).ok());
  auto src = GgufFile::Open(path);
  ASSERT_TRUE(src.ok()) << src.status();

  GgufWriter copy((*src)->alignment());
  for (const std::string& key : (*src)->keys()) {
    copy.AddValue(key, *(*src)->Find(key));
  }
  for (const GgufTensorInfo& t : (*src)->tensors()) {
    const uint8_t* data = (*src)->TensorData(t);
    copy.AddTensor(t.name, t.dims, t.type, [data](uint8_t* dst, size_t n) {
      std::memcpy(dst, data, n);
      return absl::OkStatus();
    });
  }
  const std::string copy_path = TempPath("copy_dst");
  ASSERT_TRUE(copy.Write(copy_path).ok());
  EXPECT_EQ(ReadAll(copy_path), ReadAll(path));
  ::unlink(path.c_str());
  ::unlink(copy_path.c_str());
}

}  // namespace
}  // namespace flashd
