// The per-layer neuron buffer of "LLM in a Flash": a preallocated array of
// bundle slots kept dense by swap-delete, so all cached neurons of a layer
// form one BundleSpan, plus the bookkeeping for windowed and LRU eviction.
#ifndef FLASHD_COMMON_FLASH_NEURON_CACHE_H_
#define FLASHD_COMMON_FLASH_NEURON_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "common/flash/bundle_ffn.h"
#include "common/io/aligned_buffer.h"

namespace flashd::flash {

// One layer's cache of neuron bundles. Slots [0, size()) are occupied and
// contiguous at data() (stride bundle_bytes()); slot s holds neuron
// ids()[s]. Evicting a slot moves the last slot's bytes and bookkeeping
// into it, so slot indices of other neurons can change on Evict: look
// slots up again afterwards. Nothing is allocated after Create. Not
// thread-safe (one owner thread, the inference thread).
class NeuronCache {
 public:
  // Counters since creation.
  struct Stats {
    uint64_t hits = 0;    // Lookup found the neuron
    uint64_t misses = 0;  // Lookup did not
    uint64_t inserts = 0;
    uint64_t evictions = 0;  // Evict calls, including by ExpireWindow
  };

  // A cache of `capacity` slots for a layer of `n_ff` neurons whose bundles
  // are `bundle_bytes` each. `memory`, when given, is caller-owned, holds
  // capacity * bundle_bytes bytes and must outlive the cache; otherwise the
  // cache allocates it once (4096-aligned). INVALID_ARGUMENT for negative
  // sizes or bundle_bytes 0; RESOURCE_EXHAUSTED when memory is short.
  static absl::StatusOr<NeuronCache> Create(int32_t n_ff, size_t bundle_bytes,
                                            int32_t capacity,
                                            uint8_t* memory = nullptr);

  NeuronCache(NeuronCache&&) = default;
  NeuronCache& operator=(NeuronCache&&) = default;

  // Slot of neuron `id`, or -1; counts a hit or a miss.
  int32_t Lookup(int32_t id);
  // Same without counting.
  int32_t SlotOf(int32_t id) const { return slot_of_[id]; }
  // Records that slot `slot`'s neuron was used by token `token`.
  void Touch(int32_t slot, int64_t token) { last_used_[slot] = token; }
  // Appends neuron `id` (which must not be cached) as slot size(), used by
  // `token`, and returns the slot's bundle_bytes() bytes for the caller to
  // fill; null (nothing changed) when the cache is full.
  uint8_t* Insert(int32_t id, int64_t token);
  // Removes slot `slot` (< size()): the last slot's bytes (one memcpy of
  // bundle_bytes) and bookkeeping move into it.
  void Evict(int32_t slot);
  // Windowing: evicts every neuron last used before token
  // current_token - k, keeping those used in the k tokens before
  // current_token (and by current_token itself). k <= 0 evicts nothing.
  // Returns the number evicted.
  int32_t ExpireWindow(int64_t current_token, int64_t k);
  // Writes to `out` up to `count` slots to evict to make room: the least
  // recently used ones whose neuron is not protected by `is_protected(id)`
  // and was not used by `current_token`. They come in descending slot order,
  // so calling Evict on each in turn is valid. Returns how many were
  // written (fewer than `count` when not enough slots qualify).
  int32_t ChooseVictims(int64_t current_token,
                        absl::FunctionRef<bool(int32_t)> is_protected,
                        int32_t count, int32_t* out);
  // Evicts everything (keeps the statistics).
  void Clear();

  // The occupied slots as one span for BundleFfn::Add.
  BundleSpan span() const { return {data_, ids_.data(), size_}; }
  // Bytes of slot `slot`.
  uint8_t* slot_data(int32_t slot) { return data_ + slot * bundle_bytes_; }
  const uint8_t* data() const { return data_; }
  // Neuron id of each occupied slot (dense, size() entries valid).
  const int32_t* ids() const { return ids_.data(); }
  // Last token that used slot `slot`.
  int64_t last_used(int32_t slot) const { return last_used_[slot]; }
  int32_t size() const { return size_; }
  int32_t capacity() const { return capacity_; }
  bool full() const { return size_ == capacity_; }
  int32_t n_ff() const { return n_ff_; }
  size_t bundle_bytes() const { return bundle_bytes_; }
  const Stats& stats() const { return stats_; }

 private:
  NeuronCache() = default;

  int32_t n_ff_ = 0;
  size_t bundle_bytes_ = 0;
  int32_t capacity_ = 0;
  int32_t size_ = 0;
  io::AlignedBuffer owned_;          // empty when the caller passed memory
  uint8_t* data_ = nullptr;          // capacity_ slots
  std::vector<int32_t> ids_;         // slot -> neuron id [capacity]
  std::vector<int64_t> last_used_;   // slot -> last token [capacity]
  std::vector<int32_t> slot_of_;     // neuron -> slot or -1 [n_ff]
  std::vector<int32_t> candidates_;  // ChooseVictims scratch [capacity]
  Stats stats_;
};

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_NEURON_CACHE_H_
