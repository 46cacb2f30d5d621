// Measures a file's read throughput and latency over read sizes x queue
// depths, and turns the table into the cost model read planners use.
//
// Caches must not fake the numbers: calibrate through a UringFile opened
// with O_DIRECT (is_direct()), which bypasses the page cache. For buffered
// files (PosixFile, or a UringFile that fell back), drop the page cache
// first (`sync; echo 3 > /proc/sys/vm/drop_caches` as root) and use a file
// much larger than RAM's spare cache, or the table measures memory. Device
// and hypervisor caches are out of reach either way: use a file of at least
// a few hundred MiB (a model file) so random offsets rarely repeat.
#ifndef FLASHD_COMMON_IO_IO_CALIBRATION_H_
#define FLASHD_COMMON_IO_IO_CALIBRATION_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/io/random_access_file.h"

namespace flashd::io {

// One measured (read size, queue depth) combination.
struct IoCell {
  size_t read_size = 0;
  int queue_depth = 0;
  double bytes_per_second = 0;
  // Latency of one ReadBatch of queue_depth reads, in microseconds.
  double latency_mean_us = 0;
  double latency_p99_us = 0;
  uint64_t reads = 0;    // reads issued in the cell
  double seconds = 0;    // wall time the cell took
};

// A calibration result: the table, its best cell, and the cost model.
struct IoProfile {
  std::string file;           // path measured
  uint64_t file_size = 0;
  bool direct = false;        // page cache bypassed (alignment > 1)
  size_t alignment = 1;       // the file's required_alignment()
  std::vector<size_t> read_sizes;  // ascending, the table's rows
  std::vector<int> queue_depths;   // ascending, the table's columns
  std::vector<IoCell> cells;       // row-major: read_sizes x queue_depths
  double best_bytes_per_second = 0;
  size_t best_read_size = 0;
  int best_queue_depth = 0;

  // The cell at row `r` (read size), column `c` (queue depth).
  const IoCell& cell(size_t r, size_t c) const {
    return cells[r * queue_depths.size() + c];
  }

  // Seconds to read `bytes` as reads of `read_size` with `queue_depth` in
  // flight: bytes / throughput, the throughput interpolated bilinearly in
  // log2(read size) x log2(queue depth) and clamped to the table's edges.
  // 0 for 0 bytes. Requires a complete table (as CalibrateIo and
  // IoProfileFromJson produce).
  double EstimateSeconds(uint64_t bytes, size_t read_size,
                         int queue_depth) const;
};

// What to measure and how long. Defaults are the flashd standard grid.
struct CalibrationOptions {
  // Read sizes (rows); sizes larger than the file or not a multiple of its
  // alignment are left out.
  std::vector<size_t> read_sizes = {4096,   16384,   65536,
                                    262144, 1048576, 4194304};
  // Queue depths (columns): a cell at depth q issues ReadBatch calls of q
  // requests (the queue drains between batches, as a planner's would).
  std::vector<int> queue_depths = {1, 4, 16, 32, 64};
  // Each cell stops after this much time or max_bytes_per_cell, whichever
  // comes first (at least one batch is always issued).
  double seconds_per_cell = 0.25;
  uint64_t max_bytes_per_cell = uint64_t{1} << 30;
  // Destination memory; in-flight reads share it round-robin when
  // queue_depth x read_size is larger (the data is discarded).
  size_t max_buffer_bytes = size_t{64} << 20;
  // Seed of the random offsets (multiples of max(alignment, 4096)).
  uint64_t seed = 1;
  // Called after each cell (progress output); may be empty.
  std::function<void(const IoCell&)> on_cell;
};

// Measures `f` over the grid. INVALID_ARGUMENT for bad options or a file
// smaller than every read size; read errors are returned as they come.
absl::StatusOr<IoProfile> CalibrateIo(RandomAccessFile& f,
                                      const CalibrationOptions& options);

// The profile as a small JSON object (format version 1).
std::string IoProfileToJson(const IoProfile& profile);

// Parses IoProfileToJson's output. INVALID_ARGUMENT naming the byte offset
// or the key for malformed JSON, unknown or missing keys, a table that does
// not match its rows and columns, or non-positive measurements.
absl::StatusOr<IoProfile> IoProfileFromJson(const std::string& json);

}  // namespace flashd::io

#endif  // FLASHD_COMMON_IO_IO_CALIBRATION_H_
