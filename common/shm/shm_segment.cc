#include "common/shm/shm_segment.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/errno_status.h"

namespace flashd::shm {
namespace {

namespace bip = boost::interprocess;

absl::Status ErrnoStatus(int err, const std::string& what) {
  const std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EFBIG:
      return absl::ResourceExhaustedError(msg);
    default:
      return FileErrnoStatus(err, what);
  }
}

absl::Status BoostStatus(const bip::interprocess_exception& e,
                         const std::string& what) {
  if (e.get_native_error() != 0) return ErrnoStatus(e.get_native_error(), what);
  return absl::InternalError(absl::StrCat(what, ": ", e.what()));
}

}  // namespace

struct ShmSegment::Impl {
  bip::shared_memory_object shm;
  bip::mapped_region region;
};

ShmSegment::ShmSegment(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  data_ = static_cast<uint8_t*>(impl_->region.get_address());
  size_ = impl_->region.get_size();
  name_ = impl_->shm.get_name();
}

ShmSegment::~ShmSegment() = default;

int ShmSegment::fd() const { return impl_->shm.get_mapping_handle().handle; }

std::string ShmSegment::PathOf(const std::string& name) {
  return absl::StrCat("/dev/shm/", name);
}

absl::Status ShmSegment::CheckName(const std::string& name) {
  if (name.empty() || name.size() > 200) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared-memory name '", name,
                     "' must have 1..200 characters, has ", name.size()));
  }
  if (name[0] == '.') {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-memory name '", name, "' must not start with '.'"));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("shared-memory name '", name, "' has character '",
                       std::string(1, c), "'; allowed are [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::Create(
    const std::string& name, size_t bytes, mode_t mode) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  if (bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared-memory segment '", name, "': size 0"));
  }
  const std::string what =
      absl::StrCat("creating shared-memory segment ", PathOf(name));
  auto impl = std::make_unique<Impl>();
  bool created = false;
  try {
    impl->shm = bip::shared_memory_object(bip::create_only, name.c_str(),
                                          bip::read_write,
                                          bip::permissions(mode & 07777));
    created = true;
    impl->shm.truncate(static_cast<bip::offset_t>(bytes));
    // Reserve the pages now: a tmpfs that fills up later would otherwise
    // deliver SIGBUS on the first store to an unbacked page.
    const int fd = impl->shm.get_mapping_handle().handle;
    if (int err = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
        err != 0) {
      impl.reset();
      bip::shared_memory_object::remove(name.c_str());
      return ErrnoStatus(err, absl::StrCat(what, " (", bytes, " bytes)"));
    }
    impl->region = bip::mapped_region(impl->shm, bip::read_write, 0, bytes);
  } catch (const bip::interprocess_exception& e) {
    impl.reset();
    if (created) bip::shared_memory_object::remove(name.c_str());
    return BoostStatus(e, what);
  }
  return std::unique_ptr<ShmSegment>(new ShmSegment(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::Open(
    const std::string& name) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  const std::string what =
      absl::StrCat("opening shared-memory segment ", PathOf(name));
  auto impl = std::make_unique<Impl>();
  try {
    impl->shm = bip::shared_memory_object(bip::open_only, name.c_str(),
                                          bip::read_write);
    bip::offset_t size = 0;
    if (!impl->shm.get_size(size) || size <= 0) {
      return absl::DataLossError(
          absl::StrCat(what, ": the segment is empty (0 bytes)"));
    }
    impl->region = bip::mapped_region(impl->shm, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    return BoostStatus(e, what);
  }
  return std::unique_ptr<ShmSegment>(new ShmSegment(std::move(impl)));
}

absl::Status ShmSegment::Remove(const std::string& name) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  errno = 0;
  if (!bip::shared_memory_object::remove(name.c_str())) {
    return ErrnoStatus(
        errno != 0 ? errno : EIO,
        absl::StrCat("removing shared-memory segment ", PathOf(name)));
  }
  return absl::OkStatus();
}

absl::Status ShmSegment::ChownTo(uid_t uid) {
  if (::fchown(fd(), uid, static_cast<gid_t>(-1)) != 0) {
    const int err = errno;
    return ErrnoStatus(
        err, absl::StrCat("giving shared-memory segment ", PathOf(name_),
                          " to uid ", uid,
                          " (needs root or CAP_CHOWN, e.g. "
                          "AmbientCapabilities=CAP_CHOWN in flashd.service)"));
  }
  return absl::OkStatus();
}

}  // namespace flashd::shm
