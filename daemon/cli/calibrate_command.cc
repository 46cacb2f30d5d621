// flashd calibrate: record FFN activations on calibration text, write the
// sparsity profile (predictor + per-layer thresholds) next to the model,
// and report what each keep fraction costs on separate evaluation text.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/flash/flash_file.h"
#include "common/sparsity/calibration.h"
#include "common/sparsity/quality.h"
#include "common/sparsity/sparsity_file.h"
#include "daemon/cli/commands.h"

namespace flashd::cli {
namespace {

constexpr char kCmd[] = "calibrate";

absl::StatusOr<std::vector<double>> ParseKeepList(const std::string& list) {
  std::vector<double> keeps;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    double k = 0;
    if (!absl::SimpleAtod(part, &k) || !(k > 0.0 && k <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--keep: '", std::string(part), "' is not a fraction in (0, 1]"));
    }
    keeps.push_back(k);
  }
  return keeps;
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Calibration or evaluation text: the file's tokens, or sampled.
absl::StatusOr<Sequences> GetText(const Engine& e, const std::string& file,
                                  int64_t n_tokens, int32_t seq_len,
                                  uint64_t seed, std::string* described) {
  if (!file.empty()) {
    absl::StatusOr<std::string> text = ReadText(file);
    if (!text.ok()) return text.status();
    *described = absl::StrCat("from ", file);
    absl::StatusOr<Sequences> s =
        TextSequences(*e.loaded.tokenizer, *text, n_tokens, seq_len);
    if (!s.ok()) {
      return absl::Status(s.status().code(),
                          absl::StrCat(file, ": ", s.status().message()));
    }
    return s;
  }
  *described = absl::StrCat("sampled, seed ", seed);
  return SampleText(*e.loaded.model, *e.forward, *e.loaded.tokenizer, n_tokens,
                    seq_len, seed);
}

std::string Bytes(size_t b) {
  return b >= (1u << 20) ? absl::StrFormat("%.1f MiB", b / 1048576.0)
                         : absl::StrFormat("%.1f KiB", b / 1024.0);
}

void PrintReport(const std::vector<SettingReport>& reports, bool verbose) {
  std::printf("%5s %7s %7s %9s  %-30s %10s %9s %9s\n", "keep", "loaded",
              "recall", "precision", "perplexity dense -> sparse", "oracle ppl",
              "KL", "KL oracle");
  for (const SettingReport& r : reports) {
    const SettingStats& s = r.stats;
    std::printf(
        "%5.2f %7.3f %7.3f %9.3f  %-30s %+9.2f%% %9.5f %9.5f\n", r.keep,
        s.fraction_loaded, s.recall, s.precision,
        absl::StrFormat("%.4f -> %.4f (%+.2f%%)", s.ppl_dense, s.ppl_sparse,
                        100 * (s.ppl_sparse / s.ppl_dense - 1))
            .c_str(),
        100 * (s.ppl_oracle / s.ppl_dense - 1), s.kl_sparse, s.kl_oracle);
    if (!verbose) continue;
    for (size_t l = 0; l < r.layers.size(); ++l) {
      std::printf("      layer %-3zu loaded %.3f recall %.3f precision %.3f\n",
                  l, r.layers[l].fraction_loaded, r.layers[l].recall,
                  r.layers[l].precision);
    }
  }
  std::printf("dense-exact (keep 1.0): no selector, loaded 1.000, +0.00%%\n");
}

}  // namespace

int CalibrateCommand(int argc, char** argv) {
  Args args;
  AddEngineFlags(args);
  args.Positional("model", "model file (or --model)")
      .Flag("text", "",
            "calibration text file (default: sampled from the model)")
      .Flag("eval-text", "",
            "evaluation text file (default: sampled, another seed)")
      .Flag("calib-tokens", "2048", "calibration tokens")
      .Flag("eval-tokens", "2048",
            "evaluation tokens (0: skip the quality report)")
      .Flag("seq-len", "256",
            "tokens per sequence, BOS included (capped at --ctx)")
      .Flag("seed", "1",
            "sampling seed of calibration text; eval uses seed+1000")
      .Flag(
          "keep", "0.9,0.8,0.7,0.6,0.5",
          absl::StrFormat("keep fractions to calibrate, comma separated (%.2f, "
                          "the serving default, is always added)",
                          kDefaultKeep))
      .Flag("predictor", "gate-up",
            "predictor scores: gate (|silu(g)|) or gate-up (|silu(g)*u|)")
      .Flag("out", "",
            "output file (default: the model path with extension .sparsity)")
      .Switch("verbose", "also print recall and precision per layer");
  // Calibration records the dense resident model: the flash modes and a
  // sparsity profile (perhaps a stale one beside the model) do not apply.
  std::vector<char*> argv2(argv, argv + argc);
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    for (const char* flag : {"--mode", "--flash", "--sparsity", "--dram-budget",
                             "--window", "--io-profile"}) {
      if (a == flag || a.rfind(std::string(flag) + "=", 0) == 0) {
        return Fail(kCmd, absl::InvalidArgumentError(absl::StrCat(
                              a,
                              " does not apply: calibrate runs the source "
                              "model resident and dense")));
      }
    }
  }
  char mode_flag[] = "--mode=resident";
  char sparsity_flag[] = "--sparsity=off";
  argv2.push_back(mode_flag);
  argv2.push_back(sparsity_flag);
  int code = 0;
  if (!ParseOrExit(args, kCmd,
                   "Records FFN activations on calibration text and writes "
                   "per-layer thresholds and a Q4_0 predictor for each keep "
                   "fraction; reports neurons loaded, predictor recall and "
                   "precision, and the perplexity / KL cost on separate "
                   "evaluation text.",
                   static_cast<int>(argv2.size()), argv2.data(), &code)) {
    return code;
  }
  absl::StatusOr<std::vector<double>> keeps = ParseKeepList(args.Get("keep"));
  if (!keeps.ok()) return Fail(kCmd, keeps.status());
  absl::StatusOr<PredictorVariant> variant =
      ParsePredictorVariant(args.Get("predictor"));
  if (!variant.ok()) return Fail(kCmd, variant.status());
  absl::StatusOr<int64_t> calib_tokens =
      args.GetInt("calib-tokens", 2, 1 << 24);
  if (!calib_tokens.ok()) return Fail(kCmd, calib_tokens.status());
  absl::StatusOr<int64_t> eval_tokens = args.GetInt("eval-tokens", 0, 1 << 24);
  if (!eval_tokens.ok()) return Fail(kCmd, eval_tokens.status());
  absl::StatusOr<int64_t> seq_len = args.GetInt("seq-len", 2, 1 << 20);
  if (!seq_len.ok()) return Fail(kCmd, seq_len.status());
  absl::StatusOr<int64_t> seed = args.GetInt("seed", 0, INT64_MAX);
  if (!seed.ok()) return Fail(kCmd, seed.status());

  const std::string model_path = args.Get("model");
  absl::StatusOr<Engine> engine = OpenEngine(args);
  if (!engine.ok()) return Fail(kCmd, engine.status());
  absl::StatusOr<uint64_t> identity = flash::SourceIdentity(model_path);
  if (!identity.ok()) return Fail(kCmd, identity.status());
  const Model& model = *engine->loaded.model;
  const int32_t len = static_cast<int32_t>(
      std::min<int64_t>(*seq_len, engine->forward->n_ctx()));

  std::string calib_from, eval_from;
  absl::StatusOr<Sequences> calib = GetText(
      *engine, args.Get("text"), *calib_tokens, len, *seed, &calib_from);
  if (!calib.ok()) return Fail(kCmd, calib.status());
  CalibrateOptions options;
  options.keep = *keeps;
  // The file always carries the default setting, so --sparsity default
  // works with any profile.
  bool has_default = false;
  for (double k : options.keep)
    has_default |= std::fabs(k - kDefaultKeep) < 1e-6;
  if (!has_default) options.keep.push_back(kDefaultKeep);
  options.variant = *variant;
  options.source_identity = *identity;
  absl::StatusOr<std::unique_ptr<SparsityProfile>> profile =
      Calibrate(model, *engine->forward, engine->pool.get(), *calib, options);
  if (!profile.ok()) return Fail(kCmd, profile.status());

  size_t ffn_bytes = 0;
  for (const LayerWeights& l : model.layers) {
    ffn_bytes += l.ffn.gate.bytes() + l.ffn.up.bytes() + l.ffn.down.bytes();
  }
  std::printf(
      "model %s: %d layers x %d neurons; predictor %s, Q4_0, %s "
      "(%.1f%% of the FFN weights)\n",
      model_path.c_str(), model.config.n_layer, model.config.n_ff,
      std::string(PredictorVariantName(*variant)).c_str(),
      Bytes((*profile)->PredictorBytes()).c_str(),
      100.0 * (*profile)->PredictorBytes() / ffn_bytes);
  std::printf("calibration: %lld tokens (%s)\n",
              static_cast<long long>(CountTokens(*calib)), calib_from.c_str());

  if (*eval_tokens > 0) {
    absl::StatusOr<Sequences> eval =
        GetText(*engine, args.Get("eval-text"), *eval_tokens, len,
                static_cast<uint64_t>(*seed) + 1000, &eval_from);
    if (!eval.ok()) return Fail(kCmd, eval.status());
    std::printf("evaluation: %lld tokens (%s)\n",
                static_cast<long long>(CountTokens(*eval)), eval_from.c_str());
    absl::StatusOr<std::vector<SettingReport>> reports = MeasureQuality(
        model, *engine->forward, engine->pool.get(), *eval, **profile);
    if (!reports.ok()) return Fail(kCmd, reports.status());
    PrintReport(*reports, args.GetSwitch("verbose"));
  }

  const std::string out = args.Get("out").empty()
                              ? DefaultSparsityPath(model_path)
                              : args.Get("out");
  if (absl::Status s = (*profile)->Write(out); !s.ok()) return Fail(kCmd, s);
  std::printf("wrote %s (default keep %.2f; dense-exact = keep 1.0)\n",
              out.c_str(), kDefaultKeep);
  return 0;
}

}  // namespace flashd::cli
