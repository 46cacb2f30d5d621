#include "common/io/uring_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/base/errno_status.h"
#include "common/io/posix_file.h"

namespace flashd::io {
namespace {

// EAGAIN/EINTR completions and submissions retried before giving up.
constexpr int kMaxRetries = 1000;
constexpr size_t kDefaultAlignment = 4096;

bool IsTransient(int err) {
  return err == EAGAIN || err == EINTR || err == EBUSY;
}

// The O_DIRECT alignment the kernel reports for `fd` (0 when the file does
// not support direct I/O), or kDefaultAlignment when it cannot say.
size_t DirectAlignment(int fd) {
#ifdef STATX_DIOALIGN
  struct statx stx;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN)) {
    if (stx.stx_dio_offset_align == 0) return 0;
    return std::max<size_t>({kDefaultAlignment, stx.stx_dio_offset_align,
                             stx.stx_dio_mem_align});
  }
#endif
  return kDefaultAlignment;
}

// Reads the first block of `fd` directly; returns errno on failure, else 0.
// Some filesystems accept O_DIRECT at open and refuse it on read.
int ProbeDirectRead(int fd, size_t alignment) {
  void* buf = nullptr;
  if (::posix_memalign(&buf, alignment, alignment) != 0) return ENOMEM;
  ssize_t r;
  do {
    r = ::pread(fd, buf, alignment, 0);
  } while (r < 0 && errno == EINTR);
  const int err = r < 0 ? errno : 0;
  std::free(buf);
  return err;
}

}  // namespace

absl::StatusOr<std::unique_ptr<UringFile>> UringFile::Open(
    const std::string& path, Options options) {
  if (options.queue_depth < 1 || options.queue_depth > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "queue_depth ", options.queue_depth, " is not in [1, 4096]"));
  }
  std::unique_ptr<UringFile> f(new UringFile());
  f->path_ = path;
  absl::StatusOr<int> fd = OpenRegularFile(path, 0, &f->size_);
  if (!fd.ok()) return fd.status();
  f->buffered_fd_ = *fd;

  if (options.direct) {
    const int dfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (dfd < 0 && errno != EINVAL) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot open ", path, " with O_DIRECT: ", std::strerror(errno)));
    }
    size_t alignment = dfd >= 0 ? DirectAlignment(dfd) : 0;
    int probe_err = 0;
    if (alignment != 0) probe_err = ProbeDirectRead(dfd, alignment);
    if (dfd < 0 || alignment == 0 || probe_err == EINVAL) {
      f->fallback_ = absl::StrCat(
          "the filesystem holding ", path,
          " refuses O_DIRECT; reads go through the page cache instead");
      if (dfd >= 0) ::close(dfd);
    } else if (probe_err != 0) {
      ::close(dfd);
      return ReadErrnoStatus(probe_err, path, 0, alignment);
    } else {
      f->direct_fd_ = dfd;
      f->alignment_ = alignment;
    }
  }
  f->max_sqe_bytes_ = std::max(options.max_bytes_per_sqe, f->alignment_);
  f->max_sqe_bytes_ -= f->max_sqe_bytes_ % f->alignment_;

  const int ret = io_uring_queue_init(
      static_cast<unsigned>(options.queue_depth), &f->ring_, 0);
  if (ret < 0) {
    return absl::UnavailableError(absl::StrCat(
        "io_uring_queue_init(", options.queue_depth, ") for ", path,
        " failed: ", std::strerror(-ret),
        " (is /proc/sys/kernel/io_uring_disabled set, or RLIMIT_MEMLOCK "
        "too low?)"));
  }
  f->ring_ok_ = true;
  const size_t qd = static_cast<size_t>(options.queue_depth);
  f->slots_.resize(qd);
  f->free_.reserve(qd);
  f->ready_.reserve(qd);
  for (size_t i = qd; i-- > 0;) f->free_.push_back(static_cast<uint32_t>(i));
  return f;
}

UringFile::~UringFile() {
  if (ring_ok_) io_uring_queue_exit(&ring_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
  if (buffered_fd_ >= 0) ::close(buffered_fd_);
}

absl::Status UringFile::Read(uint64_t offset, size_t n, uint8_t* dst) {
  ReadRequest r{offset, n, dst, absl::OkStatus()};
  return ReadBatch(absl::MakeSpan(&r, 1));
}

absl::Status UringFile::Validate(const ReadRequest& r) const {
  absl::Status s = CheckReadRange(path_, size_, r.offset, r.n);
  if (!s.ok() || alignment_ == 1) return s;
  const char* bad = nullptr;
  uint64_t value = 0;
  const bool is_tail = r.offset + r.n == size_;
  if (r.offset % alignment_ != 0) {
    bad = "offset";
    value = r.offset;
  } else if (r.n % alignment_ != 0 && !is_tail) {
    bad = "length";
    value = r.n;
  } else if (reinterpret_cast<uintptr_t>(r.dst) % alignment_ != 0) {
    bad = "buffer address";
    value = reinterpret_cast<uintptr_t>(r.dst);
  }
  if (bad == nullptr) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "direct read of ", path_, " at offset ", r.offset, ", length ", r.n,
      ": ", bad, " ", value, " is not a multiple of the required alignment ",
      alignment_, " (plan aligned reads; only a read ending at the file's end "
      "may have an unaligned length)"));
}

void UringFile::Prepare(uint32_t slot, absl::Span<ReadRequest> reqs) {
  Slot& s = slots_[slot];
  const ReadRequest& r = reqs[s.req];
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  // Each slot has at most one SQE queued or in flight and the ring has
  // queue_depth entries, so one is always free.
  FLASHD_CHECK(sqe != nullptr);
  const size_t len = std::min<uint64_t>(r.n - s.done, max_sqe_bytes_);
  io_uring_prep_read(sqe, s.fd, r.dst + s.done, static_cast<unsigned>(len),
                     r.offset + s.done);
  io_uring_sqe_set_data64(sqe, slot);
}

absl::Status UringFile::ReadBatch(absl::Span<ReadRequest> reqs) {
  if (!broken_.ok()) {
    for (ReadRequest& r : reqs) r.status = broken_;
    return broken_;
  }
  for (ReadRequest& r : reqs) r.status = Validate(r);
  const size_t qd = slots_.size();
  size_t next = 0;
  int submit_retries = 0;
  ready_.clear();
  while (true) {
    // Start new requests in free slots.
    while (!free_.empty() && next < reqs.size()) {
      ReadRequest& r = reqs[next];
      if (r.status.ok() && r.n > 0) {
        const uint32_t slot = free_.back();
        free_.pop_back();
        const bool tail_unaligned =
            direct_fd_ >= 0 && r.n % alignment_ != 0;  // validated: a tail
        slots_[slot] = Slot{next, tail_unaligned || direct_fd_ < 0
                                      ? buffered_fd_
                                      : direct_fd_,
                            0, 0};
        ready_.push_back(slot);
      }
      ++next;
    }
    for (uint32_t slot : ready_) Prepare(slot, reqs);
    ready_.clear();
    if (free_.size() == qd) break;  // nothing in flight, nothing left

    const int ret = io_uring_submit_and_wait(&ring_, 1);
    if (ret < 0) {
      if (IsTransient(-ret) && ++submit_retries <= kMaxRetries) {
        // Unsubmitted SQEs stay queued; reap what completed and go again.
      } else {
        broken_ = absl::FailedPreconditionError(absl::StrCat(
            "io_uring for ", path_, " failed: ", std::strerror(-ret),
            "; reopen the file"));
        for (size_t i = 0; i < qd; ++i) {
          if (std::find(free_.begin(), free_.end(), i) == free_.end()) {
            reqs[slots_[i].req].status = broken_;
          }
        }
        for (size_t i = next; i < reqs.size(); ++i) {
          if (reqs[i].status.ok()) reqs[i].status = broken_;
        }
        return FirstError(reqs);
      }
    }

    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      const uint32_t slot = static_cast<uint32_t>(io_uring_cqe_get_data64(cqe));
      FLASHD_CHECK(slot < qd);
      Slot& s = slots_[slot];
      ReadRequest& r = reqs[s.req];
      const int res = cqe->res;
      bool finished = true;
      if (res < 0) {
        if (IsTransient(-res) && ++s.retries <= kMaxRetries) {
          finished = false;  // resubmit the same piece
        } else {
          r.status = ReadErrnoStatus(-res, path_, r.offset + s.done,
                                     r.n - s.done);
        }
      } else if (res == 0) {
        r.status = absl::DataLossError(absl::StrCat(
            "read of ", path_, " at offset ", r.offset + s.done, ", length ",
            r.n - s.done, " hit end of file: the file shrank after it was "
            "opened (size then ", size_, ")"));
      } else {
        s.done += static_cast<uint64_t>(res);
        FLASHD_CHECK(s.done <= r.n);
        finished = s.done == r.n;  // else a short read: read the remainder
      }
      if (finished) {
        free_.push_back(slot);
      } else {
        ready_.push_back(slot);
      }
    }
    io_uring_cq_advance(&ring_, seen);
  }
  return FirstError(reqs);
}

}  // namespace flashd::io
