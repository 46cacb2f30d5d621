// Mode flash (LLM in a Flash): attention, norms, down tables and the
// classifier stay resident; FFN neurons are read on demand into a per-layer
// NeuronCache; the reads of a token's missing neurons are planned by a
// ReadPlanner and run on an IoWorker while the cached neurons compute.
#ifndef FLASHD_COMMON_FLASH_FLASH_SOURCE_H_
#define FLASHD_COMMON_FLASH_FLASH_SOURCE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "common/flash/flash_engine.h"

namespace flashd::flash {

// The minimum budget of flash mode: the resident part, staging and the
// predictor (neuron caches may be empty).
uint64_t FlashModeMinimum(const FlashFile& file, uint64_t predictor_bytes);

absl::StatusOr<std::unique_ptr<FlashSource>> OpenFlashModeSource(
    const FlashFile& file, const SourceOptions& options, ThreadPool* pool,
    int32_t max_batch);

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_FLASH_SOURCE_H_
