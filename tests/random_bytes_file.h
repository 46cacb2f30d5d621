// A temporary file of known pseudo-random bytes for the I/O tests.
#ifndef FLASHD_TESTS_RANDOM_BYTES_FILE_H_
#define FLASHD_TESTS_RANDOM_BYTES_FILE_H_

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"

namespace flashd::testing {

// `size` bytes from std::mt19937(seed) in a new file under `dir` (default
// /var/tmp: /tmp may be tmpfs, which refuses O_DIRECT); removed on
// destruction.
class RandomBytesFile {
 public:
  RandomBytesFile(size_t size, uint32_t seed,
                  const std::string& dir = "/var/tmp")
      : path_(absl::StrCat(dir, "/flashd_test_", ::getpid(), "_", next_++)) {
    bytes_.resize(size);
    std::mt19937 rng(seed);
    for (char& c : bytes_) c = static_cast<char>(rng());
    std::ofstream(path_, std::ios::binary) << bytes_;
  }
  RandomBytesFile(const RandomBytesFile&) = delete;
  RandomBytesFile& operator=(const RandomBytesFile&) = delete;
  ~RandomBytesFile() { std::remove(path_.c_str()); }

  const std::string& path() const { return path_; }
  const std::string& bytes() const { return bytes_; }
  std::string Slice(uint64_t offset, size_t n) const {
    return bytes_.substr(offset, n);
  }

 private:
  static inline int next_ = 0;
  std::string path_;
  std::string bytes_;
};

}  // namespace flashd::testing

#endif  // FLASHD_TESTS_RANDOM_BYTES_FILE_H_
