// Writes GGUF v3 files (metadata + tensors), as llama.cpp's gguf writer does.
#ifndef FLASHD_COMMON_GGUF_GGUF_WRITER_H_
#define FLASHD_COMMON_GGUF_GGUF_WRITER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "common/gguf/gguf_file.h"
#include "common/kernels/ggml_types.h"

namespace flashd {

// Collects metadata and tensor declarations, then streams the file: header,
// key/values, tensor infos, padding to `alignment`, and each tensor's data
// produced by its callback (so a 2 GB model need not sit in memory: only
// the largest tensor is buffered). Adding a key that exists replaces its
// value in place. Invalid additions are reported by Write(), which then
// writes nothing.
class GgufWriter {
 public:
  explicit GgufWriter(uint32_t alignment = 32) : alignment_(alignment) {}

  void AddString(const std::string& key, const std::string& value);
  void AddUint32(const std::string& key, uint32_t value);
  void AddInt32(const std::string& key, int32_t value);
  void AddFloat32(const std::string& key, float value);
  void AddBool(const std::string& key, bool value);
  void AddStringArray(const std::string& key,
                      const std::vector<std::string>& values);
  void AddFloat32Array(const std::string& key,
                       const std::vector<float>& values);
  void AddInt32Array(const std::string& key,
                     const std::vector<int32_t>& values);
  // The remaining GGUF scalar types.
  void AddUint8(const std::string& key, uint8_t value);
  void AddInt8(const std::string& key, int8_t value);
  void AddUint16(const std::string& key, uint16_t value);
  void AddInt16(const std::string& key, int16_t value);
  void AddUint64(const std::string& key, uint64_t value);
  void AddInt64(const std::string& key, int64_t value);
  void AddFloat64(const std::string& key, double value);
  // Numeric array of any fixed-size element type from its little-endian
  // bytes; raw.size() must be count * element size (else Write() fails).
  void AddRawArray(const std::string& key, GgufType elem_type, uint64_t count,
                   std::string_view raw);
  // Copies a value read by GgufFile (e.g. to carry metadata over when
  // re-quantizing), keeping its exact type.
  void AddValue(const std::string& key, const GgufValue& value);

  // Declares a tensor of `dims` (ne[0] first). `fill(dst)` must write exactly
  // RowSize(type, dims[0]) * rows bytes into dst when the file is written
  // (an empty `fill` writes zeros). Trailing dims of 1 are dropped, as
  // llama.cpp does ({256, 1} is stored as {256}).
  using FillFn = std::function<absl::Status(uint8_t* dst, size_t n_bytes)>;
  void AddTensor(const std::string& name, std::vector<int64_t> dims,
                 GgmlType type, FillFn fill);

  // Writes the file (to `path`.tmp, then renames). `progress(done, total)`
  // is called after each tensor (counts of tensors) when given. Errors:
  // INVALID_ARGUMENT for bad metadata/tensors/alignment (a general.alignment
  // key, if added, must be a uint32 equal to the constructor's alignment);
  // I/O errors name the path and the OS reason; a failing fill callback's
  // status is returned with the tensor name. No partial file is left.
  absl::Status Write(const std::string& path,
                     const std::function<void(size_t, size_t)>& progress = {});

 private:
  struct Kv {
    std::string key;
    std::string encoded;  // type id + value, GGUF-encoded
  };
  struct Tensor {
    std::string name;
    std::vector<int64_t> dims;
    GgmlType type;
    FillFn fill;
  };
  void SetKv(const std::string& key, std::string encoded);
  void Fail(const std::string& message);

  uint32_t alignment_;
  absl::Status error_;  // first invalid addition, returned by Write()
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace flashd

#endif  // FLASHD_COMMON_GGUF_GGUF_WRITER_H_
