// flashd convert: writes a model (GGUF or llama2.c) in the flash layout and
// summarizes the result.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/flash/flash_file.h"
#include "common/flash/flash_writer.h"
#include "daemon/cli/commands.h"

namespace flashd::cli {
namespace {

using Clock = std::chrono::steady_clock;

// MODEL with its extension replaced by .flash.
std::string DefaultOut(const std::string& model) {
  const size_t slash = model.find_last_of('/');
  const size_t dot = model.find_last_of('.');
  const bool has_ext = dot != std::string::npos &&
                       (slash == std::string::npos || dot > slash + 1);
  return (has_ext ? model.substr(0, dot) : model) + ".flash";
}

std::string DownName(const flash::BundleGeometry& g) {
  const flash::DownFormat& d = g.down;
  if (d.kind == flash::DownFormat::Kind::kTyped) {
    return absl::StrCat(std::string(Traits(d.type).name), " column");
  }
  return absl::StrCat("int8 column, f32 scale", d.has_min ? "+min" : "",
                      " per ", d.group, " neurons");
}

void PrintSummary(const flash::FlashFile& f, double seconds) {
  const flash::FlashLayout& l = f.layout();
  uint64_t bundle_bytes = 0;
  std::map<std::string, int> formats;  // "gate q4_K + up q4_K + down ..."
  for (const flash::LayerLayout& L : l.layers) {
    const flash::BundleGeometry& g = L.geometry;
    bundle_bytes += L.bundles.bytes;
    formats[absl::StrFormat("%zu B = gate %s %zu B + up %s %zu B + down %zu B (%s)",
                            g.bundle_bytes(), std::string(Traits(g.gate_type).name),
                            g.gate_bytes, std::string(Traits(g.up_type).name),
                            g.up_bytes, g.down_bytes, DownName(g))]++;
  }
  std::printf("wrote %s\n", f.path().c_str());
  std::printf("  model:    %s (%s), %d layers, n_embd %d, n_ff %d, vocab %d\n",
              l.name.c_str(), l.type_name.c_str(), l.config.n_layer,
              l.config.n_embd, l.config.n_ff, l.config.n_vocab);
  for (const auto& [text, layers] : formats) {
    std::printf("  bundle:   %s, %d layer%s\n", text.c_str(), layers,
                layers == 1 ? "" : "s");
  }
  std::printf("  bundles:  %.1f MB of %.1f MB (file)\n", bundle_bytes / 1e6,
              f.file_size() / 1e6);
  std::printf("  time:     %.2f s (%.1f MB/s)\n", seconds,
              seconds > 0 ? f.file_size() / 1e6 / seconds : 0.0);
}

}  // namespace

int ConvertCommand(int argc, char** argv) {
  Args args;
  args.Positional("MODEL", "model file: GGUF or llama2.c checkpoint")
      .Flag("model", "", "the model file (instead of MODEL)")
      .Flag("out", "", "output path (default: MODEL with extension .flash)")
      .Flag("tokenizer", "",
            "tokenizer: GGUF vocabulary or llama2.c tokenizer.bin (default: "
            "the model's own, or tokenizer.bin / tok<vocab>.bin beside it)");
  int code = 0;
  if (!ParseOrExit(args, "convert",
                   "Writes a model in the flash layout (.flash): resident "
                   "tensors as stored, each FFN neuron's gate row, up row and "
                   "down column as one contiguous bundle, CRC32C per bundle.",
                   argc, argv, &code)) {
    return code;
  }
  std::string model = args.Get("MODEL");
  if (!args.Get("model").empty()) {
    if (!model.empty() && model != args.Get("model")) {
      return Fail("convert", absl::InvalidArgumentError(absl::StrCat(
                                 "two models given: '", model, "' and --model '",
                                 args.Get("model"), "'")));
    }
    model = args.Get("model");
  }
  if (model.empty()) {
    return Fail("convert", absl::InvalidArgumentError(
                               "no model given: flashd convert MODEL [--out OUT.flash]"));
  }
  flash::ConvertOptions o;
  o.model_path = model;
  o.tokenizer_path = args.Get("tokenizer");
  o.out_path = args.Get("out").empty() ? DefaultOut(model) : args.Get("out");
  if (o.out_path == model) {
    return Fail("convert", absl::InvalidArgumentError(absl::StrCat(
                               "--out ", o.out_path, " is the model file itself")));
  }

  const bool tty = ::isatty(STDERR_FILENO);
  const Clock::time_point start = Clock::now();
  Clock::time_point last = start;
  if (tty) {
    o.progress = [&](uint64_t done, uint64_t total) {
      const Clock::time_point now = Clock::now();
      if (done < total && now - last < std::chrono::milliseconds(100)) return;
      last = now;
      const double s = std::chrono::duration<double>(now - start).count();
      std::fprintf(stderr, "\r[flashd] converting %5.1f%%  %.1f / %.1f MB  %.1f MB/s   ",
                   total ? 100.0 * done / total : 100.0, done / 1e6, total / 1e6,
                   s > 0 ? done / 1e6 / s : 0.0);
    };
  }
  absl::Status s = flash::ConvertToFlash(o);
  if (tty) std::fputc('\n', stderr);
  if (!s.ok()) return Fail("convert", s);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // Re-open what was written: validates it and gives the summary.
  absl::StatusOr<std::unique_ptr<flash::FlashFile>> f = flash::FlashFile::Open(o.out_path);
  if (!f.ok()) return Fail("convert", f.status());
  if (!tty) {
    std::fprintf(stderr, "[flashd] converted %s: %.1f MB in %.2f s\n", model.c_str(),
                 (*f)->file_size() / 1e6, seconds);
  }
  PrintSummary(**f, seconds);
  return 0;
}

}  // namespace flashd::cli
