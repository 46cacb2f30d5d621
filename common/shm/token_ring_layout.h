// The token ring's shared-memory layout: a versioned ABI between the daemon
// (single producer) and one local client (single consumer).
//
// A segment is a 192-byte header followed by `capacity` 64-byte records:
//
//   offset  field                        written by
//   0       magic "FLDTRING"             producer, once
//   8       layout_version               producer, once
//   12      header_bytes (192)           producer, once
//   16      capacity (records, 2^k)      producer, once
//   20      record_bytes (64)            producer, once
//   24      session_id                   producer, once
//   32      producer_pid                 producer, once
//   40      producer_start_ticks         producer, once (/proc/<pid>/stat #22)
//   48      producer_pid_ns              producer, once (/proc/self/ns/pid)
//   56      state (RingState)            producer (atomic)
//   60      finish_reason (FinishReason) producer, before state
//   64      write_index                  producer (atomic, own cache line)
//   72      wake_seq (futex word)        producer (atomic)
//   128     read_index                   consumer (atomic, own cache line)
//   136     consumer_waiting             consumer (atomic)
//   140     consumer_pid                 consumer, on attach
//   192     records[capacity]
//
// Indices count records since the start and never wrap; record i lives in
// slot i & (capacity - 1). A token's text longer than kRecordTextBytes
// spans consecutive records, all but the last flagged kRecordContinued; the
// producer publishes a token's records with one store of write_index, so a
// consumer never sees half a token. Everything is plain data: the shared
// words are accessed through std::atomic_ref (lock-free, hence address-free
// and valid across processes), so the structs stay trivially copyable.
#ifndef FLASHD_COMMON_SHM_TOKEN_RING_LAYOUT_H_
#define FLASHD_COMMON_SHM_TOKEN_RING_LAYOUT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "absl/status/status.h"

namespace flashd::shm {

inline constexpr uint64_t kTokenRingMagic = 0x474e495254444c46;  // FLDTRING
inline constexpr uint32_t kTokenRingLayoutVersion = 1;
inline constexpr uint32_t kRecordTextBytes = 48;
inline constexpr uint32_t kMinRingCapacity = 2;
inline constexpr uint32_t kMaxRingCapacity = 1u << 20;

// Where a ring's session stands (TokenRingHeader::state).
enum class RingState : uint32_t {
  kOpen = 1,      // the producer may still push tokens
  kFinished = 2,  // no more tokens; finish_reason says why
};

// Why a session's token stream ended (TokenRingHeader::finish_reason).
enum class FinishReason : uint32_t {
  kNone = 0,       // not finished
  kStop = 1,       // end-of-sequence token or a stop string
  kLength = 2,     // max tokens reached
  kCancelled = 3,  // the client cancelled
  kError = 4,      // the daemon failed the session (the stream says why)
  kShutdown = 5,   // the daemon is draining
  kAbandoned = 6,  // the writer was destroyed without Finish()
};
inline constexpr uint32_t kMaxFinishReason = 6;

// "stop", "length", ...; "unknown(N)" for values outside the enum.
std::string FinishReasonName(FinishReason reason);

// TokenRecord::flags bits.
inline constexpr uint16_t kRecordContinued = 1;  // the text goes on next

// One slot of the ring: (part of) one generated token.
struct TokenRecord {
  int32_t token_id;     // vocabulary id
  uint32_t index;       // position of the token among the generated ones
  uint16_t text_bytes;  // used bytes of text, <= kRecordTextBytes
  uint16_t flags;       // kRecordContinued
  uint32_t reserved;    // zero
  char text[kRecordTextBytes];  // UTF-8 piece; may split a code point
};

// The segment header; see the table above.
struct TokenRingHeader {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t header_bytes;
  uint32_t capacity;
  uint32_t record_bytes;
  uint64_t session_id;
  int32_t producer_pid;
  uint32_t reserved0;
  uint64_t producer_start_ticks;
  uint64_t producer_pid_ns;
  uint32_t state;
  uint32_t finish_reason;
  // Producer cache line.
  alignas(64) uint64_t write_index;
  uint32_t wake_seq;
  uint32_t reserved1[13];
  // Consumer cache line.
  alignas(64) uint64_t read_index;
  uint32_t consumer_waiting;
  int32_t consumer_pid;
  uint32_t reserved2[12];
};

inline constexpr uint32_t kTokenRingHeaderBytes = 192;
inline constexpr uint32_t kTokenRecordBytes = 64;

static_assert(std::is_trivially_copyable_v<TokenRecord>);
static_assert(std::is_standard_layout_v<TokenRecord>);
static_assert(sizeof(TokenRecord) == kTokenRecordBytes);
static_assert(offsetof(TokenRecord, text) == 16);
static_assert(std::is_trivially_copyable_v<TokenRingHeader>);
static_assert(std::is_standard_layout_v<TokenRingHeader>);
static_assert(sizeof(TokenRingHeader) == kTokenRingHeaderBytes);
static_assert(alignof(TokenRingHeader) == 64);
static_assert(offsetof(TokenRingHeader, session_id) == 24);
static_assert(offsetof(TokenRingHeader, producer_pid) == 32);
static_assert(offsetof(TokenRingHeader, producer_start_ticks) == 40);
static_assert(offsetof(TokenRingHeader, producer_pid_ns) == 48);
static_assert(offsetof(TokenRingHeader, state) == 56);
static_assert(offsetof(TokenRingHeader, finish_reason) == 60);
static_assert(offsetof(TokenRingHeader, write_index) == 64);
static_assert(offsetof(TokenRingHeader, wake_seq) == 72);
static_assert(offsetof(TokenRingHeader, read_index) == 128);
static_assert(offsetof(TokenRingHeader, consumer_waiting) == 136);
static_assert(offsetof(TokenRingHeader, consumer_pid) == 140);
// Shared words must be lock-free: only lock-free atomics are address-free,
// i.e. work between processes mapping the same page at different addresses.
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic_ref<uint64_t>::is_always_lock_free);
static_assert(std::atomic_ref<uint32_t>::is_always_lock_free);
static_assert(std::atomic_ref<uint64_t>::required_alignment <= 8);
static_assert(offsetof(TokenRingHeader, write_index) % 8 == 0);
static_assert(offsetof(TokenRingHeader, read_index) % 8 == 0);

// Bytes of a segment holding `capacity` records.
constexpr size_t TokenRingSegmentBytes(uint32_t capacity) {
  return size_t{kTokenRingHeaderBytes} + size_t{capacity} * kTokenRecordBytes;
}

// Records a token with `text_bytes` bytes of text occupies (at least 1).
constexpr uint32_t RecordsForText(size_t text_bytes) {
  return text_bytes == 0
             ? 1
             : static_cast<uint32_t>((text_bytes + kRecordTextBytes - 1) /
                                     kRecordTextBytes);
}

// OK when `capacity` is a power of two in [kMinRingCapacity,
// kMaxRingCapacity]; INVALID_ARGUMENT naming the value otherwise.
absl::Status CheckRingCapacity(uint32_t capacity);

// Checks the header at `base` of a `segment_bytes`-byte segment named
// `name` before a consumer uses it: size, magic, layout version, header and
// record sizes, capacity against the segment size, session identity and
// state. Errors: DATA_LOSS (truncated or inconsistent), INVALID_ARGUMENT
// (not a token ring), FAILED_PRECONDITION (other layout version, other
// session). Reads the header once into a copy, so a concurrent writer
// cannot change it between checks.
absl::Status ValidateTokenRingHeader(const void* base, size_t segment_bytes,
                                     const std::string& name,
                                     uint64_t expected_session_id);

// Typed views of the shared words.
inline std::atomic_ref<uint64_t> AtomicU64(uint64_t& word) {
  return std::atomic_ref<uint64_t>(word);
}
inline std::atomic_ref<uint32_t> AtomicU32(uint32_t& word) {
  return std::atomic_ref<uint32_t>(word);
}

}  // namespace flashd::shm

#endif  // FLASHD_COMMON_SHM_TOKEN_RING_LAYOUT_H_
