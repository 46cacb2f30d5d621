#include "common/flash/bundle_ffn.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/base/check.h"
#include "common/kernels/kernels.h"

namespace flashd::flash {
namespace {

// Bundles per scheduling unit of the gate/up products: each thread's share
// is a whole number of the GEMM kernels' row tiles (as Forward's
// kRowAlign).
constexpr int64_t kBundleAlign = 16;
// Neuron ids per block of the fixed partition of a layer's down products
// among threads: block b belongs to thread b % threads.
constexpr int32_t kOwnerBlock = 16;

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
  acts_.resize(b * kStep);
  active_.resize(kStep);
  columns_.resize(threads * kChunk * e);
}

size_t BundleFfn::ScratchBytes() const {
  return gate_acts_.size() + up_acts_.size() + active_.size() +
         (gate_.size() + up_.size() + partial_.size() + columns_.size() +
          acts_.size()) *
             sizeof(float);
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
  for (int32_t step0 = 0; step0 < span.count; step0 += kStep) {
    const int32_t step1 = std::min(span.count, step0 + kStep);
    // Activations: any split gives the same floats (each is one neuron's).
    const int64_t units = (step1 - step0 + kBundleAlign - 1) / kBundleAlign;
    pool_->Run([&](int ti, int nt) {
      const int64_t b0 =
          std::min<int64_t>(step1, step0 + units * ti / nt * kBundleAlign);
      const int64_t b1 = std::min<int64_t>(
          step1, step0 + units * (ti + 1) / nt * kBundleAlign);
      Activate(span, step0, static_cast<int32_t>(b0),
               static_cast<int32_t>(b1), ti);
    });
    // Down: each thread its own neurons, into its own partial sums.
    pool_->Run([&](int ti, int) { AddDown(span, step0, step1, ti); });
  }
}

void BundleFfn::Activate(const BundleSpan& span, int32_t step0, int32_t b0,
                         int32_t b1, int ti) {
  // Decode reads small chunks (prefetching covers the distance); batches
  // use large ones, so that each weight block serves all tokens.
  const int32_t chunk = n_tokens_ == 1 ? kDecodeChunk : kChunk;
  for (int32_t c0 = b0; c0 < b1; c0 += chunk) {
    ActivateChunk(span, step0, c0, std::min(b1, c0 + chunk), b1, ti);
  }
}

void BundleFfn::ActivateChunk(const BundleSpan& span, int32_t step0,
                              int32_t c0, int32_t c1, int32_t end, int ti) {
  const int64_t n_embd = config_.n_embd;
  const size_t n_ff = static_cast<size_t>(config_.n_ff);
  const size_t stride = geometry_.bundle_bytes();
  const int32_t count = c1 - c0;
  const uint8_t* base = span.data + static_cast<size_t>(c0) * stride;
  const size_t scratch = static_cast<size_t>(ti) * max_batch_ * kChunk;
  float* gate = gate_.data() + scratch;  // [n_tokens][kChunk]
  float* up = up_.data() + scratch;

  // Prefetch the gate/up rows of the bundles ahead of this chunk.
  const int32_t ahead =
      static_cast<int32_t>(std::max<size_t>(1, kPrefetchBytes / stride));
  for (int32_t s = c0 + ahead; s < std::min(end, c1 + ahead); ++s) {
    const uint8_t* next = span.data + static_cast<size_t>(s) * stride;
    for (size_t off = 0; off < geometry_.down_offset(); off += 64) {
      __builtin_prefetch(next + off);
    }
  }

  // Gate and up of the bundles some token keeps, by runs of neighbours.
  bool needed[kChunk];
  for (int32_t s = 0; s < count; ++s) {
    const int32_t id = span.ids[c0 + s];
    FLASHD_CHECK(id >= 0 && id < config_.n_ff);
    needed[s] = keep_ == nullptr;
    for (int32_t t = 0; t < n_tokens_ && !needed[s]; ++t) {
      needed[s] = keep_[t * n_ff + id] != 0;
    }
  }
  for (int32_t s0 = 0; s0 < count;) {
    if (!needed[s0]) {
      ++s0;
      continue;
    }
    int32_t s1 = s0 + 1;
    while (s1 < count && needed[s1]) ++s1;
    const uint8_t* w = base + s0 * stride;
    kernels::Gemm(geometry_.gate_type, n_embd, w, stride, s1 - s0,
                  gate_acts_.data(), gate_stride_, n_tokens_, gate + s0,
                  kChunk);
    kernels::Gemm(geometry_.up_type, n_embd, w + geometry_.up_offset(), stride,
                  s1 - s0, up_acts_.data(), up_stride_, n_tokens_, up + s0,
                  kChunk);
    s0 = s1;
  }

  // Activations (0 where not kept); the expression is
  // Forward::GateUpSilu's, so the floats are the same.
  for (int32_t s = 0; s < count; ++s) {
    const size_t id = static_cast<size_t>(span.ids[c0 + s]);
    const int32_t at = c0 + s - step0;
    bool active = false;
    for (int32_t t = 0; t < n_tokens_; ++t) {
      float g = gate[t * kChunk + s];
      if (!needed[s] || (keep_ != nullptr && keep_[t * n_ff + id] == 0)) {
        g = 0.0f;
      } else {
        g = g / (1.0f + std::exp(-g)) * up[t * kChunk + s];
      }
      acts_[static_cast<size_t>(t) * kStep + at] = g;
      active = active || g != 0.0f;
    }
    active_[at] = active;
  }
}

void BundleFfn::AddDown(const BundleSpan& span, int32_t step0, int32_t step1,
                        int ti) {
  const int64_t n_embd = config_.n_embd;
  const size_t stride = geometry_.bundle_bytes();
  const size_t down_offset = geometry_.down_offset();
  const int threads = pool_->size();
  const size_t scratch = static_cast<size_t>(ti) * max_batch_ * kChunk;
  float* a = up_.data() + scratch;  // [n_tokens][kChunk] gathered acts
  float* partial =
      partial_.data() + static_cast<size_t>(ti) * max_batch_ * n_embd;
  float* columns =  // [kChunk][n_embd]
      columns_.data() + static_cast<size_t>(ti) * kChunk * n_embd;
  const int32_t ahead = static_cast<int32_t>(
      std::max<size_t>(1, kPrefetchBytes / geometry_.down_bytes));
  // One token: one axpy per neuron; several: the used columns dequantized
  // side by side and one block product (the same sums in the same order,
  // with each column and partial sum loaded once).
  int32_t used = 0;
  for (int32_t s = step0; s < step1; ++s) {
    if (s + ahead < step1 && Owner(span.ids[s + ahead], threads) == ti) {
      const uint8_t* next =
          span.data + static_cast<size_t>(s + ahead) * stride + down_offset;
      for (size_t off = 0; off < geometry_.down_bytes; off += 64) {
        __builtin_prefetch(next + off);
      }
    }
    const int32_t id = span.ids[s];
    if (Owner(id, threads) != ti || !active_[s - step0]) continue;
    const uint8_t* down = span.data + static_cast<size_t>(s) * stride + down_offset;
    if (n_tokens_ == 1) {
      AddColumn(acts_[s - step0], down, id, partial);
      continue;
    }
    DequantizeColumn(down, id, columns + used * n_embd);
    for (int32_t t = 0; t < n_tokens_; ++t) {
      a[t * kChunk + used] = acts_[static_cast<size_t>(t) * kStep + s - step0];
    }
    if (++used == kChunk) {
      kernels::AxpyBlockF32(used, columns, n_embd, a, kChunk, n_tokens_,
                            partial, n_embd, n_embd);
      used = 0;
    }
  }
  if (used > 0) {
    kernels::AxpyBlockF32(used, columns, n_embd, a, kChunk, n_tokens_, partial,
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
