#include "common/flash/cache_segment.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/shm/shm_fault_guard.h"
#include "common/shm/shm_segment.h"

namespace flashd::flash {
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

// Opens segment `name` in `dir`, creating it (empty, mode 0600) when
// absent, checks that an existing file is ours alone (before anything else
// touches it) and takes the exclusive lock on it. Returns the descriptor;
// *created says whether this call created the file. FAILED_PRECONDITION
// when another process holds the lock, PERMISSION_DENIED for a file that is
// not ours alone.
absl::StatusOr<int> OpenLocked(const shm::ShmDir& dir, const std::string& name,
                               bool* created) {
  const std::string path = dir.PathOf(name);
  for (int attempt = 0; attempt < 16; ++attempt) {
    *created = false;
    int fd = ::openat(dir.fd(), name.c_str(),
                      O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
      fd = ::openat(dir.fd(), name.c_str(),
                    O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
      if (fd < 0 && errno == EEXIST) continue;  // raced: open it
      *created = fd >= 0;
      if (*created && ::fchmod(fd, 0600) != 0) {
        const int err = errno;
        ::close(fd);
        return shm::ShmErrnoStatus(err, absl::StrCat("cannot chmod ", path));
      }
    }
    if (fd < 0) {
      const int err = errno;
      if (err == ELOOP) {
        return absl::PermissionDeniedError(
            absl::StrCat(path, " is a symlink: not used"));
      }
      return shm::ShmErrnoStatus(
          err, absl::StrCat("cannot open the neuron cache segment ", path));
    }
    absl::Status s = *created ? absl::OkStatus()
                              : shm::CheckOwnedFile(fd, path, 0600);
    if (s.ok() && ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      s = errno == EWOULDBLOCK
              ? absl::FailedPreconditionError(absl::StrCat(
                    "neuron cache segment ", path,
                    " is in use by another process (a second flashd on the "
                    "same model?): pass another --cache-shm NAME, or '' for "
                    "a private cache"))
              : shm::ShmErrnoStatus(
                    errno, absl::StrCat("cannot lock the neuron cache "
                                        "segment ", path));
    }
    if (!s.ok()) {
      ::close(fd);
      return s;
    }
    // Locked. If the name no longer leads to this file (its previous owner
    // removed it before exiting), the file is orphaned: start over.
    struct stat held, named;
    if (::fstat(fd, &held) == 0 &&
        ::fstatat(dir.fd(), name.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
        named.st_dev == held.st_dev && named.st_ino == held.st_ino) {
      return fd;
    }
    ::close(fd);
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
  if (!recs.empty()) {
    std::memcpy(recs.data(), head.data() + sizeof(h),
                recs.size() * sizeof(LayerRecord));
  }
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
  std::unique_ptr<shm::ShmSegment> segment;  // its descriptor holds the lock
  shm::ShmFaultGuard guard;  // declared after segment: released before unmap
};

CacheSegment::~CacheSegment() = default;

std::vector<std::string> CacheSegment::RemoveStale(const shm::ShmDir& dir,
                                                   const std::string& prefix,
                                                   uint64_t identity,
                                                   const std::string& keep) {
  std::vector<std::string> removed;
  const int dfd = ::openat(dir.fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* d = dfd >= 0 ? ::fdopendir(dfd) : nullptr;
  if (d == nullptr) {
    if (dfd >= 0) ::close(dfd);
    return removed;
  }
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == keep || name.rfind(prefix, 0) != 0) continue;
    const int fd = ::openat(dir.fd(), name.c_str(),
                            O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;  // gone, or a symlink
    SegmentHeader h{};
    struct stat held, named;
    // Only an unheld, fully initialised segment of this file that is ours
    // alone, still under its name, is removed (the lock is held across the
    // unlink).
    if (shm::CheckOwnedFile(fd, name, 0600).ok() &&
        ::flock(fd, LOCK_EX | LOCK_NB) == 0 &&
        ::pread(fd, &h, sizeof(h), 0) == static_cast<ssize_t>(sizeof(h)) &&
        std::memcmp(h.magic, kMagic, 8) == 0 && h.identity == identity &&
        ::fstat(fd, &held) == 0 &&
        ::fstatat(dir.fd(), name.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
        held.st_dev == named.st_dev && held.st_ino == named.st_ino &&
        ::unlinkat(dir.fd(), name.c_str(), 0) == 0) {
      removed.push_back(absl::StrCat(name, " (", held.st_size, " bytes)"));
    }
    ::close(fd);
  }
  ::closedir(d);
  return removed;
}

absl::StatusOr<std::unique_ptr<CacheSegment>> CacheSegment::OpenOrCreate(
    std::shared_ptr<const shm::ShmDir> dir, const std::string& name,
    uint64_t identity, int32_t n_ff, const std::vector<LayerSpec>& layers) {
  if (absl::Status s = shm::ShmSegment::CheckName(name); !s.ok()) return s;
  const std::string path = dir->PathOf(name);
  std::vector<LayerRecord> want;
  const uint64_t total = Plan(layers, &want);
  std::unique_ptr<CacheSegment> seg(new CacheSegment());
  seg->dir_ = dir;
  seg->name_ = name;
  seg->impl_ = std::make_unique<Impl>();
  bool created = false;
  absl::StatusOr<int> locked = OpenLocked(*dir, name, &created);
  if (!locked.ok()) return locked.status();
  // From here on the file is ours alone until `seg` is destroyed.
  const int fd = *locked;
  struct stat st;
  absl::Status s;
  if (::fstat(fd, &st) != 0) {
    s = shm::ShmErrnoStatus(errno, absl::StrCat("cannot stat ", path));
  } else if (created) {
    seg->how_ = "created";
  } else {
    seg->attached_ = Matches(fd, static_cast<uint64_t>(st.st_size), identity,
                             n_ff, total, want, &seg->how_);
    if (seg->attached_) seg->how_ = "attached (warm)";
  }
  if (s.ok() && !seg->attached_ &&
      (::ftruncate(fd, 0) != 0 ||
       ::ftruncate(fd, static_cast<off_t>(total)) != 0)) {
    s = shm::ShmErrnoStatus(
        errno, absl::StrCat("cannot size the neuron cache segment ", path,
                            " to ", total, " bytes"));
  }
  if (s.ok()) s = shm::ReserveShm(fd, path, total);
  if (!s.ok()) {
    if (!seg->attached_) {  // ours and empty: leave nothing behind
      (void)::ftruncate(fd, 0);
      (void)::unlinkat(dir->fd(), name.c_str(), 0);
    }
    ::close(fd);
    return s;
  }
  absl::StatusOr<std::unique_ptr<shm::ShmSegment>> mapped =
      shm::ShmSegment::Map(fd, name, path, total);
  if (!mapped.ok()) return mapped.status();
  seg->impl_->segment = std::move(*mapped);
  absl::StatusOr<shm::ShmFaultGuard> guard =
      shm::ShmFaultGuard::Register(seg->impl_->segment->data(), total);
  if (!guard.ok()) return guard.status();
  seg->impl_->guard = std::move(*guard);
  seg->bytes_ = total;
  seg->base_ = seg->impl_->segment->data();
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
    if (!want.empty()) {  // no layers: nothing to copy (and no pointer)
      std::memcpy(seg->base_ + sizeof(h), want.data(),
                  want.size() * sizeof(LayerRecord));
    }
  }
  for (const LayerRecord& r : want) {
    seg->slot_offset_.push_back(r.slots_offset);
    seg->id_offset_.push_back(r.ids_offset);
  }
  return seg;
}

absl::Status CacheSegment::CheckIntact() const {
  if (!impl_->guard.Faulted()) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      "the neuron cache segment ", path(),
      " was truncated by another process while this engine used it; its "
      "cached weights are gone: restart flashd (or use --cache-shm '' for a "
      "private cache)"));
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
  (void)shm::ShmSegment::Remove(*dir_, name_);
}

}  // namespace flashd::flash
