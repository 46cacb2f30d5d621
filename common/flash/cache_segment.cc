#include "common/flash/cache_segment.h"

#include <sys/stat.h>

#include <cstring>
#include <exception>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"

namespace flashd::flash {
namespace bip = boost::interprocess;
namespace {

constexpr char kMagic[8] = {'F', 'L', 'S', 'H', 'D', 'N', 'C', '\0'};
constexpr uint64_t kAlign = 4096;

// At offset 0 of the segment; then, from header_bytes, one LayerRecord per
// layer; then the layers' data at the offsets those records give.
struct SegmentHeader {
  char magic[8];
  uint32_t version;       // kCacheSegmentVersion
  uint32_t header_bytes;  // sizeof(SegmentHeader)
  uint64_t identity;      // the .flash file's FlashLayout::identity
  uint64_t total_bytes;
  int32_t n_layer;
  int32_t n_ff;
};
static_assert(sizeof(SegmentHeader) == 40);

struct LayerRecord {
  int32_t capacity;
  int32_t used;           // slots holding a neuron
  uint64_t bundle_bytes;
  uint64_t slots_offset;  // capacity * bundle_bytes, kAlign-aligned
  uint64_t ids_offset;    // capacity int32
};
static_assert(sizeof(LayerRecord) == 32);
static_assert(std::is_trivially_copyable_v<SegmentHeader> &&
              std::is_trivially_copyable_v<LayerRecord>);

uint64_t AlignUp(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// The layout these specs give: total bytes and per-layer records.
uint64_t Plan(const std::vector<CacheSegment::LayerSpec>& layers,
              std::vector<LayerRecord>* records) {
  uint64_t at = AlignUp(sizeof(SegmentHeader) + layers.size() * sizeof(LayerRecord));
  for (const CacheSegment::LayerSpec& s : layers) {
    LayerRecord r{};
    r.capacity = s.capacity;
    r.used = 0;
    r.bundle_bytes = s.bundle_bytes;
    r.slots_offset = at;
    at = AlignUp(at + static_cast<uint64_t>(s.capacity) * s.bundle_bytes);
    r.ids_offset = at;
    at = AlignUp(at + static_cast<uint64_t>(s.capacity) * sizeof(int32_t));
    records->push_back(r);
  }
  return at;
}

}  // namespace

struct CacheSegment::Impl {
  bip::shared_memory_object shm;
  bip::mapped_region region;
};

CacheSegment::~CacheSegment() = default;

absl::StatusOr<std::unique_ptr<CacheSegment>> CacheSegment::OpenOrCreate(
    const std::string& name, uint64_t identity, int32_t n_ff,
    const std::vector<LayerSpec>& layers) {
  if (name.empty() || name.size() > 200 ||
      name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "neuron cache segment name '", name,
        "' must be 1..200 characters without '/'"));
  }
  std::vector<LayerRecord> want;
  const uint64_t total = Plan(layers, &want);
  std::unique_ptr<CacheSegment> seg(new CacheSegment());
  seg->name_ = name;
  seg->impl_ = std::make_unique<Impl>();
  // Try to attach.
  try {
    bip::shared_memory_object shm(bip::open_only, name.c_str(), bip::read_write);
    bip::offset_t size = 0;
    shm.get_size(size);
    bool match = false;
    if (static_cast<uint64_t>(size) == total) {
      bip::mapped_region region(shm, bip::read_write);
      const auto* h = static_cast<const SegmentHeader*>(region.get_address());
      const auto* recs = reinterpret_cast<const LayerRecord*>(h + 1);
      match = std::memcmp(h->magic, kMagic, 8) == 0 &&
              h->version == kCacheSegmentVersion &&
              h->header_bytes == sizeof(SegmentHeader) &&
              h->identity == identity && h->total_bytes == total &&
              h->n_layer == static_cast<int32_t>(layers.size()) &&
              h->n_ff == n_ff;
      for (size_t l = 0; match && l < layers.size(); ++l) {
        const LayerRecord& r = recs[l];
        match = r.capacity == want[l].capacity &&
                r.bundle_bytes == want[l].bundle_bytes &&
                r.slots_offset == want[l].slots_offset &&
                r.ids_offset == want[l].ids_offset && r.used >= 0 &&
                r.used <= r.capacity;
      }
      if (match) {
        seg->impl_->shm = std::move(shm);
        seg->impl_->region = std::move(region);
        seg->attached_ = true;
        seg->how_ = "attached (warm)";
      } else {
        seg->how_ = "discarded a segment of another model, version or budget";
      }
    } else {
      seg->how_ = absl::StrCat("discarded a segment of ", size,
                               " bytes (expected ", total, ")");
    }
  } catch (const bip::interprocess_exception&) {
    seg->how_ = "created";
  }
  if (!seg->attached_) {
    try {
      bip::shared_memory_object::remove(name.c_str());
      bip::permissions perm;
      perm.set_permissions(0600);
      bip::shared_memory_object shm(bip::create_only, name.c_str(),
                                    bip::read_write, perm);
      shm.truncate(static_cast<bip::offset_t>(total));
      bip::mapped_region region(shm, bip::read_write);
      auto* h = static_cast<SegmentHeader*>(region.get_address());
      std::memset(h, 0, sizeof(SegmentHeader));
      std::memcpy(h->magic, kMagic, 8);
      h->version = kCacheSegmentVersion;
      h->header_bytes = sizeof(SegmentHeader);
      h->identity = identity;
      h->total_bytes = total;
      h->n_layer = static_cast<int32_t>(layers.size());
      h->n_ff = n_ff;
      std::memcpy(h + 1, want.data(), want.size() * sizeof(LayerRecord));
      seg->impl_->shm = std::move(shm);
      seg->impl_->region = std::move(region);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat(
          "cannot create the neuron cache segment /dev/shm/", name, " of ",
          total, " bytes: ", e.what()));
    }
  }
  seg->bytes_ = total;
  seg->base_ = static_cast<uint8_t*>(seg->impl_->region.get_address());
  for (const LayerRecord& r : want) {
    seg->slot_offset_.push_back(r.slots_offset);
    seg->id_offset_.push_back(r.ids_offset);
  }
  return seg;
}

uint8_t* CacheSegment::slots(int32_t l) { return base_ + slot_offset_[l]; }

int32_t* CacheSegment::ids(int32_t l) {
  return reinterpret_cast<int32_t*>(base_ + id_offset_[l]);
}

int32_t CacheSegment::used(int32_t l) const {
  const auto* recs = reinterpret_cast<const LayerRecord*>(
      reinterpret_cast<const SegmentHeader*>(base_) + 1);
  return recs[l].used;
}

void CacheSegment::Persist(int32_t l, const int32_t* ids, int32_t n) {
  auto* recs = reinterpret_cast<LayerRecord*>(
      reinterpret_cast<SegmentHeader*>(base_) + 1);
  FLASHD_CHECK(n >= 0 && n <= recs[l].capacity);
  // Shrink first, copy, then publish the count: a crash in between leaves a
  // count whose slots are re-verified on the next attach anyway.
  recs[l].used = std::min(recs[l].used, n);
  std::memcpy(this->ids(l), ids, static_cast<size_t>(n) * sizeof(int32_t));
  recs[l].used = n;
}

void CacheSegment::Remove() {
  bip::shared_memory_object::remove(name_.c_str());
}

}  // namespace flashd::flash
