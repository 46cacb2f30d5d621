#include "common/shm/token_ring_writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/shm/futex.h"
#include "common/shm/process_liveness.h"

namespace flashd::shm {

std::string TokenRingPrefix(pid_t pid) {
  return absl::StrFormat("flashd-ring-%x-%d-", SelfIdentity().pid_ns, pid);
}

std::string MakeTokenRingName(uint64_t session_id) {
  uint64_t nonce = 0;
  if (::getrandom(&nonce, sizeof(nonce), 0) != sizeof(nonce)) {
    nonce = static_cast<uint64_t>(absl::GetCurrentTimeNanos()) ^
            (uint64_t{static_cast<uint32_t>(::getpid())} << 32);
  }
  return absl::StrFormat("%s%x-%016x", TokenRingPrefix(::getpid()), session_id,
                         nonce);
}

int RemoveStaleTokenRings(const ShmDir& dir) {
  const uint64_t ns = SelfIdentity().pid_ns;
  if (ns == 0) return 0;  // cannot tell our pids from others'
  const int dfd = ::openat(dir.fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return 0;
  DIR* d = ::fdopendir(dfd);
  if (d == nullptr) {
    ::close(dfd);
    return 0;
  }
  const std::string ours = absl::StrFormat("flashd-ring-%x-", ns);
  int removed = 0;
  while (const dirent* e = ::readdir(d)) {
    const absl::string_view name(e->d_name);
    if (!absl::StartsWith(name, ours)) continue;
    const absl::string_view rest = name.substr(ours.size());
    int pid = 0;
    if (!absl::SimpleAtoi(rest.substr(0, rest.find('-')), &pid) || pid <= 0) {
      continue;
    }
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive, or unsure
    const std::string n(name);
    // Only this daemon's uid can create names here. A client that linked
    // its ring elsewhere keeps the inode: release its memory first.
    const int fd = ::openat(dir.fd(), n.c_str(),
                            O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st;
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
      if (st.st_nlink > 1) (void)::ftruncate(fd, 0);
      removed += ::unlinkat(dir.fd(), n.c_str(), 0) == 0;
    }
    ::close(fd);
  }
  ::closedir(d);
  return removed;
}

absl::StatusOr<std::unique_ptr<TokenRingWriter>> TokenRingWriter::Create(
    std::shared_ptr<const ShmDir> dir, const std::string& name,
    uint32_t capacity, uint64_t session_id, uid_t owner) {
  if (absl::Status s = CheckRingCapacity(capacity); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<ShmSegment>> segment =
      ShmSegment::Create(*dir, name, TokenRingSegmentBytes(capacity), 0600);
  if (!segment.ok()) return segment.status();
  // From here on, any error unlinks the name again.
  auto fail = [&dir, &name](absl::Status s) {
    (void)ShmSegment::Remove(*dir, name);
    return s;
  };
  const ProcessIdentity self = SelfIdentity();
  TokenRingHeader h;
  std::memset(&h, 0, sizeof(h));
  h.magic = kTokenRingMagic;
  h.layout_version = kTokenRingLayoutVersion;
  h.header_bytes = kTokenRingHeaderBytes;
  h.capacity = capacity;
  h.record_bytes = kTokenRecordBytes;
  h.session_id = session_id;
  h.producer_pid = self.pid;
  h.producer_start_ticks = self.start_ticks;
  h.producer_pid_ns = self.pid_ns;
  h.state = static_cast<uint32_t>(RingState::kOpen);
  h.finish_reason = static_cast<uint32_t>(FinishReason::kNone);
  // Nobody else can open the segment yet (0600, still ours): a plain copy.
  std::memcpy((*segment)->data(), &h, sizeof(h));
  if (owner != ::geteuid()) {
    if (absl::Status s = (*segment)->ChownTo(owner); !s.ok()) {
      return fail(std::move(s));
    }
  }
  absl::StatusOr<ShmFaultGuard> guard =
      ShmFaultGuard::Register((*segment)->data(), (*segment)->size());
  if (!guard.ok()) return fail(guard.status());
  return std::unique_ptr<TokenRingWriter>(
      new TokenRingWriter(std::move(dir), std::move(*segment),
                          std::move(*guard), capacity, session_id));
}

TokenRingWriter::TokenRingWriter(std::shared_ptr<const ShmDir> dir,
                                 std::unique_ptr<ShmSegment> segment,
                                 ShmFaultGuard guard, uint32_t capacity,
                                 uint64_t session_id)
    : dir_(std::move(dir)),
      segment_(std::move(segment)),
      guard_(std::move(guard)),
      records_(reinterpret_cast<TokenRecord*>(segment_->data() +
                                              kTokenRingHeaderBytes)),
      capacity_(capacity),
      session_id_(session_id) {
  live_.fetch_add(1);
}

std::atomic<int64_t> TokenRingWriter::live_{0};

TokenRingWriter::~TokenRingWriter() {
  if (!finished_ && broken_.ok()) (void)Finish(FinishReason::kAbandoned);
  if (!removed_) (void)Remove();
  // The name is gone; an inode still linked is a hard link the client made
  // elsewhere. Its memory is the daemon's to give back: keep nothing.
  struct stat st;
  if (::fstat(segment_->fd(), &st) == 0 && st.st_nlink > 0) {
    (void)::ftruncate(segment_->fd(), 0);
  }
  live_.fetch_sub(1);
}

absl::Status TokenRingWriter::CheckIntact() {
  if (broken_.ok() && guard_.Faulted()) {
    broken_ = absl::DataLossError(absl::StrCat(
        "token ring ", segment_->path(),
        " was truncated by its consumer; the session's ring is gone"));
  }
  return broken_;
}

void TokenRingWriter::Wake() {
  TokenRingHeader* h = header();
  AtomicU32(h->wake_seq).fetch_add(1, std::memory_order_seq_cst);
  if (AtomicU32(h->consumer_waiting).load(std::memory_order_seq_cst) != 0) {
    FutexWakeAll(&h->wake_seq);
  }
}

uint32_t TokenRingWriter::FreeRecords() {
  if (!CheckIntact().ok()) return 0;
  const uint64_t read =
      AtomicU64(header()->read_index).load(std::memory_order_acquire);
  if (!CheckIntact().ok()) return 0;
  if (read > write_index_ || write_index_ - read > capacity_) return 0;
  return capacity_ - static_cast<uint32_t>(write_index_ - read);
}

absl::Status TokenRingWriter::Push(int32_t token_id, uint32_t index,
                                   absl::string_view text) {
  if (absl::Status s = CheckIntact(); !s.ok()) return s;
  if (finished_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "token ring ", name(), " is finished; cannot push token ", index));
  }
  // The client has the file open: its name is no longer needed.
  if (!removed_ && consumer_attached()) (void)Remove();
  const uint32_t need = RecordsForText(text.size());
  if (text.size() > size_t{capacity_} * kRecordTextBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token ", index, " has ", text.size(), " bytes of text, needing ", need,
        " records; the ring holds ", capacity_));
  }
  const uint64_t read =
      AtomicU64(header()->read_index).load(std::memory_order_acquire);
  if (absl::Status s = CheckIntact(); !s.ok()) return s;
  if (read > write_index_ || write_index_ - read > capacity_) {
    broken_ = absl::DataLossError(
        absl::StrCat("token ring ", name(), ": the consumer's read index ",
                     read, " is outside [",
                     write_index_ - std::min<uint64_t>(write_index_, capacity_),
                     ", ", write_index_, "]; the ring is corrupt"));
    return broken_;
  }
  const uint32_t free = capacity_ - static_cast<uint32_t>(write_index_ - read);
  if (need > free) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "token ring ", name(), " is full: token ", index, " needs ", need,
        " records, ", free, " of ", capacity_, " are free (the consumer is at ",
        read, ", the producer at ", write_index_, ")"));
  }
  TokenRecord rec;
  for (uint32_t i = 0; i < need; ++i) {
    std::memset(&rec, 0, sizeof(rec));
    const size_t offset = size_t{i} * kRecordTextBytes;
    const size_t n = std::min<size_t>(
        kRecordTextBytes, text.size() - std::min(offset, text.size()));
    rec.token_id = token_id;
    rec.index = index;
    rec.text_bytes = static_cast<uint16_t>(n);
    rec.flags = i + 1 < need ? kRecordContinued : 0;
    if (n > 0) std::memcpy(rec.text, text.data() + offset, n);
    std::memcpy(&records_[(write_index_ + i) & (capacity_ - 1)], &rec,
                sizeof(rec));
  }
  write_index_ += need;
  AtomicU64(header()->write_index)
      .store(write_index_, std::memory_order_seq_cst);
  Wake();
  return CheckIntact();
}

absl::Status TokenRingWriter::Finish(FinishReason reason) {
  if (absl::Status s = CheckIntact(); !s.ok()) return s;
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("token ring ", name(), " is already finished"));
  }
  finished_ = true;
  TokenRingHeader* h = header();
  AtomicU32(h->finish_reason)
      .store(static_cast<uint32_t>(reason), std::memory_order_relaxed);
  AtomicU32(h->state).store(static_cast<uint32_t>(RingState::kFinished),
                            std::memory_order_seq_cst);
  Wake();
  return CheckIntact();
}

absl::Status TokenRingWriter::Remove() {
  if (removed_) return absl::OkStatus();
  removed_ = true;
  return ShmSegment::Remove(*dir_, name());
}

bool TokenRingWriter::consumer_attached() {
  const int32_t pid = std::atomic_ref<int32_t>(header()->consumer_pid)
                          .load(std::memory_order_acquire);
  return CheckIntact().ok() && pid != 0;
}

}  // namespace flashd::shm
