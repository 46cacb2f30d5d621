// Turns "these neurons of this layer" into a short list of aligned file
// reads: each requested neuron's bundle lies whole inside exactly one read,
// neighbours are coalesced, and small gaps of unrequested neurons are read
// through when the I/O cost model says one longer read beats two.
#ifndef FLASHD_COMMON_FLASH_READ_PLANNER_H_
#define FLASHD_COMMON_FLASH_READ_PLANNER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/io/io_calibration.h"

namespace flashd::flash {

// One planned read: `length` bytes at file `offset` (both multiples of the
// planner's alignment), holding neurons first .. first + count - 1 of the
// list that was planned (indices into that list, not neuron ids).
struct PlannedRead {
  uint64_t offset = 0;
  size_t length = 0;
  int32_t first = 0;
  int32_t count = 0;
};

// Caller-owned storage for a plan. Reserve once; planning then only
// overwrites it (reserving too little is a bug and aborts, it never grows
// behind the caller's back).
class ReadPlan {
 public:
  // Makes room for `max_reads` reads (see ReadPlanner::MaxReads).
  void Reserve(size_t max_reads) { reads_.reserve(max_reads); }

  absl::Span<const PlannedRead> reads() const { return reads_; }
  size_t size() const { return reads_.size(); }
  const PlannedRead& operator[](size_t i) const { return reads_[i]; }
  // Sum of the reads' lengths (what goes to the device).
  uint64_t planned_bytes() const { return planned_bytes_; }
  // Bytes of the requested bundles themselves (count x bundle_bytes).
  uint64_t wanted_bytes() const { return wanted_bytes_; }

  // Empties the plan (keeps the reserved room).
  void Clear() {
    reads_.clear();
    planned_bytes_ = 0;
    wanted_bytes_ = 0;
  }

 private:
  friend class ReadPlanner;
  void Add(const PlannedRead& r);

  std::vector<PlannedRead> reads_;
  uint64_t planned_bytes_ = 0;
  uint64_t wanted_bytes_ = 0;
};

// Where a layer's bundle array is: n_ff bundles of bundle_bytes each, back
// to back from file offset `offset` (LayerLayout::bundles.offset).
struct BundleArray {
  uint64_t offset = 0;
  size_t bundle_bytes = 0;
  int32_t n_ff = 0;
};

// How to plan. Defaults suit a buffered file with no calibration.
struct ReadPlannerOptions {
  // The file's required_alignment() (4096 for O_DIRECT, 1 buffered). Reads
  // start rounded down and end rounded up to it; the file must hold the
  // bundle array's end rounded up (the flash format pads every section to
  // kFlashAlign, so it does).
  size_t alignment = 1;
  // Largest read; a multiple of `alignment`. A read holding one neuron may
  // exceed it when that bundle's aligned extent alone does (bundles are
  // never split); reads of two or more neurons never do.
  size_t max_read_bytes = size_t{1} << 20;
  // Cost model (not owned; must outlive the planner), or null for the fixed
  // rule below. Gaps are read through when EstimateSeconds(merged) <=
  // EstimateSeconds(read A) + EstimateSeconds(read B), each read estimated
  // at its own size and `queue_depth` in flight.
  const io::IoProfile* profile = nullptr;
  // Reads the caller keeps in flight (what the profile is consulted at).
  int queue_depth = 32;
  // Without a profile: gaps of at most this many unrequested bytes are
  // read through.
  uint64_t max_gap_bytes_without_profile = 64 << 10;
};

// Plans reads of one layer's bundle array. Immutable after Create;
// planning allocates nothing (the plan's storage is the caller's).
class ReadPlanner {
 public:
  // INVALID_ARGUMENT naming the field for: bundle_bytes 0, n_ff < 0, an
  // alignment of 0, an array offset not a multiple of the alignment, a
  // max_read_bytes that is 0 or not a multiple of the alignment, a
  // queue_depth < 1, or a profile with an empty table.
  static absl::StatusOr<ReadPlanner> Create(const BundleArray& array,
                                            const ReadPlannerOptions& options);

  // Upper bound on the reads Plan / PlanDense produce for n neurons.
  static size_t MaxReads(size_t n_neurons) { return n_neurons; }

  // Plans reads of the bundles of `ids` (strictly ascending neuron ids in
  // [0, n_ff); anything else is a bug and aborts) into `plan`, replacing
  // its contents. Reads come out in ascending file order.
  void Plan(absl::Span<const int32_t> ids, ReadPlan* plan) const;

  // Plans the contiguous neurons first_id .. first_id + count - 1 in reads
  // of at most `chunk_bytes` (a multiple of the alignment; 0 means
  // max_read_bytes), each holding whole bundles (layer streaming).
  // PlannedRead::first is relative to first_id. Neighbouring reads may
  // share the aligned page where one bundle ends and the next begins.
  void PlanDense(int32_t first_id, int32_t count, size_t chunk_bytes,
                 ReadPlan* plan) const;

  // Byte position of neuron `id` (which must be one of `read`'s) inside the
  // buffer `read` was read into.
  size_t OffsetInRead(const PlannedRead& read, int32_t id) const {
    return static_cast<size_t>(array_.offset + BundleBegin(id) - read.offset);
  }

  const BundleArray& array() const { return array_; }
  const ReadPlannerOptions& options() const { return options_; }

 private:
  ReadPlanner(const BundleArray& array, const ReadPlannerOptions& options)
      : array_(array), options_(options) {}

  // Offset of bundle `id` relative to the array start.
  uint64_t BundleBegin(int32_t id) const {
    return static_cast<uint64_t>(id) * array_.bundle_bytes;
  }
  uint64_t AlignDown(uint64_t x) const { return x - x % options_.alignment; }
  uint64_t AlignUp(uint64_t x) const {
    return AlignDown(x + options_.alignment - 1);
  }
  // Whether reading through a gap of `gap` bytes, giving one read of
  // `merged` bytes, beats reads of `a` and `b` bytes.
  bool MergeGap(uint64_t a, uint64_t b, uint64_t merged, uint64_t gap) const;
  // Shared loop: neuron k of the list is id_of(k); adjacent ids always
  // share a read up to `max_read`, others per MergeGap.
  template <typename IdOf>
  void PlanList(int32_t n, IdOf id_of, size_t max_read, ReadPlan* plan) const;

  BundleArray array_;
  ReadPlannerOptions options_;
};

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_READ_PLANNER_H_
