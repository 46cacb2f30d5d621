// Writes GGUF v3 files (metadata + tensors), as llama.cpp's gguf writer does.
#ifndef FLASHD_COMMON_GGUF_GGUF_WRITER_H_
#define FLASHD_COMMON_GGUF_GGUF_WRITER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/kernels/ggml_types.h"

namespace flashd {

// Collects metadata and tensor declarations, then streams the file: header,
// key/values, tensor infos, padding to `alignment`, and each tensor's data
// produced by its callback (so a 2 GB model need not sit in memory).
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
  void AddFloat32Array(const std::string& key, const std::vector<float>& values);
  void AddInt32Array(const std::string& key, const std::vector<int32_t>& values);

  // Declares a tensor of `dims` (ne[0] first). `fill(dst)` must write exactly
  // RowSize(type, dims[0]) * rows bytes into dst when the file is written.
  using FillFn = std::function<absl::Status(uint8_t* dst, size_t n_bytes)>;
  void AddTensor(const std::string& name, std::vector<int64_t> dims,
                 GgmlType type, FillFn fill);

  // Writes the file (to `path`.tmp, then renames). `progress(done, total)`
  // is called after each tensor when given.
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
  uint32_t alignment_;
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace flashd

#endif  // FLASHD_COMMON_GGUF_GGUF_WRITER_H_
