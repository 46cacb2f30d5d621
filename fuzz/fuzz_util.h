// Helpers shared by the fuzz targets: fuzz bytes as a file for the readers
// that take a path, and reading every byte of a tensor so that a view past
// the end of its buffer is caught by ASan.
#ifndef FLASHD_FUZZ_FUZZ_UTIL_H_
#define FLASHD_FUZZ_FUZZ_UTIL_H_

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/base/check.h"
#include "common/kernels/kernels.h"
#include "common/model/model.h"

namespace flashd::fuzz {

// The bytes in an anonymous memory file, reachable as path().
class MemFile {
 public:
  MemFile(const uint8_t* data, size_t size) {
    fd_ = memfd_create("flashd-fuzz", MFD_CLOEXEC);
    FLASHD_CHECK(fd_ >= 0);
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::write(fd_, data + done, size - done);
      FLASHD_CHECK(n > 0);
      done += static_cast<size_t>(n);
    }
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_ = -1;
};

// Dequantizes every row of `m` (every byte of its data is read).
inline float TouchMatrix(const Matrix& m) {
  std::vector<float> row(static_cast<size_t>(m.cols));
  float sum = 0;
  for (int64_t r = 0; r < m.rows; ++r) {
    kernels::ToFloat(m.type, m.Row(r), row.data(), m.cols);
    for (float v : row) sum += v;
  }
  return sum;
}

inline float TouchFloats(const float* p, int64_t n) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += p[i];
  return sum;
}

// Reads every weight of `model`; the sum keeps the reads from being
// optimised away.
inline void TouchModel(const Model& model) {
  const ModelConfig& c = model.config;
  volatile float sink = 0;
  float sum = TouchMatrix(model.tok_embd) + TouchMatrix(model.output) +
              TouchFloats(model.output_norm, c.n_embd);
  for (const LayerWeights& l : model.layers) {
    sum += TouchFloats(l.attn_norm, c.n_embd) + TouchFloats(l.ffn_norm, c.n_embd);
    for (const Matrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn.gate, &l.ffn.up,
                            &l.ffn.down}) {
      sum += TouchMatrix(*m);
    }
  }
  sink = sum;
  (void)sink;
}

// The shared test data folder: $FLASHD_TEST_DATA, else the build's default.
inline std::string TestData() {
  const char* env = std::getenv("FLASHD_TEST_DATA");
  return env != nullptr && *env != '\0' ? env : FLASHD_FUZZ_TEST_DATA;
}

}  // namespace flashd::fuzz

#endif  // FLASHD_FUZZ_FUZZ_UTIL_H_
