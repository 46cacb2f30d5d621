// flashctl's commands, run in process (RunFlashctl) against the fake flashd
// of tests/fake_flashd.h: output, timings, exit codes, usage errors, chat.
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "client/flashctl_commands.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fake_flashd.h"

namespace flashd::client {
namespace {

using ::testing::HasSubstr;

class FlashctlTest : public FakeDaemonTest {
 protected:
  // Runs flashctl in process with `args` after "--socket PATH".
  int Flashctl(std::vector<std::string> args, const std::string& input = "") {
    args.insert(args.begin(), {"--socket", socket_path_});
    std::istringstream in(input);
    out_.str("");
    err_.str("");
    FlashctlIo io{&in, &out_, &err_, &cancel_, false};
    return RunFlashctl(args, io);
  }

  CancelToken cancel_;
  std::ostringstream out_, err_;
};

TEST_F(FlashctlTest, GenerateStreamsTextAndTimings) {
  EXPECT_EQ(Flashctl({"generate", "--prompt", "hello", "--max-tokens", "3",
                      "--temperature", "0", "--seed", "7", "--stop", "zz"}),
            kExitOk)
      << err_.str();
  EXPECT_EQ(out_.str(), "hel\n");
  EXPECT_THAT(err_.str(), HasSubstr("prompt 6 tokens, prefill 1.5 ms, first "
                                    "token 2.0 ms, 3 tokens in 10.0 ms "
                                    "(200.0 tok/s), finish: max_tokens"));
  std::lock_guard<std::mutex> lock(service_.mu);
  EXPECT_EQ(service_.stops, std::vector<std::string>{"zz"});
}

TEST_F(FlashctlTest, UsageErrorsExit2BeforeConnecting) {
  EXPECT_EQ(Flashctl({"generate"}), kExitUsage);
  EXPECT_THAT(err_.str(), HasSubstr("generate: --prompt TEXT is required"));
  EXPECT_EQ(Flashctl({"generate", "--prompt", "x", "--max-tokens", "many"}),
            kExitUsage);
  EXPECT_THAT(err_.str(),
              HasSubstr("--max-tokens: expected an integer, got \"many\""));
  EXPECT_EQ(Flashctl({"stats", "--bogus"}), kExitUsage);
  EXPECT_THAT(err_.str(), HasSubstr("stats: unknown flag --bogus"));
  EXPECT_EQ(Flashctl({"frobnicate"}), kExitUsage);
  EXPECT_EQ(Flashctl({"tokenize"}), kExitUsage);
  EXPECT_EQ(Flashctl({"--target", "x:1", "stats"}), kExitUsage);  // + --socket
  EXPECT_THAT(err_.str(), HasSubstr("--socket or --target, not both"));
}

TEST_F(FlashctlTest, RuntimeErrorsExit1) {
  std::istringstream in;
  std::ostringstream out, err;
  FlashctlIo io{&in, &out, &err, nullptr, false};
  EXPECT_EQ(
      RunFlashctl({"--socket", ::testing::TempDir() + "/none.sock", "health"},
                  io),
      kExitRuntime);
  EXPECT_THAT(err.str(), HasSubstr("flashctl: cannot connect to unix:"));
  EXPECT_EQ(Flashctl({"detokenize", "999"}), kExitRuntime);
  EXPECT_THAT(err_.str(), HasSubstr("Detokenize on unix:"));
  server_->GetHealthCheckService()->SetServingStatus(false);
  EXPECT_EQ(Flashctl({"health"}), kExitRuntime);
  EXPECT_EQ(out_.str(), "NOT_SERVING\n");
}

TEST_F(FlashctlTest, Queries) {
  EXPECT_EQ(Flashctl({"health"}), kExitOk);
  EXPECT_EQ(out_.str(), "SERVING\n");
  EXPECT_EQ(Flashctl({"tokenize", "hi", "--bos"}), kExitOk);
  EXPECT_EQ(out_.str(), "1 107 108\n");
  EXPECT_EQ(Flashctl({"detokenize", "107", "108"}), kExitOk);
  EXPECT_EQ(out_.str(), "hi\n");
  EXPECT_EQ(Flashctl({"info"}), kExitOk);
  EXPECT_THAT(out_.str(), HasSubstr("name: fake\n"));
  EXPECT_THAT(out_.str(),
              HasSubstr("dram_budget_bytes: 67108864 (64.0 MiB)\n"));
  EXPECT_EQ(Flashctl({"stats"}), kExitOk);
  EXPECT_THAT(out_.str(), HasSubstr("sessions_total: 0\n"));
  EXPECT_THAT(out_.str(), HasSubstr("cache_hit_rate: 0.5\n"));
}

TEST_F(FlashctlTest, ChatKeepsATranscript) {
  // The fake echoes the whole prompt, stopping at "\nUser:".
  EXPECT_EQ(Flashctl({"chat", "--max-tokens", "500"}, "hi\n\nthere\n"), kExitOk)
      << err_.str();
  std::lock_guard<std::mutex> lock(service_.mu);
  ASSERT_EQ(service_.prompts.size(), 2u);
  EXPECT_EQ(service_.prompts[0], "User: hi\nAssistant:");
  const std::string reply1 = "User: hi\nAssistant:";  // echoed, trimmed
  EXPECT_EQ(service_.prompts[1],
            ChatPrompt("", "User: hi\nAssistant: " + reply1 + "\n", "there"));
  EXPECT_EQ(service_.stops, std::vector<std::string>{"\nUser:"});
  EXPECT_THAT(out_.str(), HasSubstr("User: hi\nAssistant:\n"));
}

}  // namespace
}  // namespace flashd::client
