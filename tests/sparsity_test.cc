// Sparsity on a tiny random-weight model (model_maker "tiny": 4 layers, 256
// wide, 768 neurons): calibrated thresholds, selectors, quality measurement
// and the .sparsity file.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/engine/forward.h"
#include "common/engine/generator.h"
#include "common/engine/kv_cache.h"
#include "common/model/model_loader.h"
#include "common/model/model_maker.h"
#include "common/sparsity/calibration.h"
#include "common/sparsity/predictor.h"
#include "common/sparsity/quality.h"
#include "common/sparsity/selector.h"
#include "common/sparsity/sparsity_file.h"
#include "gtest/gtest.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

constexpr uint64_t kIdentity = 0x1234abcd5678ef01ull;
constexpr int32_t kBatch = 32;

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

class SparsityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    MakeModelOptions o;
    o.preset = "tiny";
    o.type = "q8_0";
    o.out_path = ::testing::TempDir() + "/sparsity_tiny.gguf";
    ASSERT_TRUE(MakeModel(o).ok());
    absl::StatusOr<LoadedModel> loaded = LoadModel(o.out_path);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    loaded_ = new LoadedModel(std::move(*loaded));
    pool_ = new ThreadPool(2);
    forward_ = new Forward(*loaded_->model, pool_, 256, kBatch);
    absl::StatusOr<Sequences> calib = SampleText(
        model(), *forward_, *loaded_->tokenizer, 384, 128, /*seed=*/1);
    ASSERT_TRUE(calib.ok()) << calib.status();
    calib_ = new Sequences(std::move(*calib));
    absl::StatusOr<Sequences> eval = SampleText(
        model(), *forward_, *loaded_->tokenizer, 160, 80, /*seed=*/1001);
    ASSERT_TRUE(eval.ok()) << eval.status();
    eval_ = new Sequences(std::move(*eval));
  }
  static void TearDownTestSuite() {
    delete eval_;
    delete calib_;
    delete forward_;
    delete pool_;
    delete loaded_;
  }
  static const Model& model() { return *loaded_->model; }

  static std::unique_ptr<SparsityProfile> Calibrated(
      std::vector<double> keep,
      PredictorVariant variant = PredictorVariant::kGateUp) {
    CalibrateOptions o;
    o.keep = std::move(keep);
    o.variant = variant;
    o.source_identity = kIdentity;
    absl::StatusOr<std::unique_ptr<SparsityProfile>> p =
        Calibrate(model(), *forward_, pool_, *calib_, o);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }

  static LoadedModel* loaded_;
  static ThreadPool* pool_;
  static Forward* forward_;
  static Sequences* calib_;
  static Sequences* eval_;
};
LoadedModel* SparsityTest::loaded_ = nullptr;
ThreadPool* SparsityTest::pool_ = nullptr;
Forward* SparsityTest::forward_ = nullptr;
Sequences* SparsityTest::calib_ = nullptr;
Sequences* SparsityTest::eval_ = nullptr;

// Counts, in a dense run, how many predictor scores reach each threshold.
class KeptCounter : public FfnObserver {
 public:
  KeptCounter(const Predictor* p, std::vector<float> thresholds,
              ThreadPool* pool)
      : p_(p),
        thresholds_(std::move(thresholds)),
        pool_(pool),
        scratch_(*p, kBatch),
        scores_(size_t(kBatch) * p->n_ff()),
        kept_(p->n_layer()),
        total_(p->n_layer()) {}
  void Observe(int32_t layer, const float* xb, const float*, const float*,
               int32_t n) override {
    p_->Score(layer, xb, n, scratch_, pool_, scores_.data());
    for (int64_t i = 0; i < n * p_->n_ff(); ++i) {
      kept_[layer] += !(scores_[i] < thresholds_[layer]);
    }
    total_[layer] += n * p_->n_ff();
  }
  double Fraction(int32_t l) const { return double(kept_[l]) / total_[l]; }

 private:
  const Predictor* p_;
  std::vector<float> thresholds_;
  ThreadPool* pool_;
  Predictor::Scratch scratch_;
  std::vector<float> scores_;
  std::vector<int64_t> kept_, total_;
};

TEST(ScoreHistogramTest, QuantilesOfUniformValues) {
  ScoreHistogram h;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> v(200000);
  for (float& x : v) x = u(rng);
  h.Add(v.data(), static_cast<int64_t>(v.size()));
  EXPECT_NEAR(h.KeepThreshold(0.3), 0.7, 0.01);
  EXPECT_NEAR(h.KeepThreshold(0.9), 0.1, 0.01);
  EXPECT_NEAR(h.FractionAtLeast(0.25f), 0.75, 0.01);
  EXPECT_EQ(h.KeepThreshold(1.0), -std::numeric_limits<float>::infinity());
  // Signs are ignored: -x counts as x.
  for (float& x : v) x = -x;
  h.Add(v.data(), static_cast<int64_t>(v.size()));
  EXPECT_NEAR(h.KeepThreshold(0.3), 0.7, 0.01);
}

TEST_F(SparsityTest, ThresholdsKeepTheTargetFractionOnCalibrationText) {
  std::unique_ptr<SparsityProfile> p = Calibrated({0.9, 0.5, 0.2});
  ASSERT_NE(p, nullptr);
  for (const SparsitySetting& s : p->setting_details()) {
    KeptCounter counter(&p->predictor(), s.thresholds, pool_);
    KvCache kv(model().config, 256, DefaultKvType(model()));
    forward_->set_observer(&counter);
    for (const auto& seq : *calib_) {
      kv.Clear();
      ASSERT_TRUE(
          EvalPrompt(*forward_, kv, seq, false, [](int32_t, const float*) {
          }).ok());
    }
    forward_->set_observer(nullptr);
    for (int32_t l = 0; l < model().config.n_layer; ++l) {
      EXPECT_NEAR(counter.Fraction(l), s.keep, 0.01)
          << "keep " << s.keep << " layer " << l;
    }
  }
}

TEST_F(SparsityTest, KeepAllSelectorGivesDenseLogitsExactly) {
  std::unique_ptr<SparsityProfile> p = Calibrated({1.0});
  ASSERT_NE(p, nullptr);
  for (float t : p->setting_details()[0].thresholds) {
    EXPECT_EQ(t, -std::numeric_limits<float>::infinity());
  }
  absl::StatusOr<std::unique_ptr<NeuronSelector>> sel =
      p->MakeSelector(1.0, pool_, kBatch);
  ASSERT_TRUE(sel.ok()) << sel.status();
  const std::vector<int32_t>& seq = (*eval_)[0];
  const int32_t n = std::min<int32_t>(kBatch, int32_t(seq.size()));
  const int32_t V = model().config.n_vocab;
  KvCache kv(model().config, 256, DefaultKvType(model()));
  ASSERT_TRUE(
      forward_->Eval(kv, absl::MakeConstSpan(seq.data(), n), true).ok());
  std::vector<float> dense(forward_->logits(0), forward_->logits(0) + n * V);
  kv.Clear();
  forward_->set_selector(sel->get());
  absl::Status s = forward_->Eval(kv, absl::MakeConstSpan(seq.data(), n), true);
  forward_->set_selector(nullptr);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(std::memcmp(dense.data(), forward_->logits(0),
                        dense.size() * sizeof(float)),
            0);
}

TEST_F(SparsityTest, HalfTheNeuronsChangesLogitsALittle) {
  std::unique_ptr<SparsityProfile> p = Calibrated({0.5});
  ASSERT_NE(p, nullptr);
  absl::StatusOr<std::unique_ptr<NeuronSelector>> sel =
      p->MakeSelector(0.5, pool_, kBatch);
  ASSERT_TRUE(sel.ok()) << sel.status();
  absl::StatusOr<Perplexity> q =
      MeasurePerplexity(model(), *forward_, *eval_, sel->get());
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_GT(q->kl, 1e-6);
  EXPECT_LT(q->kl, 0.01);  // random weights: the FFN moves logits little
  absl::StatusOr<Perplexity> dense =
      MeasurePerplexity(model(), *forward_, *eval_, nullptr);
  ASSERT_TRUE(dense.ok());
  EXPECT_EQ(dense->kl, 0.0);
  EXPECT_NE(dense->ppl, q->ppl);
  EXPECT_NEAR(q->ppl / dense->ppl, 1.0, 0.01);
}

TEST_F(SparsityTest, QualityReportForBothPredictors) {
  for (PredictorVariant v :
       {PredictorVariant::kGateUp, PredictorVariant::kGate}) {
    std::unique_ptr<SparsityProfile> p = Calibrated({0.8, 0.5}, v);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p->PredictorBytes(),
              size_t(v == PredictorVariant::kGateUp ? 2 : 1) * 4 * 768 *
                  (256 / 32) * 18);
    absl::StatusOr<std::vector<SettingReport>> r =
        MeasureQuality(model(), *forward_, pool_, *eval_, *p);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->size(), 2u);
    for (const SettingReport& s : *r) {
      SCOPED_TRACE(std::string(PredictorVariantName(v)) + " keep " +
                   std::to_string(s.keep));
      EXPECT_NEAR(s.stats.fraction_loaded, s.keep, 0.03);
      // Measured: gate-up ~0.95, gate alone ~0.74-0.89.
      EXPECT_GT(s.stats.recall, v == PredictorVariant::kGateUp ? 0.9 : 0.65);
      EXPECT_GT(s.stats.precision, v == PredictorVariant::kGateUp ? 0.9 : 0.65);
      EXPECT_GT(s.stats.kl_sparse, 0.0);
      EXPECT_GT(s.stats.kl_oracle, 0.0);
      EXPECT_EQ(s.layers.size(), 4u);
      EXPECT_EQ(p->FindSetting(s.keep).value()->stats.recall, s.stats.recall);
    }
    // Fewer neurons cost more.
    EXPECT_GT((*r)[1].stats.kl_sparse, (*r)[0].stats.kl_sparse);
  }
}

TEST_F(SparsityTest, FileRoundTrip) {
  std::unique_ptr<SparsityProfile> p = Calibrated({0.9, 0.6});
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(MeasureQuality(model(), *forward_, pool_, *eval_, *p).ok());
  const std::string path = ::testing::TempDir() + "/round_trip.sparsity";
  ASSERT_TRUE(p->Write(path).ok());
  absl::StatusOr<std::unique_ptr<SparsityProfile>> q =
      SparsityProfile::Load(path, model().config, kIdentity);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ((*q)->settings(), std::vector<double>({0.9f, 0.6f}));
  EXPECT_EQ((*q)->predictor().variant(), PredictorVariant::kGateUp);
  EXPECT_EQ((*q)->PredictorBytes(), p->PredictorBytes());
  EXPECT_EQ(SparsityProfile::PeekPredictorBytes(path, model().config).value(),
            p->PredictorBytes());
  EXPECT_EQ((*q)->source_identity(), kIdentity);
  EXPECT_EQ((*q)->calib_tokens(), CountTokens(*calib_));
  EXPECT_EQ((*q)->eval_tokens(), CountTokens(*eval_));
  for (size_t i = 0; i < 2; ++i) {
    const SparsitySetting& a = p->setting_details()[i];
    const SparsitySetting& b = (*q)->setting_details()[i];
    EXPECT_EQ(a.thresholds, b.thresholds);
    EXPECT_EQ(a.oracle_thresholds, b.oracle_thresholds);
    EXPECT_EQ(a.stats.recall, b.stats.recall);
    EXPECT_EQ(a.stats.ppl_sparse, b.stats.ppl_sparse);
    EXPECT_EQ(a.stats.kl_oracle, b.stats.kl_oracle);
  }
  for (int32_t l = 0; l < 4; ++l) {
    EXPECT_EQ(
        std::memcmp(p->predictor().gate(l).data, (*q)->predictor().gate(l).data,
                    p->predictor().gate(l).bytes()),
        0);
    EXPECT_EQ(
        std::memcmp(p->predictor().up(l).data, (*q)->predictor().up(l).data,
                    p->predictor().up(l).bytes()),
        0);
  }
  // The loaded profile selects exactly as the calibrated one.
  auto a = p->MakeSelector(0.6, pool_, kBatch);
  auto b = (*q)->MakeSelector(0.6, pool_, kBatch);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<float> xb(3 * 256);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  for (float& x : xb) x = nd(rng);
  std::vector<uint8_t> ka(3 * 768), kb(3 * 768);
  (*a)->Select(2, xb.data(), 3, ka.data());
  (*b)->Select(2, xb.data(), 3, kb.data());
  EXPECT_EQ(ka, kb);
  EXPECT_EQ((*q)->MakeSelector(0.7, pool_, kBatch).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(SparsityTest, LoadRefusesWrongModelAndDamagedFiles) {
  std::unique_ptr<SparsityProfile> p =
      Calibrated({0.7}, PredictorVariant::kGate);
  ASSERT_NE(p, nullptr);
  const std::string path = ::testing::TempDir() + "/damaged.sparsity";
  ASSERT_TRUE(p->Write(path).ok());
  const std::string good = flashd::testing::ReadFileBytes(path);
  ASSERT_TRUE(SparsityProfile::Load(path, model().config, kIdentity).ok());

  absl::StatusOr<std::unique_ptr<SparsityProfile>> r =
      SparsityProfile::Load(path, model().config, kIdentity + 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find(
                "was calibrated for a different model; re-run flashd "
                "calibrate"),
            std::string::npos)
      << r.status();

  ModelConfig other = model().config;
  other.n_ff = 1024;
  r = SparsityProfile::Load(path, other, kIdentity);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("n_ff is 768 but the model has 1024"),
            std::string::npos)
      << r.status();

  // A flipped bit in the last predictor tensor.
  std::string bad = good;
  bad[bad.size() - 7] ^= 0x10;
  WriteFile(path, bad);
  r = SparsityProfile::Load(path, model().config, kIdentity);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("predictor tensors are corrupt"),
            std::string::npos)
      << r.status();

  // Truncated.
  WriteFile(path, good.substr(0, good.size() - 1000));
  r = SparsityProfile::Load(path, model().config, kIdentity);
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status();

  // Another format version.
  bad = good;
  const std::string key = "flashd.sparsity.version";
  const size_t at = bad.find(key);
  ASSERT_NE(at, std::string::npos);
  bad[at + key.size() + 4] = 7;  // after the uint32 type id: the value
  WriteFile(path, bad);
  r = SparsityProfile::Load(path, model().config, kIdentity);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("sparsity file version 7; this flashd "
                                      "reads 1"),
            std::string::npos)
      << r.status();

  // Not a sparsity file at all: the model itself.
  r = SparsityProfile::Load(::testing::TempDir() + "/sparsity_tiny.gguf",
                            model().config, kIdentity);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("not a flashd sparsity file"),
            std::string::npos)
      << r.status();
}

TEST_F(SparsityTest, CalibrateRejectsBadKeepFractions) {
  CalibrateOptions o;
  o.keep = {0.5, 1.5};
  EXPECT_EQ(Calibrate(model(), *forward_, pool_, *calib_, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.keep = {0.5, 0.5};
  EXPECT_EQ(Calibrate(model(), *forward_, pool_, *calib_, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.keep = {0.5};
  EXPECT_EQ(Calibrate(model(), *forward_, pool_, {}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SparsityTest, TextSequencesSplitWithBos) {
  const Tokenizer& tok = *loaded_->tokenizer;
  std::string text;
  for (int i = 0; i < 60; ++i) text += "the cat sat on the mat and ";
  absl::StatusOr<Sequences> s = TextSequences(tok, text, 100, 30);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(CountTokens(*s), 100);
  for (const auto& seq : *s) {
    EXPECT_LE(seq.size(), 30u);
    EXPECT_EQ(seq[0], tok.bos_id());
  }
  absl::StatusOr<Sequences> few = TextSequences(tok, "a cat", 100, 30);
  EXPECT_EQ(few.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DefaultSparsityPath("m/tl.q8.gguf"), "m/tl.q8.sparsity");
  EXPECT_EQ(DefaultSparsityPath("m.x/model"), "m.x/model.sparsity");
}

}  // namespace
}  // namespace flashd
