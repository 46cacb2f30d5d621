// An in-process fake flashd for client tests: a grpc::Server on a Unix
// socket in the test's temporary directory (and on TCP 127.0.0.1:0) whose
// Flashd service echoes the prompt one byte per token, plus grpc's default
// grpc.health.v1 service. FakeDaemonTest starts it for each test.
#ifndef FLASHD_TESTS_FAKE_FLASHD_H_
#define FLASHD_TESTS_FAKE_FLASHD_H_

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "flashd/v1/flashd.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"

namespace flashd::client {

// Echoes the prompt: token i is byte i of the prompt (id = byte + 3).
// "slow:" prompts pause 20 ms per token and notice cancellation; "nodone"
// ends the stream without a Done; "busy" is RESOURCE_EXHAUSTED.
class FakeFlashd final : public v1::Flashd::Service {
 public:
  grpc::Status Generate(
      grpc::ServerContext* context, const v1::GenerateRequest* request,
      grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    if (request->max_tokens() < 0) {
      return {
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("max_tokens: ", request->max_tokens(), " is negative")};
    }
    const std::string& prompt = request->prompt();
    {
      std::lock_guard<std::mutex> lock(mu);
      prompts.push_back(prompt);
      stops.assign(request->stop().begin(), request->stop().end());
    }
    if (prompt == "busy") {
      return {grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full: 8 of 8"};
    }
    ++sessions_total;
    const bool slow = absl::StartsWith(prompt, "slow:");
    v1::GenerateEvent event;
    event.mutable_started()->set_session_id("s1");
    event.mutable_started()->set_prompt_tokens(prompt.size() + 1);
    writer->Write(event);
    if (prompt == "nodone") return grpc::Status::OK;
    const int limit = request->max_tokens() > 0 ? request->max_tokens() : 256;
    std::string out;
    v1::FinishReason reason = v1::EOS;
    int n = 0;
    for (; n < static_cast<int>(prompt.size()); ++n) {
      if (n == limit) {
        reason = v1::MAX_TOKENS;
        break;
      }
      out.push_back(prompt[n]);
      bool stopped = false;
      for (const std::string& s : request->stop()) {
        stopped = stopped || absl::EndsWith(out, s);
      }
      if (stopped) {
        reason = v1::STOP_STRING;
        break;
      }
      if (slow) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (context->IsCancelled()) {
        ++cancelled;
        return {grpc::StatusCode::CANCELLED, "cancelled"};
      }
      event.Clear();
      event.mutable_token()->set_id(static_cast<unsigned char>(prompt[n]) + 3);
      event.mutable_token()->set_text(std::string(1, prompt[n]));
      event.mutable_token()->set_index(n);
      writer->Write(event);
      ++tokens_generated;
    }
    event.Clear();
    event.mutable_done()->set_reason(reason);
    v1::Timings* t = event.mutable_done()->mutable_timings();
    t->set_prompt_tokens(prompt.size() + 1);
    t->set_generated_tokens(n);
    t->set_prefill_ms(1.5);
    t->set_time_to_first_token_ms(2.0);
    t->set_decode_ms(10.0);
    writer->Write(event);
    return grpc::Status::OK;
  }

  grpc::Status Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* req,
                        v1::TokenizeResponse* resp) override {
    if (req->add_bos()) resp->add_ids(1);
    for (unsigned char c : req->text()) resp->add_ids(c + 3);
    return grpc::Status::OK;
  }

  grpc::Status Detokenize(grpc::ServerContext*,
                          const v1::DetokenizeRequest* req,
                          v1::DetokenizeResponse* resp) override {
    for (int i = 0; i < req->ids_size(); ++i) {
      const int id = req->ids(i);
      if (id < 3 || id >= 259) {
        return {grpc::StatusCode::INVALID_ARGUMENT,
                absl::StrCat("ids[", i, "]: ", id,
                             " is outside the vocabulary [3, 259)")};
      }
      resp->mutable_text()->push_back(static_cast<char>(id - 3));
    }
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext*,
                            const v1::GetModelInfoRequest*,
                            v1::ModelInfo* info) override {
    info->set_name("fake");
    info->set_mode("flash");
    info->set_n_vocab(259);
    info->set_dram_budget_bytes(64 << 20);
    return grpc::Status::OK;
  }

  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*,
                        v1::Stats* stats) override {
    if (stall_stats)
      std::this_thread::sleep_for(std::chrono::milliseconds(700));
    stats->set_sessions_total(sessions_total.load());
    stats->set_tokens_generated(tokens_generated.load());
    stats->set_cache_hit_rate(0.5);
    return grpc::Status::OK;
  }

  std::mutex mu;
  std::vector<std::string> prompts;  // guarded by mu
  std::vector<std::string> stops;    // of the last request, guarded by mu
  std::atomic<int> cancelled{0};
  std::atomic<uint64_t> sessions_total{0};
  std::atomic<uint64_t> tokens_generated{0};
  std::atomic<bool> stall_stats{false};
};

// Starts a FakeFlashd before each test and stops it after.
class FakeDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_path_ = ::testing::TempDir() + "/fake.sock";
    ::unlink(socket_path_.c_str());
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + socket_path_,
                             grpc::InsecureServerCredentials());
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &tcp_port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    target_ = "unix:" + socket_path_;
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }

  std::unique_ptr<Client> MustConnect(ClientOptions options = {}) {
    absl::StatusOr<std::unique_ptr<Client>> c =
        Client::Connect(target_, options);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  FakeFlashd service_;
  std::unique_ptr<grpc::Server> server_;
  std::string socket_path_, target_;
  int tcp_port_ = 0;
};

}  // namespace flashd::client

#endif  // FLASHD_TESTS_FAKE_FLASHD_H_
