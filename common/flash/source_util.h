// Pieces the streaming weight sources share: where a layer's bytes are,
// views of its tensors inside a buffer, checksum verification of what was
// read, and splitting a byte range into aligned reads.
#ifndef FLASHD_COMMON_FLASH_SOURCE_UTIL_H_
#define FLASHD_COMMON_FLASH_SOURCE_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/base/thread_pool.h"
#include "common/flash/bundle_ffn.h"
#include "common/flash/flash_engine.h"
#include "common/flash/flash_file.h"
#include "common/io/random_access_file.h"

namespace flashd::flash {

// A byte range of the file rounded out to `alignment`.
struct Range {
  uint64_t offset = 0;
  uint64_t bytes = 0;
  uint64_t end() const { return offset + bytes; }
};
Range AlignRange(uint64_t begin, uint64_t end, size_t alignment);

// Layer l's whole region: attention tensors, norms, down tables, CRC table
// and bundles (contiguous in the file by construction).
Range LayerRegion(const LayerLayout& layer);

// The attention weights and norms of `layer` as views into `base`, a buffer
// holding the file's bytes from file offset `base_offset`. FFN matrices are
// left empty (the FFN is computed over bundles).
LayerWeights LayerViews(const LayerLayout& layer, const uint8_t* base,
                        uint64_t base_offset);
// A view of tensor `t` inside such a buffer.
Matrix TensorView(const TensorExtent& t, const uint8_t* base,
                  uint64_t base_offset);
// The layer's down tables inside such a buffer (null for kTyped).
DownTables DownTablesAt(const LayerLayout& layer, const uint8_t* base,
                        uint64_t base_offset);

// Verifies every tensor extent of `layer` (norms, attention, down tables,
// CRC table) inside the buffer; with `bundles`, every bundle too (in
// parallel on `pool`). DATA_LOSS naming the first mismatch.
absl::Status VerifyLayer(const FlashFile& file, int32_t layer,
                         const uint8_t* base, uint64_t base_offset,
                         bool bundles, ThreadPool* pool);

// Appends reads of `range` into `dst` (which holds the range's bytes) in
// pieces of at most `max_read` bytes to `reqs`.
void SplitReads(const Range& range, size_t max_read, uint8_t* dst,
                std::vector<io::ReadRequest>* reqs);

// Opens options.open_file(path) or, by default, a UringFile with O_DIRECT
// and `queue_depth` reads in flight.
absl::StatusOr<std::unique_ptr<io::RandomAccessFile>> OpenForReading(
    const SourceOptions& options, const std::string& path);

// Rows per output chunk so one chunk's aligned bytes fit `max_bytes`.
int64_t OutputRowsPerChunk(const TensorExtent& output, uint64_t max_bytes,
                           size_t alignment);

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_SOURCE_UTIL_H_
