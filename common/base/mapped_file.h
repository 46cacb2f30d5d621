// Read-only memory mapping of a whole file, and the narrow file interface
// the loaders read through.
#ifndef FLASHD_COMMON_BASE_MAPPED_FILE_H_
#define FLASHD_COMMON_BASE_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace flashd {

// A file mapped read-only into memory. Owns the mapping; unmaps on
// destruction. Thread-safe for concurrent reads.
class MappedFile {
 public:
  // Maps `path`. Errors: NOT_FOUND / PERMISSION_DENIED / INVALID_ARGUMENT
  // (empty file, directory) with the path and the OS reason.
  // `resident` reads the whole file into anonymous memory backed by
  // transparent huge pages instead of mapping the page cache: the weights
  // are then in DRAM before the first token, cannot be evicted under memory
  // pressure, and streaming them per token walks ~500x fewer TLB entries.
  // RESOURCE_EXHAUSTED when that memory cannot be had; DATA_LOSS on a read
  // error or a file that shrank.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(
      const std::string& path, bool resident = false);

  // Wraps an in-memory buffer (tests, fuzzers). The buffer is copied.
  static std::unique_ptr<MappedFile> FromString(std::string_view bytes);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::string_view bytes() const {
    return {reinterpret_cast<const char*>(data_), size_};
  }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool is_mmap_ = false;
  std::string owned_;  // backing store for FromString
  std::string path_;
};

}  // namespace flashd

#endif  // FLASHD_COMMON_BASE_MAPPED_FILE_H_
