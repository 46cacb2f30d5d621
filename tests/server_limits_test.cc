// The daemon's limits in isolation: request prechecks (no tokenizer),
// per-caller counters, the tokenizer thread's job bound, the connection
// table (with socketpairs standing in for accepted connections), and the
// derived message and descriptor bounds.
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/server/connection_table.h"
#include "daemon/server/fd_limit.h"
#include "daemon/server/peer_counter.h"
#include "daemon/server/request_parser.h"
#include "daemon/server/server.h"
#include "daemon/server/tokenize_worker.h"
#include "gtest/gtest.h"

namespace flashd::server {
namespace {

bool Names(const absl::Status& s, const std::string& text) {
  return s.message().find(text) != std::string::npos;
}

RequestLimits Limits() {
  RequestLimits l;
  l.n_vocab = 512;
  l.n_ctx = 64;
  l.max_prompt_bytes = 100;
  l.max_stop_strings = 2;
  l.max_stop_bytes = 4;
  l.max_tokenize_bytes = 50;
  l.max_detokenize_ids = 3;
  return l;
}

TEST(RequestLimits, PrecheckNamesTheFlagAndValue) {
  const RequestLimits l = Limits();
  v1::GenerateRequest r;
  r.set_prompt(std::string(100, 'a'));
  EXPECT_TRUE(PrecheckGenerateRequest(r, l).ok());
  r.set_prompt(std::string(101, 'a'));
  absl::Status s = PrecheckGenerateRequest(r, l);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Names(s, "--max-prompt-bytes 100")) << s;

  r.set_prompt("a");
  r.add_stop("abcd");
  r.add_stop("x");
  EXPECT_TRUE(PrecheckGenerateRequest(r, l).ok());
  r.add_stop("y");
  EXPECT_TRUE(Names(PrecheckGenerateRequest(r, l), "--max-stop-strings 2"));
  r.clear_stop();
  r.add_stop("abcde");
  EXPECT_TRUE(Names(PrecheckGenerateRequest(r, l), "--max-stop-bytes 4"));
  r.clear_stop();

  r.mutable_sampling()->set_repeat_last_n(64);
  EXPECT_TRUE(PrecheckGenerateRequest(r, l).ok());
  r.mutable_sampling()->set_repeat_last_n(65);
  EXPECT_TRUE(Names(PrecheckGenerateRequest(r, l), "(--ctx 64)"));
  r.mutable_sampling()->clear_repeat_last_n();

  for (int i = 0; i < 64; ++i) r.mutable_tokens()->add_ids(1);
  EXPECT_TRUE(Names(PrecheckGenerateRequest(r, l), "tokens.ids has 64 tokens"));
}

TEST(RequestLimits, PromptTokensAreAtMostTheContextLessOne) {
  RequestLimits l = Limits();
  EXPECT_EQ(l.PromptTokens(), 63);
  l.max_prompt_tokens = 10;
  EXPECT_EQ(l.PromptTokens(), 10);
  l.max_prompt_tokens = 1000;
  EXPECT_EQ(l.PromptTokens(), 63);
}

TEST(RequestLimits, TokenizeAndDetokenize) {
  const RequestLimits l = Limits();
  v1::TokenizeRequest t;
  t.set_text(std::string(50, 'a'));
  EXPECT_TRUE(CheckTokenizeRequest(t, l).ok());
  t.set_text(std::string(51, 'a'));
  EXPECT_TRUE(Names(CheckTokenizeRequest(t, l), "--max-tokenize-bytes 50"));
  v1::DetokenizeRequest d;
  for (int i = 0; i < 3; ++i) d.add_ids(1);
  EXPECT_TRUE(CheckDetokenizeRequest(d, l).ok());
  d.add_ids(1);
  EXPECT_TRUE(Names(CheckDetokenizeRequest(d, l), "--max-detokenize-ids 3"));
  d.clear_ids();
  d.add_ids(512);
  EXPECT_TRUE(Names(CheckDetokenizeRequest(d, l), "ids[0] = 512"));
}

TEST(PeerCounter, BoundsEachCallerSeparately) {
  PeerCounter c(2, "--max-streams-per-uid", "Generate streams");
  EXPECT_TRUE(c.Acquire("uid 1").ok());
  EXPECT_TRUE(c.Acquire("uid 1").ok());
  const absl::Status s = c.Acquire("uid 1");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Names(s, "uid 1 has 2 Generate streams open")) << s;
  EXPECT_TRUE(Names(s, "--max-streams-per-uid 2")) << s;
  EXPECT_TRUE(c.Acquire("uid 2").ok());
  c.Release("uid 1");
  EXPECT_TRUE(c.Acquire("uid 1").ok());
  EXPECT_EQ(c.held("uid 1"), 2);
  EXPECT_EQ(CallerOf("ipv4:127.0.0.1:5000"), "tcp");
}

TEST(TokenizeWorker, BoundsJobsInTotalAndPerCaller) {
  TokenizeWorker w(4);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> ran{0};
  const auto blocked = [&] {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return release; });
    ++ran;
  };
  EXPECT_TRUE(w.Submit("uid 1", blocked).ok());
  EXPECT_TRUE(w.Submit("uid 1", blocked).ok());
  absl::Status s = w.Submit("uid 1", blocked);  // half of 4 is taken
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Names(s, "--max-tokenize-jobs 4")) << s;
  EXPECT_TRUE(w.Submit("uid 2", blocked).ok());
  EXPECT_TRUE(w.Submit("tcp", blocked).ok());
  s = w.Submit("uid 3", blocked);  // all 4 are taken
  EXPECT_TRUE(Names(s, "4 tokenize jobs are queued or running")) << s;
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
    cv.notify_all();
  }
  w.Stop();
  EXPECT_EQ(ran.load(), 4);
  EXPECT_EQ(w.pending(), 0);
  EXPECT_EQ(w.Submit("uid 1", [] {}).code(),
            absl::StatusCode::kFailedPrecondition);
}

// A connected pair; [0] plays the accepted connection.
struct Pair {
  int fd[2] = {-1, -1};
  Pair() { EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fd), 0); }
  ~Pair() { Close(); }
  void Close() {
    for (int& f : fd) {
      if (f >= 0) ::close(f);
      f = -1;
    }
  }
};

TEST(ConnectionTable, PerUidAndTotalWithRefusals) {
  ConnectionTable t({/*per_uid=*/2, /*total=*/3});
  Pair a, b, c, d, e;
  absl::Status why;
  EXPECT_EQ(t.Admit(a.fd[0], 1000, &why), ConnectionTable::Verdict::kAdmitted);
  EXPECT_EQ(t.Admit(b.fd[0], 1000, &why), ConnectionTable::Verdict::kAdmitted);
  EXPECT_EQ(t.Admit(c.fd[0], 1000, &why), ConnectionTable::Verdict::kRefused);
  EXPECT_EQ(why.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Names(why, "--max-connections-per-uid 2")) << why;
  EXPECT_TRUE(Names(t.Refusal(c.fd[0]), "--max-connections-per-uid 2"));
  EXPECT_TRUE(t.Refusal(a.fd[0]).ok());
  EXPECT_EQ(t.Admit(d.fd[0], 1001, &why), ConnectionTable::Verdict::kAdmitted);
  EXPECT_EQ(t.Admit(e.fd[0], 1002, &why), ConnectionTable::Verdict::kRefused);
  EXPECT_TRUE(Names(why, "--max-connections 3")) << why;
  EXPECT_EQ(t.CountOf(1000), 2);
  // A closed connection no longer counts.
  a.Close();
  EXPECT_EQ(t.CountOf(1000), 1);
  Pair f;
  EXPECT_EQ(t.Admit(f.fd[0], 1000, &why), ConnectionTable::Verdict::kAdmitted);
  // Refused connections are shut down once their time is up.
  EXPECT_GT(t.ShutDownRefused(std::chrono::steady_clock::now()), 0);
  EXPECT_EQ(t.ShutDownRefused(std::chrono::steady_clock::now() +
                              std::chrono::seconds(2)),
            -1);
  char byte;
  EXPECT_EQ(::read(c.fd[1], &byte, 1), 0);  // the peer sees EOF
  EXPECT_TRUE(t.Refusal(c.fd[0]).ok());
}

TEST(ConnectionTable, ClosesRefusalsItCannotKeep) {
  ConnectionTable t({/*per_uid=*/1, /*total=*/1024});
  Pair first;
  absl::Status why;
  ASSERT_EQ(t.Admit(first.fd[0], 7, &why), ConnectionTable::Verdict::kAdmitted);
  std::vector<std::unique_ptr<Pair>> more;
  int refused = 0, closed = 0;
  for (int i = 0; i < ConnectionTable::kMaxRefused + 5; ++i) {
    more.push_back(std::make_unique<Pair>());
    const auto v = t.Admit(more.back()->fd[0], 7, &why);
    refused += v == ConnectionTable::Verdict::kRefused;
    closed += v == ConnectionTable::Verdict::kClose;
  }
  EXPECT_EQ(refused, ConnectionTable::kMaxRefused);
  EXPECT_EQ(closed, 5);
}

TEST(ServerLimits, MessageAndDescriptorBounds) {
  ServiceLimits l;
  l.request.max_prompt_bytes = 1 << 20;
  EXPECT_GE(MaxMessageBytes(l, 2048), 1 << 20);
  EXPECT_LT(MaxMessageBytes(l, 2048), (1 << 20) + (1 << 18));
  ServerOptions o;
  o.connections.total = 5000;
  EXPECT_GE(FdsNeeded(o), 5000u + ConnectionTable::kMaxRefused);
  const FdLimit got = RaiseFdLimit(64);  // never lowers
  EXPECT_GE(got.soft, 64u);
}

}  // namespace
}  // namespace flashd::server
