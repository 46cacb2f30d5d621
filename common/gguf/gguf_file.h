// GGUF reader (versions 2 and 3): header, metadata, tensor index, data
// section. Every count, length, offset and dimension is bounds- and
// overflow-checked against the file; errors name the field and numbers.
#ifndef FLASHD_COMMON_GGUF_GGUF_FILE_H_
#define FLASHD_COMMON_GGUF_GGUF_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/base/mapped_file.h"
#include "common/kernels/ggml_types.h"

namespace flashd {

enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint8", "string", "array", ...; "type#N" for unknown ids.
std::string GgufTypeName(uint32_t type);
// Bytes of one fixed-size value of `type`; 0 for string, array and unknown
// ids.
uint64_t GgufTypeSize(uint32_t type);

// One metadata value. Scalars are widened: integers to int64/uint64, floats
// to double. Arrays keep their element type; string arrays become
// `strings`, numeric arrays keep the raw little-endian bytes in `raw`
// (a view into the file) with `count` elements.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string> scalar;
  GgufType elem_type = GgufType::kUint8;  // for arrays
  uint64_t count = 0;                     // for arrays
  std::vector<std::string> strings;       // string arrays
  std::string_view raw;                   // numeric arrays
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ne[0] first (ne[0] is the row length)
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;       // relative to the data section, as stored
  uint64_t file_offset = 0;  // absolute offset in the file
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
};

class GgufFile {
 public:
  // Maps and parses `path`.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path,
                                                        bool resident = false);
  // Parses an already mapped file (tests and fuzzers use FromString).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(
      std::shared_ptr<const MappedFile> file);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  const MappedFile& file() const { return *file_; }
  std::shared_ptr<const MappedFile> shared_file() const { return file_; }

  // Metadata lookup; nullptr when absent.
  const GgufValue* Find(std::string_view key) const;
  const std::vector<std::string>& keys() const { return key_order_; }

  // Typed getters. NOT_FOUND when absent, INVALID_ARGUMENT naming the key
  // and both types when the stored type does not convert.
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  // GetUint narrowed to uint32 (hyperparameters); INVALID_ARGUMENT when the
  // value does not fit.
  absl::StatusOr<uint32_t> GetUint32(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(
      std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;
  absl::StatusOr<std::vector<int32_t>> GetIntArray(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  // Start of the tensor's bytes in the mapping (bounds checked at parse).
  const uint8_t* TensorData(const GgufTensorInfo& t) const {
    return file_->data() + t.file_offset;
  }

 private:
  GgufFile() = default;
  std::shared_ptr<const MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::string> key_order_;
  absl::flat_hash_map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
  friend class GgufParser;
};

}  // namespace flashd

#endif  // FLASHD_COMMON_GGUF_GGUF_FILE_H_
