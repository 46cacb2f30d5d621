// Per-sequence key/value cache, laid out [layer][position][kv_dim], in fp16
// (llama.cpp's default; half the memory) or f32 (exact for fp32 models).
#ifndef FLASHD_COMMON_ENGINE_KV_CACHE_H_
#define FLASHD_COMMON_ENGINE_KV_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/model/model.h"

namespace flashd {

enum class KvType { kF16, kF32 };

class KvCache {
 public:
  // Allocates n_ctx positions for every layer up front.
  KvCache(const ModelConfig& config, int32_t n_ctx,
          KvType type = KvType::kF16);

  KvType type() const { return type_; }
  // Start of the kv_dim entries for (layer, pos); the element type is
  // uint16_t (fp16 bits) or float as type() says.
  void* K(int32_t layer, int32_t pos) { return k_.data() + Offset(layer, pos); }
  void* V(int32_t layer, int32_t pos) { return v_.data() + Offset(layer, pos); }
  const void* K(int32_t layer, int32_t pos) const {
    return k_.data() + Offset(layer, pos);
  }
  const void* V(int32_t layer, int32_t pos) const {
    return v_.data() + Offset(layer, pos);
  }

  int32_t n_ctx() const { return n_ctx_; }
  // Positions filled so far (the next token goes to position n_past()).
  int32_t n_past() const { return n_past_; }
  void set_n_past(int32_t n) { n_past_ = n; }
  void Clear() { n_past_ = 0; }
  size_t bytes() const { return k_.size() + v_.size(); }

  // Bytes a cache of n_ctx positions takes for this model.
  static size_t BytesFor(const ModelConfig& config, int32_t n_ctx,
                         KvType type = KvType::kF16);

 private:
  size_t Offset(int32_t layer, int32_t pos) const {
    return (static_cast<size_t>(layer) * n_ctx_ + pos) * kv_dim_ * elem_;
  }
  KvType type_;
  int32_t n_ctx_;
  int32_t kv_dim_;
  size_t elem_;  // bytes per entry
  int32_t n_past_ = 0;
  std::vector<uint8_t> k_;
  std::vector<uint8_t> v_;
};

// F32 for models whose weights are f32 (llama2.c checkpoints: their
// reference runs in fp32 and greedy outputs must match it exactly), F16
// otherwise (what llama.cpp does).
KvType DefaultKvType(const Model& model);

}  // namespace flashd

#endif  // FLASHD_COMMON_ENGINE_KV_CACHE_H_
