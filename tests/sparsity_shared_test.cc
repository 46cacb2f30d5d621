// Sparsity on a real trained model (stories260K): at the serving default
// keep fraction, the predictor's perplexity cost on text the model
// generates must stay within 1% -- the quality promise kDefaultKeep makes.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common/base/thread_pool.h"
#include "common/engine/forward.h"
#include "common/model/model_loader.h"
#include "common/sparsity/calibration.h"
#include "common/sparsity/quality.h"
#include "common/sparsity/sparsity_file.h"
#include "gtest/gtest.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

using ::flashd::testing::SharedPath;

TEST(SparsitySharedTest, DefaultKeepCostsAtMostOnePercentOnStories260K) {
  const std::string path = SharedPath("models/stories260K.bin");
  FLASHD_REQUIRE_SHARED(path);
  absl::StatusOr<LoadedModel> loaded = LoadModel(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Model& model = *loaded->model;
  ThreadPool pool(2);
  Forward forward(model, &pool, 256, 64);
  // As `flashd calibrate` does by default: 2048 sampled tokens to calibrate
  // on, 2048 others (another seed) to evaluate on.
  absl::StatusOr<Sequences> calib =
      SampleText(model, forward, *loaded->tokenizer, 2048, 256, 1);
  ASSERT_TRUE(calib.ok()) << calib.status();
  absl::StatusOr<Sequences> eval =
      SampleText(model, forward, *loaded->tokenizer, 2048, 256, 1001);
  ASSERT_TRUE(eval.ok()) << eval.status();
  EXPECT_EQ(CountTokens(*calib), 2048);

  CalibrateOptions options;
  options.keep = {kDefaultKeep};
  options.variant = PredictorVariant::kGateUp;
  absl::StatusOr<std::unique_ptr<SparsityProfile>> profile =
      Calibrate(model, forward, &pool, *calib, options);
  ASSERT_TRUE(profile.ok()) << profile.status();
  absl::StatusOr<std::vector<SettingReport>> reports =
      MeasureQuality(model, forward, &pool, *eval, **profile);
  ASSERT_TRUE(reports.ok()) << reports.status();
  const SettingStats& s = (*reports)[0].stats;
  const double cost = s.ppl_sparse / s.ppl_dense - 1;
  std::printf(
      "keep %.2f: loaded %.3f recall %.3f precision %.3f ppl %.4f -> "
      "%.4f (%+.2f%%), oracle %+.2f%%, KL %.5f\n",
      kDefaultKeep, s.fraction_loaded, s.recall, s.precision, s.ppl_dense,
      s.ppl_sparse, 100 * cost, 100 * (s.ppl_oracle / s.ppl_dense - 1),
      s.kl_sparse);
  EXPECT_LE(cost, 0.01);
  EXPECT_GT(cost, 0.0);  // skipping neurons is not free
  EXPECT_NEAR(s.fraction_loaded, kDefaultKeep, 0.02);
  EXPECT_GT(s.recall, 0.9);
  EXPECT_GT(s.precision, 0.9);
  EXPECT_LT(s.kl_oracle, s.kl_sparse);  // the predictor approximates it
}

}  // namespace
}  // namespace flashd
