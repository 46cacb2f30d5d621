// ReadPlanner: coverage, alignment, bounds, coalescing and the cost model.
#include "common/flash/read_planner.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace flashd::flash {
namespace {

constexpr size_t kBundle = 6400;  // not a multiple of 4096
constexpr int32_t kNff = 1000;
constexpr uint64_t kArrayOffset = 3 * 4096;

ReadPlanner MakePlanner(size_t alignment, size_t max_read,
                        const io::IoProfile* profile = nullptr,
                        int32_t n_ff = kNff, size_t bundle = kBundle) {
  ReadPlannerOptions o;
  o.alignment = alignment;
  o.max_read_bytes = max_read;
  o.profile = profile;
  absl::StatusOr<ReadPlanner> p =
      ReadPlanner::Create({kArrayOffset, bundle, n_ff}, o);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

// A table over read sizes 4 KiB .. 1 MiB at queue depths 1 and 32 for a
// device where one read of s bytes takes latency + s / bandwidth seconds.
io::IoProfile MakeProfile(double latency, double bandwidth) {
  io::IoProfile p;
  p.read_sizes = {4096, 16384, 65536, 262144, size_t{1} << 20};
  p.queue_depths = {1, 32};
  for (size_t s : p.read_sizes) {
    for (int qd = 0; qd < 2; ++qd) {
      io::IoCell c;
      c.bytes_per_second = s / (latency + s / bandwidth);
      p.cells.push_back(c);
    }
  }
  return p;
}

// Checks every invariant of `plan` for `ids`, and that reading the planned
// ranges of a file whose bundle i is filled with byte (i % 251) gives each
// neuron's bytes at OffsetInRead.
void ExpectValidPlan(const ReadPlanner& planner,
                     const std::vector<int32_t>& ids, const ReadPlan& plan) {
  const BundleArray& a = planner.array();
  const size_t align = planner.options().alignment;
  const uint64_t array_end = a.offset + uint64_t{a.bundle_bytes} * a.n_ff;
  const uint64_t limit = (array_end + align - 1) / align * align;
  std::vector<uint8_t> file(limit, 0xEE);
  for (int32_t i = 0; i < a.n_ff; ++i) {
    std::memset(&file[a.offset + uint64_t{a.bundle_bytes} * i], i % 251,
                a.bundle_bytes);
  }
  int32_t next = 0;
  uint64_t planned = 0;
  for (const PlannedRead& r : plan.reads()) {
    EXPECT_EQ(r.offset % align, 0u);
    EXPECT_EQ(r.length % align, 0u);
    EXPECT_GE(r.offset, a.offset);
    EXPECT_LE(r.offset + r.length, limit);
    EXPECT_EQ(r.first, next) << "neurons covered in order, exactly once";
    ASSERT_GE(r.count, 1);
    if (r.count > 1) {
      EXPECT_LE(r.length, planner.options().max_read_bytes);
    }
    planned += r.length;
    for (int32_t k = r.first; k < r.first + r.count; ++k) {
      const size_t at = planner.OffsetInRead(r, ids[k]);
      ASSERT_LE(at + a.bundle_bytes, r.length) << "neuron " << ids[k];
      const uint8_t* p = &file[r.offset + at];
      EXPECT_EQ(p[0], ids[k] % 251);
      EXPECT_EQ(p[a.bundle_bytes - 1], ids[k] % 251);
      if (at > 0) {
        EXPECT_NE(p[-1], ids[k] % 251);  // starts where it should
      }
    }
    next = r.first + r.count;
  }
  EXPECT_EQ(next, static_cast<int32_t>(ids.size()));
  EXPECT_EQ(plan.planned_bytes(), planned);
  EXPECT_EQ(plan.wanted_bytes(), ids.size() * a.bundle_bytes);
}

ReadPlan PlanOf(const ReadPlanner& p, const std::vector<int32_t>& ids) {
  ReadPlan plan;
  plan.Reserve(ReadPlanner::MaxReads(ids.size()));
  p.Plan(ids, &plan);
  ExpectValidPlan(p, ids, plan);
  return plan;
}

TEST(ReadPlannerTest, EmptyInput) {
  const ReadPlanner p = MakePlanner(4096, 1 << 20);
  ReadPlan plan;
  p.Plan({}, &plan);
  EXPECT_EQ(plan.size(), 0u);
  EXPECT_EQ(plan.planned_bytes(), 0u);
  EXPECT_EQ(plan.wanted_bytes(), 0u);
}

TEST(ReadPlannerTest, SingleNeuronIsAlignedAndInside) {
  const ReadPlanner p = MakePlanner(4096, 1 << 20);
  // Neuron 1 is bytes [6400, 12800) of the array: pages 1..3.
  const ReadPlan plan = PlanOf(p, {1});
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].offset, kArrayOffset + 4096);
  EXPECT_EQ(plan[0].length, 3 * 4096u);
  EXPECT_EQ(p.OffsetInRead(plan[0], 1), 6400u - 4096u);
  // Buffered: exact bytes.
  const ReadPlan exact = PlanOf(MakePlanner(1, 1 << 20), {1});
  EXPECT_EQ(exact[0].offset, kArrayOffset + 6400);
  EXPECT_EQ(exact[0].length, kBundle);
}

TEST(ReadPlannerTest, LastNeuronStaysInsidePaddedArray) {
  const ReadPlanner p = MakePlanner(4096, 1 << 20);
  const ReadPlan plan = PlanOf(p, {kNff - 1});
  const uint64_t end = kArrayOffset + kBundle * kNff;  // 6,412,288
  EXPECT_EQ(plan[0].offset + plan[0].length, (end + 4095) / 4096 * 4096);
}

TEST(ReadPlannerTest, AdjacentNeuronsShareARead) {
  // Even with a (strange) profile under which larger reads are slower, so
  // the cost model alone would never merge.
  io::IoProfile perverse = MakeProfile(0, 1e9);
  for (size_t i = 0; i < perverse.cells.size(); ++i) {
    perverse.cells[i].bytes_per_second = 1e9 / (1 + i);
  }
  const ReadPlanner p = MakePlanner(4096, 1 << 20, &perverse);
  const ReadPlan plan = PlanOf(p, {10, 11, 12, 500, 501});
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].count, 3);
  EXPECT_EQ(plan[1].first, 3);
  EXPECT_EQ(plan[1].count, 2);
}

TEST(ReadPlannerTest, FixedGapRuleWithoutProfile) {
  const ReadPlanner p = MakePlanner(4096, 1 << 20);
  // Gap of 10 bundles = 64,000 bytes <= 64 KiB: merged.
  EXPECT_EQ(PlanOf(p, {100, 111}).size(), 1u);
  // Gap of 11 bundles = 70,400 bytes: two reads.
  EXPECT_EQ(PlanOf(p, {100, 112}).size(), 2u);
}

TEST(ReadPlannerTest, SlowSmallReadsMergeGaps) {
  // Latency-bound device: 1 ms per read, 2 GB/s.
  const io::IoProfile slow = MakeProfile(1e-3, 2e9);
  const ReadPlanner p = MakePlanner(4096, 1 << 20, &slow);
  // Gap of 50 bundles (320 KB): far above the fixed 64 KiB rule.
  const ReadPlan plan = PlanOf(p, {100, 151, 202});
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_GT(plan.planned_bytes(), 100 * kBundle);
}

TEST(ReadPlannerTest, FastSmallReadsDoNotMerge) {
  // No per-read cost: only bytes count.
  const io::IoProfile fast = MakeProfile(0, 2e9);
  const ReadPlanner p = MakePlanner(4096, 1 << 20, &fast);
  // Gaps of 2 bundles: reading them would cost more bytes at equal speed.
  const ReadPlan plan = PlanOf(p, {100, 103, 106});
  EXPECT_EQ(plan.size(), 3u);
  EXPECT_LE(plan.planned_bytes(), 3 * 3 * 4096u);
}

TEST(ReadPlannerTest, MaxReadSizeIsHonoured) {
  const io::IoProfile slow = MakeProfile(1e-3, 2e9);
  const io::IoProfile* profiles[] = {nullptr, &slow};
  for (size_t max_read : {size_t{16384}, size_t{65536}, size_t{262144}}) {
    for (const io::IoProfile* prof : profiles) {
      const ReadPlanner p = MakePlanner(4096, max_read, prof);
      std::vector<int32_t> ids;
      for (int32_t i = 0; i < kNff; i += 1 + i % 3) ids.push_back(i);
      const ReadPlan plan = PlanOf(p, ids);  // checks length <= max_read
      EXPECT_GE(plan.size(), ids.size() * kBundle / max_read);
    }
  }
}

TEST(ReadPlannerTest, BundleLargerThanMaxReadGetsItsOwnRead) {
  const ReadPlanner p = MakePlanner(4096, 4096);
  const ReadPlan plan = PlanOf(p, {0, 1, 2});
  ASSERT_EQ(plan.size(), 3u);
  for (const PlannedRead& r : plan.reads()) EXPECT_EQ(r.count, 1);
}

TEST(ReadPlannerTest, AllNeuronsGiveFewLargeReads) {
  const ReadPlanner p = MakePlanner(4096, 1 << 20);
  std::vector<int32_t> ids(kNff);
  for (int32_t i = 0; i < kNff; ++i) ids[i] = i;
  const ReadPlan plan = PlanOf(p, ids);
  // 6.4 MB in reads of at most 1 MiB holding whole bundles: 7 reads.
  EXPECT_EQ(plan.size(), 7u);
  EXPECT_LT(plan.planned_bytes(), plan.wanted_bytes() + 7 * 8192);
}

TEST(ReadPlannerTest, RandomSubsetsKeepEveryInvariant) {
  std::mt19937 rng(7);
  const io::IoProfile slow = MakeProfile(1e-4, 2e9);
  for (int iter = 0; iter < 200; ++iter) {
    const size_t align = iter % 2 ? 4096 : 1;
    const size_t max_read =
        align == 1 ? 7000 + rng() % 400000 : 4096 * (1 + rng() % 100);
    const size_t bundle = 1 + rng() % 20000;
    const ReadPlanner p =
        MakePlanner(align, max_read, iter % 3 ? &slow : nullptr, 300, bundle);
    const double density = (rng() % 100) / 100.0;
    std::vector<int32_t> ids;
    for (int32_t i = 0; i < 300; ++i) {
      if (std::uniform_real_distribution<double>()(rng) < density) {
        ids.push_back(i);
      }
    }
    SCOPED_TRACE(testing::Message() << "iter " << iter);
    PlanOf(p, ids);
  }
}

TEST(ReadPlannerTest, PlanDenseChunksARange) {
  const ReadPlanner p = MakePlanner(4096, 1 << 20);
  ReadPlan plan;
  plan.Reserve(ReadPlanner::MaxReads(200));
  p.PlanDense(100, 200, 64 << 10, &plan);
  std::vector<int32_t> ids(200);
  for (int32_t i = 0; i < 200; ++i) ids[i] = 100 + i;
  ExpectValidPlan(p, ids, plan);
  for (const PlannedRead& r : plan.reads()) EXPECT_LE(r.length, 64u << 10);
  // A 64 KiB chunk holds 8 to 10 bundles of 6400, depending on alignment.
  EXPECT_GE(plan.size(), 200u / 10);
  EXPECT_LE(plan.size(), 200u / 8 + 1);
}

TEST(ReadPlannerTest, CreateRejectsBadOptions) {
  ReadPlannerOptions o;
  o.alignment = 4096;
  EXPECT_FALSE(ReadPlanner::Create({100, kBundle, kNff}, o).ok());  // offset
  o.max_read_bytes = 5000;
  EXPECT_FALSE(ReadPlanner::Create({4096, kBundle, kNff}, o).ok());
  o.max_read_bytes = 8192;
  EXPECT_FALSE(ReadPlanner::Create({4096, 0, kNff}, o).ok());
  o.queue_depth = 0;
  EXPECT_FALSE(ReadPlanner::Create({4096, kBundle, kNff}, o).ok());
  o.queue_depth = 4;
  io::IoProfile empty;
  o.profile = &empty;
  const absl::Status s = ReadPlanner::Create({4096, kBundle, kNff}, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("incomplete table"), absl::string_view::npos);
}

}  // namespace
}  // namespace flashd::flash
