// flashd convert: writes a model (GGUF or llama2.c) in the flash layout.
#ifndef FLASHD_COMMON_FLASH_FLASH_WRITER_H_
#define FLASHD_COMMON_FLASH_FLASH_WRITER_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace flashd::flash {

struct ConvertOptions {
  std::string model_path;      // GGUF or llama2.c checkpoint
  std::string tokenizer_path;  // as LoadOptions::tokenizer_path
  std::string out_path;        // written to out_path + ".tmp", then renamed
  // Called as bytes are written (done, total); may be empty.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

// Converts. The output is complete and renamed into place only on success;
// errors name the source, the tensor or the output path.
absl::Status ConvertToFlash(const ConvertOptions& options);

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_FLASH_WRITER_H_
