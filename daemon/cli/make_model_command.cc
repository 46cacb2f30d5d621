// flashd make-model: write a random-weight GGUF of a preset shape.
#include <unistd.h>

#include <cstdio>

#include "common/model/model_maker.h"
#include "daemon/cli/commands.h"

namespace flashd::cli {

int MakeModelCommand(int argc, char** argv) {
  Args args;
  args.Flag("preset", "tiny", "tinyllama-1.1b | tiny")
      .Flag("type", "q8_0", "f16 | q8_0 | q4_0 | q4_k_m")
      .Flag("out", "", "output GGUF path (required)")
      .Flag("seed", "1", "weight seed")
      .Flag("vocab", "", "GGUF to take the vocabulary from (default: built in)")
      .Flag("threads", std::to_string(AvailableCores()), "quantizer threads");
  int code = 0;
  if (!ParseOrExit(args, "make-model",
                   "Writes a random-weight Llama GGUF (weights N(0, 0.02)) "
                   "that llama.cpp and flashd load.",
                   argc, argv, &code)) {
    return code;
  }
  MakeModelOptions o;
  o.preset = args.Get("preset");
  o.type = args.Get("type");
  o.out_path = args.Get("out");
  o.vocab_path = args.Get("vocab");
  absl::StatusOr<int64_t> seed = args.GetInt("seed", 0, INT64_MAX);
  if (!seed.ok()) return Fail("make-model", seed.status());
  o.seed = static_cast<uint64_t>(*seed);
  absl::StatusOr<int64_t> threads = args.GetInt("threads", 1, 256);
  if (!threads.ok()) return Fail("make-model", threads.status());
  o.threads = static_cast<int>(*threads);
  const bool tty = isatty(fileno(stderr));
  o.progress = [tty](size_t done, size_t total) {
    if (tty || done == total) {
      std::fprintf(stderr, "\r[flashd] writing tensors %zu/%zu", done, total);
      if (done == total) std::fputc('\n', stderr);
    }
  };
  absl::Status s = MakeModel(o);
  if (!s.ok()) return Fail("make-model", s);
  std::fprintf(stderr, "[flashd] wrote %s\n", o.out_path.c_str());
  return 0;
}

}  // namespace flashd::cli
