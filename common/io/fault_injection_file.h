// Fault injection for reads: short reads, EIO on a byte range, bit flips.
//
// Which layer completes short reads: the OS-facing files (PosixFile's pread
// loop, UringFile's resubmission) are the only ones that see raw byte
// counts, and they complete short reads. Above them the RandomAccessFile
// contract is "exactly n bytes or an error", so a short read injected by
// FaultInjectionFile (above that contract) is *reported*: the first m bytes
// are delivered, the rest of the buffer is untouched, and the request fails
// with DATA_LOSS naming offset, m and n. To test completion, inject at the
// syscall layer instead: PosixFile::Options::pread = FaultyPread(&plan).
#ifndef FLASHD_COMMON_IO_FAULT_INJECTION_FILE_H_
#define FLASHD_COMMON_IO_FAULT_INJECTION_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/io/posix_file.h"
#include "common/io/random_access_file.h"

namespace flashd::io {

// The faults to inject, consulted once per read (per request for
// FaultInjectionFile, per pread call for FaultyPread). Not thread-safe.
class FaultPlan {
 public:
  // The k-th read seen from now (0-based, counting every read) delivers
  // only `m` bytes (m < its length; otherwise it is untouched).
  void ShortRead(int k, size_t m);
  // The k-th read seen from now fails with EINTR before reading anything,
  // as a read interrupted by a signal does.
  void Interrupt(int k);
  // Reads overlapping [begin, end) fail with EIO (DATA_LOSS).
  void FailRange(uint64_t begin, uint64_t end);
  // Flips bit `bit` (0..7) of the byte at file offset `offset` in every
  // read that covers it (the data on "disk" stays correct).
  void FlipBit(uint64_t offset, int bit);
  // Removes every fault and resets the read count.
  void Clear();

  // Reads seen so far.
  int reads_seen() const { return reads_seen_; }

  // What happens to one read of `n` bytes at `offset`; counts the read.
  struct Decision {
    size_t deliver = 0;  // bytes to deliver (== n unless short)
    int err = 0;         // errno to fail with, or 0
  };
  Decision Next(uint64_t offset, size_t n);
  // Applies the bit flips that fall in [offset, offset + n) to `dst`.
  void ApplyFlips(uint64_t offset, size_t n, uint8_t* dst) const;

 private:
  struct Short {
    int k;
    size_t m;
  };
  struct Range {
    uint64_t begin;
    uint64_t end;
  };
  struct Flip {
    uint64_t offset;
    int bit;
  };
  int reads_seen_ = 0;
  std::vector<Short> shorts_;
  std::vector<int> interrupts_;
  std::vector<Range> ranges_;
  std::vector<Flip> flips_;
};

// A RandomAccessFile that forwards to `base` and applies a FaultPlan to
// each request: EIO ranges fail the request with DATA_LOSS naming its
// offset (other requests of the batch are still read), short reads are
// reported (see the file comment), bit flips corrupt the delivered bytes.
// Thread safety: that of `base`, but the plan is unsynchronized, so use it
// from one thread.
class FaultInjectionFile final : public RandomAccessFile {
 public:
  explicit FaultInjectionFile(std::unique_ptr<RandomAccessFile> base);

  FaultPlan& plan() { return plan_; }
  RandomAccessFile& base() { return *base_; }

  uint64_t size() const override { return base_->size(); }
  size_t required_alignment() const override {
    return base_->required_alignment();
  }
  const std::string& path() const override { return base_->path(); }
  absl::Status Read(uint64_t offset, size_t n, uint8_t* dst) override;
  absl::Status ReadBatch(absl::Span<ReadRequest> reqs) override;

 private:
  std::unique_ptr<RandomAccessFile> base_;
  FaultPlan plan_;
};

// A pread(2) that applies `plan` (which must outlive it) like the OS would:
// a short read returns fewer bytes, EIO returns -1 with errno = EIO, flips
// corrupt the bytes read. For PosixFile::Options::pread.
PreadFn FaultyPread(FaultPlan* plan);

}  // namespace flashd::io

#endif  // FLASHD_COMMON_IO_FAULT_INJECTION_FILE_H_
