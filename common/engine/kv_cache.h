// Per-sequence key/value cache, fp16 (as llama.cpp's default), laid out
// [layer][position][kv_dim].
#ifndef FLASHD_COMMON_ENGINE_KV_CACHE_H_
#define FLASHD_COMMON_ENGINE_KV_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/model/model.h"

namespace flashd {

class KvCache {
 public:
  // Allocates n_ctx positions for every layer up front.
  KvCache(const ModelConfig& config, int32_t n_ctx);

  uint16_t* K(int32_t layer, int32_t pos) {
    return k_.data() + Index(layer, pos);
  }
  uint16_t* V(int32_t layer, int32_t pos) {
    return v_.data() + Index(layer, pos);
  }
  const uint16_t* K(int32_t layer, int32_t pos) const {
    return k_.data() + Index(layer, pos);
  }
  const uint16_t* V(int32_t layer, int32_t pos) const {
    return v_.data() + Index(layer, pos);
  }

  int32_t n_ctx() const { return n_ctx_; }
  // Positions filled so far (the next token goes to position n_past()).
  int32_t n_past() const { return n_past_; }
  void set_n_past(int32_t n) { n_past_ = n; }
  void Clear() { n_past_ = 0; }
  size_t bytes() const { return (k_.size() + v_.size()) * sizeof(uint16_t); }

  // Bytes a cache of n_ctx positions takes for this model.
  static size_t BytesFor(const ModelConfig& config, int32_t n_ctx);

 private:
  size_t Index(int32_t layer, int32_t pos) const {
    return (static_cast<size_t>(layer) * n_ctx_ + pos) * kv_dim_;
  }
  int32_t n_ctx_;
  int32_t kv_dim_;
  int32_t n_past_ = 0;
  std::vector<uint16_t> k_;
  std::vector<uint16_t> v_;
};

}  // namespace flashd

#endif  // FLASHD_COMMON_ENGINE_KV_CACHE_H_
