// flashd logits: write a prompt's token ids and every position's logits.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/generator.h"
#include "daemon/cli/commands.h"

namespace flashd::cli {

int LogitsCommand(int argc, char** argv) {
  Args args;
  AddEngineFlags(args);
  args.Flag("prompt", "", "prompt text (required)")
      .Flag("out", "", "output prefix: writes PREFIX.ids and PREFIX.logits.f32");
  int code = 0;
  if (!ParseOrExit(args, "logits",
                   "Writes the prompt's token ids (BOS included when the "
                   "model adds it) and float32 logits, one row of n_vocab "
                   "per position.",
                   argc, argv, &code)) {
    return code;
  }
  if (!args.Has("prompt")) {
    return Fail("logits", absl::InvalidArgumentError("--prompt is required"));
  }
  if (args.Get("out").empty()) {
    return Fail("logits", absl::InvalidArgumentError("--out is required"));
  }
  absl::StatusOr<Engine> engine = OpenEngine(args);
  if (!engine.ok()) return Fail("logits", engine.status());
  const Tokenizer& tok = *engine->loaded.tokenizer;
  std::vector<int32_t> ids = tok.Encode(args.Get("prompt"), tok.vocab().add_bos);
  if (ids.empty()) {
    return Fail("logits", absl::InvalidArgumentError("prompt has no tokens"));
  }
  const std::string prefix = args.Get("out");
  const std::string ids_path = prefix + ".ids", logits_path = prefix + ".logits.f32";
  std::FILE* lf = std::fopen(logits_path.c_str(), "wb");
  if (lf == nullptr) {
    return Fail("logits", absl::PermissionDeniedError(
                              absl::StrCat("cannot write ", logits_path)));
  }
  const int32_t n_vocab = engine->loaded.model->config.n_vocab;
  bool write_ok = true;
  absl::Status s = EvalPrompt(
      *engine->forward, *engine->kv, ids, true, [&](int32_t, const float* row) {
        write_ok &= std::fwrite(row, sizeof(float), n_vocab, lf) ==
                    static_cast<size_t>(n_vocab);
      });
  write_ok &= std::fclose(lf) == 0;
  if (!s.ok()) return Fail("logits", s);
  if (!write_ok) {
    return Fail("logits", absl::DataLossError(
                              absl::StrCat("short write to ", logits_path)));
  }
  std::string line;
  for (int32_t id : ids) absl::StrAppend(&line, line.empty() ? "" : " ", id);
  std::FILE* f = std::fopen(ids_path.c_str(), "w");
  if (f == nullptr || std::fprintf(f, "%s\n", line.c_str()) < 0 ||
      std::fclose(f) != 0) {
    return Fail("logits", absl::PermissionDeniedError(
                              absl::StrCat("cannot write ", ids_path)));
  }
  std::fprintf(stderr, "[flashd] wrote %zu positions x %d logits to %s\n",
               ids.size(), n_vocab, logits_path.c_str());
  return 0;
}

}  // namespace flashd::cli
