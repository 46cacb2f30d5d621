// CalibrateIo, the cost model, and the profile's JSON form.
#include "common/io/io_calibration.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/io/posix_file.h"
#include "common/io/uring_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace flashd::io {
namespace {

using ::testing::HasSubstr;

class TempFile {
 public:
  explicit TempFile(size_t size)
      : path_(absl::StrCat("/var/tmp/flashd_calib_test_", ::getpid())) {
    std::ofstream(path_, std::ios::binary) << std::string(size, 'x');
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

CalibrationOptions Tiny() {
  CalibrationOptions o;
  o.seconds_per_cell = 0.002;
  o.max_bytes_per_cell = 8 << 20;
  return o;
}

void ExpectComplete(const IoProfile& p) {
  ASSERT_EQ(p.cells.size(), p.read_sizes.size() * p.queue_depths.size());
  for (size_t r = 0; r < p.read_sizes.size(); ++r) {
    for (size_t c = 0; c < p.queue_depths.size(); ++c) {
      const IoCell& cell = p.cell(r, c);
      EXPECT_EQ(cell.read_size, p.read_sizes[r]);
      EXPECT_EQ(cell.queue_depth, p.queue_depths[c]);
      EXPECT_GT(cell.bytes_per_second, 0);
      EXPECT_GT(cell.latency_mean_us, 0);
      EXPECT_GE(cell.latency_p99_us, cell.latency_mean_us * 0.0);
      EXPECT_GE(cell.reads, static_cast<uint64_t>(cell.queue_depth));
      EXPECT_LE(cell.bytes_per_second, p.best_bytes_per_second);
    }
  }
  EXPECT_GT(p.best_bytes_per_second, 0);
}

TEST(CalibrateIo, SmallFileTinyBudgetGivesACompleteTable) {
  TempFile file(8 << 20);
  absl::StatusOr<std::unique_ptr<UringFile>> f = UringFile::Open(file.path());
  ASSERT_TRUE(f.ok()) << f.status();
  int cells_seen = 0;
  CalibrationOptions o = Tiny();
  o.on_cell = [&](const IoCell&) { ++cells_seen; };
  absl::StatusOr<IoProfile> p = CalibrateIo(**f, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->read_sizes.size(), 6u);
  EXPECT_EQ(p->queue_depths.size(), 5u);
  EXPECT_EQ(cells_seen, 30);
  EXPECT_EQ(p->direct, (*f)->is_direct());
  ExpectComplete(*p);
  EXPECT_GT(p->EstimateSeconds(1 << 30, 1 << 20, 16), 0);
}

TEST(CalibrateIo, LeavesOutReadSizesLargerThanTheFile) {
  TempFile file(100000);
  absl::StatusOr<std::unique_ptr<PosixFile>> f = PosixFile::Open(file.path());
  ASSERT_TRUE(f.ok());
  CalibrationOptions o = Tiny();
  o.queue_depths = {1, 4};
  absl::StatusOr<IoProfile> p = CalibrateIo(**f, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->read_sizes, (std::vector<size_t>{4096, 16384, 65536}));
  EXPECT_FALSE(p->direct);
  ExpectComplete(*p);

  TempFile tiny(100);
  absl::StatusOr<std::unique_ptr<PosixFile>> t = PosixFile::Open(tiny.path());
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(CalibrateIo(**t, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// 2 read sizes x 2 depths with throughputs 100, 200 / 400, 800 (bytes/s).
IoProfile Synthetic() {
  IoProfile p;
  p.file = "/models/a \"quoted\" \\ name\t.gguf";
  p.file_size = 1234567890123;
  p.direct = true;
  p.alignment = 4096;
  p.read_sizes = {4096, 16384};
  p.queue_depths = {1, 4};
  const double bps[4] = {100, 200, 400, 800};
  for (int i = 0; i < 4; ++i) {
    IoCell c;
    c.read_size = p.read_sizes[i / 2];
    c.queue_depth = p.queue_depths[i % 2];
    c.bytes_per_second = bps[i];
    c.latency_mean_us = 10.5 + i;
    c.latency_p99_us = 20.25 + i;
    c.reads = 1000 + i;
    c.seconds = 0.1 / 3;
    p.cells.push_back(c);
  }
  p.best_bytes_per_second = 800;
  p.best_read_size = 16384;
  p.best_queue_depth = 4;
  return p;
}

TEST(IoProfile, EstimateSecondsInterpolatesAndClamps) {
  const IoProfile p = Synthetic();
  EXPECT_DOUBLE_EQ(p.EstimateSeconds(0, 4096, 1), 0);
  EXPECT_DOUBLE_EQ(p.EstimateSeconds(800, 4096, 1), 8);     // grid point
  EXPECT_DOUBLE_EQ(p.EstimateSeconds(800, 16384, 4), 1);    // grid point
  EXPECT_DOUBLE_EQ(p.EstimateSeconds(800, 1 << 30, 999), 1);  // clamped
  EXPECT_DOUBLE_EQ(p.EstimateSeconds(800, 512, 1), 8);        // clamped
  // Halfway in log2 between 4 KiB and 16 KiB at depth 1: 250 bytes/s.
  EXPECT_DOUBLE_EQ(p.EstimateSeconds(1000, 8192, 1), 4);
  // Halfway in log2 between depths 1 and 4 at 4 KiB: 150 bytes/s.
  EXPECT_DOUBLE_EQ(p.EstimateSeconds(150, 4096, 2), 1);
}

void ExpectSameProfile(const IoProfile& a, const IoProfile& b) {
  EXPECT_EQ(a.file, b.file);
  EXPECT_EQ(a.file_size, b.file_size);
  EXPECT_EQ(a.direct, b.direct);
  EXPECT_EQ(a.alignment, b.alignment);
  EXPECT_EQ(a.read_sizes, b.read_sizes);
  EXPECT_EQ(a.queue_depths, b.queue_depths);
  ASSERT_EQ(a.cells.size(), b.cells.size());
  for (size_t i = 0; i < a.cells.size(); ++i) {
    EXPECT_EQ(a.cells[i].read_size, b.cells[i].read_size);
    EXPECT_EQ(a.cells[i].queue_depth, b.cells[i].queue_depth);
    EXPECT_EQ(a.cells[i].bytes_per_second, b.cells[i].bytes_per_second);
    EXPECT_EQ(a.cells[i].latency_mean_us, b.cells[i].latency_mean_us);
    EXPECT_EQ(a.cells[i].latency_p99_us, b.cells[i].latency_p99_us);
    EXPECT_EQ(a.cells[i].reads, b.cells[i].reads);
    EXPECT_EQ(a.cells[i].seconds, b.cells[i].seconds);
  }
  EXPECT_EQ(a.best_bytes_per_second, b.best_bytes_per_second);
  EXPECT_EQ(a.best_read_size, b.best_read_size);
  EXPECT_EQ(a.best_queue_depth, b.best_queue_depth);
}

TEST(IoProfileJson, RoundTripsExactly) {
  const IoProfile p = Synthetic();
  const std::string json = IoProfileToJson(p);
  absl::StatusOr<IoProfile> back = IoProfileFromJson(json);
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
  ExpectSameProfile(p, *back);
  EXPECT_EQ(IoProfileToJson(*back), json);

  TempFile file(8 << 20);
  absl::StatusOr<std::unique_ptr<UringFile>> f = UringFile::Open(file.path());
  ASSERT_TRUE(f.ok());
  absl::StatusOr<IoProfile> measured = CalibrateIo(**f, Tiny());
  ASSERT_TRUE(measured.ok());
  absl::StatusOr<IoProfile> measured_back =
      IoProfileFromJson(IoProfileToJson(*measured));
  ASSERT_TRUE(measured_back.ok()) << measured_back.status();
  ExpectSameProfile(*measured, *measured_back);
}

TEST(IoProfileJson, RejectsMalformedInput) {
  const std::string good = IoProfileToJson(Synthetic());
  struct Case {
    std::string json;
    std::string want;  // substring of the error
  };
  const std::vector<Case> cases = {
      {"", "unexpected end of input"},
      {"not json", "unexpected character"},
      {good.substr(0, good.size() / 2), "at byte"},
      {good + "x", "trailing characters"},
      {"[1, 2]", "profile is not an object"},
      {absl::StrReplaceAll(good, {{"\"version\": 1", "\"version\": 2"}}),
       "version 2"},
      {absl::StrReplaceAll(good, {{"\"alignment\"", "\"alignmnt\""}}),
       "lacks key \"alignment\""},
      {absl::StrReplaceAll(good, {{"\"direct\": true", "\"direct\": 1"}}),
       "direct has the wrong type"},
      {absl::StrReplaceAll(good, {{"\"queue_depths\": [1, 4]",
                                   "\"queue_depths\": [1, 4, 8]"}}),
       "cells has 4 entries"},
      {absl::StrReplaceAll(good, {{"\"queue_depths\": [1, 4]",
                                   "\"queue_depths\": [4, 1]"}}),
       "not ascending"},
      {absl::StrReplaceAll(good, {{"\"bytes_per_second\": 100,",
                                   "\"bytes_per_second\": -100,"}}),
       "not a positive finite number"},
      {absl::StrReplaceAll(good, {{"\"reads\": 1000,", "\"reads\": 1000, "
                                                        "\"extra\": 1,"}}),
       "unknown key \"extra\""},
      {absl::StrReplaceAll(good, {{"\"reads\": 1000,", "\"reads\": 01000,"}}),
       "expected ',' or '}'"},
      {absl::StrReplaceAll(good, {{"\"file_size\"", "\"file\": \"x\", "
                                                     "\"file_size\""}}),
       "duplicate key"},
      {absl::StrReplaceAll(good, {{"\"queue_depth\": 4}", "\"queue_depth\": 8}"}}),
       "not a cell of the table"},
      {absl::StrReplaceAll(good, {{"\"queue_depth\": 4}", "\"queue_depth\": 1}"}}),
       "does not match cell"},
      {std::string(100, '[') + std::string(100, ']'), "nesting too deep"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<IoProfile> p = IoProfileFromJson(c.json);
    ASSERT_FALSE(p.ok()) << c.json;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(p.status().message()), HasSubstr(c.want))
        << c.json;
  }
}

}  // namespace
}  // namespace flashd::io
