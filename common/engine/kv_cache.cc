#include "common/engine/kv_cache.h"

namespace flashd {
namespace {
size_t ElemBytes(KvType type) { return type == KvType::kF32 ? 4 : 2; }
}  // namespace

KvCache::KvCache(const ModelConfig& config, int32_t n_ctx, KvType type)
    : type_(type),
      n_ctx_(n_ctx),
      kv_dim_(config.kv_dim()),
      elem_(ElemBytes(type)) {
  const size_t n = BytesFor(config, n_ctx, type) / 2;
  k_.assign(n, 0);
  v_.assign(n, 0);
}

size_t KvCache::BytesFor(const ModelConfig& config, int32_t n_ctx,
                         KvType type) {
  return 2 * ElemBytes(type) * static_cast<size_t>(config.n_layer) * n_ctx *
         config.kv_dim();
}

KvType DefaultKvType(const Model& model) {
  return model.type_name == "f32" ? KvType::kF32 : KvType::kF16;
}

}  // namespace flashd
