// The real `flashd serve` binary on a temporary socket, driven through the
// generated gRPC stub: goldens from 8 concurrent streams, malformed
// requests, health, reflection, SIGTERM exiting 0 (more in
// serve_lifecycle_test.cc).
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <cstring>
#include <fstream>
#include <thread>

#include "flashd/v1/flashd.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

using testing::GetStats;
using testing::SetDeadline;
using testing::TempPath;
using testing::WaitForStats;

using ::flashd::testing::DaemonProcess;
using ::flashd::testing::HealthCheck;
using ::flashd::testing::ListServices;
using ::flashd::testing::ReadIds;
using ::flashd::testing::SharedPath;

constexpr char kDog[] = "Once upon a time, there was a little dog";
constexpr char kPark[] = "Tom and Sue went to the park";

// What one Generate stream delivered.
struct Stream {
  grpc::Status status;
  bool started = false;
  int32_t prompt_tokens = 0;
  std::vector<int32_t> ids;
  std::string text;
  bool done = false;
  v1::Done last;
};

// Reads a whole stream (or until `stop_after` tokens, then cancels).
Stream Collect(v1::Flashd::Stub& stub, const v1::GenerateRequest& request,
               grpc::ClientContext* ctx, int stop_after = -1) {
  Stream out;
  std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>> reader =
      stub.Generate(ctx, request);
  v1::GenerateEvent e;
  while (reader->Read(&e)) {
    if (e.has_started()) {
      out.started = true;
      out.prompt_tokens = e.started().prompt_tokens();
    } else if (e.has_token()) {
      EXPECT_EQ(e.token().index(), static_cast<int32_t>(out.ids.size()));
      out.ids.push_back(e.token().id());
      out.text += e.token().text();
      if (static_cast<int>(out.ids.size()) == stop_after) ctx->TryCancel();
    } else if (e.has_done()) {
      out.done = true;
      out.last = e.done();
    }
  }
  out.status = reader->Finish();
  return out;
}

v1::GenerateRequest Greedy(const std::string& prompt, int32_t max_tokens) {
  v1::GenerateRequest r;
  r.set_prompt(prompt);
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0);
  return r;
}

// A daemon serving stories260K (resident, f32: exact llama2.c goldens).
class StoriesDaemon : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHD_REQUIRE_SHARED(SharedPath("models/stories260K.bin"));
    socket_ = TempPath("flashd.sock");
    ASSERT_TRUE(daemon_.Start(FLASHD_BINARY, Args(socket_), TempPath("daemon.log"),
                              "unix:" + socket_))
        << daemon_.log();
    stub_ = v1::Flashd::NewStub(daemon_.channel());
  }

  std::vector<std::string> Args(const std::string& socket) {
    return {"serve", "--model", SharedPath("models/stories260K.bin"),
            "--tokenizer", SharedPath("models/tok512.bin"), "--socket", socket,
            "--threads", "1", "--max-sessions", "4", "--max-queue", "16"};
  }

  std::string socket_;
  DaemonProcess daemon_;
  std::unique_ptr<v1::Flashd::Stub> stub_;
};

TEST_F(StoriesDaemon, HealthModelInfoAndSocketMode) {
  EXPECT_EQ(HealthCheck(daemon_.channel(), ""), 1);
  EXPECT_EQ(HealthCheck(daemon_.channel(), "flashd.v1.Flashd"), 1);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 10);
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.name(), "stories260K");
  EXPECT_EQ(info.mode(), "resident");
  EXPECT_EQ(info.n_vocab(), 512);
  EXPECT_EQ(info.n_layer(), 5);
  EXPECT_EQ(info.n_ctx(), 512);
  struct stat st;
  ASSERT_EQ(::stat(socket_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(StoriesDaemon, ReflectionListsTheServices) {
  const std::string services = ListServices(daemon_.channel());
  EXPECT_NE(services.find("flashd.v1.Flashd"), std::string::npos) << services;
  EXPECT_NE(services.find("grpc.health.v1.Health"), std::string::npos) << services;
}

TEST_F(StoriesDaemon, EightConcurrentStreamsMatchGoldens) {
  const std::vector<int32_t> dog = ReadIds(SharedPath("golden/stories260K_greedy_dog.ids"));
  const std::vector<int32_t> park = ReadIds(SharedPath("golden/stories260K_greedy_park.ids"));
  // Prompt ids (after BOS) come first in the goldens.
  const auto prompt_ids = [&](const char* text) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 10);
    v1::TokenizeRequest req;
    req.set_text(text);
    v1::TokenizeResponse resp;
    EXPECT_TRUE(stub_->Tokenize(&ctx, req, &resp).ok());
    return std::vector<int32_t>(resp.ids().begin(), resp.ids().end());
  };
  const std::vector<int32_t> dog_prompt = prompt_ids(kDog);
  const std::vector<int32_t> park_prompt = prompt_ids(kPark);
  ASSERT_TRUE(std::equal(dog_prompt.begin(), dog_prompt.end(), dog.begin()));
  ASSERT_TRUE(std::equal(park_prompt.begin(), park_prompt.end(), park.begin()));
  const int32_t park_steps = static_cast<int32_t>(park.size() - park_prompt.size());

  std::vector<Stream> results(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      results[i] = Collect(*stub_, i % 2 == 0 ? Greedy(kDog, 300)
                                              : Greedy(kPark, park_steps),
                           &ctx);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < 8; ++i) {
    SCOPED_TRACE(i);
    const Stream& r = results[i];
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    const std::vector<int32_t>& golden = i % 2 == 0 ? dog : park;
    const size_t n_prompt = (i % 2 == 0 ? dog_prompt : park_prompt).size();
    EXPECT_TRUE(r.started);
    EXPECT_EQ(r.prompt_tokens, static_cast<int32_t>(n_prompt + 1));  // + BOS
    EXPECT_EQ(r.ids, std::vector<int32_t>(golden.begin() + n_prompt, golden.end()));
    ASSERT_TRUE(r.done);
    EXPECT_EQ(r.last.reason(), i % 2 == 0 ? v1::EOS : v1::MAX_TOKENS);
    EXPECT_EQ(r.last.timings().generated_tokens(), static_cast<int32_t>(r.ids.size()));
  }
  std::string golden_text =
      testing::ReadFileBytes(SharedPath("golden/stories260K_greedy_dog.txt"));
  while (!golden_text.empty() && golden_text.back() == '\n') golden_text.pop_back();
  EXPECT_EQ(kDog + results[0].text, golden_text);
  const v1::Stats s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_active() == 0;
  });
  EXPECT_EQ(s.sessions_total(), 8u);
  EXPECT_EQ(s.sessions_queued(), 0);
  EXPECT_EQ(s.kv_bytes_in_use(), 0u);
  EXPECT_GT(s.kv_bytes_limit(), 0u);
  EXPECT_GE(s.tokens_generated(), 4 * (dog.size() - dog_prompt.size()));
}

// Generate's status for a request the server must refuse.
grpc::Status Refused(v1::Flashd::Stub& stub, const v1::GenerateRequest& r) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 10);
  Stream s = Collect(stub, r, &ctx);
  EXPECT_FALSE(s.started);
  return s.status;
}

TEST_F(StoriesDaemon, MalformedRequestsAreInvalidArgumentNamingTheField) {
  struct Case {
    std::function<void(v1::GenerateRequest&)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](v1::GenerateRequest& r) { r.clear_input(); }, "input"},
      {[](v1::GenerateRequest& r) { r.set_prompt(""); }, "prompt"},
      {[](v1::GenerateRequest& r) { r.mutable_tokens()->add_ids(9999); }, "tokens.ids[0]"},
      {[](v1::GenerateRequest& r) { r.mutable_tokens()->add_ids(-1); }, "tokens.ids[0]"},
      {[](v1::GenerateRequest& r) { r.set_max_tokens(-5); }, "max_tokens"},
      {[](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-1); }, "sampling.temperature"},
      {[](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(0); }, "sampling.top_p"},
      {[](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(1.01f); }, "sampling.top_p"},
      {[](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_k(-1); }, "sampling.top_k"},
      {[](v1::GenerateRequest& r) { r.mutable_sampling()->set_min_p(2); }, "sampling.min_p"},
      {[](v1::GenerateRequest& r) { r.add_stop(""); }, "stop[0]"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    v1::GenerateRequest r = Greedy(kDog, 10);
    c.edit(r);
    grpc::Status s = Refused(*stub_, r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find(c.field), std::string::npos) << s.error_message();
  }
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 10);
  v1::DetokenizeRequest d;
  d.add_ids(1);
  d.add_ids(512);
  v1::DetokenizeResponse resp;
  grpc::Status s = stub_->Detokenize(&ctx, d, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("ids[1] = 512"), std::string::npos);
  // The daemon is still fine.
  grpc::ClientContext ok_ctx;
  SetDeadline(&ok_ctx);
  EXPECT_TRUE(Collect(*stub_, Greedy(kDog, 5), &ok_ctx).status.ok());
}

TEST_F(StoriesDaemon, SigtermExitsZeroAndRemovesTheSocket) {
  daemon_.Signal(SIGTERM);
  const std::optional<int> code = daemon_.WaitExit(std::chrono::seconds(20));
  ASSERT_TRUE(code.has_value()) << "still running after SIGTERM";
  EXPECT_EQ(*code, 0) << daemon_.log();
  struct stat st;
  EXPECT_NE(::lstat(socket_.c_str(), &st), 0) << "socket file left behind";
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 5);
  v1::Stats stats;
  EXPECT_EQ(stub_->GetStats(&ctx, v1::GetStatsRequest(), &stats).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace flashd
