#include "common/flash/bundle_ffn.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/base/check.h"
#include "common/kernels/kernels.h"

namespace flashd::flash {
namespace {

// Neuron ids per block of the fixed partition of a layer's neurons among
// threads: block b belongs to thread b % threads.
constexpr int32_t kOwnerBlock = 64;

int Owner(int32_t id, int threads) { return (id / kOwnerBlock) % threads; }

// How far ahead of the bundle being added its successors are prefetched.
// The gate/up GEMM of a chunk reads rows a bundle apart and the down
// columns are read after them, which the hardware prefetchers follow
// poorly: on TinyLlama Q8_0 shapes a dense decode pass (one thread) took
// 1.7x the resident path's time without this and 1.25x with it.
constexpr size_t kPrefetchBytes = 96 << 10;

bool IsFloatType(GgmlType type) {
  return type == GgmlType::kF32 || type == GgmlType::kF16 ||
         type == GgmlType::kBF16;
}

}  // namespace

BundleFfn::BundleFfn(const ModelConfig& config, ThreadPool* pool,
                     int32_t max_batch, int32_t max_span)
    : config_(config), pool_(pool), max_batch_(max_batch), max_span_(max_span) {
  FLASHD_CHECK(pool != nullptr && max_batch > 0 && max_span > 0);
  FLASHD_CHECK(config.n_embd > 0 && config.n_ff > 0);
  const size_t b = static_cast<size_t>(max_batch);
  const size_t e = static_cast<size_t>(config.n_embd);
  const size_t threads = static_cast<size_t>(pool->size());
  // F32 is the widest activation format: 4 bytes per element.
  gate_acts_.resize(b * e * sizeof(float));
  up_acts_.resize(b * e * sizeof(float));
  gate_.resize(threads * b * kChunk);
  up_.resize(threads * b * kChunk);
  partial_.resize(threads * b * e);
  columns_.resize(threads * kChunk * e);
  owned_.resize(threads * static_cast<size_t>(max_span));
}

size_t BundleFfn::ScratchBytes() const {
  return gate_acts_.size() + up_acts_.size() +
         (gate_.size() + up_.size() + partial_.size() + columns_.size()) *
             sizeof(float) +
         owned_.size() * sizeof(int32_t);
}

void BundleFfn::Begin(const BundleGeometry& geometry, const DownTables& tables,
                      const float* xb, int32_t n_tokens, const uint8_t* keep) {
  const int64_t n_embd = config_.n_embd;
  FLASHD_CHECK(n_tokens >= 1 && n_tokens <= max_batch_);
  FLASHD_CHECK(xb != nullptr);
  FLASHD_CHECK(geometry.n_embd == config_.n_embd &&
               geometry.n_ff == config_.n_ff);
  FLASHD_CHECK(geometry.gate_bytes == RowSize(geometry.gate_type, n_embd));
  FLASHD_CHECK(geometry.up_bytes == RowSize(geometry.up_type, n_embd));
  const DownFormat& down = geometry.down;
  if (down.kind == DownFormat::Kind::kTyped) {
    FLASHD_CHECK(IsFloatType(down.type));
    FLASHD_CHECK(geometry.down_bytes == RowSize(down.type, n_embd));
  } else {
    FLASHD_CHECK(down.kind == DownFormat::Kind::kInt8Scaled);
    FLASHD_CHECK(down.group > 0 && config_.n_ff % down.group == 0);
    FLASHD_CHECK(geometry.down_bytes == static_cast<size_t>(n_embd));
    FLASHD_CHECK(tables.scale != nullptr);
    FLASHD_CHECK((tables.min != nullptr) == down.has_min);
  }
  geometry_ = geometry;
  tables_ = tables;
  keep_ = keep;
  n_tokens_ = n_tokens;

  // The activation formats and kernels Forward::QuantizeActs uses.
  const GgmlType gate_vec = kernels::VecDotType(geometry.gate_type);
  const GgmlType up_vec = kernels::VecDotType(geometry.up_type);
  gate_stride_ = RowSize(gate_vec, n_embd);
  up_stride_ = RowSize(up_vec, n_embd);
  const size_t partial_floats = static_cast<size_t>(n_tokens) * n_embd;
  pool_->Run([&](int ti, int nt) {
    float* partial =
        partial_.data() + static_cast<size_t>(ti) * max_batch_ * n_embd;
    std::fill(partial, partial + partial_floats, 0.0f);
    for (int32_t t = ti; t < n_tokens; t += nt) {
      const float* x = xb + static_cast<size_t>(t) * n_embd;
      kernels::QuantizeActivations(
          gate_vec, x, gate_acts_.data() + t * gate_stride_, n_embd);
      kernels::QuantizeActivations(up_vec, x, up_acts_.data() + t * up_stride_,
                                   n_embd);
    }
  });
}

void BundleFfn::Add(const BundleSpan& span) {
  FLASHD_CHECK(n_tokens_ > 0);  // between Begin and Finish
  FLASHD_CHECK(span.count >= 0 && span.count <= max_span_);
  if (span.count == 0) return;
  FLASHD_CHECK(span.data != nullptr && span.ids != nullptr);
  pool_->Run([&](int ti, int) { AddOwned(span, ti); });
}

void BundleFfn::AddOwned(const BundleSpan& span, int ti) {
  // The span positions of the bundles this thread owns, in span order.
  const int threads = pool_->size();
  int32_t* owned = owned_.data() + static_cast<size_t>(ti) * max_span_;
  int32_t n = 0;
  for (int32_t s = 0; s < span.count; ++s) {
    const int32_t id = span.ids[s];
    FLASHD_CHECK(id >= 0 && id < config_.n_ff);
    if (Owner(id, threads) == ti) owned[n++] = s;
  }
  // Decode takes small chunks (prefetching covers the distance); batches
  // large ones, so that each weight block serves all tokens.
  const int32_t chunk = n_tokens_ == 1 ? kDecodeChunk : kChunk;
  const size_t stride = geometry_.bundle_bytes();
  const int32_t ahead =
      static_cast<int32_t>(std::max<size_t>(1, kPrefetchBytes / stride));
  for (int32_t c0 = 0; c0 < n; c0 += chunk) {
    const int32_t c1 = std::min(n, c0 + chunk);
    // The bundles this thread adds `ahead` of these, whole.
    for (int32_t c = c0 + ahead; c < std::min(n, c1 + ahead); ++c) {
      const uint8_t* next = span.data + static_cast<size_t>(owned[c]) * stride;
      for (size_t off = 0; off < stride; off += 64) {
        __builtin_prefetch(next + off);
      }
    }
    AddChunk(span, owned + c0, c1 - c0, ti);
  }
}

void BundleFfn::AddChunk(const BundleSpan& span, const int32_t* at,
                         int32_t count, int ti) {
  const int64_t n_embd = config_.n_embd;
  const size_t n_ff = static_cast<size_t>(config_.n_ff);
  const size_t stride = geometry_.bundle_bytes();
  const size_t scratch = static_cast<size_t>(ti) * max_batch_ * kChunk;
  float* gate = gate_.data() + scratch;  // [n_tokens][kChunk]
  float* up = up_.data() + scratch;
  float* partial =
      partial_.data() + static_cast<size_t>(ti) * max_batch_ * n_embd;
  float* columns =  // [kChunk][n_embd]
      columns_.data() + static_cast<size_t>(ti) * kChunk * n_embd;
  auto bundle = [&](int32_t c) {
    return span.data + static_cast<size_t>(at[c]) * stride;
  };

  // Gate and up of the bundles some token keeps, by runs of neighbours in
  // the span (each row's products are the same whatever the run).
  bool needed[kChunk];
  for (int32_t c = 0; c < count; ++c) {
    const size_t id = static_cast<size_t>(span.ids[at[c]]);
    needed[c] = keep_ == nullptr;
    for (int32_t t = 0; t < n_tokens_ && !needed[c]; ++t) {
      needed[c] = keep_[t * n_ff + id] != 0;
    }
  }
  for (int32_t c0 = 0; c0 < count;) {
    if (!needed[c0]) {
      ++c0;
      continue;
    }
    int32_t c1 = c0 + 1;
    while (c1 < count && needed[c1] && at[c1] == at[c1 - 1] + 1) ++c1;
    const uint8_t* w = bundle(c0);
    kernels::Gemm(geometry_.gate_type, n_embd, w, stride, c1 - c0,
                  gate_acts_.data(), gate_stride_, n_tokens_, gate + c0,
                  kChunk);
    kernels::Gemm(geometry_.up_type, n_embd, w + geometry_.up_offset(), stride,
                  c1 - c0, up_acts_.data(), up_stride_, n_tokens_, up + c0,
                  kChunk);
    c0 = c1;
  }

  // Activations, in place of the gate values (0 where not kept); the
  // expression is Forward::GateUpSilu's, so the floats are the same.
  bool active[kChunk];
  for (int32_t c = 0; c < count; ++c) {
    const size_t id = static_cast<size_t>(span.ids[at[c]]);
    active[c] = false;
    for (int32_t t = 0; t < n_tokens_; ++t) {
      float& g = gate[t * kChunk + c];
      if (!needed[c] || (keep_ != nullptr && keep_[t * n_ff + id] == 0)) {
        g = 0.0f;
        continue;
      }
      g = g / (1.0f + std::exp(-g)) * up[t * kChunk + c];
      active[c] = active[c] || g != 0.0f;
    }
  }

  // Down, in span order: one axpy per neuron for a single token; for
  // several, the used columns dequantized side by side and one block
  // product (the same sums in the same order, with each column and partial
  // sum loaded once).
  int32_t used = 0;
  for (int32_t c = 0; c < count; ++c) {
    if (!active[c]) continue;
    const int32_t id = span.ids[at[c]];
    const uint8_t* down = bundle(c) + geometry_.down_offset();
    if (n_tokens_ == 1) {
      AddColumn(gate[c], down, id, partial);
      continue;
    }
    DequantizeColumn(down, id, columns + used * n_embd);
    for (int32_t t = 0; t < n_tokens_; ++t) {
      up[t * kChunk + used] = gate[t * kChunk + c];  // acts of used columns
    }
    ++used;
  }
  if (used > 0) {
    kernels::AxpyBlockF32(used, columns, n_embd, up, kChunk, n_tokens_, partial,
                          n_embd, n_embd);
  }
}

void BundleFfn::DequantizeColumn(const uint8_t* column, int32_t id,
                                 float* out) const {
  const int64_t n_embd = config_.n_embd;
  if (geometry_.down.kind == DownFormat::Kind::kTyped) {
    kernels::ToFloat(geometry_.down.type, column, out, n_embd);
    return;
  }
  // 1 * w + -0 is w exactly, fused or not.
  std::fill(out, out + n_embd, -0.0f);
  AddColumn(1.0f, column, id, out);
}

void BundleFfn::AddColumn(float a, const uint8_t* column, int32_t id,
                          float* y) const {
  const int64_t n_embd = config_.n_embd;
  if (geometry_.down.kind == DownFormat::Kind::kTyped) {
    kernels::AxpyRow(geometry_.down.type, a, column, y, n_embd);
    return;
  }
  const size_t row = static_cast<size_t>(id / geometry_.down.group) * n_embd;
  kernels::AxpyI8Scaled(
      a, reinterpret_cast<const int8_t*>(column), tables_.scale + row,
      tables_.min != nullptr ? tables_.min + row : nullptr, y, n_embd);
}

void BundleFfn::Finish(float* out) {
  FLASHD_CHECK(n_tokens_ > 0);  // after Begin
  const size_t per_thread = static_cast<size_t>(max_batch_) * config_.n_embd;
  const int threads = pool_->size();
  auto sum = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float s = partial_[i];
      for (int th = 1; th < threads; ++th) s += partial_[th * per_thread + i];
      out[i] = s;
    }
  };
  const int64_t n = static_cast<int64_t>(n_tokens_) * config_.n_embd;
  if (n_tokens_ > 1) {
    pool_->ParallelFor(n, 64, sum);
  } else {
    sum(0, n);
  }
  n_tokens_ = 0;
}

}  // namespace flashd::flash
