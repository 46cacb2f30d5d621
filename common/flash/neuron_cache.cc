#include "common/flash/neuron_cache.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"

namespace flashd::flash {

absl::StatusOr<NeuronCache> NeuronCache::Create(int32_t n_ff,
                                                size_t bundle_bytes,
                                                int32_t capacity,
                                                uint8_t* memory) {
  if (n_ff < 0 || capacity < 0 || bundle_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "neuron cache needs n_ff >= 0, capacity >= 0 and bundle_bytes > 0 "
        "(got n_ff ",
        n_ff, ", capacity ", capacity, ", bundle_bytes ", bundle_bytes, ")"));
  }
  NeuronCache c;
  c.n_ff_ = n_ff;
  c.bundle_bytes_ = bundle_bytes;
  c.capacity_ = capacity;
  if (memory != nullptr) {
    c.data_ = memory;
  } else {
    absl::StatusOr<io::AlignedBuffer> buf =
        io::AlignedBuffer::Create(static_cast<size_t>(capacity) * bundle_bytes);
    if (!buf.ok()) {
      return absl::ResourceExhaustedError(
          absl::StrCat("neuron cache of ", capacity, " slots of ", bundle_bytes,
                       " bytes: ", buf.status().message()));
    }
    c.owned_ = std::move(*buf);
    c.data_ = c.owned_.data();
  }
  c.ids_.assign(capacity, -1);
  c.last_used_.assign(capacity, 0);
  c.slot_of_.assign(n_ff, -1);
  c.candidates_.reserve(capacity);
  return c;
}

int32_t NeuronCache::Lookup(int32_t id) {
  FLASHD_DCHECK(id >= 0 && id < n_ff_);
  const int32_t slot = slot_of_[id];
  if (slot >= 0) {
    ++stats_.hits;
  } else {
    ++stats_.misses;
  }
  return slot;
}

uint8_t* NeuronCache::Insert(int32_t id, int64_t token) {
  FLASHD_CHECK(id >= 0 && id < n_ff_ && slot_of_[id] < 0);
  if (size_ == capacity_) return nullptr;
  const int32_t slot = size_++;
  ids_[slot] = id;
  last_used_[slot] = token;
  slot_of_[id] = slot;
  ++stats_.inserts;
  return slot_data(slot);
}

void NeuronCache::Evict(int32_t slot) {
  FLASHD_CHECK(slot >= 0 && slot < size_);
  const int32_t last = size_ - 1;
  slot_of_[ids_[slot]] = -1;
  if (slot != last) {
    std::memcpy(slot_data(slot), slot_data(last), bundle_bytes_);
    ids_[slot] = ids_[last];
    last_used_[slot] = last_used_[last];
    slot_of_[ids_[slot]] = slot;
  }
  ids_[last] = -1;
  size_ = last;
  ++stats_.evictions;
}

int32_t NeuronCache::ExpireWindow(int64_t current_token, int64_t k) {
  if (k <= 0) return 0;
  const int64_t oldest_kept = current_token - k;
  int32_t evicted = 0;
  // Backwards: Evict(s) moves in the last slot, which was already checked.
  for (int32_t s = size_ - 1; s >= 0; --s) {
    if (last_used_[s] < oldest_kept) {
      Evict(s);
      ++evicted;
    }
  }
  return evicted;
}

int32_t NeuronCache::ChooseVictims(
    int64_t current_token, absl::FunctionRef<bool(int32_t)> is_protected,
    int32_t count, int32_t* out) {
  candidates_.clear();  // capacity_ reserved: no allocation
  for (int32_t s = 0; s < size_; ++s) {
    if (last_used_[s] != current_token && !is_protected(ids_[s])) {
      candidates_.push_back(s);
    }
  }
  const int32_t n = std::min<int32_t>(std::max(count, 0),
                                      static_cast<int32_t>(candidates_.size()));
  // Oldest first; ties broken by slot so the choice is deterministic.
  auto older = [&](int32_t a, int32_t b) {
    return last_used_[a] != last_used_[b] ? last_used_[a] < last_used_[b]
                                          : a < b;
  };
  std::nth_element(candidates_.begin(), candidates_.begin() + n,
                   candidates_.end(), older);
  std::sort(candidates_.begin(), candidates_.begin() + n,
            [](int32_t a, int32_t b) { return a > b; });
  std::copy(candidates_.begin(), candidates_.begin() + n, out);
  return n;
}

void NeuronCache::Clear() {
  while (size_ > 0) Evict(size_ - 1);
}

}  // namespace flashd::flash
