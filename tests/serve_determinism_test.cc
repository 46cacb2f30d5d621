// The real `flashd serve`: a request gives the same token ids whether it
// runs alone or among 15 other concurrent requests (its prompt chunks and
// decode steps then share batched forward passes with theirs), greedy and
// with seeded sampling, resident and in flash mode.
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "flashd/v1/flashd.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

using ::flashd::testing::DaemonProcess;
using ::flashd::testing::SetDeadline;
using ::flashd::testing::SharedPath;
using ::flashd::testing::TempPath;

constexpr int kClients = 16;
constexpr int kMaxTokens = 24;

// Request i: its own prompt (lengths 2 to 60 words, so prompts take one to
// several --batch chunks), greedy for even i, seeded sampling for odd i.
v1::GenerateRequest Request(int i) {
  static const char* const kWords[] = {"the", "little", "dog", "ran",
                                       "across", "a", "green", "park",
                                       "while", "Sue", "sang", "softly"};
  std::string prompt = "Story " + std::to_string(i) + ":";
  for (int w = 0; w < 2 + (i * 37) % 59; ++w) {
    prompt += " ";
    prompt += kWords[(i + w * 5) % 12];
  }
  v1::GenerateRequest r;
  r.set_prompt(prompt);
  r.set_max_tokens(kMaxTokens);
  if (i % 2 == 0) {
    r.mutable_sampling()->set_temperature(0);
  } else {
    r.mutable_sampling()->set_temperature(0.9f);
    r.mutable_sampling()->set_seed(1000 + i);
  }
  return r;
}

// The token ids one Generate stream delivered; fails the test on an error.
std::vector<int32_t> Generate(v1::Flashd::Stub& stub,
                              const v1::GenerateRequest& request) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 300);
  std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>> reader =
      stub.Generate(&ctx, request);
  std::vector<int32_t> ids;
  v1::GenerateEvent e;
  while (reader->Read(&e)) {
    if (e.has_token()) ids.push_back(e.token().id());
  }
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return ids;
}

// Each request alone, then all at once: the same ids for each.
void ExpectConcurrentEqualsAlone(const std::vector<std::string>& args,
                                 const std::string& name) {
  const std::string socket = TempPath(name + ".sock");
  DaemonProcess daemon;
  std::vector<std::string> all = args;
  for (const char* a : {"--threads", "2", "--ctx", "256", "--batch", "16",
                        "--max-sessions", "16", "--max-queue", "32",
                        "--kv-budget", "64MiB", "--cache-shm", ""}) {
    all.push_back(a);
  }
  all.push_back("--socket");
  all.push_back(socket);
  ASSERT_TRUE(daemon.Start(FLASHD_BINARY, all, TempPath(name + ".log"),
                           "unix:" + socket))
      << daemon.log();
  std::unique_ptr<v1::Flashd::Stub> stub = v1::Flashd::NewStub(daemon.channel());

  std::vector<std::vector<int32_t>> alone(kClients);
  for (int i = 0; i < kClients; ++i) alone[i] = Generate(*stub, Request(i));
  std::vector<std::vector<int32_t>> together(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back(
        [&, i] { together[i] = Generate(*stub, Request(i)); });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    SCOPED_TRACE(name + " request " + std::to_string(i) +
                 (i % 2 == 0 ? " (greedy)" : " (seeded sampling)"));
    ASSERT_FALSE(alone[i].empty());
    EXPECT_EQ(together[i], alone[i]);
  }
}

class ServeDeterminism : public ::testing::TestWithParam<const char*> {
 protected:
  std::string Model() const {
    return SharedPath(std::string("models/tl-small-") + GetParam() + ".gguf");
  }
};

TEST_P(ServeDeterminism, Resident) {
  FLASHD_REQUIRE_SHARED(Model());
  ExpectConcurrentEqualsAlone({"serve", "--model", Model()},
                              std::string(GetParam()) + "_resident");
}

TEST_P(ServeDeterminism, FlashPartialBudgetDense) {
  FLASHD_REQUIRE_SHARED(Model());
  const std::string flash = TempPath(std::string(GetParam()) + ".flash");
  DaemonProcess convert;
  convert.Spawn(FLASHD_BINARY, {"convert", "--model", Model(), "--out", flash},
                TempPath("convert.log"));
  ASSERT_EQ(convert.WaitExit(std::chrono::seconds(120)), 0) << convert.log();
  ExpectConcurrentEqualsAlone(
      {"serve", "--model", flash, "--mode", "flash", "--dram-budget", "80%",
       "--sparsity", "off"},
      std::string(GetParam()) + "_flash");
  std::filesystem::remove(flash);
}

INSTANTIATE_TEST_SUITE_P(SharedModels, ServeDeterminism,
                         ::testing::Values("Q8_0", "Q4_K_M"));

}  // namespace
}  // namespace flashd
