// flashd subcommands. Each parses its flags, calls into the libraries and
// returns a process exit code; errors are printed as "flashd <cmd>: <msg>".
#ifndef FLASHD_DAEMON_CLI_COMMANDS_H_
#define FLASHD_DAEMON_CLI_COMMANDS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/base/thread_pool.h"
#include "common/engine/forward.h"
#include "common/engine/kv_cache.h"
#include "common/flash/flash_engine.h"
#include "common/flash/flash_file.h"
#include "common/io/io_calibration.h"
#include "common/model/model_loader.h"
#include "common/shm/shm_dir.h"
#include "common/sparsity/sparsity_file.h"
#include "daemon/cli/args.h"

namespace flashd::cli {

// Dispatches argv[1] to a subcommand.
int Main(int argc, char** argv);

int RunCommand(int argc, char** argv);
int LogitsCommand(int argc, char** argv);
int BenchCommand(int argc, char** argv);
int MakeModelCommand(int argc, char** argv);
int CalibrateIoCommand(int argc, char** argv);
int ConvertCommand(int argc, char** argv);
int CalibrateCommand(int argc, char** argv);
// The daemon: gRPC server until SIGTERM (daemon/server).
int ServeCommand(int argc, char** argv);

// What run/logits/bench share: a loaded model, threads, forward, KV cache,
// and for the flash modes the .flash file, its weight source and the
// sparsity selector. Members are destroyed bottom-up: users before what
// they use.
struct Engine {
  flash::Mode mode = flash::Mode::kResident;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<flash::FlashFile> flash_file;  // non-resident modes
  std::unique_ptr<io::IoProfile> io_profile;      // when found / given
  std::unique_ptr<SparsityProfile> sparsity;      // when sparsity is on
  std::unique_ptr<NeuronSelector> selector;
  std::unique_ptr<flash::FlashSource> source;     // non-resident modes
  LoadedModel loaded;  // resident: the model; else config + tokenizer
  std::unique_ptr<Forward> forward;
  std::unique_ptr<KvCache> kv;
  uint64_t model_file_bytes = 0;  // what --dram-budget N% refers to
  uint64_t dram_budget = 0;       // 0: unbounded
  std::string sparsity_desc;      // "off (dense-exact)" or "keep 0.90 ..."
  std::string io_profile_path;    // empty when none
  // The shared-memory directory (--shm-dir), when a cache segment uses it.
  std::shared_ptr<const shm::ShmDir> shm_dir;
};

// Declares --model, --tokenizer, --threads, --ctx, --batch, --kv-type and
// the flash flags (--mode, --flash, --dram-budget, --window, --sparsity,
// --sparsity-file, --cache-shm, --shm-dir, --io-profile) on `args`. `daemon`: the
// defaults of flashd serve (--cache-shm auto: a restarted daemon starts
// with a warm neuron cache); otherwise --cache-shm '' (private).
void AddEngineFlags(Args& args, bool daemon = false);
// Loads the model and builds the engine from those flags.
absl::StatusOr<Engine> OpenEngine(const Args& args);
// Opens --shm-dir (default shm::DefaultShmDirPath()); when that directory
// is refused, the fallback's note goes to stderr.
absl::StatusOr<std::shared_ptr<const shm::ShmDir>> OpenShmDir(
    const Args& args);

// Parses argv for `command`; prints help for --help (returns 0 via
// *exit_code) or the error (exit code 2). Returns true to continue.
bool ParseOrExit(Args& args, const std::string& command,
                 const std::string& summary, int argc, char** argv,
                 int* exit_code);

// Prints "flashd <command>: <status message>" to stderr; returns 1.
int Fail(const std::string& command, const absl::Status& status);

// Peak resident set size of this process in bytes (VmHWM).
size_t PeakRssBytes();

}  // namespace flashd::cli

#endif  // FLASHD_DAEMON_CLI_COMMANDS_H_
