#include "common/flash/read_planner.h"

#include "absl/strings/str_cat.h"
#include "common/base/check.h"

namespace flashd::flash {

void ReadPlan::Add(const PlannedRead& r) {
  // Growing here would allocate per call: the caller reserved too little.
  FLASHD_CHECK(reads_.size() < reads_.capacity());
  reads_.push_back(r);
  planned_bytes_ += r.length;
}

absl::StatusOr<ReadPlanner> ReadPlanner::Create(
    const BundleArray& array, const ReadPlannerOptions& options) {
  if (array.bundle_bytes == 0 || array.n_ff < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "read planner: bundle array needs bundle_bytes > 0 and n_ff >= 0 "
        "(got bundle_bytes ",
        array.bundle_bytes, ", n_ff ", array.n_ff, ")"));
  }
  const size_t a = options.alignment;
  if (a == 0) {
    return absl::InvalidArgumentError("read planner: alignment is 0");
  }
  if (array.offset % a != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("read planner: bundle array offset ", array.offset,
                     " is not a multiple of the alignment ", a));
  }
  if (options.max_read_bytes == 0 || options.max_read_bytes % a != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("read planner: max_read_bytes ", options.max_read_bytes,
                     " is not a positive multiple of the alignment ", a));
  }
  if (options.queue_depth < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "read planner: queue_depth ", options.queue_depth, " is below 1"));
  }
  if (options.profile != nullptr) {
    const io::IoProfile& p = *options.profile;
    if (p.read_sizes.empty() || p.queue_depths.empty() ||
        p.cells.size() != p.read_sizes.size() * p.queue_depths.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "read planner: I/O profile of ", p.file, " has an incomplete table (",
          p.read_sizes.size(), " read sizes x ", p.queue_depths.size(),
          " queue depths, ", p.cells.size(), " cells)"));
    }
  }
  return ReadPlanner(array, options);
}

bool ReadPlanner::MergeGap(uint64_t a, uint64_t b, uint64_t merged,
                           uint64_t gap) const {
  const io::IoProfile* p = options_.profile;
  if (p == nullptr) return gap <= options_.max_gap_bytes_without_profile;
  const int qd = options_.queue_depth;
  const double one = p->EstimateSeconds(merged, merged, qd);
  const double two =
      p->EstimateSeconds(a, a, qd) + p->EstimateSeconds(b, b, qd);
  return one <= two;
}

template <typename IdOf>
void ReadPlanner::PlanList(int32_t n, IdOf id_of, size_t max_read,
                           ReadPlan* plan) const {
  plan->Clear();
  plan->wanted_bytes_ = static_cast<uint64_t>(n) * array_.bundle_bytes;
  if (n == 0) return;
  const uint64_t base = array_.offset;
  const uint64_t bb = array_.bundle_bytes;
  // The read being built: neurons [first, first + count), raw bundle bytes
  // [begin, end) of the file.
  int32_t first = 0, count = 0, prev = -1;
  uint64_t begin = 0, end = 0;
  auto emit = [&] {
    const uint64_t lo = AlignDown(begin);
    plan->Add({lo, static_cast<size_t>(AlignUp(end) - lo), first, count});
  };
  for (int32_t k = 0; k < n; ++k) {
    const int32_t id = id_of(k);
    FLASHD_CHECK(id > prev && id < array_.n_ff);
    const uint64_t b0 = base + BundleBegin(id);
    const uint64_t b1 = b0 + bb;
    bool join = false;
    if (count > 0) {
      const uint64_t merged = AlignUp(b1) - AlignDown(begin);
      if (merged <= max_read) {
        join = id == prev + 1 ||
               MergeGap(AlignUp(end) - AlignDown(begin),
                        AlignUp(b1) - AlignDown(b0), merged, b0 - end);
      }
    }
    if (join) {
      end = b1;
      ++count;
    } else {
      if (count > 0) emit();
      first = k;
      count = 1;
      begin = b0;
      end = b1;
    }
    prev = id;
  }
  emit();
}

void ReadPlanner::Plan(absl::Span<const int32_t> ids, ReadPlan* plan) const {
  FLASHD_CHECK(ids.size() <= static_cast<size_t>(array_.n_ff));
  PlanList(
      static_cast<int32_t>(ids.size()), [&](int32_t k) { return ids[k]; },
      options_.max_read_bytes, plan);
}

void ReadPlanner::PlanDense(int32_t first_id, int32_t count, size_t chunk_bytes,
                            ReadPlan* plan) const {
  if (chunk_bytes == 0) chunk_bytes = options_.max_read_bytes;
  FLASHD_CHECK(chunk_bytes % options_.alignment == 0);
  FLASHD_CHECK(first_id >= 0 && count >= 0 &&
               static_cast<int64_t>(first_id) + count <= array_.n_ff);
  PlanList(
      count, [&](int32_t k) { return first_id + k; }, chunk_bytes, plan);
}

}  // namespace flashd::flash
