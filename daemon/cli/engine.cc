// Opening the engine for run/logits/bench: the resident model or a .flash
// file with its weight source, the sparsity selector and the DRAM budget.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/flash/flash_engine.h"
#include "daemon/cli/commands.h"

namespace flashd::cli {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

uint64_t FileBytes(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// `path` with its extension (after the last '.' of the file name) replaced.
std::string ReplaceExtension(const std::string& path, const std::string& ext) {
  const size_t slash = path.rfind('/');
  const size_t dot = path.rfind('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) {
    return path + ext;
  }
  return path.substr(0, dot) + ext;
}

absl::StatusOr<std::string> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Whether `estimate` reads less than `than` (by the cost model's seconds
// when there is one, else by bytes).
bool ReadsLess(const flash::ReadEstimate& estimate,
               const flash::ReadEstimate& than) {
  return than.seconds > 0 ? estimate.seconds < than.seconds
                          : estimate.bytes < than.bytes;
}

std::string DescribeReads(const flash::ReadEstimate& e) {
  if (!e.fits) return "does not fit the budget";
  std::string s = e.bytes >= (uint64_t{1} << 20)
                      ? absl::StrFormat("%.0f MiB", e.bytes / 1048576.0)
                      : absl::StrFormat("%.0f KiB", e.bytes / 1024.0);
  if (e.seconds > 0) absl::StrAppendFormat(&s, ", %.0f ms", e.seconds * 1e3);
  return s;
}

// Sets up sparsity per --sparsity: "off", "default", "keep=F", or "auto":
// the calibrated default when a .sparsity file is there, the mode is flash
// and, under the budget, the predictor is expected to save flash reads:
// its memory comes out of the neuron caches, so at keep 0.8 it often costs
// more reads than skipping neurons saves (docs/design/sparsity.md).
// `source` is the flash-mode source's options (null in the other modes).
absl::Status OpenSparsity(const Args& args, const std::string& model_path,
                          uint64_t source_identity, int32_t max_batch,
                          const flash::SourceOptions* source, Engine& e) {
  const std::string flag = args.Get("sparsity");
  std::string file = args.Get("sparsity-file");
  if (file.empty()) file = ReplaceExtension(model_path, ".sparsity");
  double keep = 1.0;
  if (flag == "off") {
    e.sparsity_desc = "off (dense-exact)";
    return absl::OkStatus();
  } else if (flag == "auto") {
    if (!Exists(file)) {
      e.sparsity_desc = absl::StrCat("off (dense-exact; no ", file,
                                     ": run flashd calibrate)");
      return absl::OkStatus();
    }
    if (source == nullptr || source->mode != flash::Mode::kFlash) {
      e.sparsity_desc = absl::StrCat(
          "off (dense-exact; auto uses ", file, " only in mode flash, where "
          "skipping neurons saves reads; --sparsity default forces it)");
      return absl::OkStatus();
    }
    keep = kDefaultKeep;
  } else if (flag == "default") {
    keep = kDefaultKeep;
  } else if (flag.rfind("keep=", 0) == 0 &&
             absl::SimpleAtod(flag.substr(5), &keep) && keep > 0 && keep <= 1) {
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--sparsity '", flag,
        "' is not one of off, auto, default, keep=F (0 < F <= 1)"));
  }
  if (keep >= 1.0) {
    e.sparsity_desc = "off (dense-exact)";
    return absl::OkStatus();
  }
  std::string chosen;
  if (flag == "auto") {
    // Decided before loading: the predictor is read only when it is used.
    absl::StatusOr<size_t> predictor_bytes =
        SparsityProfile::PeekPredictorBytes(file, e.loaded.model->config);
    if (!predictor_bytes.ok()) return predictor_bytes.status();
    // Reads are direct (page-aligned) unless the calibrated file was not.
    const size_t alignment = source->profile != nullptr
                                 ? source->profile->alignment
                                 : flash::kFlashAlign;
    const absl::StatusOr<flash::ReadEstimate> dense_or =
        flash::EstimateFlashDecodeReads(*e.flash_file, *source, 1.0,
                                        alignment);
    if (!dense_or.ok()) return dense_or.status();
    flash::SourceOptions with_predictor = *source;
    with_predictor.predictor_bytes = *predictor_bytes;
    const absl::StatusOr<flash::ReadEstimate> sparse_or =
        flash::EstimateFlashDecodeReads(*e.flash_file, with_predictor, keep,
                                        alignment);
    if (!sparse_or.ok()) return sparse_or.status();
    const flash::ReadEstimate& dense = *dense_or;
    const flash::ReadEstimate& sparse = *sparse_or;
    const std::string reads = absl::StrCat(
        "estimated reads per token: keep ", absl::StrFormat("%.2f", keep),
        " with its predictor ", DescribeReads(sparse), ", dense ",
        DescribeReads(dense));
    if (!sparse.fits || (dense.fits && !ReadsLess(sparse, dense))) {
      e.sparsity_desc =
          absl::StrCat("off (dense-exact; auto: ", reads,
                       "; --sparsity default forces sparsity)");
      return absl::OkStatus();
    }
    chosen = absl::StrCat(", auto: ", reads);
  }
  absl::StatusOr<std::unique_ptr<SparsityProfile>> profile =
      SparsityProfile::Load(file, e.loaded.model->config, source_identity);
  if (!profile.ok()) return profile.status();
  e.sparsity = std::move(*profile);
  absl::StatusOr<std::unique_ptr<NeuronSelector>> selector =
      e.sparsity->MakeSelector(keep, e.pool.get(), max_batch);
  if (!selector.ok()) return selector.status();
  e.selector = std::move(*selector);
  e.sparsity_desc = absl::StrFormat(
      "keep %.2f of FFN neurons (predictor %.1f MiB, %s%s)", keep,
      e.sparsity->PredictorBytes() / 1048576.0, file, chosen);
  return absl::OkStatus();
}

}  // namespace

void AddEngineFlags(Args& args, bool daemon) {
  args.Flag("model", "",
            "model file: GGUF, llama2.c checkpoint, or .flash (required)")
      .Flag("tokenizer", "",
            "tokenizer: GGUF vocabulary or llama2.c tokenizer.bin "
            "(default: the model's own, or tokenizer.bin beside it)")
      .Flag("threads", std::to_string(AvailableCores()), "compute threads")
      .Flag("ctx", "0", "context length in tokens (0: the model's, max 4096)")
      .Flag("batch", "64", "prompt tokens evaluated per batch")
      .Flag("kv-type", "auto",
            "KV cache element type: f16, f32, or auto (f32 for f32 models)")
      .Flag("mode", "auto",
            "resident (all weights in DRAM), naive (re-read every weight per "
            "token), layer (layer streaming), flash (LLM in a Flash); auto: "
            "flash for a .flash model, else resident")
      .Flag("flash", "",
            "the .flash file of the non-resident modes (default: --model "
            "itself if it is one, else --model with extension .flash)")
      .Flag("dram-budget", "0",
            "bound on weight memory: bytes, KiB/MiB/GiB, or % of the model "
            "file; 0: unbounded")
      .Flag("window", "4",
            "flash mode: neurons used by the last N tokens stay cached")
      .Flag("sparsity", "auto",
            "off (dense-exact), default (keep 0.8), keep=F, or auto: default "
            "in mode flash when a .sparsity file is found and, under the "
            "budget, the I/O cost model expects it to read less than "
            "dense-exact; else off")
      .Flag("sparsity-file", "",
            "sparsity profile (default: model with extension .sparsity)")
      .Flag("cache-shm", daemon ? "auto" : "",
            "flash mode: keep the neuron caches in the shared-memory file "
            "NAME of --shm-dir so a restarted engine with the same file and "
            "settings starts warm; auto: NAME = flashd-cache-<16 hex digits "
            "of the file, budget, window and predictor> (private memory when "
            "it cannot be had, or in the other modes); '': private memory. "
            "One process per segment: a second one using it fails. flashd "
            "serve defaults to auto, the other commands to ''")
      .Flag("shm-dir", "",
            "directory for shared memory (the neuron cache segment; serve's "
            "token rings): created mode 0711, writable only by this uid; one "
            "that is not ours alone is never used (a fresh PATH.XXXXXX "
            "instead). Default /dev/shm/flashd-<euid>")
      .Flag("io-profile", "",
            "I/O profile from calibrate-io for the read planner (default: "
            "<flash file>.ioprofile.json when present)");
}

absl::StatusOr<std::shared_ptr<const shm::ShmDir>> OpenShmDir(
    const Args& args) {
  std::string path = args.Get("shm-dir");
  if (path.empty()) path = shm::DefaultShmDirPath();
  absl::StatusOr<std::shared_ptr<const shm::ShmDir>> dir =
      shm::ShmDir::Open(path);
  if (dir.ok() && !(*dir)->note().empty()) {
    std::fprintf(stderr, "[flashd] shared memory: %s\n",
                 (*dir)->note().c_str());
  }
  return dir;
}

absl::StatusOr<Engine> OpenEngine(const Args& args) {
  const std::string model_path = args.Get("model");
  if (model_path.empty()) {
    return absl::InvalidArgumentError("--model is required");
  }
  absl::StatusOr<int64_t> threads = args.GetInt("threads", 1, 256);
  if (!threads.ok()) return threads.status();
  absl::StatusOr<int64_t> ctx = args.GetInt("ctx", 0, 1 << 20);
  if (!ctx.ok()) return ctx.status();
  absl::StatusOr<int64_t> batch = args.GetInt("batch", 1, 4096);
  if (!batch.ok()) return batch.status();
  absl::StatusOr<int64_t> window = args.GetInt("window", 0, 1 << 30);
  if (!window.ok()) return window.status();
  const std::string kv_flag = args.Get("kv-type");
  if (kv_flag != "auto" && kv_flag != "f16" && kv_flag != "f32") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-type '", kv_flag, "' is not one of auto, f16, f32"));
  }
  const bool model_is_flash = EndsWith(model_path, ".flash");
  Engine e;
  if (args.Get("mode") == "auto") {
    e.mode = model_is_flash ? flash::Mode::kFlash : flash::Mode::kResident;
  } else {
    absl::StatusOr<flash::Mode> mode = flash::ParseMode(args.Get("mode"));
    if (!mode.ok()) return mode.status();
    e.mode = *mode;
  }
  e.pool = std::make_unique<ThreadPool>(static_cast<int>(*threads));
  e.model_file_bytes = FileBytes(model_path);
  absl::StatusOr<uint64_t> budget =
      args.Get("dram-budget") == "0"
          ? absl::StatusOr<uint64_t>(0)
          : flash::ParseBudget(args.Get("dram-budget"), e.model_file_bytes);
  if (!budget.ok()) return budget.status();
  e.dram_budget = *budget;
  uint64_t source_identity = 0;

  if (e.mode == flash::Mode::kResident) {
    if (model_is_flash) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--mode resident needs the source model (GGUF or llama2.c), not "
          "the converted ", model_path, "; use --mode flash, layer or naive"));
    }
    LoadOptions options;
    options.tokenizer_path = args.Get("tokenizer");
    options.resident = true;
    absl::StatusOr<LoadedModel> loaded = LoadModel(model_path, options);
    if (!loaded.ok()) return loaded.status();
    e.loaded = std::move(*loaded);
    if (e.dram_budget != 0 && e.dram_budget < e.loaded.model->WeightBytes()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "--dram-budget ", e.dram_budget, " bytes is below the minimum of "
          "mode resident: ", e.loaded.model->WeightBytes(),
          " bytes (every weight); use --mode flash or layer"));
    }
    // Only an explicit setting uses sparsity in this mode (see OpenSparsity).
    if (args.Get("sparsity") != "off" && args.Get("sparsity") != "auto") {
      absl::StatusOr<uint64_t> id = flash::SourceIdentity(model_path);
      if (!id.ok()) return id.status();
      source_identity = *id;
    }
  } else {
    std::string flash_path = args.Get("flash");
    if (flash_path.empty()) {
      flash_path = model_is_flash ? model_path
                                  : ReplaceExtension(model_path, ".flash");
    }
    if (!Exists(flash_path)) {
      return absl::NotFoundError(absl::StrCat(
          "mode ", flash::ModeName(e.mode), " reads a .flash file and ",
          flash_path, " does not exist: run flashd convert ", model_path,
          " --out ", flash_path));
    }
    absl::StatusOr<std::unique_ptr<flash::FlashFile>> ff =
        flash::FlashFile::Open(flash_path);
    if (!ff.ok()) return ff.status();
    e.flash_file = std::move(*ff);
    if (!model_is_flash) {
      absl::Status s = e.flash_file->CheckSource(model_path);
      if (!s.ok()) return s;
    }
    source_identity = e.flash_file->layout().source_identity;
    e.loaded.model = flash::ConfigOnlyModel(e.flash_file->layout());
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
        e.flash_file->MakeTokenizer();
    if (!tok.ok()) return tok.status();
    e.loaded.tokenizer = std::move(*tok);
    std::string io_path = args.Get("io-profile");
    if (io_path.empty() && Exists(flash_path + ".ioprofile.json")) {
      io_path = flash_path + ".ioprofile.json";
    }
    if (!io_path.empty()) {
      absl::StatusOr<std::string> json = ReadAll(io_path);
      if (!json.ok()) return json.status();
      absl::StatusOr<io::IoProfile> p = io::IoProfileFromJson(*json);
      if (!p.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(io_path, ": ", p.status().message()));
      }
      e.io_profile = std::make_unique<io::IoProfile>(std::move(*p));
      e.io_profile_path = io_path;
    }
  }
  const ModelConfig& c = e.loaded.model->config;
  int32_t n_ctx = static_cast<int32_t>(*ctx);
  if (n_ctx == 0) n_ctx = std::min<int32_t>(c.n_ctx_train, 4096);
  const int32_t max_batch = static_cast<int32_t>(*batch);
  flash::SourceOptions so;
  if (e.flash_file != nullptr) {
    so.mode = e.mode;
    so.dram_budget = e.dram_budget;
    so.window = static_cast<int32_t>(*window);
    so.profile = e.io_profile.get();
    if (e.io_profile != nullptr && e.io_profile->best_read_size > 0) {
      so.max_read_bytes = e.io_profile->best_read_size;
      so.queue_depth = e.io_profile->best_queue_depth;
    }
  }
  absl::Status s =
      OpenSparsity(args, model_path, source_identity, max_batch,
                   e.flash_file != nullptr ? &so : nullptr, e);
  if (!s.ok()) return s;
  if (e.flash_file != nullptr) {
    so.predictor_bytes = e.sparsity ? e.sparsity->PredictorBytes() : 0;
    so.cache_segment = args.Get("cache-shm");
    if (so.cache_segment == "auto") {
      so.cache_segment = e.mode == flash::Mode::kFlash
                             ? flash::AutoCacheSegmentName(*e.flash_file, so)
                             : "";
      so.cache_segment_auto = true;
    }
    if (!so.cache_segment.empty()) {
      absl::StatusOr<std::shared_ptr<const shm::ShmDir>> dir = OpenShmDir(args);
      if (!dir.ok()) return dir.status();
      e.shm_dir = *dir;
      so.cache_dir = e.shm_dir;
    }
    absl::StatusOr<std::unique_ptr<flash::FlashSource>> src =
        flash::OpenFlashSource(*e.flash_file, so, e.pool.get(), max_batch);
    if (!src.ok()) return src.status();
    e.source = std::move(*src);
  }
  e.forward = std::make_unique<Forward>(*e.loaded.model, e.pool.get(), n_ctx,
                                        max_batch);
  if (e.source != nullptr) e.forward->set_source(e.source.get());
  if (e.selector != nullptr) e.forward->set_selector(e.selector.get());
  const KvType kv_type = kv_flag == "f16"   ? KvType::kF16
                         : kv_flag == "f32" ? KvType::kF32
                                            : DefaultKvType(*e.loaded.model);
  e.kv = std::make_unique<KvCache>(c, n_ctx, kv_type);
  return e;
}

}  // namespace flashd::cli
