// The request, stream and connection limits of the real `flashd serve`
// binary: every refusal is INVALID_ARGUMENT or RESOURCE_EXHAUSTED and its
// message names the flag and the value; a request just within each limit
// is served. Also: the descriptor limit is raised at start.
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <sstream>
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
using ::flashd::testing::WaitForStats;

// Expects `status` to have `code` and to name `flag` with `value`.
void ExpectRefusal(const grpc::Status& status, grpc::StatusCode code,
                   const std::string& flag_and_value) {
  EXPECT_EQ(status.error_code(), code) << status.error_message();
  EXPECT_NE(status.error_message().find(flag_and_value), std::string::npos)
      << status.error_message();
}

// Reads a Generate stream to its end; returns its status.
grpc::Status Drain(v1::Flashd::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 60);
  auto reader = stub.Generate(&ctx, request);
  v1::GenerateEvent e;
  while (reader->Read(&e)) {
  }
  return reader->Finish();
}

v1::GenerateRequest Prompt(const std::string& text, int32_t max_tokens = 4) {
  v1::GenerateRequest r;
  r.set_prompt(text);
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0);
  return r;
}

class LimitsDaemon : public ::testing::Test {
 protected:
  // Starts stories260K (or `model`) with `extra` flags on a fresh socket.
  void Start(const std::vector<std::string>& extra,
             const std::string& model = "models/stories260K.bin") {
    FLASHD_REQUIRE_SHARED(SharedPath(model));
    socket_ = TempPath("limits.sock");
    std::vector<std::string> args = {"serve",    "--model", SharedPath(model),
                                     "--socket", socket_,   "--threads",
                                     "1"};
    if (model == "models/stories260K.bin") {
      args.insert(args.end(), {"--tokenizer", SharedPath("models/tok512.bin")});
    }
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_TRUE(daemon_.Start(FLASHD_BINARY, args, TempPath("limits.log"),
                              "unix:" + socket_))
        << daemon_.log();
    stub_ = v1::Flashd::NewStub(daemon_.channel());
  }

  // A raw connection to the socket (idle: sends nothing).
  int RawConnect() {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
              0);
    return fd;
  }

  // GetModelInfo on a new channel (a new connection).
  grpc::Status InfoOnNewConnection() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // its own connection
    auto channel = grpc::CreateCustomChannel(
        "unix:" + socket_, grpc::InsecureChannelCredentials(), args);
    auto stub = v1::Flashd::NewStub(channel);
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 10);
    v1::ModelInfo info;
    return stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  }

  std::string socket_;
  DaemonProcess daemon_;
  std::unique_ptr<v1::Flashd::Stub> stub_;
};

TEST_F(LimitsDaemon, PromptBytesAreCheckedBeforeTokenizing) {
  Start({"--max-prompt-bytes", "1000"});
  std::string text;
  while (text.size() < 1000) text += "Once upon a time, ";
  text.resize(1000);
  EXPECT_TRUE(Drain(*stub_, Prompt(text)).ok());
  ExpectRefusal(Drain(*stub_, Prompt(text + "x")),
                grpc::StatusCode::INVALID_ARGUMENT, "--max-prompt-bytes 1000");
}

TEST_F(LimitsDaemon, PromptTokens) {
  Start({"--max-prompt-tokens", "8"});
  // "a" alone is two tokens with BOS; each " a" adds one.
  std::string seven = "a";
  for (int i = 0; i < 6; ++i) seven += " a";
  EXPECT_TRUE(Drain(*stub_, Prompt(seven)).ok());
  ExpectRefusal(Drain(*stub_, Prompt(seven + " a a")),
                grpc::StatusCode::INVALID_ARGUMENT, "--max-prompt-tokens 8");
  v1::GenerateRequest ids;
  ids.set_max_tokens(2);
  for (int i = 0; i < 9; ++i) ids.mutable_tokens()->add_ids(1);
  ExpectRefusal(Drain(*stub_, ids), grpc::StatusCode::INVALID_ARGUMENT,
                "--max-prompt-tokens 8");
}

TEST_F(LimitsDaemon, PromptTokensDefaultToTheContext) {
  Start({"--ctx", "32"});
  v1::GenerateRequest ids;
  ids.set_max_tokens(1);
  for (int i = 0; i < 31; ++i) ids.mutable_tokens()->add_ids(1);
  EXPECT_TRUE(Drain(*stub_, ids).ok());
  ids.mutable_tokens()->add_ids(1);
  ExpectRefusal(Drain(*stub_, ids), grpc::StatusCode::INVALID_ARGUMENT,
                "(--ctx 32)");
}

TEST_F(LimitsDaemon, TokenizeAndDetokenizeInput) {
  Start({"--max-tokenize-bytes", "100", "--max-detokenize-ids", "10"});
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 10);
    v1::TokenizeRequest req;
    req.set_text(std::string(100, 'a'));
    v1::TokenizeResponse resp;
    EXPECT_TRUE(stub_->Tokenize(&ctx, req, &resp).ok());
    EXPECT_GT(resp.ids_size(), 0);
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 10);
    v1::TokenizeRequest req;
    req.set_text(std::string(101, 'a'));
    v1::TokenizeResponse resp;
    ExpectRefusal(stub_->Tokenize(&ctx, req, &resp),
                  grpc::StatusCode::INVALID_ARGUMENT,
                  "--max-tokenize-bytes 100");
  }
  for (int n : {10, 11}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 10);
    v1::DetokenizeRequest req;
    for (int i = 0; i < n; ++i) req.add_ids(100);
    v1::DetokenizeResponse resp;
    const grpc::Status s = stub_->Detokenize(&ctx, req, &resp);
    if (n == 10) {
      EXPECT_TRUE(s.ok()) << s.error_message();
    } else {
      ExpectRefusal(s, grpc::StatusCode::INVALID_ARGUMENT,
                    "--max-detokenize-ids 10");
    }
  }
}

TEST_F(LimitsDaemon, StopStringsAndRepeatLastN) {
  Start({"--max-stop-strings", "2", "--max-stop-bytes", "8", "--ctx", "64"});
  v1::GenerateRequest r = Prompt("Once upon a time");
  r.add_stop("12345678");
  r.add_stop("x");
  EXPECT_TRUE(Drain(*stub_, r).ok());
  r.add_stop("y");
  ExpectRefusal(Drain(*stub_, r), grpc::StatusCode::INVALID_ARGUMENT,
                "--max-stop-strings 2");
  r.clear_stop();
  r.add_stop("123456789");
  ExpectRefusal(Drain(*stub_, r), grpc::StatusCode::INVALID_ARGUMENT,
                "--max-stop-bytes 8");
  r.clear_stop();
  r.mutable_sampling()->set_repeat_penalty(1.1f);
  r.mutable_sampling()->set_repeat_last_n(64);
  EXPECT_TRUE(Drain(*stub_, r).ok());
  r.mutable_sampling()->set_repeat_last_n(65);
  ExpectRefusal(Drain(*stub_, r), grpc::StatusCode::INVALID_ARGUMENT,
                "repeat_last_n 65 exceeds the context: at most 64 (--ctx 64)");
}

TEST_F(LimitsDaemon, StreamsPerUid) {
  // tl-small at 2048 positions generates for seconds: the streams stay open.
  Start({"--max-streams-per-uid", "2", "--max-sessions", "1", "--ctx", "2048"},
        "models/tl-small-Q8_0.gguf");
  v1::GenerateRequest long_run = Prompt("Once upon a time", 2000);
  grpc::ClientContext a_ctx, b_ctx;
  auto a = stub_->Generate(&a_ctx, long_run);
  auto b = stub_->Generate(&b_ctx, long_run);
  // One generates, the other waits in the queue: both streams are open.
  const v1::Stats s = WaitForStats(*stub_, [](const v1::Stats& st) {
    return st.sessions_active() + st.sessions_queued() == 2;
  });
  ASSERT_EQ(s.sessions_active() + s.sessions_queued(), 2);
  ExpectRefusal(Drain(*stub_, Prompt("Once")),
                grpc::StatusCode::RESOURCE_EXHAUSTED,
                "--max-streams-per-uid 2");
  a_ctx.TryCancel();
  b_ctx.TryCancel();
  (void)a->Finish();
  (void)b->Finish();
  // Their slots come back.
  grpc::Status after;
  for (int i = 0; i < 100; ++i) {
    after = Drain(*stub_, Prompt("Once"));
    if (after.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(after.ok()) << after.error_message();
}

TEST_F(LimitsDaemon, ConnectionsPerUid) {
  // The daemon process's own health channel is one connection.
  Start({"--max-connections-per-uid", "4"});
  std::vector<int> idle;
  for (int i = 0; i < 3; ++i) idle.push_back(RawConnect());
  // Give the listener time to take them.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ExpectRefusal(InfoOnNewConnection(), grpc::StatusCode::RESOURCE_EXHAUSTED,
                "--max-connections-per-uid 4");
  SCOPED_TRACE(daemon_.log());
  for (int fd : idle) ::close(fd);
  grpc::Status after;
  for (int i = 0; i < 50; ++i) {
    after = InfoOnNewConnection();
    if (after.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(after.ok()) << after.error_message();
  EXPECT_NE(daemon_.log().find("--max-connections-per-uid 4"),
            std::string::npos)
      << daemon_.log();
}

TEST_F(LimitsDaemon, ConnectionsInTotal) {
  Start({"--max-connections", "3"});
  std::vector<int> idle;
  for (int i = 0; i < 2; ++i) idle.push_back(RawConnect());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ExpectRefusal(InfoOnNewConnection(), grpc::StatusCode::RESOURCE_EXHAUSTED,
                "--max-connections 3");
  for (int fd : idle) ::close(fd);
}

TEST_F(LimitsDaemon, TokenizeJobsAreBounded) {
  // One job at a time (a caller's share is then 1 too): of many large
  // Tokenize calls at once, some are refused naming the flag, and every
  // other one is answered in full.
  Start({"--max-tokenize-jobs", "1", "--max-tokenize-bytes", "4194304"});
  std::string text;
  while (text.size() < 4000000) text += "Once upon a time there was a dog. ";
  constexpr int kCalls = 12;
  std::vector<grpc::Status> statuses(kCalls);
  std::vector<int> counts(kCalls, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      SetDeadline(&ctx, 120);
      v1::TokenizeRequest req;
      req.set_text(text);
      v1::TokenizeResponse resp;
      statuses[i] = stub_->Tokenize(&ctx, req, &resp);
      counts[i] = resp.ids_size();
    });
  }
  for (std::thread& t : threads) t.join();
  int refused = 0, served = 0;
  for (int i = 0; i < kCalls; ++i) {
    if (statuses[i].ok()) {
      ++served;
      EXPECT_GT(counts[i], 100000);
    } else {
      ++refused;
      ExpectRefusal(statuses[i], grpc::StatusCode::RESOURCE_EXHAUSTED,
                    "--max-tokenize-jobs 1");
    }
  }
  EXPECT_GE(served, 1);
  EXPECT_GE(refused, 1);
}

TEST_F(LimitsDaemon, DescriptorLimitIsRaised) {
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  if (saved.rlim_max != RLIM_INFINITY && saved.rlim_max < 4096) {
    GTEST_SKIP() << "hard descriptor limit " << saved.rlim_max << " < 4096";
  }
  rlimit low = saved;
  low.rlim_cur = 256;  // the child inherits it
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  Start({"--max-connections", "2000"});
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  std::ifstream limits("/proc/" + std::to_string(daemon_.pid()) + "/limits");
  std::string line;
  uint64_t soft = 0;
  while (std::getline(limits, line)) {
    if (line.rfind("Max open files", 0) == 0) {
      std::istringstream(line.substr(26)) >> soft;
    }
  }
  // 2000 connections + 64 refused + sessions and queue + 1024 spare.
  EXPECT_GE(soft, 3000u) << daemon_.log();
  EXPECT_NE(daemon_.log().find("descriptor limit"), std::string::npos);
}

}  // namespace
}  // namespace flashd
