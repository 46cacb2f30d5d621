// The flash engine's neuron caches in a named shared-memory segment, so a
// restarted daemon for the same .flash file starts warm. The segment is a
// versioned ABI: a header with magic, layout version, the .flash file's
// identity and every layer's slot count and bundle size, then per layer its
// slot array, the neuron id of each slot and the number of slots in use.
// Anything that does not match (another model, version or budget, a
// truncated segment) is discarded and re-initialised; slots are re-verified
// against the file's bundle CRCs before they are trusted again.
//
// Whose file: segments live in the daemon's shm::ShmDir, which only the
// daemon's uid can write. An existing file is used only when fstat on a
// descriptor opened with O_NOFOLLOW shows a regular file of our euid, mode
// 0600 and one link, checked before it is locked or mapped; anything else
// is PERMISSION_DENIED and never touched. The mapping is guarded
// (shm::ShmFaultGuard): if anyone truncates the file under us, the pages
// turn into private zeros instead of a SIGBUS and CheckIntact() fails.
//
// One process at a time: OpenOrCreate takes an exclusive flock on the
// segment's descriptor before it looks at the contents and holds it until
// the CacheSegment is destroyed. The kernel drops the lock when the holder
// exits however it dies (SIGKILL included), so a dead owner never blocks a
// successor, and a live owner's segment is never discarded or overwritten:
// the second opener fails instead. A stale segment is re-initialised in
// place (same inode, still locked), never removed and recreated, so there is
// no window in which two processes own the name. The descriptor is
// close-on-exec; a child forked without exec shares the lock (and must not
// use the segment).
#ifndef FLASHD_COMMON_FLASH_CACHE_SEGMENT_H_
#define FLASHD_COMMON_FLASH_CACHE_SEGMENT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/shm/shm_dir.h"

namespace flashd::flash {

inline constexpr uint32_t kCacheSegmentVersion = 1;

class CacheSegment {
 public:
  struct LayerSpec {
    int32_t capacity = 0;     // slots
    uint64_t bundle_bytes = 0;
  };

  // Attaches to segment `name` in `dir` (e.g. "flashd-cache-0123abcd")
  // when it holds caches for `identity` with exactly these specs; otherwise
  // creates it or re-initialises what is there (mode 0600, zeroed: every
  // layer empty). Its memory is reserved up front, so a full tmpfs is an
  // error here rather than SIGBUS later. Errors: INVALID_ARGUMENT (bad
  // name), FAILED_PRECONDITION (another live process holds the segment),
  // RESOURCE_EXHAUSTED (no room), PERMISSION_DENIED (a file that is not
  // ours alone: see the file comment), others naming the OS error.
  static absl::StatusOr<std::unique_ptr<CacheSegment>> OpenOrCreate(
      std::shared_ptr<const shm::ShmDir> dir, const std::string& name,
      uint64_t identity, int32_t n_ff, const std::vector<LayerSpec>& layers);

  // Unlinks the segments in `dir` named `prefix`* other than `keep` that
  // hold caches for `identity` and that no process holds (what engines with
  // other settings for the same file left behind); files that are not ours
  // alone, live and foreign segments are skipped. Returns a note per
  // removed segment ("NAME (N bytes)").
  static std::vector<std::string> RemoveStale(const shm::ShmDir& dir,
                                              const std::string& prefix,
                                              uint64_t identity,
                                              const std::string& keep);

  ~CacheSegment();
  CacheSegment(const CacheSegment&) = delete;
  CacheSegment& operator=(const CacheSegment&) = delete;

  // Whether OpenOrCreate found a matching segment (a warm start), and why
  // not otherwise ("created", "discarded a segment of ...").
  bool attached() const { return attached_; }
  const std::string& how() const { return how_; }
  const std::string& name() const { return name_; }
  // The file's full path.
  std::string path() const { return dir_->PathOf(name_); }
  uint64_t bytes() const { return bytes_; }

  // OK while the mapping is intact; DATA_LOSS naming the file once someone
  // truncated it under us (every slot then reads zeros: stop using it).
  absl::Status CheckIntact() const;

  // Layer l's slot memory (capacity × bundle_bytes, 4096-aligned), the
  // neuron id of each slot, and how many slots hold a neuron.
  uint8_t* slots(int32_t l);
  int32_t* ids(int32_t l);
  int32_t used(int32_t l) const;
  // Records that slots [0, n) of layer l hold neurons ids[0..n) (copied).
  void Persist(int32_t l, const int32_t* ids, int32_t n);
  // Unlinks the segment name (the mapping and the lock stay valid until
  // destruction; a later OpenOrCreate creates a new segment).
  void Remove();

 private:
  CacheSegment() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::shared_ptr<const shm::ShmDir> dir_;
  std::string name_;
  std::string how_;
  bool attached_ = false;
  uint64_t bytes_ = 0;
  uint8_t* base_ = nullptr;
  std::vector<uint64_t> slot_offset_, id_offset_, used_offset_;
};

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_CACHE_SEGMENT_H_
