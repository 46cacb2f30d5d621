// In-process tests of daemon/server: stop strings, the event channel's
// one-write-at-a-time pump, request validation, and the scheduler running
// stories260K sessions together (golden ids, stop strings, context limit,
// queue and KV limits, cancellation).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/engine/forward.h"
#include "common/model/model_loader.h"
#include "daemon/server/request_parser.h"
#include "daemon/server/scheduler.h"
#include "daemon/server/service.h"
#include "daemon/server/stop_matcher.h"
#include "gtest/gtest.h"
#include "tests/test_data.h"

namespace flashd::server {
namespace {

using ::flashd::testing::ReadIds;
using ::flashd::testing::SharedPath;

TEST(StopMatcher, HoldsBackPrefixesAndCutsAtTheStop) {
  StopMatcher m({"END", "xy"});
  bool stopped = false;
  EXPECT_EQ(m.Push("abc E", &stopped), "abc ");  // "E" may start "END"
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.Push("Nx", &stopped), "EN");  // "ENx" starts no stop; "x" may
  EXPECT_EQ(m.Push("Q", &stopped), "xQ");
  EXPECT_EQ(m.Push("tail EN", &stopped), "tail ");
  EXPECT_EQ(m.Push("D and more", &stopped), "");
  EXPECT_TRUE(stopped);
  StopMatcher none({});
  EXPECT_EQ(none.Push("anything", &stopped), "anything");
  StopMatcher flush({"stop"});
  EXPECT_EQ(flush.Push("so st", &stopped), "so ");
  EXPECT_EQ(flush.Flush(), "st");
}

// Order of every event any Recorder saw.
std::atomic<int64_t> g_sequence{0};

// Records what the channel hands it; completes writes at once.
class Recorder : public EventWriter {
 public:
  explicit Recorder(std::shared_ptr<EventChannel> channel, bool auto_done = true)
      : channel_(std::move(channel)), auto_done_(auto_done) {
    channel_->Attach(this);
  }
  ~Recorder() override { channel_->Detach(); }
  void StartEvent(const SessionEvent& e) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(e);
      sequence_.push_back(g_sequence++);
      if (e.last()) ended_ = true;
    }
    cv_.notify_all();
    if (!e.last() && auto_done_) channel_->WriteDone(true);
  }
  void FinishCancelled() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = ended_ = true;
    cv_.notify_all();
  }
  // Waits until the stream ended; returns its events.
  std::vector<SessionEvent> Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return ended_; });
    return events_;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_.size();
  }
  // Global sequence number of event i.
  int64_t sequence(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return sequence_.at(i);
  }
  bool cancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }
  const std::shared_ptr<EventChannel>& channel() { return channel_; }

 private:
  std::shared_ptr<EventChannel> channel_;
  bool auto_done_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<SessionEvent> events_;
  std::vector<int64_t> sequence_;
  bool ended_ = false;
  bool cancelled_ = false;
};

SessionEvent Token(int32_t id) {
  SessionEvent e;
  e.kind = SessionEvent::Kind::kToken;
  e.token_id = id;
  return e;
}

TEST(EventChannel, OneWriteAtATimeInOrderAndCancel) {
  auto channel = std::make_shared<EventChannel>();
  channel->Push(Token(1));  // before the writer attaches: waits
  channel->Push(Token(2));
  Recorder r(channel, /*auto_done=*/false);
  EXPECT_EQ(r.size(), 1u);  // the second waits for WriteDone
  EXPECT_EQ(channel->backlog(), 1u);
  channel->WriteDone(true);
  EXPECT_EQ(r.size(), 2u);
  channel->Push(Token(3));  // write 2 still in flight
  EXPECT_EQ(r.size(), 2u);
  channel->Cancel();
  EXPECT_TRUE(channel->cancelled());
  EXPECT_FALSE(r.cancelled());  // not while a write is in flight
  channel->WriteDone(false);
  EXPECT_TRUE(r.cancelled());
  channel->Push(Token(4));  // dropped
  EXPECT_EQ(r.size(), 2u);
}

// Makes every layer's FFN take 2 ms longer.
class SlowObserver : public FfnObserver {
 public:
  void Observe(int32_t, const float*, const float*, const float*,
               int32_t) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
};

// The model and engine pieces the scheduler serves, from ../shared.
class StoriesServer : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHD_REQUIRE_SHARED(SharedPath("models/stories260K.bin"));
    LoadOptions options;
    options.tokenizer_path = SharedPath("models/tok512.bin");
    absl::StatusOr<LoadedModel> lm =
        LoadModel(SharedPath("models/stories260K.bin"), options);
    ASSERT_TRUE(lm.ok()) << lm.status();
    loaded_ = std::move(*lm);
    pool_ = std::make_unique<ThreadPool>(1);
    forward_ = std::make_unique<Forward>(*loaded_.model, pool_.get(), 512, 16);
    model_.forward = forward_.get();
    model_.tokenizer = loaded_.tokenizer.get();
    model_.kv_type = DefaultKvType(*loaded_.model);  // f32: exact goldens
    model_.n_ctx = 512;
    limits_.n_vocab = 512;
    limits_.n_ctx = 512;
  }

  SessionRequest Greedy(const std::string& prompt, int32_t max_tokens) {
    v1::GenerateRequest r;
    r.set_prompt(prompt);
    r.set_max_tokens(max_tokens);
    r.mutable_sampling()->set_temperature(0);
    absl::StatusOr<SessionRequest> s =
        ParseGenerateRequest(r, *loaded_.tokenizer, limits_);
    EXPECT_TRUE(s.ok()) << s.status();
    return *s;
  }

  // Generated ids of a finished stream, checking the event order.
  static std::vector<int32_t> Ids(const std::vector<SessionEvent>& events,
                                  std::string* text = nullptr) {
    std::vector<int32_t> ids;
    EXPECT_EQ(events.front().kind, SessionEvent::Kind::kStarted);
    for (const SessionEvent& e : events) {
      if (e.kind != SessionEvent::Kind::kToken) continue;
      EXPECT_EQ(e.index, static_cast<int32_t>(ids.size()));
      ids.push_back(e.token_id);
      if (text != nullptr) *text += e.text;
    }
    EXPECT_EQ(events.back().kind, SessionEvent::Kind::kDone);
    return ids;
  }

  LoadedModel loaded_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<Forward> forward_;
  ServedModel model_;
  RequestLimits limits_;
};

TEST_F(StoriesServer, MalformedRequestsNameTheField) {
  const auto error = [&](const v1::GenerateRequest& r) {
    return ParseGenerateRequest(r, *loaded_.tokenizer, limits_).status();
  };
  v1::GenerateRequest r;
  EXPECT_NE(error(r).message().find("input"), std::string::npos);
  r.set_prompt("");
  EXPECT_NE(error(r).message().find("prompt is empty"), std::string::npos);
  r.mutable_tokens()->add_ids(1);
  r.mutable_tokens()->add_ids(512);
  EXPECT_NE(error(r).message().find("tokens.ids[1] = 512"), std::string::npos);
  r.set_prompt("Once");
  r.set_max_tokens(-1);
  EXPECT_NE(error(r).message().find("max_tokens -1"), std::string::npos);
  r.set_max_tokens(0);
  r.mutable_sampling()->set_temperature(-0.5f);
  EXPECT_NE(error(r).message().find("sampling.temperature"), std::string::npos);
  r.mutable_sampling()->set_temperature(0.5f);
  r.mutable_sampling()->set_top_p(0);
  EXPECT_NE(error(r).message().find("sampling.top_p"), std::string::npos);
  r.mutable_sampling()->set_top_p(1.5f);
  EXPECT_EQ(error(r).code(), absl::StatusCode::kInvalidArgument);
  r.mutable_sampling()->set_top_p(1);
  r.mutable_sampling()->set_top_k(-3);
  EXPECT_NE(error(r).message().find("sampling.top_k"), std::string::npos);
  r.mutable_sampling()->clear_top_k();
  r.add_stop("x");
  r.add_stop("");
  EXPECT_NE(error(r).message().find("stop[1] is empty"), std::string::npos);
  r.clear_stop();
  r.set_delivery(static_cast<v1::Delivery>(7));
  EXPECT_NE(error(r).message().find("delivery 7"), std::string::npos);
  r.set_delivery(v1::SHARED_MEMORY);
  {
    absl::StatusOr<SessionRequest> shm =
        ParseGenerateRequest(r, *loaded_.tokenizer, limits_);
    ASSERT_TRUE(shm.ok()) << shm.status();
    EXPECT_TRUE(shm->shared_memory);
  }
  r.set_delivery(v1::STREAM);
  std::string long_prompt;
  for (int i = 0; i < 600; ++i) long_prompt += " dog";
  r.set_prompt(long_prompt);
  EXPECT_NE(error(r).message().find("context holds 512"), std::string::npos);
  r.set_prompt("Once");
  absl::StatusOr<SessionRequest> ok =
      ParseGenerateRequest(r, *loaded_.tokenizer, limits_);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->max_tokens, 256);  // the default
  EXPECT_EQ(ok->prompt.front(), loaded_.tokenizer->bos_id());
}

TEST_F(StoriesServer, QueueAndKvLimitsWithoutTheThread) {
  SchedulerOptions o;
  o.max_sessions = 1;
  o.max_queue = 1;
  o.kv_budget = 1;
  Scheduler probe(model_, o);
  const uint64_t one = probe.KvBytesFor(Greedy("Once", 100));
  EXPECT_EQ(probe.Enqueue(Greedy("Once", 100), std::make_shared<EventChannel>())
                .code(),
            absl::StatusCode::kResourceExhausted);  // above the whole budget
  o.kv_budget = one;
  Scheduler s(model_, o);  // not started: nothing leaves the queue
  Recorder a(std::make_shared<EventChannel>());
  Recorder b(std::make_shared<EventChannel>());
  ASSERT_TRUE(s.Enqueue(Greedy("Once", 100), a.channel()).ok());  // admitted
  ASSERT_TRUE(s.Enqueue(Greedy("Once", 100), b.channel()).ok());  // queued
  const absl::Status full =
      s.Enqueue(Greedy("Once", 100), std::make_shared<EventChannel>());
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("--max-queue 1"), std::string::npos);
  SchedulerStats st = s.Stats();
  EXPECT_EQ(st.sessions_active, 1);
  EXPECT_EQ(st.sessions_queued, 1);
  EXPECT_EQ(st.kv_bytes_in_use, one);
  EXPECT_EQ(st.kv_bytes_limit, one);
  s.Stop();  // both end with UNAVAILABLE
  for (Recorder* r : {&a, &b}) {
    std::vector<SessionEvent> ev = r->Wait();
    ASSERT_EQ(ev.back().kind, SessionEvent::Kind::kError);
    EXPECT_EQ(ev.back().error.code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ(s.Enqueue(Greedy("Once", 10), std::make_shared<EventChannel>()).code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(StoriesServer, SessionsProgressTogetherAndMatchGoldens) {
  const std::vector<int32_t> dog = ReadIds(SharedPath("golden/stories260K_greedy_dog.ids"));
  const std::vector<int32_t> park = ReadIds(SharedPath("golden/stories260K_greedy_park.ids"));
  const std::string dog_prompt = "Once upon a time, there was a little dog";
  const std::string park_prompt = "Tom and Sue went to the park";
  SchedulerOptions o;
  o.max_sessions = 3;
  o.kv_budget = 3 * KvCache::BytesFor(loaded_.model->config, 512, model_.kv_type);
  Scheduler s(model_, o);
  Recorder r_dog(std::make_shared<EventChannel>());
  Recorder r_park(std::make_shared<EventChannel>());
  Recorder r_stop(std::make_shared<EventChannel>());
  SessionRequest dog_req = Greedy(dog_prompt, 300);
  const size_t n_dog = dog_req.prompt.size() - 1;  // after BOS
  SessionRequest park_req = Greedy(park_prompt, 0);
  const size_t n_park = park_req.prompt.size() - 1;
  park_req.max_tokens = static_cast<int32_t>(park.size() - n_park);  // 256 steps
  SessionRequest stop_req = Greedy(dog_prompt, 300);
  stop_req.stop = {" box"};
  ASSERT_TRUE(s.Enqueue(dog_req, r_dog.channel()).ok());
  ASSERT_TRUE(s.Enqueue(park_req, r_park.channel()).ok());
  ASSERT_TRUE(s.Enqueue(stop_req, r_stop.channel()).ok());
  s.Start();

  std::string dog_text;
  std::vector<SessionEvent> ev = r_dog.Wait();
  EXPECT_EQ(Ids(ev, &dog_text),
            std::vector<int32_t>(dog.begin() + n_dog, dog.end()));
  EXPECT_EQ(ev.back().reason, FinishReason::kEos);  // the story's BOS
  EXPECT_EQ(ev.front().prompt_tokens, static_cast<int32_t>(n_dog + 1));
  EXPECT_EQ(ev.back().timings.generated_tokens,
            static_cast<int32_t>(dog.size() - n_dog));
  std::string golden_text =
      testing::ReadFileBytes(SharedPath("golden/stories260K_greedy_dog.txt"));
  while (!golden_text.empty() && golden_text.back() == '\n') golden_text.pop_back();
  EXPECT_EQ(dog_prompt + dog_text, golden_text);

  ev = r_park.Wait();
  EXPECT_EQ(Ids(ev), std::vector<int32_t>(park.begin() + n_park, park.end()));
  EXPECT_EQ(ev.back().reason, FinishReason::kMaxTokens);

  std::string stop_text;
  ev = r_stop.Wait();
  Ids(ev, &stop_text);
  EXPECT_EQ(ev.back().reason, FinishReason::kStopString);
  EXPECT_EQ(stop_text, dog_text.substr(0, dog_text.find(" box")));

  // Rounds: every session advances once per round, the prompts sharing
  // passes (16 rows: dog's 13-token prompt and 3 of park's in the first
  // pass, so park finishes its prompt in round 2, next to dog's second
  // token). Nobody runs ahead: park's first token came before dog's third.
  EXPECT_LT(r_park.sequence(1), r_dog.sequence(3));
  EXPECT_GT(r_park.sequence(1), r_dog.sequence(1));
  // Stats settle at the end of the round that sent the last Done.
  SchedulerStats st = s.Stats();
  for (int i = 0; i < 2000 && st.sessions_active != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    st = s.Stats();
  }
  EXPECT_EQ(st.sessions_total, 3u);
  EXPECT_EQ(st.sessions_active, 0);
  EXPECT_EQ(st.kv_bytes_in_use, 0u);
  EXPECT_GT(st.tokens_generated, dog.size() - n_dog);
}

TEST_F(StoriesServer, ContextLimitAndCancellationFreeTheSession) {
  model_.n_ctx = 40;  // sessions get at most 40 positions
  SchedulerOptions o;
  o.max_sessions = 2;
  o.kv_budget = 2 * KvCache::BytesFor(loaded_.model->config, 512, model_.kv_type);
  Scheduler s(model_, o);
  s.Start();
  Recorder full(std::make_shared<EventChannel>());
  SessionRequest req = Greedy("Once upon a time, there was a little dog", 300);
  const int32_t n_prompt = static_cast<int32_t>(req.prompt.size());
  ASSERT_TRUE(s.Enqueue(req, full.channel()).ok());
  std::vector<SessionEvent> ev = full.Wait();
  EXPECT_EQ(ev.back().reason, FinishReason::kContextFull);
  EXPECT_EQ(static_cast<int32_t>(Ids(ev).size()), 40 - n_prompt + 1);

  // Slow the engine down (2 ms per layer: 300 tokens would take 3 s) and
  // give the session a writer that never completes a write: it keeps
  // generating into the channel until it is cancelled, then is freed.
  SlowObserver slow;
  forward_->set_observer(&slow);
  Recorder stuck(std::make_shared<EventChannel>(), /*auto_done=*/false);
  SessionRequest slow_req = Greedy("Once", 300);
  slow_req.sampling.temperature = 1;  // no early end of story
  ASSERT_TRUE(s.Enqueue(slow_req, stuck.channel()).ok());
  while (stuck.channel()->backlog() < 3) std::this_thread::yield();
  EXPECT_EQ(s.Stats().sessions_active, 1);
  EXPECT_GT(s.Stats().kv_bytes_in_use, 0u);
  stuck.channel()->Cancel();
  for (int i = 0; i < 2000 && s.Stats().sessions_active != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(s.Stats().sessions_active, 0);
  EXPECT_EQ(s.Stats().kv_bytes_in_use, 0u);
  EXPECT_LT(s.Stats().tokens_generated, static_cast<uint64_t>(40 - n_prompt + 1 + 100));
  forward_->set_observer(nullptr);
}

TEST(RingCapacity, BoundedByTheContextAndNeverFull) {
  SessionRequest r;
  r.prompt = {1, 2, 3};
  r.max_tokens = 100;
  // 100 tokens of pieces up to 16 bytes (+3 UTF-8 bytes): one record each.
  EXPECT_EQ(RingCapacityFor(r, 512, 16), 128u);
  // Longer pieces or a stop string: more records per token.
  EXPECT_EQ(RingCapacityFor(r, 512, 48), 256u);
  r.stop = {std::string(60, 'x')};
  EXPECT_EQ(RingCapacityFor(r, 512, 16), 256u);
  r.stop.clear();
  // A huge max_tokens is bounded by what the context lets it generate.
  r.max_tokens = 1 << 30;
  EXPECT_EQ(RingCapacityFor(r, 512, 16), 512u);  // 510 tokens
}

}  // namespace
}  // namespace flashd::server
