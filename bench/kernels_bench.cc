// Microbenchmark of the GEMM kernels on TinyLlama-1.1B shapes.
//
// Measures the machine's streaming-read bandwidth (the decode ceiling), then
// times flashd::kernels::Gemm through the dispatcher for each weight type,
// with rows split over the engine's ThreadPool as the engine does:
//   decode  (nt = 1):  GB/s of weights streamed, and % of read bandwidth;
//   prefill (nt = 64): GFLOP/s and per-token cost relative to decode.
// Weights are cycled through copies totalling more than the L3 cache, so
// every call streams from DRAM like a real forward pass. The machine may be
// shared: each figure is the median of several repetitions.
//
// Usage: kernels_bench [--check] [--threads N] [--reps N] [--types q8_0,...]
//                      [--isa scalar|avx2|avx512] [--prefill N] [--cpu] [--hot]
//   --cpu    time with process CPU time / threads instead of wall time.
//   --hot    reuse one weight copy (cache-resident if it fits): compute speed.
//   --check  only verifies the active ISA against GemmReference and the
//            scalar table (quick correctness smoke test), exit 1 on mismatch.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/fp16.h"
#include "common/base/thread_pool.h"
#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels.h"

namespace flashd {
namespace {

using kernels::Gemm;
using kernels::Isa;

using Clock = std::chrono::steady_clock;

struct Options {
  bool check = false;
  int threads = 2;
  int reps = 7;
  int prefill_tokens = 64;
  std::vector<GgmlType> types = {
      GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ6_K,
      GgmlType::kF16,  GgmlType::kBF16, GgmlType::kF32};
};

// Buffers aligned to a cache line, zero-filled.
struct Buffer {
  explicit Buffer(size_t bytes)
      : size(bytes),
        data(static_cast<uint8_t*>(
            std::aligned_alloc(64, (bytes + 63) / 64 * 64))) {
    std::memset(data, 0, size);
  }
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  size_t size;
  uint8_t* data;
};

// With --cpu, times are process CPU seconds divided by the thread count:
// on a shared machine this excludes time the threads were descheduled
// (but counts workers' spinning between calls).
bool g_cpu_clock = false;
// With --hot, one weight copy is reused (cache-resident when it fits): the
// kernels' compute speed without the DRAM stream.
bool g_hot = false;
int g_threads = 1;

double Now() {
  if (g_cpu_clock) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (static_cast<double>(ts.tv_sec) +
            1e-9 * static_cast<double>(ts.tv_nsec)) /
           g_threads;
  }
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<float> RandomFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Quantizes `rows` rows of n random floats into `type`.
void FillRows(GgmlType type, int64_t n, int64_t rows, uint8_t* dst,
              uint32_t seed) {
  const std::vector<float> x = RandomFloats(static_cast<size_t>(n), seed);
  std::mt19937 rng(seed ^ 0x9e3779b9u);
  std::uniform_real_distribution<float> scale(0.25f, 2.0f);
  std::vector<float> row(static_cast<size_t>(n));
  const size_t stride = RowSize(type, n);
  for (int64_t r = 0; r < rows; ++r) {
    // Same base vector, rotated and rescaled: cheap and varied enough.
    const float s = scale(rng);
    const int64_t off = static_cast<int64_t>(rng() % static_cast<uint32_t>(n));
    for (int64_t i = 0; i < n; ++i) row[i] = s * x[(i + off) % n];
    kernels::FromFloat(type, row.data(), dst + r * stride, n);
  }
}

// ---------------------------------------------------------------------------
// Correctness smoke test.

int CheckGemm(GgmlType type) {
  const int bs = Traits(type).block_size;
  const GgmlType at = kernels::VecDotType(type);
  int failures = 0;
  double worst = 0;
  // Lengths with every remainder of the kernels' 4-block / 16-element steps.
  for (int64_t n :
       {bs == 1 ? int64_t{37} : int64_t{bs} * 3,
        bs == 1 ? int64_t{510} : int64_t{bs} * 5,
        bs == 1 ? int64_t{45} : int64_t{bs} * 7,
        bs == 1 ? int64_t{2048} : int64_t{bs} * 10, int64_t{2048}}) {
    for (int64_t nr : {1, 3, 8, 13}) {
      for (int64_t nt : {1, 2, 3, 5, 9}) {
        const size_t ws = RowSize(type, n);
        const size_t as = RowSize(at, n);
        // Exact sizes, so sanitizers see any read past the last block.
        std::vector<uint8_t> w(ws * nr), a(as * nt);
        FillRows(type, n, nr, w.data(), static_cast<uint32_t>(n * 131 + nr));
        FillRows(at, n, nt, a.data(), static_cast<uint32_t>(n * 7 + nt));
        const size_t os = static_cast<size_t>(nr) + 3;
        std::vector<float> got(os * nt, -1.0f), want(os * nt, -1.0f);
        Gemm(type, n, w.data(), ws, nr, a.data(), as, nt, got.data(), os);
        kernels::GemmReference(type, n, w.data(), ws, nr, a.data(), as, nt,
                               want.data(), os);
        float max_ref = 0;
        for (float v : want) max_ref = std::max(max_ref, std::fabs(v));
        for (int64_t t = 0; t < nt; ++t) {
          for (int64_t r = 0; r < static_cast<int64_t>(os); ++r) {
            const float g = got[t * os + r], e = want[t * os + r];
            const double err = std::fabs(g - e) /
                               (1e-6 * max_ref + 1e-5 * std::fabs(e) + 1e-30);
            worst = std::max(worst, err);
            if (r >= nr ? g != -1.0f : !(err <= 10.0)) {
              if (failures++ < 5) {
                std::printf(
                    "  MISMATCH %s n=%ld nr=%ld nt=%ld r=%ld t=%ld: got %.7g "
                    "want %.7g\n",
                    Traits(type).name.data(), static_cast<long>(n),
                    static_cast<long>(nr), static_cast<long>(nt),
                    static_cast<long>(r), static_cast<long>(t), g, e);
              }
            }
          }
        }
      }
    }
  }
  std::printf("  gemm %-5s %s (worst error %.2f of tolerance units)\n",
              std::string(Traits(type).name).c_str(), failures ? "FAIL" : "ok",
              worst);
  return failures;
}

// Compares the active table's helper kernels with the scalar table's.
int CheckHelpers(Isa isa) {
  int failures = 0;
  const int64_t n = 2048 + 256 + 37;
  const std::vector<float> x = RandomFloats(n, 5);
  auto run_both = [&](auto fn) {
    kernels::SetIsaForTesting(Isa::kScalar);
    auto ref = fn();
    kernels::SetIsaForTesting(isa);
    auto got = fn();
    return std::make_pair(ref, got);
  };
  // Activation quantizers: bytes may differ only by one (rounding ties and
  // ggml's SIMD-vs-reference scale for Q8_0).
  for (GgmlType t :
       {GgmlType::kQ8_0, GgmlType::kQ8_K, GgmlType::kF16, GgmlType::kBF16}) {
    const int64_t m = n / Traits(t).block_size * Traits(t).block_size;
    auto [ref, got] = run_both([&] {
      std::vector<uint8_t> y(RowSize(t, m));
      kernels::FromFloat(t, x.data(), y.data(), m);
      std::vector<float> f(m);
      kernels::ToFloat(t, y.data(), f.data(), m);
      return f;
    });
    double worst = 0;
    for (int64_t i = 0; i < m; ++i) {
      worst = std::max<double>(
          worst, std::fabs(ref[i] - got[i]) / (std::fabs(x[i]) * 0.02 + 1e-3));
    }
    const bool ok = worst <= 1.0;
    failures += !ok;
    std::printf("  from_float %-5s %s (worst %.3f)\n",
                std::string(Traits(t).name).c_str(), ok ? "ok" : "FAIL", worst);
  }
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_K,
                     GgmlType::kQ6_K, GgmlType::kF16, GgmlType::kF32}) {
    const int64_t m = t == GgmlType::kF16 || t == GgmlType::kF32 ? n : 2048;
    std::vector<uint8_t> row(RowSize(t, m));
    kernels::FromFloat(t, x.data(), row.data(), m);
    auto [ref, got] = run_both([&] {
      std::vector<float> y(x.begin(), x.begin() + m);
      kernels::AxpyRow(t, -0.75f, row.data(), y.data(), m);
      return y;
    });
    double worst = 0;
    for (int64_t i = 0; i < m; ++i) {
      worst = std::max<double>(
          worst, std::fabs(ref[i] - got[i]) / (1e-5 * (std::fabs(ref[i]) + 1)));
    }
    failures += worst > 1.0;
    std::printf("  axpy_row %-5s %s (worst %.3f)\n",
                std::string(Traits(t).name).c_str(),
                worst > 1.0 ? "FAIL" : "ok", worst);
  }
  {
    std::vector<uint16_t> k(n);
    kernels::F32ToF16(x.data(), k.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      if (k[i] != FloatToHalf(x[i])) {
        ++failures;
        std::printf("  f32_to_f16 FAIL at %ld\n", static_cast<long>(i));
        break;
      }
    }
    auto [ref, got] = run_both([&] {
      std::vector<float> r;
      for (int64_t len :
           {int64_t{1}, int64_t{15}, int64_t{64}, int64_t{100}, n}) {
        r.push_back(kernels::DotF16F32(k.data(), x.data(), len));
        std::vector<float> y(x.begin(), x.begin() + len);
        kernels::AxpyF16(0.3f, k.data(), y.data(), len);
        for (float v : y) r.push_back(v);
      }
      return r;
    });
    double worst = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      worst = std::max<double>(
          worst, std::fabs(ref[i] - got[i]) / (1e-4 * (std::fabs(ref[i]) + 1)));
    }
    failures += worst > 1.0;
    std::printf("  dot_f16_f32/axpy_f16 %s (worst %.3f)\n",
                worst > 1.0 ? "FAIL" : "ok", worst);
  }
  return failures;
}

// ---------------------------------------------------------------------------
// Timing.

// Per-call seconds over the repetitions; with a paired read-bandwidth
// measurement, also the median ratio of the two.
struct Timing {
  double median = 0;
  double best = 0;
  double read_gbs = 0;    // median streaming read GB/s of the paired passes
  double read_ratio = 0;  // median of (weights GB/s / paired read GB/s)
};

// Streaming read of a 256 MiB buffer with the pool's threads: one load per
// cache line, software prefetch 12 KiB ahead (as the kernels do; it beats
// the hardware prefetcher alone on this machine). The decode ceiling.
class StreamReader {
 public:
  StreamReader() : buf_(size_t{256} << 20) {
    std::memset(buf_.data, 1, buf_.size);
  }

  // GB/s of one pass.
  double Pass(ThreadPool& pool) {
    const double t0 = Now();
    pool.ParallelFor(
        static_cast<int64_t>(buf_.size / 64), 64, [&](int64_t b, int64_t e) {
          const auto* p = reinterpret_cast<const uint64_t*>(buf_.data);
          uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          for (int64_t i = b * 8; i < e * 8; i += 32) {
            __builtin_prefetch(p + i + 12 * 128);
            __builtin_prefetch(p + i + 12 * 128 + 8);
            __builtin_prefetch(p + i + 12 * 128 + 16);
            __builtin_prefetch(p + i + 12 * 128 + 24);
            s0 += p[i];
            s1 += p[i + 8];
            s2 += p[i + 16];
            s3 += p[i + 24];
          }
          sink_ += s0 + s1 + s2 + s3;
        });
    return static_cast<double>(buf_.size) / (Now() - t0) / 1e9;
  }

 private:
  Buffer buf_;
  std::atomic<uint64_t> sink_{0};
};

struct Shape {
  const char* name;
  int64_t rows;  // output features
  int64_t n;     // input features
};

constexpr Shape kShapes[] = {
    {"2048x2048 (attn)", 2048, 2048},
    {"5632x2048 (up)", 5632, 2048},
    {"2048x5632 (down)", 2048, 5632},
};

// Seconds of one Gemm(rows x n, nt tokens) with rows split over the pool,
// cycling through weight copies that together exceed the last-level cache.
// With `reader`, every repetition is preceded by a read-bandwidth pass, so
// the ratio compares measurements taken moments apart.
Timing TimeGemm(ThreadPool& pool, GgmlType type, const Shape& s, int64_t nt,
                int reps, StreamReader* reader) {
  const size_t ws = RowSize(type, s.n);
  const size_t mat = ws * s.rows;
  const GgmlType at = kernels::VecDotType(type);
  const size_t as = RowSize(at, s.n);
  const size_t copies =
      g_hot ? 1 : std::max<size_t>(2, (size_t{192} << 20) / mat + 1);
  Buffer w(mat * copies), a(as * nt);
  FillRows(type, s.n, s.rows, w.data, 1);
  for (size_t c = 1; c < copies; ++c) {
    std::memcpy(w.data + c * mat, w.data, mat);
  }
  FillRows(at, s.n, nt, a.data, 2);
  std::vector<float> out(static_cast<size_t>(s.rows * nt));
  // Calls per repetition: enough to stream ~256 MB (or 8 calls).
  const int calls = static_cast<int>(
      std::max<size_t>(8, (size_t{256} << 20) / mat / static_cast<size_t>(nt)));
  size_t next = 0;
  auto one = [&] {
    const uint8_t* wc = w.data + (next++ % copies) * mat;
    pool.ParallelFor(s.rows, 16, [&](int64_t r0, int64_t r1) {
      Gemm(type, s.n, wc + r0 * ws, ws, r1 - r0, a.data, as, nt,
           out.data() + r0, static_cast<size_t>(s.rows));
    });
  };
  for (int i = 0; i < 2; ++i) one();  // warm up
  std::vector<double> per_call, read, ratio;
  for (int rep = 0; rep < reps; ++rep) {
    const double gbs = reader != nullptr ? reader->Pass(pool) : 0;
    const double t0 = Now();
    for (int i = 0; i < calls; ++i) one();
    per_call.push_back((Now() - t0) / calls);
    if (reader != nullptr) {
      read.push_back(gbs);
      ratio.push_back(static_cast<double>(mat) / per_call.back() / 1e9 / gbs);
    }
  }
  Timing t;
  t.median = Median(per_call);
  t.best = *std::min_element(per_call.begin(), per_call.end());
  if (reader != nullptr) {
    t.read_gbs = Median(read);
    t.read_ratio = Median(ratio);
  }
  return t;
}

int Run(const Options& opt) {
  const Isa isa = kernels::ActiveIsa();
  std::printf("ISA %s (detected %s), %d threads\n",
              std::string(kernels::IsaName(isa)).c_str(),
              std::string(kernels::IsaName(kernels::DetectIsa())).c_str(),
              opt.threads);
  if (opt.check) {
    int failures = 0;
    for (GgmlType t : opt.types) failures += CheckGemm(t);
    failures += CheckHelpers(isa);
    std::printf("%s\n", failures ? "CHECK FAILED" : "all checks passed");
    return failures ? 1 : 0;
  }
  ThreadPool pool(opt.threads);
  g_threads = opt.threads;
  StreamReader reader;
  std::printf(
      "decode (nt=1): weights GB/s, median and best of %d; read = streaming "
      "read GB/s measured\n  just before each repetition; %%read = median "
      "of the paired ratios.\nprefill (nt=%d): us per token, GFLOP/s median "
      "and best; dec/tok = decode time / prefill time per token.\n\n",
      opt.reps, opt.prefill_tokens);
  std::printf("%-5s %-16s | %7s %6s %6s %6s %5s | %8s %6s %6s %7s\n", "type",
              "shape", "dec us", "GB/s", "best", "read", "%read", "pf us/tk",
              "GF/s", "best", "dec/tok");
  for (GgmlType type : opt.types) {
    double sum_median = 0, sum_best = 0, total_bytes = 0, sum_ratio = 0;
    for (const Shape& s : kShapes) {
      const double bytes = static_cast<double>(RowSize(type, s.n)) * s.rows;
      const Timing td = TimeGemm(pool, type, s, 1, opt.reps, &reader);
      const Timing tp =
          TimeGemm(pool, type, s, opt.prefill_tokens, opt.reps, nullptr);
      const double flops = 2.0 * s.rows * s.n * opt.prefill_tokens;
      sum_median += td.median;
      sum_best += td.best;
      sum_ratio += td.read_ratio * td.median;
      total_bytes += bytes;
      std::printf(
          "%-5s %-16s | %7.1f %6.1f %6.1f %6.1f %4.0f%% | %8.2f %6.1f %6.1f "
          "%6.1fx\n",
          std::string(Traits(type).name).c_str(), s.name, td.median * 1e6,
          bytes / td.median / 1e9, bytes / td.best / 1e9, td.read_gbs,
          100 * td.read_ratio, tp.median * 1e6 / opt.prefill_tokens,
          flops / tp.median / 1e9, flops / tp.best / 1e9,
          td.median / (tp.median / opt.prefill_tokens));
    }
    std::printf("%-5s %-16s | %7.1f %6.1f %6.1f %6s %4.0f%%\n",
                std::string(Traits(type).name).c_str(), "all three",
                sum_median * 1e6, total_bytes / sum_median / 1e9,
                total_bytes / sum_best / 1e9, "", 100 * sum_ratio / sum_median);
  }
  return 0;
}

std::vector<GgmlType> ParseTypes(std::string_view list) {
  std::vector<GgmlType> types;
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string_view name = list.substr(0, comma);
    bool found = false;
    for (uint32_t id = 0; id < 31; ++id) {
      if (GetTypeTraits(id) && TypeName(id) == name) {
        types.push_back(static_cast<GgmlType>(id));
        found = true;
      }
    }
    if (!found) {
      std::fprintf(stderr, "unknown type %.*s\n", static_cast<int>(name.size()),
                   name.data());
      std::exit(2);
    }
    list = comma == std::string_view::npos ? "" : list.substr(comma + 1);
  }
  return types;
}

}  // namespace
}  // namespace flashd

int main(int argc, char** argv) {
  flashd::Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--check") {
      opt.check = true;
    } else if (arg == "--hot") {
      flashd::g_hot = true;
    } else if (arg == "--cpu") {
      flashd::g_cpu_clock = true;
    } else if (arg == "--threads" && has_value) {
      opt.threads = std::atoi(argv[++i]);
    } else if (arg == "--reps" && has_value) {
      opt.reps = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--prefill" && has_value) {
      opt.prefill_tokens = std::max(2, std::atoi(argv[++i]));
    } else if (arg == "--types" && has_value) {
      opt.types = flashd::ParseTypes(argv[++i]);
    } else if (arg == "--isa" && has_value) {
      const std::string_view v = argv[++i];
      flashd::kernels::SetIsaForTesting(
          v == "scalar" ? flashd::kernels::Isa::kScalar
          : v == "avx2" ? flashd::kernels::Isa::kAvx2
                        : flashd::kernels::Isa::kAvx512);
    } else {
      std::fprintf(stderr,
                   "usage: kernels_bench [--check] [--threads N] [--reps N] "
                   "[--prefill N] [--types q8_0,q4_0,...] [--isa "
                   "scalar|avx2|avx512]\n");
      return 2;
    }
  }
  return flashd::Run(opt);
}
