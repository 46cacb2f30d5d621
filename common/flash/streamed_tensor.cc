#include "common/flash/streamed_tensor.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace flashd::flash {

Range StreamedRowsRange(const TensorExtent& t, int64_t first_row,
                        int64_t rows) {
  const uint64_t row = RowSize(t.type, t.cols);
  const uint64_t c = kStreamChunkBytes;
  const uint64_t begin = first_row * row / c * c;
  const uint64_t end = std::min<uint64_t>(
      ((first_row + rows) * row + c - 1) / c * c, t.extent.bytes);
  return AlignRange(t.extent.offset + begin, t.extent.offset + end,
                    kFlashAlign);
}

absl::Status VerifyStreamedRows(const FlashFile& file, const TensorExtent& t,
                                const std::string& name, int64_t first_row,
                                int64_t rows, const uint8_t* base,
                                uint64_t base_offset) {
  const absl::Span<const uint32_t> crcs = file.ChunkCrcs(t);
  const uint64_t row = RowSize(t.type, t.cols);
  const uint64_t c = kStreamChunkBytes;
  const uint64_t first = first_row * row / c;
  const uint64_t last = ((first_row + rows) * row + c - 1) / c;
  for (uint64_t k = first; k < last && k < crcs.size(); ++k) {
    const uint64_t b = k * c;
    const uint64_t n = std::min<uint64_t>(c, t.extent.bytes - b);
    const uint32_t found =
        Crc32c(base + (t.extent.offset + b - base_offset), n);
    if (found != crcs[k]) {
      return absl::DataLossError(absl::StrFormat(
          "%s: checksum mismatch in %s chunk %d (file offset %d, %d bytes): "
          "expected crc32c %08x, found %08x; the file is corrupt, re-run "
          "flashd convert",
          file.path(), name, k, t.extent.offset + b, n, crcs[k], found));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StreamedTensor> StreamedTensor::Create(const FlashFile& file,
                                                      const TensorExtent& t,
                                                      const std::string& name,
                                                      IoWorker* worker) {
  StreamedTensor s;
  s.file_ = &file;
  s.tensor_ = &t;
  s.name_ = name;
  s.worker_ = worker;
  // A row spans at most ceil(row / chunk) + 1 chunks.
  const uint64_t row = RowSize(t.type, t.cols);
  const uint64_t bytes =
      ((row + kStreamChunkBytes - 1) / kStreamChunkBytes + 1) *
      kStreamChunkBytes;
  absl::StatusOr<io::AlignedBuffer> b = io::AlignedBuffer::Create(bytes);
  if (!b.ok()) return b.status();
  s.buffer_ = std::move(*b);
  s.reqs_.reserve(2);
  return s;
}

absl::StatusOr<const uint8_t*> StreamedTensor::Row(int64_t r) {
  const uint64_t row = RowSize(tensor_->type, tensor_->cols);
  const uint64_t at = tensor_->extent.offset + r * row;
  if (held_.bytes == 0 || at < held_.offset || at + row > held_.end()) {
    const Range range = StreamedRowsRange(*tensor_, r, 1);
    reqs_.clear();
    io::ReadRequest q;
    q.offset = range.offset;
    q.n = range.bytes;
    q.dst = buffer_.data();
    reqs_.push_back(q);
    held_ = {};
    absl::StatusOr<IoWorker::Ticket> t = worker_->Submit(absl::MakeSpan(reqs_));
    if (!t.ok()) return t.status();
    absl::Status s = worker_->Wait(*t);
    if (s.ok()) {
      s = VerifyStreamedRows(*file_, *tensor_, name_, r, 1, buffer_.data(),
                             range.offset);
    }
    if (!s.ok()) return s;
    held_ = range;
  }
  return buffer_.data() + (at - held_.offset);
}

}  // namespace flashd::flash
