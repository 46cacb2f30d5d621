// The streaming modes against the resident engine: naive, layer and flash
// (at several budgets) produce the resident engine's tokens and logits on
// the shared models when sparsity is off; budgets below a mode's minimum
// are refused; corrupt bytes and failing reads surface as errors, never as
// output.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iterator>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/engine/forward.h"
#include "common/engine/generator.h"
#include "common/flash/cache_segment.h"
#include "common/flash/flash_engine.h"
#include "common/flash/flash_file.h"
#include "common/flash/flash_writer.h"
#include "common/io/fault_injection_file.h"
#include "common/io/posix_file.h"
#include "common/model/model_loader.h"
#include "common/sparsity/calibration.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/shm_test_dir.h"
#include "tests/test_data.h"

namespace flashd::flash {
namespace {

using ::testing::HasSubstr;
using flashd::testing::ReadFileBytes;
using flashd::testing::ReadIds;
using flashd::testing::SharedPath;

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("flashd_engine_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

// Converts once per model path for the whole test binary.
std::string Converted(const std::string& model, const std::string& tokenizer) {
  static std::map<std::string, std::string>* done =
      new std::map<std::string, std::string>();
  auto it = done->find(model);
  if (it != done->end()) return it->second;
  const std::string out =
      TempPath(std::filesystem::path(model).stem().string() + ".flash");
  ConvertOptions o;
  o.model_path = model;
  o.tokenizer_path = tokenizer;
  o.out_path = out;
  absl::Status s = ConvertToFlash(o);
  EXPECT_TRUE(s.ok()) << s;
  (*done)[model] = out;
  return out;
}

// Opens buffered files that apply `plan` (null: no faults) at the pread
// layer, where short reads are completed as the OS contract requires.
auto BufferedOpener(io::FaultPlan* plan) {
  return [plan](const std::string& path)
             -> absl::StatusOr<std::unique_ptr<io::RandomAccessFile>> {
    io::PosixFile::Options o;
    if (plan != nullptr) o.pread = io::FaultyPread(plan);
    absl::StatusOr<std::unique_ptr<io::PosixFile>> f =
        io::PosixFile::Open(path, o);
    if (!f.ok()) return f.status();
    return std::unique_ptr<io::RandomAccessFile>(std::move(*f));
  };
}

// A forward pass over a flash source.
struct Streamed {
  std::unique_ptr<FlashFile> file;
  std::unique_ptr<Model> config_model;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<FlashSource> source;
  std::unique_ptr<Forward> forward;
};

absl::StatusOr<Streamed> OpenStreamed(const std::string& flash_path,
                                      SourceOptions options, int32_t n_ctx,
                                      int32_t batch) {
  Streamed s;
  absl::StatusOr<std::unique_ptr<FlashFile>> f = FlashFile::Open(flash_path);
  if (!f.ok()) return f.status();
  s.file = std::move(*f);
  s.config_model = ConfigOnlyModel(s.file->layout());
  s.pool = std::make_unique<ThreadPool>(2);
  absl::StatusOr<std::unique_ptr<FlashSource>> src =
      OpenFlashSource(*s.file, options, s.pool.get(), batch);
  if (!src.ok()) return src.status();
  s.source = std::move(*src);
  s.forward =
      std::make_unique<Forward>(*s.config_model, s.pool.get(), n_ctx, batch);
  s.forward->set_source(s.source.get());
  return s;
}

struct ModeCase {
  Mode mode;
  double budget_fraction;  // of the flash file; 0: unbounded
  const char* name;
};

const ModeCase kModes[] = {
    {Mode::kNaive, 0, "naive"},
    {Mode::kLayer, 0, "layer"},
    {Mode::kFlash, 0, "flash_all"},
    {Mode::kFlash, 0.5, "flash_half"},
    {Mode::kFlash, -1, "flash_min"},  // the minimum: empty neuron caches
};

SourceOptions OptionsFor(const ModeCase& m, const FlashFile& file,
                         io::FaultPlan* plan = nullptr) {
  SourceOptions o;
  o.mode = m.mode;
  o.open_file = BufferedOpener(plan);
  o.max_read_bytes = 64 << 10;
  if (m.budget_fraction > 0) {
    o.dram_budget = std::max<uint64_t>(
        MinimumBudget(file, m.mode, 0),
        static_cast<uint64_t>(m.budget_fraction * file.file_size()));
  } else if (m.budget_fraction < 0) {
    o.dram_budget = MinimumBudget(file, m.mode, 0);
  }
  return o;
}

class StoriesModes : public ::testing::TestWithParam<ModeCase> {};

TEST_P(StoriesModes, GreedyMatchesGolden) {
  const std::string model = SharedPath("models/stories260K.bin");
  const std::string tok = SharedPath("models/tok512.bin");
  const std::string golden = SharedPath("golden/stories260K_greedy_dog.ids");
  FLASHD_REQUIRE_SHARED(model);
  FLASHD_REQUIRE_SHARED(golden);
  const std::string flash = Converted(model, tok);
  absl::StatusOr<std::unique_ptr<FlashFile>> probe = FlashFile::Open(flash);
  ASSERT_TRUE(probe.ok()) << probe.status();
  absl::StatusOr<Streamed> s =
      OpenStreamed(flash, OptionsFor(GetParam(), **probe), 256, 16);
  ASSERT_TRUE(s.ok()) << s.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = s->file->MakeTokenizer();
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  KvCache kv(s->config_model->config, 256, KvType::kF32);
  std::vector<int32_t> prompt =
      (*tokenizer)->Encode("Once upon a time, there was a little dog", true);
  GenerateOptions go;
  go.sampling.temperature = 0;
  go.stop_at_bos = true;
  go.max_tokens = 256 - static_cast<int32_t>(prompt.size() - 1);
  absl::StatusOr<GenerateResult> r =
      Generate(*s->forward, kv, **tokenizer, prompt, go,
               [](int32_t, bool) { return true; });
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<int32_t> got(prompt.begin() + 1, prompt.end());
  got.insert(got.end(), r->tokens.begin(), r->tokens.end());
  EXPECT_EQ(got, ReadIds(golden));
  const SourceStats& st = s->source->stats();
  EXPECT_GT(st.bytes_read, 0u);
  if (GetParam().mode == Mode::kFlash && GetParam().budget_fraction == 0) {
    // Everything fits: after the first token every neuron is a hit.
    EXPECT_GT(st.neurons_hit, st.neurons_needed / 2);
  }
}

INSTANTIATE_TEST_SUITE_P(All, StoriesModes, ::testing::ValuesIn(kModes),
                         [](const auto& info) {
                           return std::string(info.param.name);
                         });

struct TlCase {
  const char* type;
  double min_cosine;  // against llama.cpp, as the resident engine's test
  ModeCase mode;
};

class TlSmallModes : public ::testing::TestWithParam<TlCase> {};

// Logits of every position match llama.cpp's as closely as the resident
// engine's must (tests/golden_test.cc), and stay within float noise of the
// resident engine: the flash layout stores exactly the source's weights.
// (The bundle path multiplies the down column by the unquantized
// activation, where the resident engine quantizes activations to the vec
// dot type, so the two differ by that rounding, not by weights.)
TEST_P(TlSmallModes, LogitsMatchLlamaCppAndResident) {
  const std::string type = GetParam().type;
  const std::string model = SharedPath("models/tl-small-" + type + ".gguf");
  const std::string ref_path =
      SharedPath("golden/tl-small-" + type + ".p1.logits.f32");
  FLASHD_REQUIRE_SHARED(model);
  FLASHD_REQUIRE_SHARED(ref_path);
  absl::StatusOr<LoadedModel> lm = LoadModel(model);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const std::vector<int32_t> ids =
      lm->tokenizer->Encode(ReadFileBytes(SharedPath("golden/p1.txt")), true);
  const int32_t n_vocab = lm->model->config.n_vocab;
  const std::string raw = ReadFileBytes(ref_path);
  ASSERT_EQ(raw.size(), ids.size() * n_vocab * sizeof(float));
  const float* llama = reinterpret_cast<const float*>(raw.data());
  std::vector<float> resident;
  {
    ThreadPool pool(2);
    Forward forward(*lm->model, &pool, 128, 16);
    KvCache kv(lm->model->config, 128);
    ASSERT_TRUE(EvalPrompt(forward, kv, ids, true, [&](int32_t, const float* row) {
                  resident.insert(resident.end(), row, row + n_vocab);
                }).ok());
  }
  const std::string flash = Converted(model, "");
  absl::StatusOr<std::unique_ptr<FlashFile>> probe = FlashFile::Open(flash);
  ASSERT_TRUE(probe.ok()) << probe.status();
  absl::StatusOr<Streamed> s =
      OpenStreamed(flash, OptionsFor(GetParam().mode, **probe), 128, 16);
  ASSERT_TRUE(s.ok()) << s.status();
  KvCache kv(s->config_model->config, 128);
  double worst_llama = 1.0, worst_resident = 1.0;
  int argmax_llama = 0, argmax_resident = 0;
  auto compare = [&](const float* row, const float* ref, double* worst,
                     int* argmax_equal) {
    double dot = 0, na = 0, nb = 0;
    int32_t am = 0, bm = 0;
    for (int32_t i = 0; i < n_vocab; ++i) {
      dot += static_cast<double>(row[i]) * ref[i];
      na += static_cast<double>(row[i]) * row[i];
      nb += static_cast<double>(ref[i]) * ref[i];
      if (row[i] > row[am]) am = i;
      if (ref[i] > ref[bm]) bm = i;
    }
    *worst = std::min(*worst, dot / std::sqrt(na * nb));
    *argmax_equal += am == bm;
  };
  absl::Status st = EvalPrompt(
      *s->forward, kv, ids, true, [&](int32_t pos, const float* row) {
        const size_t at = static_cast<size_t>(pos) * n_vocab;
        compare(row, llama + at, &worst_llama, &argmax_llama);
        compare(row, resident.data() + at, &worst_resident, &argmax_resident);
      });
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_GE(worst_llama, GetParam().min_cosine);
  EXPECT_GE(argmax_llama, 0.95 * ids.size());
  EXPECT_GE(worst_resident, 0.9998);
  EXPECT_GE(argmax_resident, 0.95 * ids.size());
  std::printf("[ %s %s ] worst cosine vs llama.cpp %.7f (argmax %d/%zu), vs "
              "resident %.7f (argmax %d/%zu)\n",
              type.c_str(), GetParam().mode.name, worst_llama, argmax_llama,
              ids.size(), worst_resident, argmax_resident, ids.size());
}

std::vector<TlCase> TlCases() {
  std::vector<TlCase> out;
  const std::pair<const char*, double> types[] = {
      {"f16", 0.99995}, {"Q8_0", 0.9997}, {"Q4_0", 0.9997}, {"Q4_K_M", 0.9997}};
  for (const auto& [t, cosine] : types) {
    for (const ModeCase& m : kModes) out.push_back({t, cosine, m});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, TlSmallModes, ::testing::ValuesIn(TlCases()),
                         [](const auto& info) {
                           return std::string(info.param.type) + "_" +
                                  info.param.mode.name;
                         });

class Faults : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = SharedPath("models/tl-small-Q8_0.gguf");
    if (!flashd::testing::Exists(model_)) GTEST_SKIP() << "no " << model_;
    flash_ = Converted(model_, "");
    absl::StatusOr<std::unique_ptr<FlashFile>> f = FlashFile::Open(flash_);
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = std::move(*f);
  }
  // Runs 4 tokens; returns the first error.
  absl::Status Run(Mode mode, io::FaultPlan* plan, uint64_t budget = 0) {
    SourceOptions o;
    o.mode = mode;
    o.open_file = BufferedOpener(plan);
    o.dram_budget = budget;
    absl::StatusOr<Streamed> s = OpenStreamed(flash_, o, 64, 4);
    if (!s.ok()) return s.status();
    KvCache kv(s->config_model->config, 64);
    const std::vector<int32_t> ids = {1, 450, 4996, 17354};
    return EvalPrompt(*s->forward, kv, ids, false, [](int32_t, const float*) {});
  }
  // A keep-0.5 sparsity profile for this file, calibrated on `ids`.
  absl::StatusOr<std::unique_ptr<SparsityProfile>> CalibrateHalf(
      const LoadedModel& lm, Forward& resident, ThreadPool* pool,
      const std::vector<int32_t>& ids) {
    CalibrateOptions co;
    co.keep = {0.5};
    co.source_identity = file_->layout().source_identity;
    return Calibrate(*lm.model, resident, pool, {ids}, co);
  }
  std::string model_, flash_;
  std::unique_ptr<FlashFile> file_;
};

TEST_F(Faults, BudgetBelowMinimumIsRefusedNamingIt) {
  for (Mode m : {Mode::kNaive, Mode::kLayer, Mode::kFlash}) {
    const uint64_t min = MinimumBudget(*file_, m, 0);
    absl::Status s = Run(m, nullptr, min - 1);
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_NE(s.message().find(std::to_string(min)), std::string::npos) << s;
    EXPECT_TRUE(Run(m, nullptr, min).ok()) << ModeName(m);
  }
}

TEST_F(Faults, FlippedBitInABundleIsAnError) {
  const LayerLayout& l = file_->layout().layers[1];
  const uint64_t at = l.bundles.offset + 7 * l.geometry.bundle_bytes() + 5;
  for (Mode m : {Mode::kNaive, Mode::kLayer, Mode::kFlash}) {
    io::FaultPlan plan;
    plan.FlipBit(at, 3);
    absl::Status s = Run(m, &plan);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << ModeName(m) << " " << s;
    EXPECT_NE(s.message().find("neuron 7"), std::string::npos) << s;
  }
}

TEST_F(Faults, FlippedBitInAttentionOrEmbeddingsIsAnError) {
  const FlashLayout& lay = file_->layout();
  for (uint64_t at : {lay.layers[0].wq.extent.offset + 100,
                      lay.token_embd.extent.offset + 450 * 8 + 3,
                      lay.output.extent.offset + lay.output.extent.bytes - 9}) {
    for (Mode m : {Mode::kNaive, Mode::kLayer, Mode::kFlash}) {
      io::FaultPlan plan;
      plan.FlipBit(at, 0);
      absl::Status s = Run(m, &plan);
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss)
          << ModeName(m) << " offset " << at << ": " << s;
    }
  }
}

TEST_F(Faults, ShortReadsAreCompletedAndEioIsReported) {
  for (Mode m : {Mode::kNaive, Mode::kLayer, Mode::kFlash}) {
    io::FaultPlan plan;
    for (int k = 0; k < 40; k += 3) plan.ShortRead(k, 100);
    plan.Interrupt(5);
    EXPECT_TRUE(Run(m, &plan).ok()) << ModeName(m);
    io::FaultPlan eio;
    const LayerLayout& l = file_->layout().layers[0];
    eio.FailRange(l.bundles.offset, l.bundles.offset + 1);
    absl::Status s = Run(m, &eio);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << ModeName(m) << " " << s;
  }
}

TEST_F(Faults, ConvertedFileOfAnotherModelIsRefused) {
  const std::string other = SharedPath("models/tl-small-Q4_0.gguf");
  FLASHD_REQUIRE_SHARED(other);
  absl::Status s = file_->CheckSource(other);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(file_->CheckSource(model_).ok());
}

// Neuron caches in a shared-memory segment survive the engine: a second
// engine for the same file and budget re-attaches warm, re-verifying every
// slot (a corrupted one is dropped); another budget discards the segment.
TEST_F(Faults, CacheSegmentRestartsWarm) {
  const std::string name = "flashd-test-cache-" + std::to_string(::getpid());
  const uint64_t budget =
      MinimumBudget(*file_, Mode::kFlash, 0) + file_->file_size() / 4;
  auto open = [&](uint64_t b) {
    SourceOptions o;
    o.mode = Mode::kFlash;
    o.open_file = BufferedOpener(nullptr);
    o.dram_budget = b;
    o.cache_segment = name;
    o.cache_dir = shm::TestShmDir();
    return OpenStreamed(flash_, o, 64, 4);
  };
  const std::vector<int32_t> ids = {1, 450, 4996, 17354};
  std::vector<float> cold;
  {
    absl::StatusOr<Streamed> s = open(budget);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->source->stats().warm_neurons, 0u);
    KvCache kv(s->config_model->config, 64);
    ASSERT_TRUE(EvalPrompt(*s->forward, kv, ids, false, [&](int32_t, const float* row) {
                  cold.assign(row, row + s->config_model->config.n_vocab);
                }).ok());
  }
  // Corrupt one cached bundle in the segment: its slot must be dropped.
  {
    std::fstream seg(shm::TestShmDir()->PathOf(name),
                     std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(seg.good());
    seg.seekp(4096 * 2 + 100);  // inside layer 0's first slot
    seg.put('\x5a');
  }
  uint64_t warm = 0;
  {
    absl::StatusOr<Streamed> s = open(budget);
    ASSERT_TRUE(s.ok()) << s.status();
    warm = s->source->stats().warm_neurons;
    EXPECT_GT(warm, 0u);
    KvCache kv(s->config_model->config, 64);
    std::vector<float> again;
    const int32_t first = ids[0];
    ASSERT_TRUE(EvalPrompt(*s->forward, kv, {first}, false,
                           [&](int32_t, const float*) {})
                    .ok());
    EXPECT_GT(s->source->stats().neurons_hit, 0u);  // warm from token one
    KvCache kv2(s->config_model->config, 64);
    ASSERT_TRUE(EvalPrompt(*s->forward, kv2, ids, false, [&](int32_t, const float* row) {
                  again.assign(row, row + s->config_model->config.n_vocab);
                }).ok());
    EXPECT_EQ(again, cold);
  }
  {
    absl::StatusOr<Streamed> s = open(budget);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_GE(s->source->stats().warm_neurons, warm);
  }
  {
    // Another budget gives other cache sizes: the segment is discarded.
    absl::StatusOr<Streamed> s =
        open(MinimumBudget(*file_, Mode::kFlash, 0) + file_->file_size() / 16);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->source->stats().warm_neurons, 0u);
  }
  std::filesystem::remove(shm::TestShmDir()->PathOf(name));
}

// Flash-mode options with the neuron caches in segment `name`.
SourceOptions SegmentOptions(const std::string& name, uint64_t budget) {
  SourceOptions o;
  o.mode = Mode::kFlash;
  o.open_file = BufferedOpener(nullptr);
  o.dram_budget = budget;
  o.cache_segment = name;
  o.cache_dir = shm::TestShmDir();
  return o;
}

absl::Status EvalFourTokens(Streamed& s) {
  KvCache kv(s.config_model->config, 64);
  return EvalPrompt(*s.forward, kv, {1, 450, 4996, 17354}, false,
                    [](int32_t, const float*) {});
}

// Opens a source on `options`' segment: it must attach warm and run.
void ExpectWarmAttach(const std::string& flash, const SourceOptions& options) {
  absl::StatusOr<Streamed> s = OpenStreamed(flash, options, 64, 4);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->source->cache_segment_state(), "attached (warm)");
  EXPECT_GT(s->source->stats().warm_neurons, 0u);
  EXPECT_TRUE(EvalFourTokens(*s).ok());
}

// A segment is held by one live source at a time: every other opener, with
// the same settings or settings that would discard it, automatic (with
// fallback) or not, is refused naming the segment, and the segment is untouched;
// once the holder is gone the next source attaches warm.
TEST_F(Faults, CacheSegmentHeldByALiveSourceIsNotShared) {
  const std::string name = "flashd-test-excl-" + std::to_string(::getpid());
  const std::string path = shm::TestShmDir()->PathOf(name);
  std::filesystem::remove(path);
  const uint64_t min = MinimumBudget(*file_, Mode::kFlash, 0);
  const uint64_t budget = min + file_->file_size() / 4;
  {
    absl::StatusOr<Streamed> a =
        OpenStreamed(flash_, SegmentOptions(name, budget), 64, 4);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->source->cache_segment(), name);
    EXPECT_EQ(a->source->cache_segment_state(), "created");
    ASSERT_TRUE(EvalFourTokens(*a).ok());
    const uintmax_t bytes = std::filesystem::file_size(path);
    for (uint64_t b : {budget, min + file_->file_size() / 16}) {
      for (bool automatic : {false, true}) {
        SourceOptions o = SegmentOptions(name, b);
        o.cache_segment_auto = automatic;
        absl::StatusOr<Streamed> s = OpenStreamed(flash_, o, 64, 4);
        ASSERT_FALSE(s.ok()) << b << " " << automatic;
        EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition)
            << s.status();
        EXPECT_NE(s.status().message().find(
                      "neuron cache segment " + path +
                      " is in use by another process"),
                  std::string::npos)
            << s.status();
        EXPECT_NE(s.status().message().find("--cache-shm"), std::string::npos);
      }
    }
    absl::StatusOr<std::unique_ptr<CacheSegment>> raw =
        CacheSegment::OpenOrCreate(shm::TestShmDir(), name, 1, 8, {{4, 4096}});
    EXPECT_EQ(raw.status().code(), absl::StatusCode::kFailedPrecondition)
        << raw.status();
    EXPECT_EQ(std::filesystem::file_size(path), bytes);
    EXPECT_TRUE(EvalFourTokens(*a).ok());
  }
  ExpectWarmAttach(flash_, SegmentOptions(name, budget));
  std::filesystem::remove(path);
}

// The lock dies with its holder: a child process holding the segment
// blocks others while alive; once SIGKILLed, the next source takes the
// segment over and re-adopts the (re-verified) neurons it left.
TEST_F(Faults, CacheSegmentOfAKilledHolderIsTakenOver) {
  const std::string name = "flashd-test-kill-" + std::to_string(::getpid());
  const std::string path = shm::TestShmDir()->PathOf(name);
  std::filesystem::remove(path);
  const uint64_t budget =
      MinimumBudget(*file_, Mode::kFlash, 0) + file_->file_size() / 4;
  {
    absl::StatusOr<Streamed> a =
        OpenStreamed(flash_, SegmentOptions(name, budget), 64, 4);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(EvalFourTokens(*a).ok());
  }
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // attach, report, then hold the segment until killed
    ::close(fds[0]);
    absl::StatusOr<Streamed> s =
        OpenStreamed(flash_, SegmentOptions(name, budget), 64, 4);
    const char got = s.ok() && s->source->stats().warm_neurons > 0 &&
                             EvalFourTokens(*s).ok()
                         ? 'W'
                         : 'F';
    (void)!::write(fds[1], &got, 1);
    for (;;) ::pause();
  }
  ::close(fds[1]);
  pollfd p{fds[0], POLLIN, 0};
  char got = 0;
  const bool reported = ::poll(&p, 1, 120000) == 1 && ::read(fds[0], &got, 1) == 1;
  ::close(fds[0]);
  if (!reported || got != 'W') {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    FAIL() << "the child did not attach warm (reported '" << got << "')";
  }
  {
    absl::StatusOr<Streamed> s =
        OpenStreamed(flash_, SegmentOptions(name, budget), 64, 4);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition)
        << s.status();
  }
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  EXPECT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL);
  ExpectWarmAttach(flash_, SegmentOptions(name, budget));
  std::filesystem::remove(path);
}

// An automatic segment that cannot be had (here: an invalid name) leaves
// the caches private and says why; an explicit one fails the open.
TEST_F(Faults, CacheSegmentFallbackKeepsCachesPrivate) {
  const uint64_t budget =
      MinimumBudget(*file_, Mode::kFlash, 0) + file_->file_size() / 8;
  SourceOptions o = SegmentOptions(std::string(300, 'x'), budget);
  absl::StatusOr<Streamed> s = OpenStreamed(flash_, o, 64, 4);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
  o.cache_segment_auto = true;
  s = OpenStreamed(flash_, o, 64, 4);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->source->cache_segment(), "");
  EXPECT_EQ(s->source->cache_segment_state().rfind("private memory: ", 0), 0u)
      << s->source->cache_segment_state();
  EXPECT_NE(s->source->cache_segment_state().find("1..200 characters"),
            std::string::npos);
  EXPECT_TRUE(EvalFourTokens(*s).ok());
}

// A file under the segment's name that is not ours alone (another mode, a
// hard link, a symlink), even one whose holder keeps an flock on it, is
// never locked, mapped or changed: an automatic segment falls back to
// private memory saying why, an explicit one is refused.
TEST_F(Faults, CacheSegmentThatIsNotOursAloneIsNeverUsed) {
  const uint64_t budget =
      MinimumBudget(*file_, Mode::kFlash, 0) + file_->file_size() / 8;
  const std::string name = "flashd-test-planted-" + std::to_string(::getpid());
  const std::string path = shm::TestShmDir()->PathOf(name);
  const std::string planted(8192, 'P');
  struct Case {
    const char* what;
    std::function<void()> plant;
    const char* why;
  };
  const std::string other = path + "-other";
  const std::vector<Case> cases = {
      {"world-writable", [&] { ::chmod(path.c_str(), 0666); },
       "has mode 0666, not 0600"},
      {"hard-linked",
       [&] {
         ::chmod(path.c_str(), 0600);
         ASSERT_EQ(::link(path.c_str(), other.c_str()), 0);
       },
       "has 2 links"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    {
      std::ofstream f(path, std::ios::binary);
      f << planted;
    }
    c.plant();
    const int holder = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(holder, 0);
    ASSERT_EQ(::flock(holder, LOCK_EX | LOCK_NB), 0);  // the planter's lock
    SourceOptions o = SegmentOptions(name, budget);
    absl::StatusOr<Streamed> s = OpenStreamed(flash_, o, 64, 4);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kPermissionDenied)
        << s.status();
    o.cache_segment_auto = true;
    s = OpenStreamed(flash_, o, 64, 4);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->source->cache_segment(), "");
    EXPECT_THAT(s->source->cache_segment_state(), HasSubstr(c.why));
    EXPECT_TRUE(EvalFourTokens(*s).ok());
    std::ifstream f(path, std::ios::binary);
    const std::string after((std::istreambuf_iterator<char>(f)), {});
    EXPECT_EQ(after, planted) << "the planted file was changed";
    ::close(holder);
    std::filesystem::remove(path);
    std::filesystem::remove(other);
  }
  ASSERT_EQ(::symlink("/dev/null", path.c_str()), 0);
  absl::StatusOr<Streamed> s =
      OpenStreamed(flash_, SegmentOptions(name, budget), 64, 4);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kPermissionDenied)
      << s.status();
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("is a symlink"));
  std::filesystem::remove(path);
}

// Truncating the segment under a running engine (only its own uid or root
// could) is a clear error for that engine, not a SIGBUS.
TEST_F(Faults, TruncatedCacheSegmentIsAnErrorNotACrash) {
  const uint64_t budget =
      MinimumBudget(*file_, Mode::kFlash, 0) + file_->file_size() / 4;
  const std::string name = "flashd-test-trunc-" + std::to_string(::getpid());
  absl::StatusOr<Streamed> s =
      OpenStreamed(flash_, SegmentOptions(name, budget), 64, 4);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(EvalFourTokens(*s).ok());
  ASSERT_EQ(::truncate(shm::TestShmDir()->PathOf(name).c_str(), 0), 0);
  absl::Status st = EvalFourTokens(*s);
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("truncated")) << st;
  EXPECT_FALSE(EvalFourTokens(*s).ok());  // and stays broken
  std::filesystem::remove(shm::TestShmDir()->PathOf(name));
}

// The automatic name: stable for the same settings, different when what
// sizes the caches (budget, predictor) or the window changes.
TEST_F(Faults, AutoCacheSegmentNameFollowsTheSettings) {
  SourceOptions o;
  o.mode = Mode::kFlash;
  o.dram_budget = uint64_t{1} << 30;
  const std::string name = AutoCacheSegmentName(*file_, o);
  ASSERT_EQ(name.size(), 13u + 16u) << name;
  EXPECT_EQ(name.rfind("flashd-cache-", 0), 0u) << name;
  EXPECT_EQ(name.find_first_not_of("0123456789abcdef", 13), std::string::npos)
      << name;
  EXPECT_EQ(AutoCacheSegmentName(*file_, o), name);
  SourceOptions same = o;
  same.max_read_bytes = 1 << 20;  // does not change the caches
  EXPECT_EQ(AutoCacheSegmentName(*file_, same), name);
  SourceOptions other = o;
  other.dram_budget += 4096;
  EXPECT_NE(AutoCacheSegmentName(*file_, other), name);
  other = o;
  other.window = 5;
  EXPECT_NE(AutoCacheSegmentName(*file_, other), name);
  other = o;
  other.predictor_bytes = 1;
  EXPECT_NE(AutoCacheSegmentName(*file_, other), name);
}

// An automatic segment, once held, removes the unheld automatic segments of
// the same file left by other settings; held ones and other files' stay.
TEST_F(Faults, AutoCacheSegmentRemovesStaleOnesOfTheSameFile) {
  const uint64_t min = MinimumBudget(*file_, Mode::kFlash, 0);
  auto automatic = [&](uint64_t budget) {
    SourceOptions o = SegmentOptions("", min + budget);
    o.cache_segment = AutoCacheSegmentName(*file_, o);
    o.cache_segment_auto = true;
    return o;
  };
  const SourceOptions stale = automatic(file_->file_size() / 4);
  const SourceOptions held = automatic(file_->file_size() / 8);
  const SourceOptions fresh = automatic(file_->file_size() / 16);
  const std::string foreign =
      std::string(kAutoCacheSegmentPrefix) + "test-" + std::to_string(::getpid());
  for (const std::string& n :
       {stale.cache_segment, held.cache_segment, fresh.cache_segment, foreign}) {
    std::filesystem::remove(shm::TestShmDir()->PathOf(n));
  }
  absl::StatusOr<Streamed> h = OpenStreamed(flash_, held, 64, 4);
  ASSERT_TRUE(h.ok()) << h.status();
  {
    absl::StatusOr<Streamed> s = OpenStreamed(flash_, stale, 64, 4);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE(EvalFourTokens(*s).ok());
  }
  ASSERT_TRUE(CacheSegment::OpenOrCreate(shm::TestShmDir(), foreign, file_->layout().identity ^ 1,
                                         8, {{4, 4096}})
                  .ok());
  ASSERT_TRUE(std::filesystem::exists(shm::TestShmDir()->PathOf(stale.cache_segment)));
  {
    absl::StatusOr<Streamed> s = OpenStreamed(flash_, fresh, 64, 4);
    ASSERT_TRUE(s.ok()) << s.status();
    const std::string& state = s->source->cache_segment_state();
    EXPECT_EQ(state.rfind("created; removed stale ", 0), 0u) << state;
    EXPECT_NE(state.find(stale.cache_segment + " ("), std::string::npos) << state;
    EXPECT_EQ(state.find(held.cache_segment), std::string::npos) << state;
  }
  EXPECT_FALSE(std::filesystem::exists(shm::TestShmDir()->PathOf(stale.cache_segment)));
  EXPECT_TRUE(std::filesystem::exists(shm::TestShmDir()->PathOf(held.cache_segment)));
  EXPECT_TRUE(std::filesystem::exists(shm::TestShmDir()->PathOf(fresh.cache_segment)));
  EXPECT_TRUE(std::filesystem::exists(shm::TestShmDir()->PathOf(foreign)));
  h = absl::UnknownError("closed");
  for (const std::string& n :
       {stale.cache_segment, held.cache_segment, fresh.cache_segment, foreign}) {
    std::filesystem::remove(shm::TestShmDir()->PathOf(n));
  }
}

TEST_F(Faults, MemoryPlanStaysWithinTheBudget) {
  for (Mode m : {Mode::kNaive, Mode::kLayer, Mode::kFlash}) {
    for (double fraction : {0.25, 0.5, 1.0}) {
      SourceOptions o;
      o.mode = m;
      o.open_file = BufferedOpener(nullptr);
      o.dram_budget = std::max<uint64_t>(
          MinimumBudget(*file_, m, 0),
          static_cast<uint64_t>(fraction * file_->file_size()));
      absl::StatusOr<Streamed> s = OpenStreamed(flash_, o, 64, 4);
      ASSERT_TRUE(s.ok()) << s.status();
      const MemoryPlan& plan = s->source->plan();
      EXPECT_LE(plan.total(), o.dram_budget) << ModeName(m) << " " << fraction;
      EXPECT_GE(o.dram_budget, plan.minimum);
    }
  }
}

// With a sparsity selector, flash mode loads only the kept neurons and
// computes what the resident engine computes with the same mask.
TEST_F(Faults, SparseFlashModeMatchesMaskedResident) {
  absl::StatusOr<LoadedModel> lm = LoadModel(model_);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const std::vector<int32_t> ids =
      lm->tokenizer->Encode(ReadFileBytes(SharedPath("golden/p1.txt")), true);
  ThreadPool pool(2);
  Forward resident(*lm->model, &pool, 128, 16);
  absl::StatusOr<std::unique_ptr<SparsityProfile>> profile =
      CalibrateHalf(*lm, resident, &pool, ids);
  ASSERT_TRUE(profile.ok()) << profile.status();
  absl::StatusOr<std::unique_ptr<NeuronSelector>> sel_resident =
      (*profile)->MakeSelector(0.5, &pool, 16);
  ASSERT_TRUE(sel_resident.ok()) << sel_resident.status();
  resident.set_selector(sel_resident->get());
  const int32_t n_vocab = lm->model->config.n_vocab;
  std::vector<float> want;
  {
    KvCache kv(lm->model->config, 128);
    ASSERT_TRUE(EvalPrompt(resident, kv, ids, true, [&](int32_t, const float* row) {
                  want.insert(want.end(), row, row + n_vocab);
                }).ok());
  }
  SourceOptions o;
  o.mode = Mode::kFlash;
  o.open_file = BufferedOpener(nullptr);
  o.dram_budget = MinimumBudget(*file_, Mode::kFlash, 0) + file_->file_size() / 8;
  o.window = 2;
  absl::StatusOr<Streamed> s = OpenStreamed(flash_, o, 128, 1);
  ASSERT_TRUE(s.ok()) << s.status();
  absl::StatusOr<std::unique_ptr<NeuronSelector>> sel_flash =
      (*profile)->MakeSelector(0.5, s->pool.get(), 1);
  ASSERT_TRUE(sel_flash.ok()) << sel_flash.status();
  s->forward->set_selector(sel_flash->get());
  KvCache kv(s->config_model->config, 128);
  double worst = 1.0;
  absl::Status st = EvalPrompt(  // batch 1: one token at a time, as decode
      *s->forward, kv, ids, true, [&](int32_t pos, const float* row) {
        const float* ref = want.data() + static_cast<size_t>(pos) * n_vocab;
        double dot = 0, na = 0, nb = 0;
        for (int32_t i = 0; i < n_vocab; ++i) {
          dot += static_cast<double>(row[i]) * ref[i];
          na += static_cast<double>(row[i]) * row[i];
          nb += static_cast<double>(ref[i]) * ref[i];
        }
        worst = std::min(worst, dot / std::sqrt(na * nb));
      });
  ASSERT_TRUE(st.ok()) << st;
  // Looser than the dense 0.9998: the resident side runs 16-token batches,
  // whose kernels round differently from decode's, so a neuron scored at
  // its threshold can fall on either side (measured 0.99977).
  EXPECT_GE(worst, 0.9995);
  const SourceStats& stats = s->source->stats();
  const double per_token = static_cast<double>(stats.neurons_needed) /
                           ids.size() / s->config_model->config.n_layer /
                           s->config_model->config.n_ff;
  EXPECT_GT(per_token, 0.3);  // about half the neurons, not all
  EXPECT_LT(per_token, 0.7);
  EXPECT_GT(stats.neurons_hit, 0u);  // the window kept some
}

// What --sparsity auto decides by: the estimate of a decoded token's reads
// follows the budget and the predictor's share of it, and agrees with what
// decode then reads, dense and sparse.
TEST_F(Faults, ReadEstimateAgreesWithWhatDecodeReads) {
  absl::StatusOr<LoadedModel> lm = LoadModel(model_);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const std::vector<int32_t> p1 =
      lm->tokenizer->Encode(ReadFileBytes(SharedPath("golden/p1.txt")), true);
  ASSERT_GE(p1.size(), 8u);
  std::vector<int32_t> ids = p1;  // the text again until 64 tokens
  while (ids.size() < 64) ids.insert(ids.end(), p1.begin() + 1, p1.end());
  ids.resize(64);
  ThreadPool pool(2);
  Forward resident(*lm->model, &pool, 128, 16);
  absl::StatusOr<std::unique_ptr<SparsityProfile>> profile =
      CalibrateHalf(*lm, resident, &pool, ids);
  ASSERT_TRUE(profile.ok()) << profile.status();

  SourceOptions o;
  o.mode = Mode::kFlash;
  o.open_file = BufferedOpener(nullptr);
  o.max_read_bytes = 64 << 10;
  o.window = 0;
  o.dram_budget =
      MinimumBudget(*file_, Mode::kFlash, 0) + file_->file_size() / 16;
  auto estimate = [&](const SourceOptions& so, double keep) {
    absl::StatusOr<ReadEstimate> e =
        EstimateFlashDecodeReads(*file_, so, keep, 1);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.value_or(ReadEstimate{});
  };
  SourceOptions unbounded = o;
  unbounded.dram_budget = 0;
  // Unbounded, every neuron is cached; the untied embedding row is read.
  EXPECT_TRUE(estimate(unbounded, 1.0).fits);
  EXPECT_EQ(estimate(unbounded, 1.0).bytes, kStreamChunkBytes);
  EXPECT_EQ(estimate(unbounded, 0.5).bytes, kStreamChunkBytes);
  SourceOptions too_big = o;
  too_big.predictor_bytes = o.dram_budget;
  EXPECT_FALSE(estimate(too_big, 0.5).fits);
  // A predictor's memory comes out of the neuron caches.
  SourceOptions with_predictor = o;
  with_predictor.predictor_bytes = file_->file_size() / 32;
  ASSERT_TRUE(estimate(with_predictor, 1.0).fits);
  EXPECT_GT(estimate(with_predictor, 1.0).bytes, estimate(o, 1.0).bytes);
  EXPECT_GT(estimate(with_predictor, 0.5).bytes, estimate(o, 0.5).bytes);

  // Measured over tokens 16..63, one token per pass as in decode.
  for (const bool sparse : {false, true}) {
    absl::StatusOr<Streamed> s = OpenStreamed(flash_, o, 128, 1);
    ASSERT_TRUE(s.ok()) << s.status();
    std::unique_ptr<NeuronSelector> selector;
    if (sparse) {
      absl::StatusOr<std::unique_ptr<NeuronSelector>> sel =
          (*profile)->MakeSelector(0.5, s->pool.get(), 1);
      ASSERT_TRUE(sel.ok()) << sel.status();
      selector = std::move(*sel);
      s->forward->set_selector(selector.get());
    }
    KvCache kv(s->config_model->config, 128);
    SourceStats at16;
    ASSERT_TRUE(EvalPrompt(*s->forward, kv, ids, true,
                           [&](int32_t pos, const float*) {
                             if (pos == 15) at16 = s->source->stats();
                           })
                    .ok());
    const SourceStats& end = s->source->stats();
    const double tokens = static_cast<double>(ids.size() - 16);
    const double measured = (end.bytes_read - at16.bytes_read) / tokens;
    const ModelConfig& c = s->config_model->config;
    const double kept = (end.neurons_needed - at16.neurons_needed) / tokens /
                        c.n_layer / c.n_ff;
    const double expected = static_cast<double>(
        estimate(o, sparse ? kept : 1.0).bytes);
    std::printf("[ %s ] keep %.3f: estimated %.0f bytes/token, read %.0f\n",
                sparse ? "sparse" : "dense", sparse ? kept : 1.0, expected,
                measured);
    EXPECT_NEAR(measured / expected, 1.0, sparse ? 0.25 : 0.1);
  }
}

}  // namespace
}  // namespace flashd::flash
