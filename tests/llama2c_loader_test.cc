// The llama2.c checkpoint loader refuses headers whose weights the file
// cannot hold, however large the numbers, with the numbers in the error.
#include <cstdint>
#include <cstring>
#include <string>

#include "common/base/mapped_file.h"
#include "common/model/model_loader.h"
#include "gtest/gtest.h"

namespace flashd {
namespace {

// A checkpoint of `bytes` bytes: the header, then zeros.
std::shared_ptr<const MappedFile> Checkpoint(const int32_t (&header)[7],
                                             size_t bytes) {
  std::string data(bytes, '\0');
  std::memcpy(data.data(), header, sizeof(header));
  return MappedFile::FromString(data);
}

// Every field in range, but the weights it describes (about 2^64 floats)
// overflow 64-bit size arithmetic: the size check must still see that the
// 4 MiB file cannot hold them.
TEST(Llama2cLoader, HugeHeaderInSmallFileIsRefused) {
  const int32_t header[7] = {1048576, 699048, 1048576, 524288,
                             1,       -1048576, 1};
  absl::StatusOr<std::unique_ptr<Model>> m =
      ModelFromLlama2c(Checkpoint(header, 4 << 20));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string err(m.status().message());
  EXPECT_NE(err.find("llama2.c checkpoint truncated"), std::string::npos) << err;
  EXPECT_NE(err.find("layers 1048576"), std::string::npos) << err;
  EXPECT_NE(err.find("file has 4194304"), std::string::npos) << err;
}

// The largest header the range checks allow still gives an exact count.
TEST(Llama2cLoader, NeededBytesAreExactAtTheLimits) {
  const int32_t header[7] = {1048576, 1048576, 1048576, 1048576,
                             1048576, 1048576, 1048576};
  absl::StatusOr<std::unique_ptr<Model>> m =
      ModelFromLlama2c(Checkpoint(header, 4096));
  ASSERT_FALSE(m.ok());
  const std::string err(m.status().message());
  // head_dim 1: odd, refused before the size check.
  EXPECT_NE(err.find("even-sized heads"), std::string::npos) << err;

  const int32_t ok_shape[7] = {1048576, 1048576, 1048576, 2, 1, 1048576,
                               1048576};
  m = ModelFromLlama2c(Checkpoint(ok_shape, 4096));
  ASSERT_FALSE(m.ok());
  const std::string err2(m.status().message());
  EXPECT_NE(err2.find("more than 2^64"), std::string::npos) << err2;
}

// A header that fits its file loads, and one float short does not.
TEST(Llama2cLoader, ExactSizeLoadsOneFloatShortFails) {
  // dim 8, hidden 16, 1 layer, 2 heads, 1 kv head, vocab 4, seq_len 2:
  // 32 + 8 + 64 + 2*32 + 64 + 8 + 3*128 + 8 + 2*4 floats.
  const int32_t header[7] = {8, 16, 1, 2, 1, 4, 2};
  const size_t floats = 32 + 8 + 64 + 64 + 64 + 8 + 384 + 8 + 8;
  EXPECT_TRUE(ModelFromLlama2c(Checkpoint(header, 28 + floats * 4)).ok());
  absl::StatusOr<std::unique_ptr<Model>> m =
      ModelFromLlama2c(Checkpoint(header, 28 + floats * 4 - 4));
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("truncated"), std::string::npos)
      << m.status();
}

}  // namespace
}  // namespace flashd
