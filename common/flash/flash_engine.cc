#include "common/flash/flash_engine.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/flash/cache_segment.h"
#include "common/flash/flash_source.h"
#include "common/flash/layer_source.h"
#include "common/flash/source_util.h"

namespace flashd::flash {

absl::StatusOr<Mode> ParseMode(const std::string& text) {
  if (text == "resident") return Mode::kResident;
  if (text == "naive") return Mode::kNaive;
  if (text == "layer") return Mode::kLayer;
  if (text == "flash") return Mode::kFlash;
  return absl::InvalidArgumentError(absl::StrCat(
      "--mode '", text, "' is not one of resident, naive, layer, flash"));
}

const char* ModeName(Mode mode) {
  switch (mode) {
    case Mode::kResident:
      return "resident";
    case Mode::kNaive:
      return "naive";
    case Mode::kLayer:
      return "layer";
    case Mode::kFlash:
      return "flash";
  }
  return "?";
}

absl::StatusOr<uint64_t> ParseBudget(const std::string& text,
                                     uint64_t reference_bytes) {
  const auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dram-budget '", text,
        "' is not a size: use bytes (1073741824), KiB/MiB/GiB (512MiB, "
        "1.5GiB) or a percentage of the model file (50%)"));
  };
  struct Unit {
    const char* suffix;
    double scale;
  };
  const Unit units[] = {{"%", -1},           {"KiB", 1024.0},
                        {"MiB", 1048576.0},  {"GiB", 1073741824.0},
                        {"K", 1024.0},       {"M", 1048576.0},
                        {"G", 1073741824.0}, {"", 1.0}};
  for (const Unit& u : units) {
    const std::string suffix = u.suffix;
    if (text.size() <= suffix.size() ||
        text.compare(text.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    double v = 0;
    if (!absl::SimpleAtod(text.substr(0, text.size() - suffix.size()), &v) ||
        !std::isfinite(v) || v <= 0) {
      return bad();
    }
    const double bytes = u.scale < 0 ? v / 100.0 * reference_bytes : v * u.scale;
    if (bytes < 1 || bytes > 1e18) return bad();
    return static_cast<uint64_t>(bytes);
  }
  return bad();
}

std::string MemoryPlan::Describe() const {
  const auto mib = [](uint64_t b) { return b / 1048576.0; };
  return absl::StrFormat(
      "budget %s, resident %.1f MiB, buffers %.1f MiB, neuron cache %.1f MiB "
      "(%d neurons/layer), predictor %.1f MiB, total %.1f MiB",
      budget == 0 ? std::string("unbounded")
                  : absl::StrFormat("%.1f MiB", mib(budget)),
      mib(resident), mib(buffers), mib(cache), cache_slots, mib(predictor),
      mib(total()));
}

const SourceStats& FlashSource::stats() const {
  const IoWorker::Counters c = worker_->counters();
  stats_.bytes_read = c.bytes_read;
  stats_.read_seconds = c.busy_seconds;
  return stats_;
}

absl::Status FlashSource::StartIo(const SourceOptions& options,
                                  const std::string& path, int max_pending) {
  absl::StatusOr<std::unique_ptr<io::RandomAccessFile>> f =
      OpenForReading(options, path);
  if (!f.ok()) return f.status();
  direct_ = (*f)->required_alignment() > 1;
  worker_ = std::make_unique<IoWorker>(std::move(*f), max_pending);
  return absl::OkStatus();
}

uint64_t MinimumBudget(const FlashFile& file, Mode mode,
                       uint64_t predictor_bytes) {
  switch (mode) {
    case Mode::kNaive:
    case Mode::kLayer:
      return LayerModeMinimum(file, mode) + predictor_bytes;
    case Mode::kFlash:
      return FlashModeMinimum(file, predictor_bytes);
    case Mode::kResident:
      return file.file_size();
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<FlashSource>> OpenFlashSource(
    const FlashFile& file, const SourceOptions& options, ThreadPool* pool,
    int32_t max_batch) {
  switch (options.mode) {
    case Mode::kNaive:
    case Mode::kLayer:
      return OpenLayerSource(file, options, pool, max_batch);
    case Mode::kFlash:
      return OpenFlashModeSource(file, options, pool, max_batch);
    case Mode::kResident:
      break;
  }
  return absl::InvalidArgumentError(
      "mode resident reads the source model, not a .flash file");
}

std::string AutoCacheSegmentName(const FlashFile& file,
                                 const SourceOptions& options) {
  // splitmix64 over the fields, chained.
  uint64_t h = 0x666c617368642d63ull;  // "flashd-c"
  const auto mix = [&h](uint64_t v) {
    uint64_t z = h ^ v;
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    h = z ^ (z >> 31);
  };
  mix(file.layout().identity);
  mix(static_cast<uint64_t>(options.mode));
  mix(options.dram_budget);
  mix(options.predictor_bytes);
  mix(static_cast<uint64_t>(options.window));
  mix(kCacheSegmentVersion);
  mix(static_cast<uint64_t>(::getuid()));
  return absl::StrFormat("%s%016x", kAutoCacheSegmentPrefix, h);
}

std::unique_ptr<Model> ConfigOnlyModel(const FlashLayout& layout) {
  auto m = std::make_unique<Model>();
  m->config = layout.config;
  m->format = "flash";
  m->type_name = layout.type_name;
  m->name = layout.name;
  return m;
}

}  // namespace flashd::flash
