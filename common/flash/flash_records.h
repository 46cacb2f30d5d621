// On-disk records of a .flash file (internal to flash_file.cc and
// flash_writer.cc; everything else uses the decoded FlashLayout).
//
// File: [0, 4096) FileHeader, zero padded; the manifest at 4096 (ManifestHead,
// then n_layer LayerRecords, then the name and type-name bytes); the
// metadata GGUF (vocabulary and KV pairs); then the tensor data. Every
// record is trivially copyable, little-endian, with explicit padding, so the
// bytes are the struct. Offsets are absolute file offsets.
#ifndef FLASHD_COMMON_FLASH_FLASH_RECORDS_H_
#define FLASHD_COMMON_FLASH_FLASH_RECORDS_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/statusor.h"
#include "common/flash/flash_format.h"

namespace flashd::flash::internal {

static_assert(std::endian::native == std::endian::little,
              "the .flash records are little-endian structs");

// "FLASHD", NUL, then a format-family byte; the layout version follows it.
inline constexpr char kMagic[8] = {'F', 'L', 'A', 'S', 'H', 'D', '\0', '\x01'};
inline constexpr uint64_t kHeaderBytes = 4096;
// Bound on the manifest size accepted (1 MiB of layers is ~2400 layers).
inline constexpr uint64_t kMaxManifestBytes = uint64_t{16} << 20;
// Bound on the embedded metadata GGUF (a 256k-token vocabulary is ~10 MiB).
inline constexpr uint64_t kMaxMetadataBytes = uint64_t{256} << 20;

// At offset 0. header_crc32c is the CRC32C of all kHeaderBytes bytes with
// that field read as 0, so a flipped bit anywhere in the header (padding
// included) is caught.
struct FileHeader {
  char magic[8];
  uint32_t version;        // kLayoutVersion; at offset 8 in every version
  uint32_t header_bytes;   // kHeaderBytes
  uint32_t alignment;      // kFlashAlign
  uint32_t reserved0;
  uint64_t file_bytes;     // the whole file, a multiple of alignment
  uint64_t manifest_offset;
  uint64_t manifest_bytes;
  uint64_t metadata_offset;
  uint64_t metadata_bytes;
  uint32_t manifest_crc32c;
  uint32_t metadata_crc32c;
  uint32_t reserved1;
  uint32_t header_crc32c;
};
static_assert(sizeof(FileHeader) == 80);
static_assert(offsetof(FileHeader, version) == 8);

struct ExtentRecord {
  uint64_t offset;
  uint64_t bytes;
  uint32_t crc32c;
  uint32_t reserved;
};
static_assert(sizeof(ExtentRecord) == 24);

struct TensorRecord {
  uint32_t type;  // GgmlType id
  uint32_t reserved;
  int64_t cols;
  int64_t rows;
  ExtentRecord extent;
};
static_assert(sizeof(TensorRecord) == 48);

struct ManifestHead {
  int32_t n_vocab, n_embd, n_ff, n_layer, n_head, n_head_kv, head_dim, n_rot,
      n_ctx_train;
  float rms_eps;
  float rope_theta;
  uint32_t name_bytes;       // UTF-8 bytes after the layer records
  uint32_t type_name_bytes;  // follow the name
  uint32_t reserved;
  uint64_t source_identity;
  TensorRecord token_embd, output_norm, output;
  // Per-chunk CRC32C tables (kStreamChunkBytes chunks, uint32 each) of
  // token_embd and output; output_chunk_crcs == token_embd_chunk_crcs when
  // the model ties them.
  ExtentRecord token_embd_chunk_crcs, output_chunk_crcs;
};
static_assert(sizeof(ManifestHead) == 256);

struct LayerRecord {
  TensorRecord attn_norm, wq, wk, wv, wo, ffn_norm;
  int32_t n_embd, n_ff;
  uint32_t gate_type, up_type;
  uint64_t gate_bytes, up_bytes, down_bytes;
  uint32_t down_kind, down_type;
  int32_t down_group;
  uint32_t down_has_min;
  ExtentRecord down_scale, down_min, bundles, bundle_crcs;
};
static_assert(sizeof(LayerRecord) == 440);

static_assert(std::is_trivially_copyable_v<FileHeader> &&
              std::is_trivially_copyable_v<ManifestHead> &&
              std::is_trivially_copyable_v<LayerRecord>);

// Chunk CRC tables of the streamed tensors (see ManifestHead).
struct ChunkTables {
  Extent token_embd, output;
};

// Number of kStreamChunkBytes chunks of a tensor of `bytes` bytes.
inline uint64_t ChunkCount(uint64_t bytes) {
  return (bytes + kStreamChunkBytes - 1) / kStreamChunkBytes;
}

// Bytes of the manifest of `layout`.
uint64_t ManifestBytes(const FlashLayout& layout);
// Encodes the manifest (layout.version and identity are not stored there).
std::string EncodeManifest(const FlashLayout& layout, const ChunkTables& chunks);
// Decodes and validates a manifest field by field against the config it
// carries and a file of `file_bytes` whose data starts at `data_start`:
// dimensions, supported types, sizes implied by type x shape, extents
// aligned, inside the file, past `data_start`, each layer's region in the
// order attn_norm, wq, wk, wv, wo, ffn_norm, down_scale, down_min,
// bundle_crcs, bundles with only alignment padding between them, and no two
// extents overlapping. INVALID_ARGUMENT naming the field otherwise.
// `chunks` receives the chunk CRC tables, checked likewise.
absl::StatusOr<FlashLayout> DecodeManifest(std::string_view bytes,
                                           uint64_t file_bytes,
                                           uint64_t data_start,
                                           ChunkTables* chunks);

// Seals `header` into its kHeaderBytes on-disk form (computes header_crc32c).
std::string EncodeHeader(FileHeader header);
// CRC32C of a kHeaderBytes header image with the header_crc32c field as 0.
uint32_t HeaderCrc(std::string_view image);

// The portable (table) CRC32C, for tests of the hardware path.
uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc = 0);
// Whether Crc32c uses SSE4.2.
bool Crc32cIsHardware();

// A 64-bit non-cryptographic hash (identities); chain via `seed`.
uint64_t Hash64(const void* data, size_t n, uint64_t seed = 0);

inline uint64_t AlignUp(uint64_t v) {
  return (v + kFlashAlign - 1) / kFlashAlign * kFlashAlign;
}

// The extents of one layer's contiguous region, in file order (down_min
// omitted when absent). Used by the writer to place them and by the reader
// to check the order.
struct NamedExtent {
  const char* name;
  const Extent* extent;
};
int LayerRegion(const LayerLayout& layer, NamedExtent out[10]);

}  // namespace flashd::flash::internal

#endif  // FLASHD_COMMON_FLASH_FLASH_RECORDS_H_
