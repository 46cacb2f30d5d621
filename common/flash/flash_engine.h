// The four ways flashd runs a model (--mode), the DRAM budget (--dram-budget)
// and the weight sources that stream a .flash file for the non-resident
// modes:
//  - resident: the whole model in DRAM (the source GGUF, as before);
//  - naive:    every weight re-read from flash for every token, no overlap
//              (the LLM-in-a-Flash baseline);
//  - layer:    layer streaming: one layer in DRAM while the next is read;
//  - flash:    LLM in a Flash: attention, norms and output resident, FFN
//              neurons read on demand into per-layer neuron caches.
#ifndef FLASHD_COMMON_FLASH_FLASH_ENGINE_H_
#define FLASHD_COMMON_FLASH_FLASH_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/base/thread_pool.h"
#include "common/engine/weight_source.h"
#include "common/flash/flash_file.h"
#include "common/flash/io_worker.h"
#include "common/io/io_calibration.h"
#include "common/io/random_access_file.h"
#include "common/shm/shm_dir.h"

namespace flashd::flash {

enum class Mode { kResident, kNaive, kLayer, kFlash };

// "resident", "naive", "layer", "flash"; INVALID_ARGUMENT otherwise.
absl::StatusOr<Mode> ParseMode(const std::string& text);
const char* ModeName(Mode mode);

// Parses a DRAM budget: bytes ("1073741824"), binary units ("512MiB",
// "1.5GiB", also "KiB"), or a percentage of `reference_bytes` ("50%").
// INVALID_ARGUMENT naming the text otherwise.
absl::StatusOr<uint64_t> ParseBudget(const std::string& text,
                                     uint64_t reference_bytes);

// How a streaming source is set up.
struct SourceOptions {
  Mode mode = Mode::kFlash;  // kNaive, kLayer or kFlash
  // Bound on all weight memory the source holds (resident tensors, layer
  // buffers, neuron caches, staging) plus `predictor_bytes`; 0 = no bound
  // (flash mode then caches every neuron). A budget below the mode's
  // minimum is refused (RESOURCE_EXHAUSTED naming the minimum).
  uint64_t dram_budget = 0;
  // Bytes of the sparsity predictor (held by its owner), counted against
  // the budget.
  uint64_t predictor_bytes = 0;
  // Flash mode: neurons used by any of the last `window` tokens are not
  // evicted to make room (0: plain least-recently-used).
  int32_t window = 4;
  // Reads kept in flight and the largest single read.
  int queue_depth = 32;
  size_t max_read_bytes = size_t{256} << 10;
  // Cost model for coalescing reads (not owned; may be null).
  const io::IoProfile* profile = nullptr;
  // Flash mode: a shared-memory segment name (e.g. "flashd-cache", see
  // AutoCacheSegmentName) in `cache_dir` for the neuron caches; a later
  // engine for the same file and budget re-attaches and starts warm. Empty:
  // private memory. One process per segment: a segment held by a live
  // process is an error (FAILED_PRECONDITION), never shared or overwritten.
  std::string cache_segment;
  // The directory of the segment (required with cache_segment; see
  // shm::ShmDir).
  std::shared_ptr<const shm::ShmDir> cache_dir;
  // cache_segment is AutoCacheSegmentName's: when it cannot be had for a
  // reason other than another process holding it (no room, a file that is
  // not ours alone), fall back to private memory and say why in
  // FlashSource::cache_segment_state() instead of failing; once it is held,
  // remove the unheld automatic segments of the same file that earlier
  // settings left (CacheSegment::RemoveStale), so changing --dram-budget or
  // --window does not strand memory in /dev/shm.
  bool cache_segment_auto = false;
  // Opens the file the source reads (default: UringFile with O_DIRECT,
  // falling back to buffered reads where the filesystem refuses). Tests
  // pass fault-injecting files here.
  std::function<absl::StatusOr<std::unique_ptr<io::RandomAccessFile>>(
      const std::string& path)>
      open_file;
};

// What the source did, since creation.
struct SourceStats {
  uint64_t bytes_read = 0;     // from flash, incl. alignment and gap bytes
  double read_seconds = 0;     // I/O thread time inside reads
  double wait_seconds = 0;     // compute thread time waiting for reads
  uint64_t tokens = 0;         // tokens evaluated
  uint64_t neurons_needed = 0; // flash: neurons the selector kept
  uint64_t neurons_hit = 0;    // flash: of those, found in the cache
  uint64_t warm_neurons = 0;   // flash: taken back from a cache segment
};

// Expected reads from flash (see EstimateFlashDecodeReads).
struct ReadEstimate {
  bool fits = false;   // the budget holds the mode's minimum
  uint64_t bytes = 0;  // incl. alignment and gap bytes
  double seconds = 0;  // per SourceOptions::profile; 0 without one
};

// Where the budget goes (bytes).
struct MemoryPlan {
  uint64_t budget = 0;        // 0 = unbounded
  uint64_t minimum = 0;       // the least this mode can run in
  uint64_t resident = 0;      // tensors held for the whole run
  uint64_t buffers = 0;       // layer buffers / staging
  uint64_t cache = 0;         // neuron cache slots (flash)
  uint64_t predictor = 0;
  int64_t cache_slots = 0;    // per layer (flash)
  uint64_t total() const { return resident + buffers + cache + predictor; }
  std::string Describe() const;
};

// A WeightSource over a .flash file, with statistics. The modes' sources
// derive from it; the I/O thread they read through is here.
class FlashSource : public WeightSource {
 public:
  // Counters since creation (bytes and read time from the I/O thread).
  const SourceStats& stats() const;
  const MemoryPlan& plan() const { return plan_; }
  // Whether reads bypass the page cache (O_DIRECT).
  bool direct_io() const { return direct_; }
  // Flash mode: the neuron caches' shared-memory segment ("" when they are
  // private) and how it was opened ("attached (warm)", "created",
  // "discarded a segment of ..."); when a requested segment fell back to
  // private memory, the name is "" and the state says why. Both "" for
  // private caches and the other modes.
  const std::string& cache_segment() const { return segment_name_; }
  const std::string& cache_segment_state() const { return segment_state_; }

 protected:
  // Opens the file per `options` and starts the I/O thread with room for
  // `max_pending` batches.
  absl::Status StartIo(const SourceOptions& options, const std::string& path,
                       int max_pending);

  std::unique_ptr<IoWorker> worker_;
  MemoryPlan plan_;
  mutable SourceStats stats_;
  bool direct_ = false;
  std::string segment_name_;
  std::string segment_state_;
};

// The prefix of AutoCacheSegmentName's names.
inline constexpr char kAutoCacheSegmentPrefix[] = "flashd-cache-";

// A cache segment name for `file` under `options`: "flashd-cache-" and 16
// hex digits hashing what sets the per-layer cache sizes (the file's
// identity, mode, budget, predictor bytes), the window, the segment ABI
// version and the user, so an engine restarted with the same settings
// re-attaches and different settings or users do not collide.
std::string AutoCacheSegmentName(const FlashFile& file,
                                 const SourceOptions& options);

// The smallest budget `mode` can run `file` in, with `predictor_bytes`.
uint64_t MinimumBudget(const FlashFile& file, Mode mode,
                       uint64_t predictor_bytes);

// What flash mode under `options` is expected to read from flash for one
// decoded token when the selector keeps a fraction `keep` of every layer's
// neurons (1: dense-exact), assuming no locality between tokens (neurons
// are wanted independently, so a wanted neuron is cached with probability
// cache slots / n_ff). The wanted-and-missing neurons of each layer are
// drawn from a fixed seed and planned with the same ReadPlanner the source
// uses, with reads aligned to `alignment` (the file's
// required_alignment(): kFlashAlign under O_DIRECT, 1 buffered); a streamed
// classifier and embedding row are included. An estimate from the layout
// and the cost model, not a measurement. Errors: options the read planner
// refuses (as OpenFlashSource would).
absl::StatusOr<ReadEstimate> EstimateFlashDecodeReads(
    const FlashFile& file, const SourceOptions& options, double keep,
    size_t alignment);

// Creates the source for options.mode (not kResident). `file` and `pool`
// must outlive it. Errors: budget below the minimum, the file cannot be
// opened, reading or verifying the resident part fails.
absl::StatusOr<std::unique_ptr<FlashSource>> OpenFlashSource(
    const FlashFile& file, const SourceOptions& options, ThreadPool* pool,
    int32_t max_batch);

// A Model holding only `layout`'s config (what Forward needs when a
// WeightSource supplies the weights).
std::unique_ptr<Model> ConfigOnlyModel(const FlashLayout& layout);

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_FLASH_ENGINE_H_
