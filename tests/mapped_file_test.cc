#include "common/base/mapped_file.h"

#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace flashd {
namespace {

TEST(MappedFile, MappedAndResidentGiveTheSameBytes) {
  const std::string path = ::testing::TempDir() + "/mapped_file_test.bin";
  std::string bytes(3 * 1024 * 1024 + 17, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 31);
  std::ofstream(path, std::ios::binary) << bytes;
  for (bool resident : {false, true}) {
    absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(path, resident);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ((*f)->size(), bytes.size());
    EXPECT_EQ((*f)->bytes(), bytes) << "resident=" << resident;
  }
  std::remove(path.c_str());
}

TEST(MappedFile, ErrorsSayWhatAndWhere) {
  absl::StatusOr<std::unique_ptr<MappedFile>> f =
      MappedFile::Open("/nonexistent/x.gguf", true);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("/nonexistent/x.gguf"), std::string::npos);
  f = MappedFile::Open(::testing::TempDir());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string empty = ::testing::TempDir() + "/empty.bin";
  std::ofstream{empty};
  f = MappedFile::Open(empty, true);
  EXPECT_NE(f.status().message().find("is empty"), std::string::npos);
  std::remove(empty.c_str());
}

}  // namespace
}  // namespace flashd
