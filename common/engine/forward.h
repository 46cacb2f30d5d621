// The Llama forward pass over preallocated buffers: embeddings, RMSNorm,
// RoPE, grouped-query attention over a KvCache, SwiGLU FFN, output logits.
// Batched: a prompt chunk of up to max_batch tokens runs as matrix x matrix;
// decode is the batch of one.
#ifndef FLASHD_COMMON_ENGINE_FORWARD_H_
#define FLASHD_COMMON_ENGINE_FORWARD_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/base/thread_pool.h"
#include "common/engine/kv_cache.h"
#include "common/engine/weight_source.h"
#include "common/model/model.h"

namespace flashd {

class Forward {
 public:
  // Preallocates every buffer for batches of up to `max_batch` tokens and
  // contexts of up to `n_ctx` positions. `model` and `pool` must outlive it.
  Forward(const Model& model, ThreadPool* pool, int32_t n_ctx,
          int32_t max_batch);

  // Runs `tokens` (1..max_batch of them) at positions kv.n_past() onward,
  // appends their keys/values to `kv`, and computes logits: of every token
  // when `all_logits`, else of the last one only. Errors: INVALID_ARGUMENT
  // for an empty/oversized batch or out-of-vocabulary id; OUT_OF_RANGE when
  // the context is full.
  absl::Status Eval(KvCache& kv, absl::Span<const int32_t> tokens,
                    bool all_logits);

  // Tokens of one sequence, for EvalSteps: a prompt chunk or one decoded
  // token, at positions kv->n_past() onward of its own cache.
  struct Step {
    KvCache* kv = nullptr;
    absl::Span<const int32_t> tokens;
  };
  // Runs the tokens of several sequences in one pass (the weights, and in
  // flash mode each neuron read, serve all of them): step i's tokens go at
  // positions steps[i].kv->n_past() onward of its own cache, which then
  // advances by that many. At most max_batch tokens in all. Logits of the
  // last token of every step (row i). Each KvCache may appear once. Errors
  // as Eval, naming the step; on error no cache advances.
  absl::Status EvalSteps(absl::Span<const Step> steps);

  // Logits of the last Eval: row i (n_vocab floats) for token i when
  // all_logits, else row 0 for the last token; of EvalSteps: row i for
  // step i.
  const float* logits(int32_t row = 0) const {
    return logits_.data() + static_cast<size_t>(row) * config_.n_vocab;
  }
  float* mutable_logits(int32_t row = 0) {
    return logits_.data() + static_cast<size_t>(row) * config_.n_vocab;
  }

  // Optional hooks (see weight_source.h); null to remove. Not owned.
  // A selector masks FFN neurons per token; an observer sees FFN
  // activations; a source supplies weights instead of the Model's (then
  // `model` given to the constructor is used for its config only).
  void set_selector(NeuronSelector* selector) { selector_ = selector; }
  void set_observer(FfnObserver* observer) { observer_ = observer; }
  void set_source(WeightSource* source) { source_ = source; }

  const ModelConfig& config() const { return config_; }
  int32_t max_batch() const { return max_batch_; }
  int32_t n_ctx() const { return n_ctx_; }
  // Bytes of scratch this object holds.
  size_t ScratchBytes() const;

 private:
  // A matrix product to run in a shared parallel region: out[t][r] =
  // w.Row(r) . act[t] for t < n_tokens.
  struct MatJob {
    const Matrix* w;
    const float* in;  // [n_tokens][w->cols] floats
    float* out;       // [n_tokens][out_stride or w->rows]
    size_t out_stride = 0;  // floats between tokens' outputs; 0: w->rows
  };
  // Runs jobs (all over the same tokens) with rows split across threads.
  void MatMuls(std::initializer_list<MatJob> jobs, int32_t n_tokens);
  // gate and up over the same neurons on each thread, then
  // gate_ = silu(gate_) * up_ for those neurons: one parallel region.
  void GateUpSilu(const FfnWeights& ffn, int32_t n_tokens);
  // logits_[t][first_row + r] = w.Row(r) . xb_[t] for t < n_tokens.
  void OutputRows(const Matrix& w, int64_t first_row, int32_t n_tokens);
  // Quantizes `in` rows into the activation buffer for `vec_type`.
  const uint8_t* QuantizeActs(const float* in, int64_t cols, int32_t n_tokens,
                              GgmlType vec_type, size_t* stride);
  void RmsNorm(const float* x, const float* w, float* out, int32_t n_tokens);
  void Rope(float* vecs, int32_t n_heads, int32_t pos);
  // Writes one position's keys and values in the cache's element type.
  void StoreKv(KvCache& kv, int32_t layer, int32_t pos, const float* k,
               const float* v);
  // Attention of token t over its own cache seq_kv_[t] up to position
  // seq_pos_[t].
  void Attention(int32_t layer, int32_t n_tokens);
  // The forward pass over tokens whose caches and positions are in
  // seq_kv_/seq_pos_; logits row k of token out_rows_[k], k < n_out.
  absl::Status Run(absl::Span<const int32_t> tokens, int32_t n_out);

  // The FFN block of layer `l` on xb_ into proj_, through the source or
  // the resident matrices, with the selector's mask applied.
  absl::Status Ffn(int32_t l, const LayerWeights& w, int32_t n_tokens);

  const Model& model_;
  const ModelConfig config_;
  NeuronSelector* selector_ = nullptr;
  FfnObserver* observer_ = nullptr;
  WeightSource* source_ = nullptr;
  ThreadPool* pool_;
  const int32_t n_ctx_;
  const int32_t max_batch_;

  // Activations, [max_batch][width] each.
  std::vector<float> x_;      // residual stream (n_embd)
  std::vector<float> xb_;     // normed input (n_embd)
  std::vector<float> q_;      // queries (n_embd)
  std::vector<float> k_;      // keys (kv_dim)
  std::vector<float> v_;      // values (kv_dim)
  std::vector<float> att_;    // attention output (n_embd)
  std::vector<float> proj_;   // projection output (n_embd)
  std::vector<float> gate_;   // FFN gate (n_ff)
  std::vector<float> up_;     // FFN up (n_ff)
  std::vector<float> logits_; // (max_batch or 1, n_vocab)
  std::vector<uint8_t> keep_; // (max_batch, n_ff) selector mask
  std::vector<KvCache*> seq_kv_;   // (max_batch) cache of each token
  std::vector<int32_t> seq_pos_;   // (max_batch) position of each token
  std::vector<int32_t> step_tokens_;  // (max_batch) EvalSteps' tokens
  std::vector<int32_t> out_rows_;     // (max_batch) rows that get logits
  // Quantized activations: one buffer per activation format in flight.
  struct ActBuffer {
    const float* src = nullptr;
    GgmlType type = GgmlType::kF32;
    size_t stride = 0;
    std::vector<uint8_t> bytes;
  };
  ActBuffer acts_[2];
  int next_act_ = 0;
  std::vector<float> scores_;    // (threads, n_ctx) attention scratch
  std::vector<float> rope_cos_;  // (n_ctx, head_dim / 2)
  std::vector<float> rope_sin_;
};

}  // namespace flashd

#endif  // FLASHD_COMMON_ENGINE_FORWARD_H_
