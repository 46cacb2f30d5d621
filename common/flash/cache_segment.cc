#include "common/flash/cache_segment.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <system_error>

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/check.h"
#include "common/base/errno_status.h"

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

// "<what>: <strerror>" with a code for the errno: RESOURCE_EXHAUSTED for
// lack of memory or descriptors, else as FileErrnoStatus.
absl::Status OsError(int err, const std::string& what) {
  switch (err) {
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EFBIG:
      return absl::ResourceExhaustedError(
          absl::StrCat(what, ": ", std::strerror(err)));
    default:
      return FileErrnoStatus(err, what);
  }
}

absl::Status OsError(const bip::interprocess_exception& e,
                     const std::string& what) {
  if (e.get_native_error() != 0) return OsError(e.get_native_error(), what);
  return absl::InternalError(absl::StrCat(what, ": ", e.what()));
}

// Opens segment `name`, creating it (empty, mode 0600) when absent, and
// takes the exclusive lock on it. *created says whether this call created
// it. FAILED_PRECONDITION when another process holds the lock.
absl::Status OpenLocked(const std::string& name, bip::shared_memory_object* out,
                        bool* created) {
  const std::string path = CacheSegment::PathOf(name);
  for (int attempt = 0; attempt < 16; ++attempt) {
    bip::shared_memory_object shm;
    *created = false;
    try {
      shm = bip::shared_memory_object(bip::open_only, name.c_str(),
                                      bip::read_write);
    } catch (const bip::interprocess_exception& e) {
      if (e.get_native_error() != ENOENT) {
        return OsError(e, absl::StrCat("cannot open the neuron cache segment ",
                                       path));
      }
      try {
        bip::permissions perm;
        perm.set_permissions(0600);
        shm = bip::shared_memory_object(bip::create_only, name.c_str(),
                                        bip::read_write, perm);
        *created = true;
      } catch (const bip::interprocess_exception& e2) {
        if (e2.get_native_error() == EEXIST) continue;  // raced: open it
        return OsError(e2, absl::StrCat(
                               "cannot create the neuron cache segment ", path));
      }
    }
    const int fd = shm.get_mapping_handle().handle;
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      if (err == EWOULDBLOCK) {
        return absl::FailedPreconditionError(absl::StrCat(
            "neuron cache segment ", path,
            " is in use by another process (a second flashd on the same "
            "model?): pass another --cache-shm NAME, or '' for a private "
            "cache"));
      }
      return OsError(err, absl::StrCat("cannot lock the neuron cache segment ",
                                       path));
    }
    // Locked. If the name no longer leads to this file (its previous owner
    // removed it before exiting), the file is orphaned: start over.
    struct stat held, named;
    if (::fstat(fd, &held) != 0) {
      return OsError(errno, absl::StrCat("cannot stat ", path));
    }
    if (::stat(path.c_str(), &named) == 0 && named.st_dev == held.st_dev &&
        named.st_ino == held.st_ino) {
      *out = std::move(shm);
      return absl::OkStatus();
    }
  }
  return absl::UnavailableError(absl::StrCat(
      "the neuron cache segment ", path,
      " kept being removed and recreated while this process opened it"));
}

// Whether the locked segment `fd` of `size` bytes holds caches for these
// parameters; sets *why when not.
bool Matches(int fd, uint64_t size, uint64_t identity, int32_t n_ff,
             uint64_t total, const std::vector<LayerRecord>& want,
             std::string* why) {
  if (size != total) {
    *why = absl::StrCat("discarded a segment of ", size, " bytes (expected ",
                        total, ")");
    return false;
  }
  std::vector<uint8_t> head(sizeof(SegmentHeader) +
                            want.size() * sizeof(LayerRecord));
  SegmentHeader h;
  std::vector<LayerRecord> recs(want.size());
  if (::pread(fd, head.data(), head.size(), 0) !=
      static_cast<ssize_t>(head.size())) {
    *why = "discarded an unreadable segment";
    return false;
  }
  std::memcpy(&h, head.data(), sizeof(h));
  std::memcpy(recs.data(), head.data() + sizeof(h),
              recs.size() * sizeof(LayerRecord));
  bool match = std::memcmp(h.magic, kMagic, 8) == 0 &&
               h.version == kCacheSegmentVersion &&
               h.header_bytes == sizeof(SegmentHeader) &&
               h.identity == identity && h.total_bytes == total &&
               h.n_layer == static_cast<int32_t>(want.size()) && h.n_ff == n_ff;
  for (size_t l = 0; match && l < want.size(); ++l) {
    const LayerRecord& r = recs[l];
    match = r.capacity == want[l].capacity &&
            r.bundle_bytes == want[l].bundle_bytes &&
            r.slots_offset == want[l].slots_offset &&
            r.ids_offset == want[l].ids_offset && r.used >= 0 &&
            r.used <= r.capacity;
  }
  if (!match) {
    *why = "discarded a segment of another model, version or budget";
  }
  return match;
}

}  // namespace

struct CacheSegment::Impl {
  bip::shared_memory_object shm;  // its descriptor holds the lock
  bip::mapped_region region;      // unmapped before the lock is released
};

CacheSegment::~CacheSegment() = default;

std::string CacheSegment::PathOf(const std::string& name) {
  return absl::StrCat("/dev/shm/", name);
}

std::vector<std::string> CacheSegment::RemoveStale(const std::string& prefix,
                                                   uint64_t identity,
                                                   const std::string& keep) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(
           std::filesystem::path(PathOf("")), ec)) {
    const std::string name = entry.path().filename().string();
    if (name == keep || name.rfind(prefix, 0) != 0) continue;
    const std::string path = PathOf(name);
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) continue;  // gone, or another user's
    SegmentHeader h{};
    struct stat held, named;
    // Only an unheld, fully initialised segment of this file, still under
    // its name, is removed (the lock is held across the unlink).
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0 &&
        ::pread(fd, &h, sizeof(h), 0) == static_cast<ssize_t>(sizeof(h)) &&
        std::memcmp(h.magic, kMagic, 8) == 0 && h.identity == identity &&
        ::fstat(fd, &held) == 0 && ::stat(path.c_str(), &named) == 0 &&
        held.st_dev == named.st_dev && held.st_ino == named.st_ino &&
        ::unlink(path.c_str()) == 0) {
      removed.push_back(absl::StrCat(name, " (", held.st_size, " bytes)"));
    }
    ::close(fd);
  }
  return removed;
}

absl::StatusOr<std::unique_ptr<CacheSegment>> CacheSegment::OpenOrCreate(
    const std::string& name, uint64_t identity, int32_t n_ff,
    const std::vector<LayerSpec>& layers) {
  if (name.empty() || name.size() > 200 ||
      name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "neuron cache segment name '", name,
        "' must be 1..200 characters without '/'"));
  }
  const std::string path = PathOf(name);
  std::vector<LayerRecord> want;
  const uint64_t total = Plan(layers, &want);
  std::unique_ptr<CacheSegment> seg(new CacheSegment());
  seg->name_ = name;
  seg->impl_ = std::make_unique<Impl>();
  bool created = false;
  absl::Status s = OpenLocked(name, &seg->impl_->shm, &created);
  if (!s.ok()) return s;
  // From here on the segment is ours alone until `seg` is destroyed.
  const int fd = seg->impl_->shm.get_mapping_handle().handle;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return OsError(errno, absl::StrCat("cannot stat ", path));
  }
  if (created) {
    seg->how_ = "created";
  } else {
    seg->attached_ = Matches(fd, static_cast<uint64_t>(st.st_size), identity,
                             n_ff, total, want, &seg->how_);
    if (seg->attached_) seg->how_ = "attached (warm)";
  }
  if (!seg->attached_ &&
      (::ftruncate(fd, 0) != 0 ||
       ::ftruncate(fd, static_cast<off_t>(total)) != 0)) {
    return OsError(errno, absl::StrCat("cannot size the neuron cache segment ",
                                       path, " to ", total, " bytes"));
  }
  // Reserve every page now: a full /dev/shm is an error here instead of a
  // SIGBUS when a slot is first written.
  if (const int err = ::posix_fallocate(fd, 0, static_cast<off_t>(total));
      err != 0) {
    struct statvfs vfs;
    const uint64_t free_bytes =
        ::fstatvfs(fd, &vfs) == 0
            ? static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize
            : 0;
    if (!seg->attached_) {  // ours and empty: leave nothing behind
      (void)::ftruncate(fd, 0);
      bip::shared_memory_object::remove(name.c_str());
    }
    return OsError(err, absl::StrFormat(
                            "cannot reserve %d bytes (%.1f MiB) for the neuron "
                            "cache segment %s (%.1f MiB free there)",
                            total, total / 1048576.0, path,
                            free_bytes / 1048576.0));
  }
  try {
    seg->impl_->region = bip::mapped_region(seg->impl_->shm, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    return OsError(e, absl::StrCat("cannot map the neuron cache segment ",
                                   path, " of ", total, " bytes"));
  }
  seg->bytes_ = total;
  seg->base_ = static_cast<uint8_t*>(seg->impl_->region.get_address());
  if (!seg->attached_) {
    SegmentHeader h{};
    std::memcpy(h.magic, kMagic, 8);
    h.version = kCacheSegmentVersion;
    h.header_bytes = sizeof(SegmentHeader);
    h.identity = identity;
    h.total_bytes = total;
    h.n_layer = static_cast<int32_t>(layers.size());
    h.n_ff = n_ff;
    std::memcpy(seg->base_, &h, sizeof(h));
    std::memcpy(seg->base_ + sizeof(h), want.data(),
                want.size() * sizeof(LayerRecord));
  }
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
