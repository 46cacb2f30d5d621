// One FFN neuron -- gate row, up row, down column -- is addressable on its
// own, and the dense FFN equals the sum of its neurons' contributions (what
// the flash engine computes over a subset of loaded neurons).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/kernels/kernels.h"
#include "common/model/model_loader.h"
#include "common/model/model_maker.h"
#include "gtest/gtest.h"

namespace flashd {
namespace {

class NeuronTest : public ::testing::TestWithParam<std::string> {};

TEST_P(NeuronTest, NeuronSumEqualsDenseFfn) {
  const std::string path =
      ::testing::TempDir() + "/neuron_" + GetParam() + ".gguf";
  MakeModelOptions o;
  o.preset = "tiny";
  o.type = GetParam();
  o.out_path = path;
  ASSERT_TRUE(MakeModel(o).ok());
  absl::StatusOr<LoadedModel> lm = LoadModel(path);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const ModelConfig& c = lm->model->config;
  const FfnWeights& ffn = lm->model->layers[c.n_layer - 1].ffn;

  // Dense reference in float: h = silu(G x) * (U x); y = D h.
  std::vector<float> x(c.n_embd);
  for (int i = 0; i < c.n_embd; ++i) x[i] = std::sin(0.37f * i);
  std::vector<float> row(std::max(c.n_embd, c.n_ff)), h(c.n_ff), dense(c.n_embd, 0);
  for (int i = 0; i < c.n_ff; ++i) {
    kernels::ToFloat(ffn.gate.type, ffn.gate.Row(i), row.data(), c.n_embd);
    double g = 0, u = 0;
    for (int j = 0; j < c.n_embd; ++j) g += row[j] * x[j];
    kernels::ToFloat(ffn.up.type, ffn.up.Row(i), row.data(), c.n_embd);
    for (int j = 0; j < c.n_embd; ++j) u += row[j] * x[j];
    h[i] = static_cast<float>(g / (1 + std::exp(-g)) * u);
  }
  for (int r = 0; r < c.n_embd; ++r) {
    kernels::ToFloat(ffn.down.type, ffn.down.Row(r), row.data(), c.n_ff);
    double acc = 0;
    for (int i = 0; i < c.n_ff; ++i) acc += row[i] * h[i];
    dense[r] = static_cast<float>(acc);
  }

  // Neuron by neuron: each neuron's own gate row, up row and down column.
  std::vector<float> by_neuron(c.n_embd, 0), gate_row(c.n_embd),
      up_row(c.n_embd), down_col(c.n_embd);
  for (int i = 0; i < c.n_ff; ++i) {
    kernels::ToFloat(ffn.gate.type, ffn.GateRow(i), gate_row.data(), c.n_embd);
    kernels::ToFloat(ffn.up.type, ffn.UpRow(i), up_row.data(), c.n_embd);
    ffn.DownColumn(i, down_col.data());
    double g = 0, u = 0;
    for (int j = 0; j < c.n_embd; ++j) {
      g += gate_row[j] * x[j];
      u += up_row[j] * x[j];
    }
    const float a = static_cast<float>(g / (1 + std::exp(-g)) * u);
    EXPECT_NEAR(a, h[i], 1e-5f + 1e-4f * std::fabs(h[i]));
    for (int r = 0; r < c.n_embd; ++r) by_neuron[r] += a * down_col[r];
  }
  for (int r = 0; r < c.n_embd; ++r) {
    EXPECT_NEAR(by_neuron[r], dense[r], 1e-4f + 1e-3f * std::fabs(dense[r]))
        << "output " << r;
  }
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Types, NeuronTest,
                         ::testing::Values("f16", "q8_0", "q4_0", "q4_k_m"));

}  // namespace
}  // namespace flashd
