#include "daemon/server/scheduler.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace flashd::server {
namespace {

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
                                std::shared_ptr<EventChannel> channel) {
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
      std::move(channel), Clock::now());
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
  // Sessions still in their prompt run a chunk each; every session already
  // decoding joins one EvalSteps pass (in groups of the forward's batch),
  // so each weight -- and each neuron read from flash -- serves them all.
  batch_.clear();
  steps_.clear();
  std::vector<bool>& done = done_;
  done.assign(active_.size(), false);
  for (size_t i = 0; i < active_.size(); ++i) {
    Session& s = *active_[i];
    if (s.cancelled()) {
      done[i] = true;
    } else if (!s.decoding()) {
      const int32_t before = s.generated();
      done[i] = s.Step(forward, *model_.tokenizer, stop_at_bos_);
      tokens += s.generated() - before;
    } else {
      batch_.push_back(i);
    }
  }
  for (size_t b0 = 0; b0 < batch_.size(); b0 += forward.max_batch()) {
    const size_t b1 = std::min(batch_.size(), b0 + forward.max_batch());
    steps_.clear();
    for (size_t b = b0; b < b1; ++b) {
      steps_.push_back(active_[batch_[b]]->DecodeStep());
    }
    absl::Status st = forward.EvalSteps(steps_);
    for (size_t b = b0; b < b1; ++b) {
      Session& s = *active_[batch_[b]];
      if (!st.ok()) {
        s.Fail(st);
        done[batch_[b]] = true;
        continue;
      }
      done[batch_[b]] = s.FinishBatchedStep(
          forward, static_cast<int32_t>(b - b0), *model_.tokenizer,
          stop_at_bos_);
      ++tokens;
    }
  }
  for (size_t i = 0; i < active_.size(); ++i) {
    if (!done[i]) continue;
    freed += KvBytesFor(active_[i]->request());
    active_[i].reset();  // frees its KV cache now
    ++ended;
  }
  std::erase(active_, nullptr);
  RefreshSourceStats();
  std::lock_guard<std::mutex> lock(mu_);
  active_count_ -= ended;
  kv_reserved_ -= freed;
  stats_.tokens_generated += tokens;
  PromoteLocked();
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
