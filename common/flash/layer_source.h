// Modes naive and layer: the layers (and the classifier, in chunks of at
// most one layer's size) are read from flash into DRAM buffers in turn.
// naive reads each unit when it is needed and waits; layer keeps two
// buffers and reads the next unit while the current one computes.
#ifndef FLASHD_COMMON_FLASH_LAYER_SOURCE_H_
#define FLASHD_COMMON_FLASH_LAYER_SOURCE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "common/flash/flash_engine.h"

namespace flashd::flash {

// The minimum budget of naive (one buffer) or layer (two buffers).
uint64_t LayerModeMinimum(const FlashFile& file, Mode mode);

absl::StatusOr<std::unique_ptr<FlashSource>> OpenLayerSource(
    const FlashFile& file, const SourceOptions& options, ThreadPool* pool,
    int32_t max_batch);

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_LAYER_SOURCE_H_
