// A heap buffer aligned for O_DIRECT reads.
#ifndef FLASHD_COMMON_IO_ALIGNED_BUFFER_H_
#define FLASHD_COMMON_IO_ALIGNED_BUFFER_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace flashd::io {

// Owns `size()` bytes starting at an address that is a multiple of
// kAlignment (posix_memalign); frees them on destruction. Contents start
// uninitialized. Movable, not copyable.
class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 4096;

  // An empty buffer (data() == nullptr, size() == 0).
  AlignedBuffer() = default;

  // Allocates `size` bytes; RESOURCE_EXHAUSTED when memory is short.
  static absl::StatusOr<AlignedBuffer> Create(size_t size) {
    AlignedBuffer b;
    if (size == 0) return b;
    void* p = nullptr;
    if (::posix_memalign(&p, kAlignment, size) != 0) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate a ", size, "-byte buffer aligned to ", kAlignment));
    }
    b.data_ = static_cast<uint8_t*>(p);
    b.size_ = size;
    return b;
  }

  AlignedBuffer(AlignedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept {
    if (this != &other) {
      std::free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace flashd::io

#endif  // FLASHD_COMMON_IO_ALIGNED_BUFFER_H_
