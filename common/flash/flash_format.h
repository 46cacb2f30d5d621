// Shared vocabulary of the flash layout (see docs/design/flash_layout.md and
// docs/architecture.md): where a tensor or a layer's neuron bundles live in
// a .flash file, and how one FFN neuron is stored as one contiguous bundle.
#ifndef FLASHD_COMMON_FLASH_FLASH_FORMAT_H_
#define FLASHD_COMMON_FLASH_FLASH_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/kernels/ggml_types.h"
#include "common/model/model.h"

namespace flashd::flash {

// Layout version written by this build; files of another version are
// refused by name.
inline constexpr uint32_t kLayoutVersion = 1;
// Every section, tensor and layer bundle array starts on this boundary, so
// O_DIRECT reads need no realignment at their start.
inline constexpr size_t kFlashAlign = 4096;

// Tensors the streaming modes read in parts (token_embd, output) carry a
// CRC32C per chunk of this many bytes of the tensor (FlashFile::ChunkCrcs),
// so a part is verified by reading the whole chunks around it.
inline constexpr uint64_t kStreamChunkBytes = uint64_t{64} << 10;

// A byte range of the file with the CRC32C of its bytes.
struct Extent {
  uint64_t offset = 0;
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

// A resident tensor: ggml type, shape (ggml ne[0] = cols, ne[1] = rows;
// 1-D tensors have rows == 1) and where its bytes are.
struct TensorExtent {
  GgmlType type = GgmlType::kF32;
  int64_t cols = 0;
  int64_t rows = 0;
  Extent extent;
};

// How a neuron's down column (n_embd values) is stored in its bundle.
//  - kTyped: n_embd elements of `type` (F32, F16 or BF16): the source's own
//    values, exactly (float sources only).
//  - kInt8Scaled: n_embd int8 codes q[r]; value[r] = scale[g][r] * q[r]
//    - min[g][r], where g = neuron / group and scale/min are per-layer f32
//    tables of (n_ff / group) rows of n_embd floats (min absent when
//    !has_min). Chosen so that every supported quantized source type
//    (Q8_0, Q4_0: group 32; Q4_K: group 32 with min; Q6_K: group 16) is
//    stored with exactly the values ggml dequantizes to.
struct DownFormat {
  enum class Kind : uint32_t { kTyped = 0, kInt8Scaled = 1 };
  Kind kind = Kind::kTyped;
  GgmlType type = GgmlType::kF32;  // kTyped only
  int32_t group = 0;               // kInt8Scaled only
  bool has_min = false;            // kInt8Scaled only
};

// The shape of one layer's neuron bundles. Bundle i (neuron i) is, back to
// back: gate row i (gate_bytes, gate_type), up row i (up_bytes, up_type),
// down column i (down_bytes, as `down`). Bundles of a layer are packed with
// stride bundle_bytes(); the array starts kFlashAlign-aligned.
struct BundleGeometry {
  int32_t n_embd = 0;
  int32_t n_ff = 0;
  GgmlType gate_type = GgmlType::kF32;
  GgmlType up_type = GgmlType::kF32;
  size_t gate_bytes = 0;
  size_t up_bytes = 0;
  size_t down_bytes = 0;
  DownFormat down;

  size_t bundle_bytes() const { return gate_bytes + up_bytes + down_bytes; }
  size_t up_offset() const { return gate_bytes; }
  size_t down_offset() const { return gate_bytes + up_bytes; }
};

// One layer in the file.
struct LayerLayout {
  TensorExtent attn_norm, wq, wk, wv, wo, ffn_norm;  // as in the GGUF
  BundleGeometry geometry;
  // kInt8Scaled tables, f32 [n_ff / group][n_embd]; bytes == 0 when absent.
  Extent down_scale;
  Extent down_min;
  // n_ff bundles, neuron i at bundles.offset + i * bundle_bytes().
  // bundles.crc32c is unused (0); per-bundle CRCs are in bundle_crcs
  // (n_ff little-endian uint32, CRC32C of each bundle's bytes).
  Extent bundles;
  Extent bundle_crcs;
};

// Everything the manifest says.
struct FlashLayout {
  uint32_t version = kLayoutVersion;
  ModelConfig config;
  std::string name;       // general.name or the source file's stem
  std::string type_name;  // most common matrix type of the source, e.g. "q8_0"
  // Identity of the source model file (see SourceIdentity) and of this
  // converted file (a hash of its header and manifest): calibration files
  // record the latter and are refused for any other file.
  uint64_t source_identity = 0;
  uint64_t identity = 0;
  TensorExtent token_embd;
  TensorExtent output_norm;
  TensorExtent output;  // == token_embd's extent when the model ties them
  std::vector<LayerLayout> layers;
};

// CRC32C (Castagnoli), hardware-accelerated where the CPU has SSE4.2.
// Chain calls by passing the previous result as `crc`.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// The CRC32C of three buffers of the same length `n` at once (three
// independent dependency chains keep the CRC unit busy: about three times
// the throughput of three Crc32c calls).
void Crc32c3(const void* a, const void* b, const void* c, size_t n,
             uint32_t out[3]);

}  // namespace flashd::flash

#endif  // FLASHD_COMMON_FLASH_FLASH_FORMAT_H_
