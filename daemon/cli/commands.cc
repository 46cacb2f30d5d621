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
    "  serve         run the daemon: serve the model over gRPC until SIGTERM\n"
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
  if (cmd == "serve") return ServeCommand(argc, argv);
  std::fprintf(stderr, "flashd: unknown command '%s'\n\n%s", cmd.c_str(),
               kUsage);
  return 2;
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
