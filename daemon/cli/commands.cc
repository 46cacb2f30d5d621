#include "daemon/cli/commands.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/kernels/kernels.h"

namespace flashd::cli {
namespace {

constexpr char kUsage[] =
    "usage: flashd <command> [flags]\n"
    "\n"
    "commands:\n"
    "  run         generate text from a prompt\n"
    "  logits      write a prompt's token ids and logits to files\n"
    "  bench       measure prefill and decode speed\n"
    "  make-model  write a random-weight GGUF model of a preset shape\n"
    "  calibrate-io  measure flash read throughput; write an I/O profile\n"
    "  convert       write a model in the flash layout (.flash)\n"
    "  calibrate     record FFN activations; write sparsity thresholds and predictors\n"
    "\n"
    "'flashd <command> --help' lists a command's flags.\n";

}  // namespace

int Main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") ||
      !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "run") return RunCommand(argc, argv);
  if (cmd == "logits") return LogitsCommand(argc, argv);
  if (cmd == "bench") return BenchCommand(argc, argv);
  if (cmd == "make-model") return MakeModelCommand(argc, argv);
  if (cmd == "calibrate-io") return CalibrateIoCommand(argc, argv);
  if (cmd == "convert") return ConvertCommand(argc, argv);
  if (cmd == "calibrate") return CalibrateCommand(argc, argv);
  std::fprintf(stderr, "flashd: unknown command '%s'\n\n%s", cmd.c_str(),
               kUsage);
  return 2;
}

void AddEngineFlags(Args& args) {
  args.Flag("model", "", "model file: GGUF or llama2.c checkpoint (required)")
      .Flag("tokenizer", "",
            "tokenizer: GGUF vocabulary or llama2.c tokenizer.bin "
            "(default: the model's own, or tokenizer.bin beside it)")
      .Flag("threads", std::to_string(AvailableCores()), "compute threads")
      .Flag("ctx", "0", "context length in tokens (0: the model's, max 4096)")
      .Flag("batch", "64", "prompt tokens evaluated per batch")
      .Flag("kv-type", "auto",
            "KV cache element type: f16, f32, or auto (f32 for f32 models)");
}

absl::StatusOr<Engine> OpenEngine(const Args& args) {
  if (args.Get("model").empty()) {
    return absl::InvalidArgumentError("--model is required");
  }
  absl::StatusOr<int64_t> threads = args.GetInt("threads", 1, 256);
  if (!threads.ok()) return threads.status();
  absl::StatusOr<int64_t> ctx = args.GetInt("ctx", 0, 1 << 20);
  if (!ctx.ok()) return ctx.status();
  absl::StatusOr<int64_t> batch = args.GetInt("batch", 1, 4096);
  if (!batch.ok()) return batch.status();

  const std::string kv_flag = args.Get("kv-type");
  if (kv_flag != "auto" && kv_flag != "f16" && kv_flag != "f32") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-type '", kv_flag, "' is not one of auto, f16, f32"));
  }
  LoadOptions options;
  options.tokenizer_path = args.Get("tokenizer");
  options.resident = true;
  absl::StatusOr<LoadedModel> loaded = LoadModel(args.Get("model"), options);
  if (!loaded.ok()) return loaded.status();
  Engine e;
  e.loaded = std::move(*loaded);
  const ModelConfig& c = e.loaded.model->config;
  int32_t n_ctx = static_cast<int32_t>(*ctx);
  if (n_ctx == 0) n_ctx = std::min<int32_t>(c.n_ctx_train, 4096);
  e.pool = std::make_unique<ThreadPool>(static_cast<int>(*threads));
  e.forward = std::make_unique<Forward>(*e.loaded.model, e.pool.get(), n_ctx,
                                        static_cast<int32_t>(*batch));
  const KvType kv_type = kv_flag == "f16"   ? KvType::kF16
                         : kv_flag == "f32" ? KvType::kF32
                                            : DefaultKvType(*e.loaded.model);
  e.kv = std::make_unique<KvCache>(c, n_ctx, kv_type);
  return e;
}

bool ParseOrExit(Args& args, const std::string& command,
                 const std::string& summary, int argc, char** argv,
                 int* exit_code) {
  args.Switch("help", "show this help");
  absl::Status s = args.Parse(argc, argv, 2);
  if (s.ok() && args.GetSwitch("help")) {
    std::printf("usage: flashd %s [flags]\n%s\n\nflags:\n%s", command.c_str(),
                summary.c_str(), args.Help().c_str());
    *exit_code = 0;
    return false;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "flashd %s: %s\nflags:\n%s", command.c_str(),
                 std::string(s.message()).c_str(), args.Help().c_str());
    *exit_code = 2;
    return false;
  }
  return true;
}

int Fail(const std::string& command, const absl::Status& status) {
  std::fprintf(stderr, "flashd %s: %s\n", command.c_str(),
               std::string(status.message()).c_str());
  return 1;
}

size_t PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      size_t kb = 0;
      std::string digits;
      for (char ch : line) {
        if (ch >= '0' && ch <= '9') digits += ch;
      }
      if (absl::SimpleAtoi(digits, &kb)) return kb * 1024;
    }
  }
  return 0;
}

}  // namespace flashd::cli
