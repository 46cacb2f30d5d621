// flashd calibrate-io: measures the flash device under a file (read size x
// queue depth -> MB/s) and writes the IoProfile JSON the read planner uses.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/io/io_calibration.h"
#include "common/io/uring_file.h"
#include "daemon/cli/commands.h"

namespace flashd::cli {
namespace {

constexpr uint64_t kSmallFileBytes = uint64_t{256} << 20;

std::string SizeName(size_t bytes) {
  if (bytes >= (1 << 20) && bytes % (1 << 20) == 0) {
    return absl::StrCat(bytes >> 20, " MiB");
  }
  if (bytes >= 1024 && bytes % 1024 == 0) return absl::StrCat(bytes >> 10, " KiB");
  return absl::StrCat(bytes, " B");
}

void PrintTable(const io::IoProfile& p) {
  std::printf("\nthroughput, MB/s (10^6 bytes/s); rows: read size, columns: "
              "queue depth\n%10s", "");
  for (int qd : p.queue_depths) std::printf(" %8s", absl::StrCat("qd ", qd).c_str());
  std::printf("\n");
  for (size_t r = 0; r < p.read_sizes.size(); ++r) {
    std::printf("%10s", SizeName(p.read_sizes[r]).c_str());
    for (size_t c = 0; c < p.queue_depths.size(); ++c) {
      std::printf(" %8.1f", p.cell(r, c).bytes_per_second / 1e6);
    }
    std::printf("\n");
  }
  std::printf("\nmean latency of one batch of <qd> reads, microseconds\n%10s", "");
  for (int qd : p.queue_depths) std::printf(" %8s", absl::StrCat("qd ", qd).c_str());
  std::printf("\n");
  for (size_t r = 0; r < p.read_sizes.size(); ++r) {
    std::printf("%10s", SizeName(p.read_sizes[r]).c_str());
    for (size_t c = 0; c < p.queue_depths.size(); ++c) {
      std::printf(" %8.0f", p.cell(r, c).latency_mean_us);
    }
    std::printf("\n");
  }
  std::printf("\nbest: %.1f MB/s with %s reads at queue depth %d\n",
              p.best_bytes_per_second / 1e6, SizeName(p.best_read_size).c_str(),
              p.best_queue_depth);
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (out) out << text;
  if (out) out.flush();
  if (!out) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot write ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

int CalibrateIoCommand(int argc, char** argv) {
  Args args;
  args.Flag("file", "",
            "file on the device to measure (required; a model file of a few "
            "hundred MiB or more, so device caches do not fake the numbers)")
      .Flag("out", "", "where to write the JSON profile (default: FILE.ioprofile.json)")
      .Flag("seconds-per-cell", "0.25", "time budget of each table cell")
      .Flag("max-queue-depth", "64",
            "largest queue depth measured (of 1, 4, 16, 32, 64)");
  int code = 0;
  if (!ParseOrExit(args, "calibrate-io",
                   "Measures read throughput and latency of the device under "
                   "--file with O_DIRECT io_uring reads (read sizes 4 KiB..4 "
                   "MiB x queue depths 1..64), prints the table and writes it "
                   "as JSON for the read planner.",
                   argc, argv, &code)) {
    return code;
  }
  const std::string path = args.Get("file");
  if (path.empty()) {
    return Fail("calibrate-io",
                absl::InvalidArgumentError(
                    "--file is required: pass a file on the device to "
                    "measure, e.g. a model file"));
  }
  absl::StatusOr<double> seconds = args.GetDouble("seconds-per-cell");
  if (!seconds.ok()) return Fail("calibrate-io", seconds.status());
  if (!(*seconds > 0) || *seconds > 60) {
    return Fail("calibrate-io", absl::InvalidArgumentError(absl::StrCat(
                                    "--seconds-per-cell ", *seconds,
                                    " is not in (0, 60]")));
  }
  absl::StatusOr<int64_t> max_qd = args.GetInt("max-queue-depth", 1, 4096);
  if (!max_qd.ok()) return Fail("calibrate-io", max_qd.status());
  const std::string out =
      args.Has("out") && !args.Get("out").empty() ? args.Get("out")
                                                   : path + ".ioprofile.json";

  io::CalibrationOptions options;
  options.seconds_per_cell = *seconds;
  std::vector<int> depths;
  for (int qd : options.queue_depths) {
    if (qd <= *max_qd) depths.push_back(qd);
  }
  if (depths.empty()) depths.push_back(static_cast<int>(*max_qd));
  options.queue_depths = depths;

  io::UringFileOptions file_options;
  file_options.queue_depth = depths.back();
  absl::StatusOr<std::unique_ptr<io::UringFile>> file =
      io::UringFile::Open(path, file_options);
  if (!file.ok()) return Fail("calibrate-io", file.status());
  const io::UringFile& f = **file;

  std::printf("file: %s (%.1f MiB)\n", path.c_str(), f.size() / 1048576.0);
  if (f.is_direct()) {
    std::printf("reads: O_DIRECT via io_uring (page cache bypassed), "
                "alignment %zu\n", f.required_alignment());
  } else {
    std::printf("reads: BUFFERED via io_uring: %s.\n  Results include the "
                "page cache; drop it first (sync; echo 3 > "
                "/proc/sys/vm/drop_caches) or measure a file on another "
                "filesystem.\n", f.direct_fallback_reason().c_str());
  }
  if (f.size() < kSmallFileBytes) {
    std::printf("warning: the file is smaller than 256 MiB, so random reads "
                "revisit the same blocks and the results reflect device "
                "caches more than flash; measure a model file instead.\n");
  }
  size_t rows = 0;
  for (size_t rs : options.read_sizes) rows += rs <= f.size();
  const size_t cells = rows * depths.size();
  std::printf("measuring %zu cells, up to %.2f s each...\n", cells, *seconds);
  std::fflush(stdout);
  size_t done = 0;
  const bool progress = ::isatty(STDERR_FILENO);
  if (progress) {
    options.on_cell = [&](const io::IoCell& c) {
      std::fprintf(stderr, "\r  %zu/%zu: %s x qd %d: %.1f MB/s     ", ++done,
                   cells, SizeName(c.read_size).c_str(), c.queue_depth,
                   c.bytes_per_second / 1e6);
    };
  }
  absl::StatusOr<io::IoProfile> profile = io::CalibrateIo(**file, options);
  if (progress) std::fprintf(stderr, "\n");
  if (!profile.ok()) return Fail("calibrate-io", profile.status());
  PrintTable(*profile);
  absl::Status s = WriteFile(out, io::IoProfileToJson(*profile));
  if (!s.ok()) return Fail("calibrate-io", s);
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace flashd::cli
