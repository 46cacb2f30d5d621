#include "common/engine/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/kernels/kernels.h"

namespace flashd {
namespace {

// Rows per scheduling unit: keeps each thread's share a whole number of
// cache-line-friendly row groups.
constexpr int64_t kRowAlign = 16;

size_t Width(const ModelConfig& c) { return std::max(c.n_embd, c.n_ff); }

}  // namespace

Forward::Forward(const Model& model, ThreadPool* pool, int32_t n_ctx,
                 int32_t max_batch)
    : model_(model),
      config_(model.config),
      pool_(pool),
      n_ctx_(n_ctx),
      max_batch_(max_batch) {
  FLASHD_CHECK(n_ctx > 0 && max_batch > 0);
  const size_t b = static_cast<size_t>(max_batch);
  const ModelConfig& c = config_;
  x_.resize(b * c.n_embd);
  xb_.resize(b * c.n_embd);
  q_.resize(b * c.n_embd);
  k_.resize(b * c.kv_dim());
  v_.resize(b * c.kv_dim());
  att_.resize(b * c.n_embd);
  proj_.resize(b * c.n_embd);
  gate_.resize(b * c.n_ff);
  up_.resize(b * c.n_ff);
  logits_.resize(b * c.n_vocab);
  keep_.resize(b * c.n_ff);
  seq_kv_.resize(b);
  seq_pos_.resize(b);
  step_tokens_.resize(b);
  out_rows_.resize(b);
  for (ActBuffer& a : acts_) a.bytes.resize(b * Width(c) * 2 + 64);
  scores_.resize(static_cast<size_t>(pool->size()) * n_ctx *
                 (c.n_head / c.n_head_kv));

  // RoPE tables as ggml computes them (mode 0, adjacent pairs): theta for
  // pair i at position p is p * base^(-2i/n_rot), by repeated multiplication
  // in float, so our rotations match llama.cpp's bit for bit.
  const int32_t half = c.n_rot / 2;
  rope_cos_.resize(static_cast<size_t>(n_ctx) * half);
  rope_sin_.resize(static_cast<size_t>(n_ctx) * half);
  const float theta_scale =
      std::pow(c.rope_theta, -2.0f / static_cast<float>(c.n_rot));
  for (int32_t p = 0; p < n_ctx; ++p) {
    float theta = static_cast<float>(p);
    for (int32_t i = 0; i < half; ++i) {
      rope_cos_[static_cast<size_t>(p) * half + i] = std::cos(theta);
      rope_sin_[static_cast<size_t>(p) * half + i] = std::sin(theta);
      theta *= theta_scale;
    }
  }
}

size_t Forward::ScratchBytes() const {
  size_t f = x_.size() + xb_.size() + q_.size() + k_.size() + v_.size() +
             att_.size() + proj_.size() + gate_.size() + up_.size() +
             logits_.size() + scores_.size() + rope_cos_.size() +
             rope_sin_.size();
  size_t bytes = f * sizeof(float) + keep_.size();
  for (const ActBuffer& a : acts_) bytes += a.bytes.size();
  return bytes;
}

const uint8_t* Forward::QuantizeActs(const float* in, int64_t cols,
                                     int32_t n_tokens, GgmlType vec_type,
                                     size_t* stride) {
  if (vec_type == GgmlType::kF32) {
    *stride = static_cast<size_t>(cols) * sizeof(float);
    return reinterpret_cast<const uint8_t*>(in);
  }
  for (ActBuffer& a : acts_) {
    if (a.src == in && a.type == vec_type) {
      *stride = a.stride;
      return a.bytes.data();
    }
  }
  ActBuffer& a = acts_[next_act_];
  next_act_ = (next_act_ + 1) % 2;
  a.src = in;
  a.type = vec_type;
  a.stride = RowSize(vec_type, cols);
  auto quantize = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      kernels::QuantizeActivations(vec_type, in + static_cast<size_t>(t) * cols,
                                   a.bytes.data() + t * a.stride, cols);
    }
  };
  if (n_tokens > 1) {
    pool_->ParallelFor(n_tokens, 1, quantize);
  } else {
    quantize(0, n_tokens);
  }
  *stride = a.stride;
  return a.bytes.data();
}

void Forward::MatMuls(std::initializer_list<MatJob> jobs, int32_t n_tokens) {
  struct Prepared {
    const Matrix* w;
    const uint8_t* acts;
    size_t act_stride;
    float* out;
    size_t out_stride;
    int64_t first_row;  // in the concatenation of all jobs' rows
  };
  Prepared prepared[4];
  FLASHD_CHECK(jobs.size() <= 4);
  int n = 0;
  int64_t total_rows = 0;
  for (ActBuffer& a : acts_) a.src = nullptr;  // inputs change between calls
  for (const MatJob& j : jobs) {
    size_t stride = 0;
    const uint8_t* acts =
        QuantizeActs(j.in, j.w->cols, n_tokens,
                     kernels::VecDotType(j.w->type), &stride);
    prepared[n++] = {j.w, acts, stride, j.out,
                     j.out_stride ? j.out_stride : static_cast<size_t>(j.w->rows),
                     total_rows};
    total_rows += j.w->rows;
  }
  pool_->ParallelFor(total_rows, kRowAlign, [&](int64_t begin, int64_t end) {
    for (int i = 0; i < n; ++i) {
      const Prepared& p = prepared[i];
      const int64_t b = std::max(begin, p.first_row);
      const int64_t e = std::min(end, p.first_row + p.w->rows);
      if (b >= e) continue;
      const int64_t r0 = b - p.first_row;
      kernels::Gemm(p.w->type, p.w->cols, p.w->Row(r0), p.w->row_bytes, e - b,
                    p.acts, p.act_stride, n_tokens, p.out + r0, p.out_stride);
    }
  });
}

void Forward::OutputRows(const Matrix& w, int64_t first_row,
                         int32_t n_tokens) {
  MatMuls({{&w, xb_.data(), logits_.data() + first_row,
            static_cast<size_t>(config_.n_vocab)}},
          n_tokens);
}

void Forward::GateUpSilu(const FfnWeights& ffn, int32_t n_tokens) {
  for (ActBuffer& a : acts_) a.src = nullptr;
  size_t gate_stride = 0, up_stride = 0;
  const uint8_t* gate_acts =
      QuantizeActs(xb_.data(), ffn.gate.cols, n_tokens,
                   kernels::VecDotType(ffn.gate.type), &gate_stride);
  const uint8_t* up_acts =
      QuantizeActs(xb_.data(), ffn.up.cols, n_tokens,
                   kernels::VecDotType(ffn.up.type), &up_stride);
  const int64_t n_ff = config_.n_ff;
  pool_->ParallelFor(n_ff, kRowAlign, [&](int64_t b, int64_t e) {
    kernels::Gemm(ffn.gate.type, ffn.gate.cols, ffn.gate.Row(b),
                  ffn.gate.row_bytes, e - b, gate_acts, gate_stride, n_tokens,
                  gate_.data() + b, n_ff);
    kernels::Gemm(ffn.up.type, ffn.up.cols, ffn.up.Row(b), ffn.up.row_bytes,
                  e - b, up_acts, up_stride, n_tokens, up_.data() + b, n_ff);
    for (int32_t t = 0; t < n_tokens; ++t) {
      float* g = gate_.data() + t * n_ff;
      const float* u = up_.data() + t * n_ff;
      for (int64_t i = b; i < e; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
}

void Forward::RmsNorm(const float* x, const float* w, float* out,
                      int32_t n_tokens) {
  const int32_t n = config_.n_embd;
  for (int32_t t = 0; t < n_tokens; ++t) {
    const float* xt = x + static_cast<size_t>(t) * n;
    float* ot = out + static_cast<size_t>(t) * n;
    double sum = 0.0;
    for (int32_t i = 0; i < n; ++i) sum += static_cast<double>(xt[i]) * xt[i];
    const float scale =
        1.0f / std::sqrt(static_cast<float>(sum / n) + config_.rms_eps);
    for (int32_t i = 0; i < n; ++i) ot[i] = xt[i] * scale * w[i];
  }
}

void Forward::Rope(float* vecs, int32_t n_heads, int32_t pos) {
  const int32_t hd = config_.head_dim, half = config_.n_rot / 2;
  const float* cs = rope_cos_.data() + static_cast<size_t>(pos) * half;
  const float* sn = rope_sin_.data() + static_cast<size_t>(pos) * half;
  for (int32_t h = 0; h < n_heads; ++h) {
    float* v = vecs + static_cast<size_t>(h) * hd;
    for (int32_t i = 0; i < half; ++i) {
      const float x0 = v[2 * i], x1 = v[2 * i + 1];
      v[2 * i] = x0 * cs[i] - x1 * sn[i];
      v[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
    }
  }
}

void Forward::StoreKv(KvCache& kv, int32_t layer, int32_t pos,
                      const float* k, const float* v) {
  const int32_t n = config_.kv_dim();
  if (kv.type() == KvType::kF16) {
    kernels::F32ToF16(k, static_cast<uint16_t*>(kv.K(layer, pos)), n);
    kernels::F32ToF16(v, static_cast<uint16_t*>(kv.V(layer, pos)), n);
  } else {
    std::memcpy(kv.K(layer, pos), k, n * sizeof(float));
    std::memcpy(kv.V(layer, pos), v, n * sizeof(float));
  }
}

void Forward::Attention(int32_t layer, int32_t n_tokens) {
  const ModelConfig& c = config_;
  const int32_t hd = c.head_dim;
  const int32_t group = c.n_head / c.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const size_t kv_stride = c.kv_dim();
  // One work item = one token and one KV head with its `group` query heads
  // (their q and output vectors are adjacent: head h at h * hd).
  const int64_t items = static_cast<int64_t>(n_tokens) * c.n_head_kv;
  pool_->Run([&](int ti, int nt) {
    float* scores =
        scores_.data() + static_cast<size_t>(ti) * n_ctx_ * group;
    for (int64_t item = ti; item < items; item += nt) {
      const int32_t t = static_cast<int32_t>(item / c.n_head_kv);
      const int32_t kvh = static_cast<int32_t>(item % c.n_head_kv);
      const KvCache& kv = *seq_kv_[t];
      const int32_t n_keys = seq_pos_[t] + 1;  // causal
      const size_t head0 =
          static_cast<size_t>(t) * c.n_embd + static_cast<size_t>(kvh) * group * hd;
      const float* q = q_.data() + head0;
      float* out = att_.data() + head0;
      if (kv.type() == KvType::kF16) {
        kernels::AttendF16(
            q, group, hd, static_cast<const uint16_t*>(kv.K(layer, 0)) + kvh * hd,
            static_cast<const uint16_t*>(kv.V(layer, 0)) + kvh * hd, kv_stride,
            n_keys, scale, scores, out);
      } else {
        kernels::AttendF32(
            q, group, hd, static_cast<const float*>(kv.K(layer, 0)) + kvh * hd,
            static_cast<const float*>(kv.V(layer, 0)) + kvh * hd, kv_stride,
            n_keys, scale, scores, out);
      }
    }
  });
}

absl::Status Forward::Ffn(int32_t l, const LayerWeights& w,
                          int32_t n_tokens) {
  const uint8_t* keep = nullptr;
  if (selector_ != nullptr) {
    selector_->Select(l, xb_.data(), n_tokens, keep_.data());
    keep = keep_.data();
  }
  if (source_ != nullptr && source_->ffn_in_source()) {
    return source_->RunFfn(l, xb_.data(), n_tokens, keep, proj_.data());
  }
  GateUpSilu(w.ffn, n_tokens);
  if (observer_ != nullptr) {
    observer_->Observe(l, xb_.data(), gate_.data(), up_.data(), n_tokens);
  }
  if (keep != nullptr) {
    const size_t total = static_cast<size_t>(n_tokens) * config_.n_ff;
    for (size_t i = 0; i < total; ++i) {
      if (!keep[i]) gate_[i] = 0.0f;
    }
  }
  MatMuls({{&w.ffn.down, gate_.data(), proj_.data()}}, n_tokens);
  return absl::OkStatus();
}

absl::Status Forward::Eval(KvCache& kv, absl::Span<const int32_t> tokens,
                           bool all_logits) {
  const ModelConfig& c = config_;
  const int32_t n = static_cast<int32_t>(tokens.size());
  if (n <= 0 || n > max_batch_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch of ", n, " tokens; must be 1..", max_batch_));
  }
  const int32_t pos0 = kv.n_past();
  if (pos0 + n > std::min(n_ctx_, kv.n_ctx())) {
    return absl::OutOfRangeError(absl::StrCat(
        "context full: ", pos0, " + ", n, " tokens exceed the context of ",
        std::min(n_ctx_, kv.n_ctx()), " positions"));
  }
  for (int32_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", tokens[t], " at index ", t, " is outside the vocabulary [0, ",
          c.n_vocab, ")"));
    }
  }

  for (int32_t t = 0; t < n; ++t) {
    seq_kv_[t] = &kv;
    seq_pos_[t] = pos0 + t;
  }
  const int32_t first_out = all_logits ? 0 : n - 1;
  for (int32_t t = first_out; t < n; ++t) out_rows_[t - first_out] = t;
  absl::Status s = Run(tokens, n - first_out);
  if (s.ok()) kv.set_n_past(pos0 + n);
  return s;
}

absl::Status Forward::EvalSteps(absl::Span<const Step> steps) {
  const ModelConfig& c = config_;
  const int32_t n_steps = static_cast<int32_t>(steps.size());
  int64_t rows = 0;
  for (const Step& st : steps) rows += static_cast<int64_t>(st.tokens.size());
  if (n_steps <= 0 || rows > max_batch_) {
    return absl::InvalidArgumentError(absl::StrCat(
        n_steps, " steps of ", rows, " tokens in all; must be 1..", max_batch_,
        " tokens"));
  }
  int32_t row = 0;
  for (int32_t i = 0; i < n_steps; ++i) {
    KvCache* kv = steps[i].kv;
    const int32_t n = static_cast<int32_t>(steps[i].tokens.size());
    if (kv == nullptr || n == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("step ", i, " has no KV cache or no tokens"));
    }
    for (int32_t j = 0; j < i; ++j) {
      if (steps[j].kv == kv) {
        return absl::InvalidArgumentError(absl::StrCat(
            "steps ", j, " and ", i, " use the same KV cache"));
      }
    }
    if (kv->n_past() + n > std::min(n_ctx_, kv->n_ctx())) {
      return absl::OutOfRangeError(absl::StrCat(
          "context full at step ", i, ": ", kv->n_past(), " + ", n,
          " tokens exceed ", std::min(n_ctx_, kv->n_ctx()), " positions"));
    }
    for (int32_t t = 0; t < n; ++t, ++row) {
      const int32_t token = steps[i].tokens[t];
      if (token < 0 || token >= c.n_vocab) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", token, " at step ", i, " index ", t,
            " is outside the vocabulary [0, ", c.n_vocab, ")"));
      }
      seq_kv_[row] = kv;
      seq_pos_[row] = kv->n_past() + t;
      step_tokens_[row] = token;
    }
    out_rows_[i] = row - 1;
  }
  absl::Status s = Run(absl::MakeConstSpan(step_tokens_.data(), row), n_steps);
  if (s.ok()) {
    for (const Step& st : steps) {
      st.kv->set_n_past(st.kv->n_past() + static_cast<int32_t>(st.tokens.size()));
    }
  }
  return s;
}

absl::Status Forward::Run(absl::Span<const int32_t> tokens, int32_t n_out) {
  const ModelConfig& c = config_;
  const int32_t n = static_cast<int32_t>(tokens.size());
  const size_t E = c.n_embd, KV = c.kv_dim();
  if (source_ != nullptr) {
    absl::Status s = source_->BeginEval(tokens);
    if (s.ok()) s = source_->Embed(tokens, x_.data());
    if (!s.ok()) return s;
  } else {
    for (int32_t t = 0; t < n; ++t) {
      kernels::ToFloat(model_.tok_embd.type, model_.tok_embd.Row(tokens[t]),
                       x_.data() + t * E, c.n_embd);
    }
  }

  for (int32_t l = 0; l < c.n_layer; ++l) {
    // With a weight source, model_.layers is empty: only the source's
    // layer may be addressed.
    const LayerWeights* wp = nullptr;
    if (source_ != nullptr) {
      absl::StatusOr<const LayerWeights*> acquired = source_->AcquireLayer(l);
      if (!acquired.ok()) return acquired.status();
      wp = *acquired;
    } else {
      wp = &model_.layers[l];
    }
    const LayerWeights& w = *wp;
    // Attention block.
    RmsNorm(x_.data(), w.attn_norm, xb_.data(), n);
    MatMuls({{&w.wq, xb_.data(), q_.data()},
             {&w.wk, xb_.data(), k_.data()},
             {&w.wv, xb_.data(), v_.data()}},
            n);
    for (int32_t t = 0; t < n; ++t) {
      Rope(q_.data() + t * E, c.n_head, seq_pos_[t]);
      Rope(k_.data() + t * KV, c.n_head_kv, seq_pos_[t]);
      StoreKv(*seq_kv_[t], l, seq_pos_[t], k_.data() + t * KV,
              v_.data() + t * KV);
    }
    Attention(l, n);
    MatMuls({{&w.wo, att_.data(), proj_.data()}}, n);
    for (size_t i = 0; i < n * E; ++i) x_[i] += proj_[i];

    // Feed-forward block (SwiGLU).
    RmsNorm(x_.data(), w.ffn_norm, xb_.data(), n);
    absl::Status ffn = Ffn(l, w, n);
    if (source_ != nullptr) source_->ReleaseLayer(l);
    if (!ffn.ok()) return ffn;
    for (size_t i = 0; i < n * E; ++i) x_[i] += proj_[i];
  }

  // Output: final norm and classifier of the rows out_rows_[0, n_out).
  const float* norm =
      source_ == nullptr ? model_.output_norm : source_->output_norm();
  if (n_out == n - out_rows_[0]) {  // a contiguous tail (Eval)
    RmsNorm(x_.data() + out_rows_[0] * E, norm, xb_.data(), n_out);
  } else {
    for (int32_t k = 0; k < n_out; ++k) {
      RmsNorm(x_.data() + out_rows_[k] * E, norm, xb_.data() + k * E, 1);
    }
  }
  if (source_ == nullptr) {
    MatMuls({{&model_.output, xb_.data(), logits_.data()}}, n_out);
    return absl::OkStatus();
  }
  for (int32_t chunk = 0; chunk < source_->output_chunks(); ++chunk) {
    absl::StatusOr<WeightSource::OutputChunk> out =
        source_->AcquireOutput(chunk);
    if (!out.ok()) return out.status();
    OutputRows(*out->matrix, out->first_row, n_out);
    source_->ReleaseOutput(chunk);
  }
  return absl::OkStatus();
}

}  // namespace flashd
