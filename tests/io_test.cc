// RandomAccessFile implementations: PosixFile, UringFile, FaultInjectionFile.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/aligned_buffer.h"
#include "common/io/fault_injection_file.h"
#include "common/io/posix_file.h"
#include "common/io/random_access_file.h"
#include "common/io/uring_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/random_bytes_file.h"

namespace flashd::io {
namespace {

using ::testing::HasSubstr;

// Known bytes (seeded by the size) under /var/tmp or `dir`.
class TempFile : public testing::RandomBytesFile {
 public:
  explicit TempFile(size_t size, const std::string& dir = "/var/tmp")
      : RandomBytesFile(size, static_cast<uint32_t>(size), dir) {}
};

std::string AsString(const uint8_t* p, size_t n) {
  return std::string(reinterpret_cast<const char*>(p), n);
}

constexpr size_t kFileSize = (3 << 20) + 1234;  // unaligned tail

std::unique_ptr<UringFile> OpenUring(const std::string& path, int qd,
                                     bool direct = true,
                                     size_t max_sqe = size_t{1} << 30) {
  UringFileOptions o;
  o.queue_depth = qd;
  o.direct = direct;
  o.max_bytes_per_sqe = max_sqe;
  absl::StatusOr<std::unique_ptr<UringFile>> f = UringFile::Open(path, o);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

// Reads `count` random aligned requests of 4 KiB..64 KiB through `f` in one
// batch and compares with the file's bytes.
void ExpectBatchMatches(RandomAccessFile& f, const TempFile& file, int count) {
  constexpr size_t kA = 4096;
  std::mt19937 rng(count);
  absl::StatusOr<AlignedBuffer> buf = AlignedBuffer::Create(count * 16 * kA);
  ASSERT_TRUE(buf.ok());
  std::vector<ReadRequest> reqs(count);
  for (int i = 0; i < count; ++i) {
    const size_t n = kA * (1 + rng() % 16);
    const uint64_t offset = kA * (rng() % ((file.bytes().size() - n) / kA));
    reqs[i] = {offset, n, buf->data() + i * 16 * kA, absl::OkStatus()};
  }
  ASSERT_TRUE(f.ReadBatch(absl::MakeSpan(reqs)).ok());
  for (const ReadRequest& r : reqs) {
    ASSERT_TRUE(r.status.ok()) << r.status;
    ASSERT_EQ(AsString(r.dst, r.n), file.Slice(r.offset, r.n))
        << "offset " << r.offset << " n " << r.n;
  }
}

TEST(PosixFile, ReadAndBatchEqualFileContents) {
  TempFile file(kFileSize);
  absl::StatusOr<std::unique_ptr<PosixFile>> f = PosixFile::Open(file.path());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->size(), kFileSize);
  EXPECT_EQ((*f)->required_alignment(), 1u);
  std::vector<uint8_t> buf(kFileSize);
  ASSERT_TRUE((*f)->Read(0, kFileSize, buf.data()).ok());
  EXPECT_EQ(AsString(buf.data(), kFileSize), file.bytes());
  ExpectBatchMatches(**f, file, 100);
}

TEST(PosixFile, OpenErrorsNameThePath) {
  absl::StatusOr<std::unique_ptr<PosixFile>> f =
      PosixFile::Open("/nonexistent/w.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("/nonexistent/w.gguf"));
  absl::StatusOr<std::unique_ptr<UringFile>> u = UringFile::Open("/var/tmp");
  ASSERT_FALSE(u.ok());
  EXPECT_THAT(std::string(u.status().message()), HasSubstr("not a regular file"));
}

TEST(UringFile, DirectBatchEqualsPreadWithSmallAndLargeQueues) {
  TempFile file(kFileSize);
  for (int qd : {1, 4, 256}) {
    std::unique_ptr<UringFile> f = OpenUring(file.path(), qd);
    ASSERT_NE(f, nullptr);
    if (!f->is_direct()) {
      GTEST_SKIP() << "O_DIRECT refused on /var/tmp: "
                   << f->direct_fallback_reason();
    }
    EXPECT_EQ(f->required_alignment() % 4096, 0u);
    ExpectBatchMatches(*f, file, 200);  // qd 4 < 200 < 256
    ExpectBatchMatches(*f, file, 3);    // reuse of the ring, tiny batch
  }
}

TEST(UringFile, BufferedBatchEqualsPread) {
  TempFile file(kFileSize);
  std::unique_ptr<UringFile> f = OpenUring(file.path(), 8, /*direct=*/false);
  ASSERT_NE(f, nullptr);
  EXPECT_FALSE(f->is_direct());
  EXPECT_TRUE(f->direct_fallback_reason().empty());
  EXPECT_EQ(f->required_alignment(), 1u);
  ExpectBatchMatches(*f, file, 50);
  std::vector<uint8_t> buf(10);
  ASSERT_TRUE(f->Read(kFileSize - 10, 10, buf.data()).ok());  // unaligned ok
  EXPECT_EQ(AsString(buf.data(), 10), file.Slice(kFileSize - 10, 10));
}

TEST(UringFile, ReadsLongerThanOneSqeAreCompletedInPieces) {
  // max_bytes_per_sqe = 4096 makes every 64 KiB read come back "short" 15
  // times; the remainder path must finish each one.
  TempFile file(kFileSize);
  std::unique_ptr<UringFile> f = OpenUring(file.path(), 4, true, 4096);
  ASSERT_NE(f, nullptr);
  ExpectBatchMatches(*f, file, 20);
}

TEST(UringFile, DirectTailWithUnalignedLengthIsRead) {
  TempFile file(kFileSize);
  std::unique_ptr<UringFile> f = OpenUring(file.path(), 4);
  ASSERT_NE(f, nullptr);
  const uint64_t offset = kFileSize / 4096 * 4096;
  const size_t n = kFileSize - offset;
  absl::StatusOr<AlignedBuffer> buf = AlignedBuffer::Create(4096);
  ASSERT_TRUE(buf.ok());
  ASSERT_TRUE(f->Read(offset, n, buf->data()).ok());
  EXPECT_EQ(AsString(buf->data(), n), file.Slice(offset, n));
  ASSERT_TRUE(f->Read(0, 0, buf->data()).ok());  // empty read
}

TEST(UringFile, UnalignedRequestNamesTheField) {
  TempFile file(kFileSize);
  std::unique_ptr<UringFile> f = OpenUring(file.path(), 4);
  ASSERT_NE(f, nullptr);
  if (!f->is_direct()) GTEST_SKIP() << f->direct_fallback_reason();
  absl::StatusOr<AlignedBuffer> buf = AlignedBuffer::Create(4 * 8192);
  ASSERT_TRUE(buf.ok());
  uint8_t* d = buf->data();
  std::vector<ReadRequest> reqs = {
      {100, 4096, d, {}},                 // offset
      {4096, 1000, d + 8192, {}},         // length
      {8192, 4096, d + 16384 + 1, {}},    // buffer address
      {12288, 4096, d + 24576, {}},       // fine
  };
  absl::Status s = f->ReadBatch(absl::MakeSpan(reqs));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("offset 100 is not a multiple"));
  EXPECT_THAT(std::string(reqs[1].status.message()),
              HasSubstr("length 1000 is not a multiple"));
  EXPECT_THAT(std::string(reqs[2].status.message()),
              HasSubstr("buffer address"));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(reqs[i].status.code(), absl::StatusCode::kInvalidArgument);
  }
  ASSERT_TRUE(reqs[3].status.ok()) << reqs[3].status;
  EXPECT_EQ(AsString(reqs[3].dst, 4096), file.Slice(12288, 4096));
}

TEST(RandomAccessFile, ReadPastEndIsOutOfRange) {
  TempFile file(kFileSize);
  absl::StatusOr<std::unique_ptr<PosixFile>> posix = PosixFile::Open(file.path());
  ASSERT_TRUE(posix.ok());
  std::unique_ptr<UringFile> uring = OpenUring(file.path(), 4);
  ASSERT_NE(uring, nullptr);
  absl::StatusOr<AlignedBuffer> buf = AlignedBuffer::Create(8192);
  ASSERT_TRUE(buf.ok());
  const uint64_t offset = kFileSize / 4096 * 4096;
  for (RandomAccessFile* f : {static_cast<RandomAccessFile*>(posix->get()),
                              static_cast<RandomAccessFile*>(uring.get())}) {
    absl::Status s = f->Read(offset, 8192, buf->data());
    EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
    const std::string msg(s.message());
    EXPECT_THAT(msg, HasSubstr(absl::StrCat("offset ", offset)));
    EXPECT_THAT(msg, HasSubstr("length 8192"));
    EXPECT_THAT(msg, HasSubstr(absl::StrCat("size ", kFileSize)));
    EXPECT_EQ(f->Read(uint64_t{1} << 62, 4096, buf->data()).code(),
              absl::StatusCode::kOutOfRange);
  }
}

TEST(PosixFile, CompletesShortAndInterruptedReadsFromTheOs) {
  TempFile file(kFileSize);
  FaultPlan plan;
  PosixFile::Options o;
  o.pread = FaultyPread(&plan);
  absl::StatusOr<std::unique_ptr<PosixFile>> f = PosixFile::Open(file.path(), o);
  ASSERT_TRUE(f.ok());
  plan.ShortRead(0, 10);    // first pread returns 10 bytes
  plan.Interrupt(1);        // second is interrupted (EINTR)
  plan.ShortRead(2, 4097);  // third returns 4097 bytes
  std::vector<uint8_t> buf(100000);
  ASSERT_TRUE((*f)->Read(5000, buf.size(), buf.data()).ok());
  EXPECT_EQ(AsString(buf.data(), buf.size()), file.Slice(5000, buf.size()));
  EXPECT_EQ(plan.reads_seen(), 4);  // 10 + EINTR + 4097 + the rest
}

TEST(FaultInjectionFile, ShortReadIsReportedAboveTheOsLayer) {
  TempFile file(kFileSize);
  absl::StatusOr<std::unique_ptr<PosixFile>> base = PosixFile::Open(file.path());
  ASSERT_TRUE(base.ok());
  FaultInjectionFile f(std::move(*base));
  f.plan().ShortRead(1, 100);
  std::vector<uint8_t> a(1000, 0), b(1000, 0xAB);
  std::vector<ReadRequest> reqs = {{0, 1000, a.data(), {}},
                                   {7000, 1000, b.data(), {}}};
  absl::Status s = f.ReadBatch(absl::MakeSpan(reqs));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("at offset 7000: got 100 of 1000 bytes"));
  ASSERT_TRUE(reqs[0].status.ok());
  EXPECT_EQ(AsString(a.data(), 1000), file.Slice(0, 1000));
  EXPECT_EQ(AsString(b.data(), 100), file.Slice(7000, 100));  // delivered
  EXPECT_EQ(b[100], 0xAB);                                     // untouched
}

TEST(FaultInjectionFile, EioOnARangeFailsOnlyOverlappingRequests) {
  TempFile file(kFileSize);
  std::unique_ptr<UringFile> base = OpenUring(file.path(), 8);
  ASSERT_NE(base, nullptr);
  FaultInjectionFile f(std::move(base));
  f.plan().FailRange(40000, 40001);
  absl::StatusOr<AlignedBuffer> buf = AlignedBuffer::Create(10 * 8192);
  ASSERT_TRUE(buf.ok());
  std::vector<ReadRequest> reqs;
  for (int i = 0; i < 10; ++i) {
    reqs.push_back({uint64_t(i) * 8192, 8192, buf->data() + i * 8192, {}});
  }
  absl::Status s = f.ReadBatch(absl::MakeSpan(reqs));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("at offset 32768"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("Input/output error"));
  for (int i = 0; i < 10; ++i) {
    if (i == 4) {
      EXPECT_FALSE(reqs[i].status.ok());
      continue;
    }
    ASSERT_TRUE(reqs[i].status.ok()) << i << ": " << reqs[i].status;
    EXPECT_EQ(AsString(reqs[i].dst, 8192), file.Slice(i * 8192, 8192));
  }
}

TEST(PosixFile, EioFromTheOsNamesTheOffset) {
  TempFile file(kFileSize);
  FaultPlan plan;
  PosixFile::Options o;
  o.pread = FaultyPread(&plan);
  absl::StatusOr<std::unique_ptr<PosixFile>> f = PosixFile::Open(file.path(), o);
  ASSERT_TRUE(f.ok());
  plan.FailRange(1 << 20, (1 << 20) + 1);
  std::vector<uint8_t> buf(4096);
  absl::Status s = (*f)->Read(1 << 20, 4096, buf.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("at offset 1048576"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(file.path()));
}

TEST(FaultInjectionFile, FlipsOneBitInDeliveredData) {
  TempFile file(kFileSize);
  absl::StatusOr<std::unique_ptr<PosixFile>> base = PosixFile::Open(file.path());
  ASSERT_TRUE(base.ok());
  FaultInjectionFile f(std::move(*base));
  f.plan().FlipBit(5005, 3);
  std::vector<uint8_t> buf(100);
  ASSERT_TRUE(f.Read(5000, 100, buf.data()).ok());
  std::string want = file.Slice(5000, 100);
  want[5] = static_cast<char>(want[5] ^ 8);
  EXPECT_EQ(AsString(buf.data(), 100), want);
  ASSERT_TRUE(f.Read(6000, 100, buf.data()).ok());  // outside: untouched
  EXPECT_EQ(AsString(buf.data(), 100), file.Slice(6000, 100));
}

TEST(UringFile, TmpfsFallsBackOrReadsDirect) {
  struct stat st;
  if (::stat("/dev/shm", &st) != 0) GTEST_SKIP() << "no /dev/shm";
  TempFile file(kFileSize, "/dev/shm");
  std::unique_ptr<UringFile> f = OpenUring(file.path(), 4);
  ASSERT_NE(f, nullptr);
  if (f->is_direct()) {
    std::printf("note: this kernel's tmpfs accepts O_DIRECT\n");
  } else {
    EXPECT_THAT(f->direct_fallback_reason(), HasSubstr("refuses O_DIRECT"));
    EXPECT_EQ(f->required_alignment(), 1u);
  }
  ExpectBatchMatches(*f, file, 30);
}

TEST(AlignedBuffer, IsAlignedAndMovable) {
  absl::StatusOr<AlignedBuffer> a = AlignedBuffer::Create(10000);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % 4096, 0u);
  EXPECT_EQ(a->size(), 10000u);
  AlignedBuffer b = std::move(*a);
  EXPECT_EQ(a->data(), nullptr);
  EXPECT_EQ(b.size(), 10000u);
}

}  // namespace
}  // namespace flashd::io
