// Reading a .flash file: validates the header and manifest, exposes the
// layout, builds the tokenizer from the embedded metadata, and verifies
// checksums of what the engine reads.
#ifndef FLASHD_COMMON_FLASH_FLASH_FILE_H_
#define FLASHD_COMMON_FLASH_FLASH_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/flash/flash_format.h"
#include "common/tokenizer/tokenizer.h"

namespace flashd::flash {

// 64-bit identity of a model file (GGUF or llama2.c): a hash of its size,
// its first 1 MiB and 64 KiB at 16 evenly spaced offsets, so two files
// that differ only in weights (e.g. make-model seeds) differ. Errors: the
// file cannot be opened or read.
absl::StatusOr<uint64_t> SourceIdentity(const std::string& model_path);

class FlashFile {
 public:
  // Reads and validates the header and manifest (not the weights; those
  // are read by the engine through its own RandomAccessFile). Errors name
  // the path and what is wrong: not a flash file (magic), a layout version
  // other than kLayoutVersion ("layout version N; this flashd reads M;
  // re-run flashd convert"), a truncated file, a manifest whose checksum
  // or extents do not hold (every extent inside the file, aligned, of the
  // size its type and shape imply), unsupported types.
  static absl::StatusOr<std::unique_ptr<FlashFile>> Open(
      const std::string& path);

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  const FlashLayout& layout() const { return layout_; }

  // The tokenizer stored in the file's metadata.
  absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer() const;

  // FAILED_PRECONDITION unless this file was converted from the model file
  // at `model_path` ("... was converted from a different model file; re-run
  // flashd convert").
  absl::Status CheckSource(const std::string& model_path) const;

  // The per-bundle CRC32C table of `layer` (n_ff entries), loaded by Open.
  const std::vector<uint32_t>& bundle_crcs(int32_t layer) const {
    return bundle_crcs_[layer];
  }
  // CRC32C of each kStreamChunkBytes chunk of `t`'s bytes (the last chunk
  // may be shorter), loaded and verified by Open, for the two tensors the
  // streaming modes read in parts: layout().token_embd and layout().output
  // (matched by extent offset). Empty for any other tensor.
  absl::Span<const uint32_t> ChunkCrcs(const TensorExtent& t) const;

  // DATA_LOSS naming layer, neuron, file offset, expected and found CRC
  // when `bytes` (one bundle) does not match.
  absl::Status VerifyBundle(int32_t layer, int32_t neuron,
                            const uint8_t* bytes) const;
  // VerifyBundle for n bundles (neurons ids[k] at bytes[k]), three at a
  // time; returns the first mismatch in k order.
  absl::Status VerifyBundles(int32_t layer, const int32_t* ids,
                             const uint8_t* const* bytes, int32_t n) const;
  // DATA_LOSS naming `what`, the extent's offset, expected and found CRC
  // when `bytes` (extent.bytes long) does not match.
  static absl::Status VerifyExtent(const Extent& extent, const uint8_t* bytes,
                                   const std::string& what);

 private:
  FlashFile() = default;
  std::string path_;
  uint64_t file_size_ = 0;
  FlashLayout layout_;
  std::vector<uint8_t> metadata_;  // embedded GGUF (vocabulary, KV pairs)
  std::vector<std::vector<uint32_t>> bundle_crcs_;
  std::vector<uint32_t> token_embd_chunk_crcs_;
  std::vector<uint32_t> output_chunk_crcs_;  // == token_embd's when tied
};

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_FLASH_FILE_H_
