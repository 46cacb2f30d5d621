#include "daemon/server/scheduler.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace flashd::server {
namespace {

// How long the ring of a finished session waits for its client to attach,
// and how many may wait at once (the oldest goes first).
constexpr auto kRingLinger = std::chrono::seconds(10);
constexpr size_t kMaxLingeringRings = 64;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             Clock::now().time_since_epoch())
      .count();
}

// Session ids: a random per-process prefix and a counter, so ids from a
// restarted daemon do not repeat the previous one's.
std::string RandomPrefix() {
  std::random_device rd;
  return absl::StrFormat("%08x-", rd());
}

}  // namespace

Scheduler::Scheduler(const ServedModel& model, const SchedulerOptions& options)
    : model_(model),
      options_(options),
      stop_at_bos_(model.tokenizer->vocab().llama2c_style),
      id_prefix_(RandomPrefix()) {
  stats_.kv_bytes_limit = options_.kv_budget;
  progress_ns_ = NowNs();
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Start() {
  RefreshSourceStats();
  thread_ = std::thread([this] { Run(); });
}

uint64_t Scheduler::KvBytesFor(const SessionRequest& request) const {
  return KvCache::BytesFor(model_.forward->config(),
                           Session::ContextFor(request, model_.n_ctx),
                           model_.kv_type);
}

absl::Status Scheduler::Enqueue(SessionRequest request,
                                std::shared_ptr<EventChannel> channel,
                                std::unique_ptr<shm::TokenRingWriter> ring) {
  const uint64_t need = KvBytesFor(request);
  if (need > options_.kv_budget) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "this request's KV cache needs ", need, " bytes (",
        Session::ContextFor(request, model_.n_ctx),
        " positions: prompt + max_tokens) but --kv-budget is ",
        options_.kv_budget, " bytes for all sessions; lower max_tokens"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) {
    return absl::UnavailableError("flashd is shutting down");
  }
  auto session = std::make_unique<Session>(
      absl::StrCat(id_prefix_, next_id_++), std::move(request),
      std::move(channel), std::move(ring), Clock::now());
  if (queue_.empty() && active_count_ < options_.max_sessions &&
      kv_reserved_ + need <= options_.kv_budget) {
    ++active_count_;
    kv_reserved_ += need;
    admitted_.push_back(std::move(session));
  } else if (static_cast<int32_t>(queue_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the queue is full: ", queue_.size(), " requests wait (--max-queue ",
        options_.max_queue, ") behind ", active_count_,
        " active sessions (--max-sessions ", options_.max_sessions,
        "); retry later"));
  } else {
    queue_.push_back(std::move(session));
  }
  cv_.notify_one();
  return absl::OkStatus();
}

void Scheduler::PromoteLocked() {
  while (!queue_.empty() && active_count_ < options_.max_sessions) {
    if (queue_.front()->cancelled()) {  // holds nothing yet: drop it
      queue_.pop_front();
      continue;
    }
    const uint64_t need = KvBytesFor(queue_.front()->request());
    if (kv_reserved_ + need > options_.kv_budget) break;  // arrival order
    ++active_count_;
    kv_reserved_ += need;
    admitted_.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
}

void Scheduler::Run() {
  const ModelConfig& config = model_.forward->config();
  while (true) {
    std::vector<std::unique_ptr<Session>> admitted;
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stop_ && admitted_.empty() && active_.empty()) {
        progress_ns_ = NowNs();  // idle is healthy
        SweepRings();
        cv_.wait_for(lock, std::chrono::seconds(1));
      }
      if (stop_) break;
      // Requests cancelled while queued hold nothing yet: just drop them.
      std::erase_if(queue_, [](const std::unique_ptr<Session>& s) {
        return s->cancelled();
      });
      PromoteLocked();
      admitted.swap(admitted_);
      stats_.sessions_total += admitted.size();
    }
    for (std::unique_ptr<Session>& s : admitted) {
      s->Admit(config, model_.n_ctx, model_.kv_type);  // allocates its KV
      active_.push_back(std::move(s));
    }
    Round();
    progress_ns_ = NowNs();
  }
}

void Scheduler::Round() {
  uint64_t tokens = 0;
  uint64_t freed = 0;
  int32_t ended = 0;
  Forward& forward = *model_.forward;
  const int32_t max_rows = forward.max_batch();
  // Every session takes one step per round, all in as few EvalSteps passes
  // as max_batch allows: decoding sessions one token each, sessions in
  // their prompt a chunk of what rows are left. So each weight -- and each
  // neuron read from flash -- serves every session in the pass, prompts
  // included.
  std::vector<bool>& done = done_;
  done.assign(active_.size(), false);
  batch_.clear();
  for (int pass = 0; pass < 2; ++pass) {  // decoding sessions first
    for (size_t i = 0; i < active_.size(); ++i) {
      if (active_[i]->cancelled()) {
        done[i] = true;
      } else if (active_[i]->decoding() == (pass == 0)) {
        batch_.push_back(i);
      }
    }
  }
  size_t next = 0;
  while (next < batch_.size()) {
    steps_.clear();
    const size_t first = next;
    int32_t rows = 0;
    while (next < batch_.size() && rows < max_rows) {
      steps_.push_back(active_[batch_[next]]->NextStep(max_rows - rows));
      rows += static_cast<int32_t>(steps_.back().tokens.size());
      ++next;
    }
    const absl::Status st = forward.EvalSteps(steps_);
    for (size_t b = first; b < next; ++b) {
      Session& s = *active_[batch_[b]];
      if (!st.ok()) {
        s.Fail(st);
        done[batch_[b]] = true;
        continue;
      }
      const int32_t before = s.generated();
      done[batch_[b]] = s.CompleteStep(forward, static_cast<int32_t>(b - first),
                                       *model_.tokenizer, stop_at_bos_);
      tokens += s.generated() - before;
    }
  }
  for (size_t i = 0; i < active_.size(); ++i) {
    if (!done[i]) continue;
    freed += KvBytesFor(active_[i]->request());
    ReleaseRing(*active_[i]);
    active_[i].reset();  // frees its KV cache now
    ++ended;
  }
  std::erase(active_, nullptr);
  SweepRings();
  RefreshSourceStats();
  std::lock_guard<std::mutex> lock(mu_);
  active_count_ -= ended;
  kv_reserved_ -= freed;
  stats_.tokens_generated += tokens;
  PromoteLocked();
}

void Scheduler::ReleaseRing(Session& session) {
  std::unique_ptr<shm::TokenRingWriter> ring = session.TakeRing();
  // Only a generation that ran to its Done waits for its reader: the
  // channel may already look cancelled then (the stream finished), so
  // that is not asked.
  if (ring == nullptr || !session.completed() || ring->consumer_attached()) {
    return;  // destroyed here: finished (or abandoned) and unlinked
  }
  if (lingering_.size() >= kMaxLingeringRings) lingering_.erase(lingering_.begin());
  lingering_.push_back({std::move(ring), Clock::now() + kRingLinger});
}

void Scheduler::SweepRings() {
  const Clock::time_point now = Clock::now();
  std::erase_if(lingering_, [now](const LingeringRing& r) {
    return now >= r.until || r.ring->consumer_attached();
  });
}

void Scheduler::RefreshSourceStats() {
  if (model_.source == nullptr) return;
  const flash::SourceStats& st = model_.source->stats();
  const uint64_t cache_bytes = model_.source->plan().cache;
  const double hit = st.neurons_needed > 0
                         ? static_cast<double>(st.neurons_hit) / st.neurons_needed
                         : 0.0;
  const double per_token =
      st.tokens > 0 ? static_cast<double>(st.bytes_read) / st.tokens : 0.0;
  const double mb_s =
      st.read_seconds > 0 ? st.bytes_read / st.read_seconds / 1e6 : 0.0;
  std::lock_guard<std::mutex> lock(mu_);
  stats_.cache_bytes = cache_bytes;
  stats_.cache_hit_rate = hit;
  stats_.flash_bytes_per_token = per_token;
  stats_.read_mb_s = mb_s;
  stats_.cache_warm_neurons = st.warm_neurons;
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // The thread is gone: what is left is ours to end.
  const absl::Status gone = absl::UnavailableError(
      "flashd stopped before this generation finished");
  std::lock_guard<std::mutex> lock(mu_);
  for (auto* list : {&active_, &admitted_}) {
    for (std::unique_ptr<Session>& s : *list) s->Fail(gone);
    list->clear();
  }
  for (std::unique_ptr<Session>& s : queue_) s->Fail(gone);
  queue_.clear();
  lingering_.clear();
  active_count_ = 0;
  kv_reserved_ = 0;
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats s = stats_;
  s.sessions_active = active_count_;
  s.sessions_queued = static_cast<int32_t>(queue_.size());
  s.kv_bytes_in_use = kv_reserved_;
  s.kv_bytes_limit = options_.kv_budget;
  return s;
}

double Scheduler::SecondsSinceProgress() const {
  return (NowNs() - progress_ns_.load()) / 1e9;
}

}  // namespace flashd::server
