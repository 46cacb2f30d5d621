#include "common/shm/token_ring_layout.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace flashd::shm {

std::string FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
    case FinishReason::kShutdown:
      return "shutdown";
    case FinishReason::kAbandoned:
      return "abandoned";
  }
  return absl::StrCat("unknown(", static_cast<uint32_t>(reason), ")");
}

absl::Status CheckRingCapacity(uint32_t capacity) {
  if (capacity < kMinRingCapacity || capacity > kMaxRingCapacity ||
      (capacity & (capacity - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token ring capacity ", capacity, " must be a power of two in [",
        kMinRingCapacity, ", ", kMaxRingCapacity, "] records"));
  }
  return absl::OkStatus();
}

absl::Status ValidateTokenRingHeader(const void* base, size_t segment_bytes,
                                     const std::string& name,
                                     uint64_t expected_session_id) {
  const std::string seg = absl::StrCat("shared-memory segment '", name, "'");
  if (segment_bytes < sizeof(uint64_t)) {
    return absl::DataLossError(absl::StrCat(
        seg, " is ", segment_bytes,
        " bytes, too small to be a flashd token ring (truncated or "
        "not created by flashd)"));
  }
  uint64_t magic;
  std::memcpy(&magic, base, sizeof(magic));
  if (magic != kTokenRingMagic) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s is not a flashd token ring: magic 0x%016x, expected 0x%016x "
        "(\"FLDTRING\")",
        seg, magic, kTokenRingMagic));
  }
  if (segment_bytes < kTokenRingHeaderBytes) {
    return absl::DataLossError(
        absl::StrCat(seg, " is truncated: ", segment_bytes,
                     " bytes, the header alone is ", kTokenRingHeaderBytes));
  }
  TokenRingHeader h;
  std::memcpy(&h, base, sizeof(h));
  if (h.layout_version != kTokenRingLayoutVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat(seg, " has token ring layout version ", h.layout_version,
                     "; this client reads ", kTokenRingLayoutVersion,
                     " (use a client built with the daemon's flashd version)"));
  }
  if (h.header_bytes != kTokenRingHeaderBytes) {
    return absl::DataLossError(absl::StrCat(
        seg, ": header_bytes is ", h.header_bytes, ", layout version ",
        kTokenRingLayoutVersion, " has ", kTokenRingHeaderBytes));
  }
  if (h.record_bytes != kTokenRecordBytes) {
    return absl::DataLossError(absl::StrCat(
        seg, ": record_bytes is ", h.record_bytes, ", layout version ",
        kTokenRingLayoutVersion, " has ", kTokenRecordBytes));
  }
  if (absl::Status s = CheckRingCapacity(h.capacity); !s.ok()) {
    return absl::DataLossError(absl::StrCat(seg, ": ", s.message()));
  }
  const size_t need = TokenRingSegmentBytes(h.capacity);
  if (segment_bytes < need) {
    return absl::DataLossError(absl::StrCat(
        seg, " is truncated: header says ", h.capacity, " records of ",
        h.record_bytes, " bytes after a ", h.header_bytes,
        "-byte header = ", need, " bytes, the segment has ", segment_bytes));
  }
  if (h.session_id != expected_session_id) {
    return absl::FailedPreconditionError(
        absl::StrCat(seg, " belongs to session ", h.session_id,
                     ", expected session ", expected_session_id));
  }
  if (h.producer_pid <= 0) {
    return absl::DataLossError(
        absl::StrCat(seg, ": producer pid ", h.producer_pid, " is invalid"));
  }
  if (h.state != static_cast<uint32_t>(RingState::kOpen) &&
      h.state != static_cast<uint32_t>(RingState::kFinished)) {
    return absl::DataLossError(absl::StrCat(seg, ": state ", h.state,
                                            " is not open (1) or "
                                            "finished (2)"));
  }
  if (h.read_index > h.write_index ||
      h.write_index - h.read_index > h.capacity) {
    return absl::DataLossError(absl::StrCat(
        seg, ": read index ", h.read_index, " and write index ", h.write_index,
        " are inconsistent with capacity ", h.capacity));
  }
  return absl::OkStatus();
}

}  // namespace flashd::shm
