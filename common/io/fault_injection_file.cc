#include "common/io/fault_injection_file.h"

#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/check.h"

namespace flashd::io {

void FaultPlan::ShortRead(int k, size_t m) {
  shorts_.push_back({reads_seen_ + k, m});
}

void FaultPlan::Interrupt(int k) { interrupts_.push_back(reads_seen_ + k); }

void FaultPlan::FailRange(uint64_t begin, uint64_t end) {
  ranges_.push_back({begin, end});
}

void FaultPlan::FlipBit(uint64_t offset, int bit) {
  FLASHD_CHECK(bit >= 0 && bit < 8);
  flips_.push_back({offset, bit});
}

void FaultPlan::Clear() {
  reads_seen_ = 0;
  shorts_.clear();
  interrupts_.clear();
  ranges_.clear();
  flips_.clear();
}

FaultPlan::Decision FaultPlan::Next(uint64_t offset, size_t n) {
  const int k = reads_seen_++;
  Decision d{n, 0};
  for (int i : interrupts_) {
    if (i == k) {
      d.err = EINTR;
      return d;
    }
  }
  for (const Range& r : ranges_) {
    if (n > 0 && offset < r.end && r.begin < offset + n) {
      d.err = EIO;
      return d;
    }
  }
  for (const Short& s : shorts_) {
    if (s.k == k && s.m < n) d.deliver = s.m;
  }
  return d;
}

void FaultPlan::ApplyFlips(uint64_t offset, size_t n, uint8_t* dst) const {
  for (const Flip& f : flips_) {
    if (f.offset >= offset && f.offset - offset < n) {
      dst[f.offset - offset] ^= static_cast<uint8_t>(1u << f.bit);
    }
  }
}

FaultInjectionFile::FaultInjectionFile(std::unique_ptr<RandomAccessFile> base)
    : base_(std::move(base)) {
  FLASHD_CHECK(base_ != nullptr);
}

absl::Status FaultInjectionFile::Read(uint64_t offset, size_t n,
                                      uint8_t* dst) {
  ReadRequest r{offset, n, dst, absl::OkStatus()};
  return ReadBatch(absl::MakeSpan(&r, 1));
}

absl::Status FaultInjectionFile::ReadBatch(absl::Span<ReadRequest> reqs) {
  // Decide every request first, then read the survivors as one batch so
  // they stay in flight together in `base`. Allocates; test/drill use only.
  std::vector<ReadRequest> forward;
  std::vector<size_t> index;
  std::vector<size_t> want;
  forward.reserve(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    ReadRequest& r = reqs[i];
    absl::Status range = CheckReadRange(path(), size(), r.offset, r.n);
    if (!range.ok()) {
      r.status = range;
      continue;
    }
    const FaultPlan::Decision d = plan_.Next(r.offset, r.n);
    if (d.err != 0) {
      r.status = ReadErrnoStatus(d.err, path(), r.offset, r.n);
      continue;
    }
    forward.push_back({r.offset, d.deliver, r.dst, absl::OkStatus()});
    index.push_back(i);
    want.push_back(r.n);
  }
  base_->ReadBatch(absl::MakeSpan(forward)).IgnoreError();  // per request
  for (size_t j = 0; j < forward.size(); ++j) {
    ReadRequest& r = reqs[index[j]];
    r.status = forward[j].status;
    if (!r.status.ok()) continue;
    plan_.ApplyFlips(r.offset, forward[j].n, r.dst);
    if (forward[j].n < want[j]) {
      r.status = absl::DataLossError(absl::StrCat(
          "short read of ", path(), " at offset ", r.offset, ": got ",
          forward[j].n, " of ", want[j], " bytes (injected)"));
    }
  }
  return FirstError(reqs);
}

PreadFn FaultyPread(FaultPlan* plan) {
  return [plan](int fd, void* buf, size_t n, off_t off) -> ssize_t {
    const FaultPlan::Decision d = plan->Next(static_cast<uint64_t>(off), n);
    if (d.err != 0) {
      errno = d.err;
      return -1;
    }
    const ssize_t r = ::pread(fd, buf, d.deliver, off);
    if (r > 0) {
      plan->ApplyFlips(static_cast<uint64_t>(off), static_cast<size_t>(r),
                       static_cast<uint8_t*>(buf));
    }
    return r;
  };
}

}  // namespace flashd::io
