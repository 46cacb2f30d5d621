// A sequence's logits do not depend on what runs with it: the same tokens
// give the same bits whether the prompt runs token by token, in one chunk
// or in chunks of any size, and whether its steps run alone or inside
// Forward::EvalSteps batches with other sequences at any position. Checked
// on the shared tl-small models, resident on every ISA, and in every
// streaming mode (each compared with itself), on this CPU's best ISA.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/base/thread_pool.h"
#include "common/engine/forward.h"
#include "common/flash/flash_engine.h"
#include "common/flash/flash_file.h"
#include "common/flash/flash_writer.h"
#include "common/kernels/kernels.h"
#include "common/model/model_loader.h"
#include "gtest/gtest.h"
#include "tests/isa_test_util.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

using ::flashd::testing::ScopedIsa;
using ::flashd::testing::SharedPath;
using ::flashd::testing::SupportedIsas;

constexpr int32_t kCtx = 64;
constexpr int32_t kBatch = 32;

// The sequence under test and three others that share its batches.
const std::vector<int32_t> kPrompt = {1,    450, 4996, 17354, 1701, 29916,
                                      432,  17204, 975, 278,  17366, 11203,
                                      29889};
const std::vector<int32_t> kDecoded = {13, 1576, 338, 263, 1243, 310};
const std::vector<std::vector<int32_t>> kOthers = {
    {1, 15043, 3186, 29991, 1724, 338, 596, 1024, 29973},
    {1, 29871, 29896},
    {1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203,
     29889, 450, 11203, 471, 451, 1584, 22321, 29889, 739}};

// Logits (n_vocab floats) after each of the sequence's positions.
using Rows = std::vector<std::vector<float>>;

void Append(const Forward& f, int32_t row, Rows* rows) {
  const int32_t nv = f.config().n_vocab;
  rows->emplace_back(f.logits(row), f.logits(row) + nv);
}

// Token by token: the reference.
Rows Alone(Forward& f) {
  KvCache kv(f.config(), kCtx);
  Rows rows;
  std::vector<int32_t> all = kPrompt;
  all.insert(all.end(), kDecoded.begin(), kDecoded.end());
  for (int32_t tok : all) {
    EXPECT_TRUE(f.Eval(kv, {&tok, 1}, false).ok());
    Append(f, 0, &rows);
  }
  return rows;
}

// The prompt in chunks of `chunk` tokens (logits of every token), then the
// decoded tokens one by one.
Rows Chunked(Forward& f, int32_t chunk) {
  KvCache kv(f.config(), kCtx);
  Rows rows;
  for (size_t i = 0; i < kPrompt.size(); i += chunk) {
    const size_t n = std::min<size_t>(chunk, kPrompt.size() - i);
    EXPECT_TRUE(f.Eval(kv, absl::MakeConstSpan(kPrompt).subspan(i, n), true)
                    .ok());
    for (size_t t = 0; t < n; ++t) Append(f, static_cast<int32_t>(t), &rows);
  }
  for (int32_t tok : kDecoded) {
    EXPECT_TRUE(f.Eval(kv, {&tok, 1}, false).ok());
    Append(f, 0, &rows);
  }
  return rows;
}

// Every pass an EvalSteps batch: the sequence one token per pass at slot
// `slot`, with the other sequences' prompts in chunks of `chunk` and then
// their own decoded tokens around it. Logits of the sequence's tokens.
Rows Batched(Forward& f, int32_t chunk, size_t slot) {
  KvCache kv(f.config(), kCtx);
  std::vector<KvCache> others;
  std::vector<size_t> done(kOthers.size(), 0);
  for (size_t o = 0; o < kOthers.size(); ++o) others.emplace_back(f.config(), kCtx);
  std::vector<int32_t> all = kPrompt;
  all.insert(all.end(), kDecoded.begin(), kDecoded.end());
  const int32_t filler = 29889;
  Rows rows;
  for (size_t i = 0; i < all.size(); ++i) {
    std::vector<Forward::Step> steps;
    for (size_t o = 0; o < kOthers.size(); ++o) {
      const std::vector<int32_t>& p = kOthers[o];
      if (others[o].n_past() + chunk >= kCtx - 1) continue;
      if (done[o] < p.size()) {
        const size_t n = std::min<size_t>(chunk, p.size() - done[o]);
        steps.push_back({&others[o], absl::MakeConstSpan(p).subspan(done[o], n)});
        done[o] += n;
      } else {
        steps.push_back({&others[o], absl::MakeConstSpan(&filler, 1)});
      }
    }
    const size_t at = std::min(slot, steps.size());
    steps.insert(steps.begin() + at, {&kv, absl::MakeConstSpan(&all[i], 1)});
    EXPECT_TRUE(f.EvalSteps(steps).ok());
    Append(f, static_cast<int32_t>(at), &rows);
  }
  return rows;
}

// Bit-for-bit comparison; reports the first differing position.
void ExpectSameBits(const Rows& want, const Rows& got, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  for (size_t p = 0; p < want.size(); ++p) {
    ASSERT_EQ(0, std::memcmp(want[p].data(), got[p].data(),
                             want[p].size() * sizeof(float)))
        << what << ": logits differ at position " << p;
  }
}

// Every variation of chunking and batching against token by token.
void ExpectInvariant(Forward& f, const std::string& name) {
  const Rows alone = Alone(f);
  ExpectSameBits(alone, Alone(f), name + " repeated");
  for (int32_t chunk : {2, 5, 13}) {
    ExpectSameBits(alone, Chunked(f, chunk),
                   name + " prompt chunks of " + std::to_string(chunk));
  }
  const struct {
    int32_t chunk;
    size_t slot;
  } batches[] = {{1, 0}, {4, 3}, {9, 1}};
  for (const auto& b : batches) {
    ExpectSameBits(alone, Batched(f, b.chunk, b.slot),
                   name + " batched, others' chunks of " +
                       std::to_string(b.chunk) + ", slot " +
                       std::to_string(b.slot));
  }
}

class BatchInvariance : public ::testing::TestWithParam<const char*> {
 protected:
  std::string ModelPath() const {
    return SharedPath(std::string("models/tl-small-") + GetParam() + ".gguf");
  }
};

TEST_P(BatchInvariance, ResidentOnEveryIsa) {
  const std::string model = ModelPath();
  FLASHD_REQUIRE_SHARED(model);
  absl::StatusOr<LoadedModel> lm = LoadModel(model);
  ASSERT_TRUE(lm.ok()) << lm.status();
  ThreadPool pool(2);
  Forward f(*lm->model, &pool, kCtx, kBatch);
  for (kernels::Isa isa : SupportedIsas()) {
    ScopedIsa scoped(isa);
    ExpectInvariant(f, std::string(kernels::IsaName(isa)));
  }
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("flashd_batch_invariance_" + std::to_string(::getpid()) + "_" +
           name))
      .string();
}

TEST_P(BatchInvariance, EveryStreamingMode) {
  const std::string model = ModelPath();
  FLASHD_REQUIRE_SHARED(model);
  const std::string flash_path = TempPath(std::string(GetParam()) + ".flash");
  flash::ConvertOptions co;
  co.model_path = model;
  co.out_path = flash_path;
  ASSERT_TRUE(flash::ConvertToFlash(co).ok());
  absl::StatusOr<std::unique_ptr<flash::FlashFile>> file =
      flash::FlashFile::Open(flash_path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::unique_ptr<Model> config = flash::ConfigOnlyModel((*file)->layout());
  struct Case {
    flash::Mode mode;
    double budget;  // fraction of the file; 0: unbounded, < 0: the minimum
    const char* name;
  };
  for (const Case& c : {Case{flash::Mode::kNaive, 0, "naive"},
                        Case{flash::Mode::kLayer, 0, "layer"},
                        Case{flash::Mode::kFlash, 0, "flash_all"},
                        Case{flash::Mode::kFlash, 0.5, "flash_half"},
                        Case{flash::Mode::kFlash, -1, "flash_min"}}) {
    flash::SourceOptions o;
    o.mode = c.mode;
    const uint64_t min = flash::MinimumBudget(**file, c.mode, 0);
    if (c.budget > 0) {
      o.dram_budget = std::max<uint64_t>(
          min, static_cast<uint64_t>(c.budget * (*file)->file_size()));
    } else if (c.budget < 0) {
      o.dram_budget = min;
    }
    ThreadPool pool(2);
    absl::StatusOr<std::unique_ptr<flash::FlashSource>> src =
        flash::OpenFlashSource(**file, o, &pool, kBatch);
    ASSERT_TRUE(src.ok()) << src.status();
    Forward f(*config, &pool, kCtx, kBatch);
    f.set_source(src->get());
    ExpectInvariant(f, c.name);
  }
  std::filesystem::remove(flash_path);
}

INSTANTIATE_TEST_SUITE_P(SharedModels, BatchInvariance,
                         ::testing::Values("Q8_0", "Q4_K_M", "Q4_0", "f16"));

}  // namespace
}  // namespace flashd
