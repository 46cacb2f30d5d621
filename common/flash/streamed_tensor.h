// Resident-format tensors that the streaming modes read in parts (the token
// embeddings one row at a time, the classifier in chunks of rows). Their
// bytes carry a CRC32C per kStreamChunkBytes (FlashFile::ChunkCrcs), so a
// part is verified by reading whole chunks around it.
#ifndef FLASHD_COMMON_FLASH_STREAMED_TENSOR_H_
#define FLASHD_COMMON_FLASH_STREAMED_TENSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/flash/flash_file.h"
#include "common/flash/io_worker.h"
#include "common/flash/source_util.h"
#include "common/io/aligned_buffer.h"

namespace flashd::flash {

// Alignment of the parts read: one checksum chunk.
inline size_t StreamedChunkBytes() { return kStreamChunkBytes; }

// The file range of whole checksum chunks holding rows
// [first_row, first_row + rows) of `t`.
Range StreamedRowsRange(const TensorExtent& t, int64_t first_row,
                        int64_t rows);

// Verifies the chunks of StreamedRowsRange(t, first_row, rows), held in a
// buffer of the file's bytes from `base_offset`. DATA_LOSS naming the
// tensor, the chunk and the CRCs.
absl::Status VerifyStreamedRows(const FlashFile& file, const TensorExtent& t,
                                const std::string& name, int64_t first_row,
                                int64_t rows, const uint8_t* base,
                                uint64_t base_offset);

// Reads single rows of a tensor through an IoWorker into a small buffer.
class StreamedTensor {
 public:
  StreamedTensor() = default;
  static absl::StatusOr<StreamedTensor> Create(const FlashFile& file,
                                               const TensorExtent& t,
                                               const std::string& name,
                                               IoWorker* worker);
  // Reads and verifies row `r`; the pointer is valid until the next call.
  absl::StatusOr<const uint8_t*> Row(int64_t r);
  uint64_t buffer_bytes() const { return buffer_.size(); }

 private:
  const FlashFile* file_ = nullptr;
  const TensorExtent* tensor_ = nullptr;
  std::string name_;
  IoWorker* worker_ = nullptr;
  io::AlignedBuffer buffer_;
  Range held_;  // file range in buffer_ (bytes == 0: nothing)
  std::vector<io::ReadRequest> reqs_;
};

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_STREAMED_TENSOR_H_
