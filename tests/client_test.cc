// flashd_client against the in-process fake flashd (tests/fake_flashd.h):
// events, errors and their messages, cancellation, deadlines, connecting.
#include "client/client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fake_flashd.h"

namespace flashd::client {
namespace {

using ::testing::HasSubstr;
using ClientTest = FakeDaemonTest;

TEST(NormalizeTargetTest, PathsBecomeUnixTargets) {
  EXPECT_EQ(NormalizeTarget(""), "unix:/run/flashd/flashd.sock");
  EXPECT_EQ(NormalizeTarget("/tmp/x.sock"), "unix:/tmp/x.sock");
  EXPECT_EQ(NormalizeTarget("./x.sock"), "unix:./x.sock");
  EXPECT_EQ(NormalizeTarget("unix:/a"), "unix:/a");
  EXPECT_EQ(NormalizeTarget("localhost:5005"), "localhost:5005");
}

TEST(FromGrpcCodeTest, SameMeaning) {
  EXPECT_EQ(FromGrpcCode(grpc::StatusCode::OK), absl::StatusCode::kOk);
  EXPECT_EQ(FromGrpcCode(grpc::StatusCode::INVALID_ARGUMENT),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromGrpcCode(grpc::StatusCode::RESOURCE_EXHAUSTED),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(FromGrpcCode(grpc::StatusCode::UNAVAILABLE),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(FromGrpcCode(grpc::StatusCode::UNAUTHENTICATED),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(FromGrpcCode(static_cast<grpc::StatusCode>(99)),
            absl::StatusCode::kUnknown);
}

TEST(ConnectTest, MissingSocketFailsAtOnceNamingIt) {
  const std::string path = ::testing::TempDir() + "/absent.sock";
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(path);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  ASSERT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(c.status().message(),
              HasSubstr("cannot connect to unix:" + path + ": " + path +
                        " does not exist: is flashd serve running?"));
}

TEST(ConnectTest, StaleSocketAndNonSocket) {
  const std::string path = ::testing::TempDir() + "/stale.sock";
  ::unlink(path.c_str());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ::close(fd);  // bound, never listening: connect is refused
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect("unix:" + path);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(c.status().message(), HasSubstr("nothing listens on " + path));

  const std::string file = ::testing::TempDir() + "/plain";
  std::ofstream(file) << "x";
  c = Client::Connect(file);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(c.status().message(), HasSubstr(file + " is not a socket"));
}

TEST(ConnectTest, TcpTargetTimesOutNamingIt) {
  ClientOptions options;
  options.connect_timeout = absl::Milliseconds(300);
  absl::StatusOr<std::unique_ptr<Client>> c =
      Client::Connect("127.0.0.1:1", options);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(c.status().message(),
              HasSubstr("cannot connect to 127.0.0.1:1 within 300ms"));
}

TEST_F(ClientTest, ConnectsOverUnixAndTcp) {
  std::unique_ptr<Client> unix_client = MustConnect();
  ASSERT_NE(unix_client, nullptr);
  EXPECT_EQ(unix_client->target(), target_);
  absl::StatusOr<std::unique_ptr<Client>> tcp =
      Client::Connect(absl::StrCat("127.0.0.1:", tcp_port_));
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  absl::StatusOr<std::vector<int32_t>> ids = (*tcp)->Tokenize("ab");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<int32_t>{'a' + 3, 'b' + 3}));
}

TEST_F(ClientTest, Health) {
  std::unique_ptr<Client> c = MustConnect();
  absl::StatusOr<HealthStatus> h = c->Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kServing);
  server_->GetHealthCheckService()->SetServingStatus(false);
  h = c->Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kNotServing);
  h = c->Health("no.such.Service");
  EXPECT_EQ(h.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(h.status().message(), HasSubstr("\"no.such.Service\""));
}

TEST_F(ClientTest, GenerateStreamsEventsInOrder) {
  std::unique_ptr<Client> c = MustConnect();
  v1::GenerateRequest request;
  request.set_prompt("hello");
  std::vector<std::string> kinds;
  std::string text;
  v1::Done done;
  absl::Status s = c->Generate(request, [&](const v1::GenerateEvent& e) {
    if (e.has_started()) kinds.push_back("started");
    if (e.has_token()) {
      EXPECT_EQ(e.token().index(), static_cast<int>(text.size()));
      text += e.token().text();
      kinds.push_back("token");
    }
    if (e.has_done()) {
      kinds.push_back("done");
      done = e.done();
    }
    return true;
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(text, "hello");
  EXPECT_EQ(kinds,
            (std::vector<std::string>{"started", "token", "token", "token",
                                      "token", "token", "done"}));
  EXPECT_EQ(done.reason(), v1::EOS);
  EXPECT_EQ(done.timings().generated_tokens(), 5);
}

TEST_F(ClientTest, GenerateMaxTokensAndStop) {
  std::unique_ptr<Client> c = MustConnect();
  v1::GenerateRequest request;
  request.set_prompt("abc\nUser: x");
  request.set_max_tokens(2);
  std::string text;
  v1::FinishReason reason{};
  auto collect = [&](const v1::GenerateEvent& e) {
    if (e.has_token()) text += e.token().text();
    if (e.has_done()) reason = e.done().reason();
    return true;
  };
  ASSERT_TRUE(c->Generate(request, collect).ok());
  EXPECT_EQ(text, "ab");
  EXPECT_EQ(reason, v1::MAX_TOKENS);
  text.clear();
  request.set_max_tokens(0);
  request.add_stop("\nUser:");
  ASSERT_TRUE(c->Generate(request, collect).ok());
  EXPECT_EQ(text, "abc\nUser");  // the fake stops before sending the ':'
  EXPECT_EQ(reason, v1::STOP_STRING);
}

TEST_F(ClientTest, ServerErrorsKeepTheirCodeAndNameTheTarget) {
  std::unique_ptr<Client> c = MustConnect();
  v1::GenerateRequest request;
  request.set_prompt("x");
  request.set_max_tokens(-1);
  auto ignore = [](const v1::GenerateEvent&) { return true; };
  absl::Status s = c->Generate(request, ignore);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "Generate on " + target_ + ": max_tokens: -1 is negative");
  request.set_max_tokens(0);
  request.set_prompt("busy");
  s = c->Generate(request, ignore);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("queue full"));
  request.set_prompt("nodone");
  s = c->Generate(request, ignore);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("ended without a Done event"));
  absl::StatusOr<std::string> text = c->Detokenize({10, 999});
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("ids[1]: 999"));
}

TEST_F(ClientTest, CallbackReturningFalseCancelsTheCall) {
  std::unique_ptr<Client> c = MustConnect();
  v1::GenerateRequest request;
  request.set_prompt("slow:" + std::string(100, 'x'));
  int tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = c->Generate(request, [&](const v1::GenerateEvent& e) {
    return !(e.has_token() && ++tokens == 2);
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_EQ(tokens, 2);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  for (int i = 0; i < 100 && service_.cancelled.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(service_.cancelled.load(), 1);  // the server saw it
}

TEST_F(ClientTest, CancelTokenStopsTheCallFromAnotherThread) {
  std::unique_ptr<Client> c = MustConnect();
  v1::GenerateRequest request;
  request.set_prompt("slow:" + std::string(200, 'x'));  // 4 s if not stopped
  CancelToken token;
  std::atomic<int> tokens{0};
  std::thread canceller([&] {
    while (tokens.load() < 3) std::this_thread::yield();
    EXPECT_TRUE(token.active());
    token.Cancel();
  });
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = c->Generate(
      request,
      [&](const v1::GenerateEvent& e) {
        if (e.has_token()) ++tokens;
        return true;
      },
      &token);
  canceller.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_THAT(s.message(), HasSubstr("cancelled by the client"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_FALSE(token.active());
  // A cancelled token stops the next call before it starts, until Reset.
  s = c->Generate(
      request, [](const v1::GenerateEvent&) { return true; }, &token);
  EXPECT_THAT(s.message(), HasSubstr("cancelled before it began"));
  token.Reset();
  request.set_prompt("ok");
  EXPECT_TRUE(
      c->Generate(
           request, [](const v1::GenerateEvent&) { return true; }, &token)
          .ok());
}

TEST_F(ClientTest, TokenizeDetokenizeInfoStats) {
  std::unique_ptr<Client> c = MustConnect();
  absl::StatusOr<std::vector<int32_t>> ids = c->Tokenize("hi", true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 'h' + 3, 'i' + 3}));
  absl::StatusOr<std::string> text = c->Detokenize({'h' + 3, 'i' + 3});
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "hi");
  absl::StatusOr<v1::ModelInfo> info = c->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->name(), "fake");
  v1::GenerateRequest request;
  request.set_prompt("abc");
  ASSERT_TRUE(
      c->Generate(request, [](const v1::GenerateEvent&) { return true; }).ok());
  absl::StatusOr<v1::Stats> stats = c->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->sessions_total(), 1u);
  EXPECT_EQ(stats->tokens_generated(), 3u);
}

TEST_F(ClientTest, UnaryCallsHaveADeadline) {
  ClientOptions options;
  options.call_timeout = absl::Milliseconds(200);
  std::unique_ptr<Client> c = MustConnect(options);
  service_.stall_stats = true;
  absl::StatusOr<v1::Stats> stats = c->GetStats();
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(stats.status().message(), HasSubstr("no answer within 200ms"));
}

}  // namespace
}  // namespace flashd::client
