#include "common/engine/kv_cache.h"

namespace flashd {

KvCache::KvCache(const ModelConfig& config, int32_t n_ctx)
    : n_ctx_(n_ctx), kv_dim_(config.kv_dim()) {
  const size_t n = static_cast<size_t>(config.n_layer) * n_ctx * kv_dim_;
  k_.assign(n, 0);
  v_.assign(n, 0);
}

size_t KvCache::BytesFor(const ModelConfig& config, int32_t n_ctx) {
  return 2 * sizeof(uint16_t) * static_cast<size_t>(config.n_layer) * n_ctx *
         config.kv_dim();
}

}  // namespace flashd
