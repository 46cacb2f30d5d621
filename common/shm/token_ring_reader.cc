#include "common/shm/token_ring_reader.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/shm/futex.h"

namespace flashd::shm {
namespace {

constexpr absl::Duration kSpinTime = absl::Microseconds(20);
constexpr absl::Duration kLivenessInterval = absl::Milliseconds(50);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenRingReader>> TokenRingReader::Attach(
    const std::string& path, uint64_t session_id) {
  absl::StatusOr<std::unique_ptr<ShmSegment>> segment = ShmSegment::Open(path);
  if (!segment.ok()) return segment.status();
  if (absl::Status s = ValidateTokenRingHeader(
          (*segment)->data(), (*segment)->size(), path, session_id);
      !s.ok()) {
    return s;
  }
  TokenRingHeader h;
  std::memcpy(&h, (*segment)->data(), sizeof(h));
  std::unique_ptr<TokenRingReader> reader(
      new TokenRingReader(std::move(*segment), h));
  std::atomic_ref<int32_t>(reader->header()->consumer_pid)
      .store(::getpid(), std::memory_order_release);
  return reader;
}

TokenRingReader::TokenRingReader(std::unique_ptr<ShmSegment> segment,
                                 const TokenRingHeader& h)
    : segment_(std::move(segment)),
      records_(reinterpret_cast<const TokenRecord*>(segment_->data() +
                                                    kTokenRingHeaderBytes)),
      capacity_(h.capacity),
      read_(h.read_index) {
  producer_.pid = h.producer_pid;
  producer_.start_ticks = h.producer_start_ticks;
  producer_.pid_ns = h.producer_pid_ns;
}

TokenRingReader::~TokenRingReader() = default;

absl::StatusOr<bool> TokenRingReader::ReadToken(uint64_t write,
                                                RingEvent* out) {
  out->kind = RingEvent::Kind::kToken;
  out->text.clear();
  uint64_t i = read_;
  TokenRecord rec;
  while (true) {
    // Copy first: validate what we use, not what the producer may rewrite.
    std::memcpy(&rec, &records_[i & (capacity_ - 1)], sizeof(rec));
    if (rec.text_bytes > kRecordTextBytes || (rec.flags & ~kRecordContinued)) {
      return absl::DataLossError(
          absl::StrCat("token ring ", name(), ": record ", i,
                       " has text_bytes ", rec.text_bytes, " (max ",
                       kRecordTextBytes, ") and flags ", rec.flags));
    }
    if (i == read_) {
      out->token_id = rec.token_id;
      out->index = rec.index;
    } else if (rec.token_id != out->token_id || rec.index != out->index) {
      return absl::DataLossError(absl::StrCat(
          "token ring ", name(), ": record ", i, " continues token ",
          out->index, " (id ", out->token_id, ") but holds token ", rec.index,
          " (id ", rec.token_id, ")"));
    }
    out->text.append(rec.text, rec.text_bytes);
    ++i;
    if ((rec.flags & kRecordContinued) == 0) break;
    if (i == write) {
      return absl::DataLossError(
          absl::StrCat("token ring ", name(), ": token ", out->index,
                       " continues past the write index ", write));
    }
  }
  read_ = i;
  AtomicU64(header()->read_index).store(read_, std::memory_order_release);
  return true;
}

absl::StatusOr<bool> TokenRingReader::TryRead(RingEvent* out) {
  TokenRingHeader* h = header();
  for (int pass = 0; pass < 2; ++pass) {
    const uint64_t write =
        AtomicU64(h->write_index).load(std::memory_order_seq_cst);
    if (write < read_ || write - read_ > capacity_) {
      return absl::DataLossError(
          absl::StrCat("token ring ", name(), ": write index ", write,
                       " is inconsistent with read index ", read_,
                       " and capacity ", capacity_));
    }
    if (write > read_) return ReadToken(write, out);
    if (pass == 1) break;
    // Drained. The producer publishes its last tokens before the state, so
    // after seeing "finished" one more look at the write index is final.
    if (AtomicU32(h->state).load(std::memory_order_seq_cst) !=
        static_cast<uint32_t>(RingState::kFinished)) {
      return false;
    }
  }
  out->kind = RingEvent::Kind::kFinished;
  out->text.clear();
  out->reason = static_cast<FinishReason>(
      AtomicU32(h->finish_reason).load(std::memory_order_acquire));
  return true;
}

absl::StatusOr<size_t> TokenRingReader::Poll(
    absl::FunctionRef<void(const RingEvent&)> fn, size_t max_events) {
  RingEvent event;
  size_t n = 0;
  while (n < max_events) {
    absl::StatusOr<bool> got = TryRead(&event);
    if (!got.ok()) return got.status();
    if (!*got) break;
    fn(event);
    ++n;
    if (event.kind == RingEvent::Kind::kFinished) break;
  }
  return n;
}

absl::Status TokenRingReader::CheckProducer() const {
  if (CheckLiveness(producer_) != Liveness::kDead) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("token ring ", name(), ": the producer (flashd, pid ",
                   producer_.pid, ") died without finishing the stream after ",
                   read_, " records; reconnect to the daemon"));
}

absl::StatusOr<RingEvent> TokenRingReader::Next(absl::Duration timeout) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;  // saturates for infinite
  RingEvent event;
  // Spin: a token often follows the previous one within microseconds
  // (continuation of a burst).
  do {
    absl::StatusOr<bool> got = TryRead(&event);
    if (!got.ok()) return got.status();
    if (*got) return event;
    CpuRelax();
  } while (absl::Now() - start < std::min(kSpinTime, timeout));

  TokenRingHeader* h = header();
  while (true) {
    const uint32_t seq = AtomicU32(h->wake_seq).load(std::memory_order_seq_cst);
    AtomicU32(h->consumer_waiting).store(1, std::memory_order_seq_cst);
    absl::StatusOr<bool> got = TryRead(&event);
    if (!got.ok() || *got) {
      AtomicU32(h->consumer_waiting).store(0, std::memory_order_relaxed);
      if (!got.ok()) return got.status();
      return event;
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      AtomicU32(h->consumer_waiting).store(0, std::memory_order_relaxed);
      return absl::DeadlineExceededError(
          absl::StrCat("no token on ring ", name(), " within ",
                       absl::FormatDuration(timeout)));
    }
    if (absl::Status s = CheckProducer(); !s.ok()) {
      AtomicU32(h->consumer_waiting).store(0, std::memory_order_relaxed);
      return s;
    }
    // Sleeps only while wake_seq still equals seq: a publish between the
    // TryRead above and here changed it, and the wait returns at once.
    FutexWait(&h->wake_seq, seq, std::min(deadline - now, kLivenessInterval));
  }
}

}  // namespace flashd::shm
