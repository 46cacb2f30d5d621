// Writing a ModelConfig as the GGUF keys llama.cpp reads (`llama.*`,
// `general.architecture`, `general.name`, `general.file_type`).
#ifndef FLASHD_COMMON_MODEL_LLAMA_KEYS_H_
#define FLASHD_COMMON_MODEL_LLAMA_KEYS_H_

#include <cstdint>
#include <string>

#include "common/gguf/gguf_writer.h"
#include "common/model/model.h"

namespace flashd {

// Adds the architecture, name, hyperparameters of `c` and `file_type`
// (llama.cpp's LLAMA_FTYPE: 0 = all f32, 7 = q8_0, ...) to `w`.
void AddLlamaHyperparameters(GgufWriter& w, const ModelConfig& c,
                             const std::string& name, uint32_t file_type);

}  // namespace flashd

#endif  // FLASHD_COMMON_MODEL_LLAMA_KEYS_H_
