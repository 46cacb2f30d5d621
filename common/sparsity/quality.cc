#include "common/sparsity/quality.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/engine/kv_cache.h"
#include "common/sparsity/selector.h"

namespace flashd {
namespace {

// Wraps a selector: remembers its mask, and (as the FfnObserver of the same
// Eval) compares it with the oracle selection |act| >= oracle threshold.
class SelectionMeter : public NeuronSelector, public FfnObserver {
 public:
  SelectionMeter(NeuronSelector* inner, std::vector<float> oracle_thresholds,
                 int32_t n_ff, int32_t max_batch)
      : inner_(inner),
        oracle_thresholds_(std::move(oracle_thresholds)),
        n_ff_(n_ff),
        keep_(static_cast<size_t>(max_batch) * n_ff),
        counts_(oracle_thresholds_.size()) {}

  void Select(int32_t layer, const float* xb, int32_t n_tokens,
              uint8_t* keep) override {
    inner_->Select(layer, xb, n_tokens, keep);
    std::memcpy(keep_.data(), keep, static_cast<size_t>(n_tokens) * n_ff_);
    layer_ = layer;
  }

  void Observe(int32_t layer, const float*, const float* act, const float*,
               int32_t n_tokens) override {
    FLASHD_CHECK(layer == layer_);
    const float thr = oracle_thresholds_[layer];
    Counts& c = counts_[layer];
    const int64_t n = static_cast<int64_t>(n_tokens) * n_ff_;
    for (int64_t i = 0; i < n; ++i) {
      const bool pred = keep_[i] != 0;
      const bool oracle = !(std::fabs(act[i]) < thr);
      c.pred += pred;
      c.oracle += oracle;
      c.both += pred && oracle;
    }
    c.total += n;
  }

  LayerSelectionStats Stats(int32_t layer) const {
    const Counts& c = counts_[layer];
    LayerSelectionStats s;
    s.fraction_loaded = c.total ? double(c.pred) / double(c.total) : 0;
    s.recall = c.oracle ? double(c.both) / double(c.oracle) : 1;
    s.precision = c.pred ? double(c.both) / double(c.pred) : 1;
    return s;
  }

 private:
  struct Counts {
    uint64_t pred = 0, oracle = 0, both = 0, total = 0;
  };
  NeuronSelector* inner_;
  std::vector<float> oracle_thresholds_;
  int32_t n_ff_;
  int32_t layer_ = -1;
  std::vector<uint8_t> keep_;
  std::vector<Counts> counts_;
};

// One configuration evaluated in lockstep with the others.
struct Run {
  NeuronSelector* selector = nullptr;
  FfnObserver* observer = nullptr;
  std::unique_ptr<KvCache> kv;
  double nll = 0;  // summed over predicted positions
  double kl = 0;   // summed KL(dense || this)
};

// out[v] = log softmax(logits)[v], in double.
void LogSoftmax(const float* logits, int32_t n, double* out) {
  double mx = logits[0];
  for (int32_t v = 1; v < n; ++v) mx = std::max<double>(mx, logits[v]);
  double sum = 0;
  for (int32_t v = 0; v < n; ++v) sum += std::exp(logits[v] - mx);
  const double log_z = mx + std::log(sum);
  for (int32_t v = 0; v < n; ++v) out[v] = logits[v] - log_z;
}

// Evaluates every sequence chunk by chunk through each run (runs[0] is the
// reference: no selector); accumulates NLL and KL against runs[0]. Returns
// the number of predicted positions.
absl::StatusOr<int64_t> RunLockstep(const Model& model, Forward& forward,
                                    const Sequences& eval,
                                    std::vector<Run>& runs) {
  const ModelConfig& c = model.config;
  size_t longest = 0;
  for (const auto& s : eval) longest = std::max(longest, s.size());
  if (longest < 2) {
    return absl::InvalidArgumentError(
        "the evaluation text has no sequence of 2 or more tokens");
  }
  for (Run& r : runs) {
    r.kv = std::make_unique<KvCache>(c, static_cast<int32_t>(longest),
                                     DefaultKvType(model));
  }
  const int32_t batch = forward.max_batch();
  std::vector<double> ref(static_cast<size_t>(batch) * c.n_vocab);
  std::vector<double> lp(c.n_vocab);
  int64_t positions = 0;
  absl::Status status;
  for (const auto& seq : eval) {
    for (Run& r : runs) r.kv->Clear();
    const int32_t len = static_cast<int32_t>(seq.size());
    for (int32_t i = 0; i < len - 1 && status.ok(); i += batch) {
      // Positions i.. predict tokens i+1..; the last token predicts nothing.
      const int32_t m = std::min(batch, len - 1 - i);
      for (size_t k = 0; k < runs.size() && status.ok(); ++k) {
        Run& r = runs[k];
        forward.set_selector(r.selector);
        forward.set_observer(r.observer);
        status =
            forward.Eval(*r.kv, absl::MakeConstSpan(seq.data() + i, m), true);
        if (!status.ok()) break;
        for (int32_t j = 0; j < m; ++j) {
          double* row = k == 0 ? ref.data() + size_t(j) * c.n_vocab : lp.data();
          LogSoftmax(forward.logits(j), c.n_vocab, row);
          r.nll -= row[seq[i + j + 1]];
          if (k == 0) continue;
          const double* p = ref.data() + size_t(j) * c.n_vocab;
          double kl = 0;
          for (int32_t v = 0; v < c.n_vocab; ++v) {
            kl += std::exp(p[v]) * (p[v] - row[v]);
          }
          r.kl += kl;
        }
      }
      positions += m;
    }
    if (!status.ok()) break;
  }
  forward.set_selector(nullptr);
  forward.set_observer(nullptr);
  if (!status.ok()) return status;
  return positions;
}

}  // namespace

absl::StatusOr<std::vector<SettingReport>> MeasureQuality(
    const Model& model, Forward& forward, ThreadPool* pool,
    const Sequences& eval, SparsityProfile& profile) {
  const ModelConfig& c = model.config;
  std::vector<SparsitySetting>& settings = profile.mutable_setting_details();
  std::vector<std::unique_ptr<NeuronSelector>> owned;
  std::vector<std::unique_ptr<SelectionMeter>> meters;
  std::vector<Run> runs(1 + 2 * settings.size());
  for (size_t s = 0; s < settings.size(); ++s) {
    owned.push_back(std::make_unique<PredictedSelector>(
        &profile.predictor(), settings[s].thresholds, pool,
        forward.max_batch()));
    meters.push_back(std::make_unique<SelectionMeter>(
        owned.back().get(), settings[s].oracle_thresholds, c.n_ff,
        forward.max_batch()));
    runs[1 + 2 * s].selector = meters.back().get();
    runs[1 + 2 * s].observer = meters.back().get();
    owned.push_back(std::make_unique<OracleSelector>(
        &model, settings[s].oracle_thresholds, pool, forward.max_batch()));
    runs[2 + 2 * s].selector = owned.back().get();
  }
  absl::StatusOr<int64_t> positions = RunLockstep(model, forward, eval, runs);
  if (!positions.ok()) return positions.status();
  const double n = static_cast<double>(*positions);

  std::vector<SettingReport> reports;
  for (size_t s = 0; s < settings.size(); ++s) {
    SettingReport report;
    report.keep = settings[s].keep;
    SettingStats& st = report.stats;
    st.fraction_loaded = st.recall = st.precision = 0;
    for (int32_t l = 0; l < c.n_layer; ++l) {
      report.layers.push_back(meters[s]->Stats(l));
      st.fraction_loaded += report.layers.back().fraction_loaded / c.n_layer;
      st.recall += report.layers.back().recall / c.n_layer;
      st.precision += report.layers.back().precision / c.n_layer;
    }
    st.ppl_dense = std::exp(runs[0].nll / n);
    st.ppl_sparse = std::exp(runs[1 + 2 * s].nll / n);
    st.ppl_oracle = std::exp(runs[2 + 2 * s].nll / n);
    st.kl_sparse = runs[1 + 2 * s].kl / n;
    st.kl_oracle = runs[2 + 2 * s].kl / n;
    settings[s].stats = st;
    reports.push_back(std::move(report));
  }
  profile.set_token_counts(profile.calib_tokens(), CountTokens(eval));
  return reports;
}

absl::StatusOr<Perplexity> MeasurePerplexity(const Model& model,
                                             Forward& forward,
                                             const Sequences& eval,
                                             NeuronSelector* selector) {
  std::vector<Run> runs(2);
  runs[1].selector = selector;
  absl::StatusOr<int64_t> positions = RunLockstep(model, forward, eval, runs);
  if (!positions.ok()) return positions.status();
  Perplexity p;
  p.positions = *positions;
  p.ppl = std::exp(runs[1].nll / static_cast<double>(*positions));
  p.kl = runs[1].kl / static_cast<double>(*positions);
  return p;
}

}  // namespace flashd
