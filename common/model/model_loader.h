// Opens a model file (GGUF or llama2.c checkpoint) with its tokenizer.
#ifndef FLASHD_COMMON_MODEL_MODEL_LOADER_H_
#define FLASHD_COMMON_MODEL_MODEL_LOADER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/gguf/gguf_file.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"

namespace flashd {

struct LoadedModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

struct LoadOptions {
  // Tokenizer file: a GGUF vocabulary or llama2.c tokenizer.bin. Required for
  // llama2.c checkpoints (default: tokenizer.bin / tok<vocab>.bin beside the
  // model); optional for GGUF (default: the model's own vocabulary).
  std::string tokenizer_path;
  // Read the file into DRAM (huge pages) rather than mapping it: weights
  // stay resident and stream faster (see MappedFile::Open).
  bool resident = false;
};

// Detects the format by magic and loads. Errors name the file, the field and
// the numbers; unsupported architectures and tensor types are refused by
// name.
absl::StatusOr<LoadedModel> LoadModel(const std::string& path,
                                      const LoadOptions& options = {});

// Builds the model view over a parsed GGUF (architecture "llama").
absl::StatusOr<std::unique_ptr<Model>> ModelFromGguf(const GgufFile& gguf);

// Parses a llama2.c checkpoint (fp32, header of 7 int32).
absl::StatusOr<std::unique_ptr<Model>> ModelFromLlama2c(
    std::shared_ptr<const MappedFile> file);

}  // namespace flashd

#endif  // FLASHD_COMMON_MODEL_MODEL_LOADER_H_
