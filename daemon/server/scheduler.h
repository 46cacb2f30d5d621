// The inference thread: owns the engine (Forward, and through it the weight
// source and neuron cache) and every session's KV cache. gRPC handlers only
// Enqueue; the thread admits sessions in arrival order within
// --max-sessions and the KV budget, and runs rounds: each round advances
// every active session by one step, all of them in one Forward::EvalSteps
// pass (several when their tokens exceed --batch): one token per decoding
// session, a prompt chunk per session still in its prompt, each on its own
// KV cache. So a round reads each weight -- and each neuron missing from
// the flash cache -- once for all of them.
#ifndef FLASHD_DAEMON_SERVER_SCHEDULER_H_
#define FLASHD_DAEMON_SERVER_SCHEDULER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "common/engine/forward.h"
#include "common/engine/kv_cache.h"
#include "common/flash/flash_engine.h"
#include "common/shm/shm_dir.h"
#include "common/tokenizer/tokenizer.h"
#include "daemon/server/event_channel.h"
#include "daemon/server/session.h"

namespace flashd::server {

// The engine the daemon serves. Not owned: everything must outlive the
// Scheduler. `forward` (and the source behind it) is used only by the
// inference thread; the tokenizer is immutable and shared.
struct ServedModel {
  Forward* forward = nullptr;
  const Tokenizer* tokenizer = nullptr;
  const flash::FlashSource* source = nullptr;  // null in resident mode
  KvType kv_type = KvType::kF16;
  int32_t n_ctx = 0;  // positions per session at most
  // For GetModelInfo.
  std::string name, path, type, mode, sparsity;
  uint64_t dram_budget = 0;  // 0: unbounded
  // Where token rings (and the neuron cache segment) are created.
  std::shared_ptr<const shm::ShmDir> shm_dir;
};

struct SchedulerOptions {
  int32_t max_sessions = 4;  // sessions decoding at once
  int32_t max_queue = 16;    // requests waiting for admission
  uint64_t kv_budget = 0;    // bytes of all sessions' KV caches; > 0
};

// A consistent snapshot for GetStats.
struct SchedulerStats {
  int32_t sessions_active = 0;
  int32_t sessions_queued = 0;
  uint64_t sessions_total = 0;    // admitted since start
  uint64_t tokens_generated = 0;
  uint64_t kv_bytes_in_use = 0;
  uint64_t kv_bytes_limit = 0;
  // Weight source (all zero in resident mode): neuron cache capacity,
  // hit rate, flash bytes per evaluated token (prompt tokens included),
  // read throughput while reading.
  uint64_t cache_bytes = 0;
  double cache_hit_rate = 0;
  double flash_bytes_per_token = 0;
  double read_mb_s = 0;
  uint64_t cache_warm_neurons = 0;  // taken back from the cache segment
};

class Scheduler {
 public:
  Scheduler(const ServedModel& model, const SchedulerOptions& options);
  // Stops the thread (Stop()).
  ~Scheduler();

  // Starts the inference thread.
  void Start();

  // Queues a validated request; its events go to `channel`, and its tokens
  // to `ring` when given (shared-memory delivery; freed with the session).
  // Errors: RESOURCE_EXHAUSTED when the queue is full or the request's KV
  // cache alone exceeds the budget; UNAVAILABLE after Stop().
  absl::Status Enqueue(SessionRequest request,
                       std::shared_ptr<EventChannel> channel,
                       std::unique_ptr<shm::TokenRingWriter> ring = nullptr);

  // Ends every session still running with UNAVAILABLE and joins the
  // thread. Call after the gRPC server stopped delivering requests.
  void Stop();

  SchedulerStats Stats() const;
  // Bytes the KV cache of `request` takes.
  uint64_t KvBytesFor(const SessionRequest& request) const;
  // Seconds since the inference thread last finished a round or checked
  // in while idle (for the systemd watchdog).
  double SecondsSinceProgress() const;

 private:
  void Run();
  // Moves queue heads that fit into admitted_ (caller holds mu_).
  void PromoteLocked();
  // Runs one round over active_; frees ended sessions.
  void Round();
  void RefreshSourceStats();
  // Frees the ring of an ended session, or keeps it (lingering_) when its
  // client has not attached yet: a short generation can end before the
  // client has read Started, and its tokens must still be there then.
  void ReleaseRing(Session& session);
  // Frees lingering rings whose client attached or whose time is up.
  void SweepRings();

  const ServedModel model_;
  const SchedulerOptions options_;
  const bool stop_at_bos_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  // Guarded by mu_.
  std::deque<std::unique_ptr<Session>> queue_;     // waiting for room
  std::vector<std::unique_ptr<Session>> admitted_; // room reserved
  bool stop_ = false;
  int32_t active_count_ = 0;     // admitted_ + active_
  uint64_t kv_reserved_ = 0;     // their KV bytes
  uint64_t next_id_ = 1;
  SchedulerStats stats_;

  // Inference thread only.
  std::vector<std::unique_ptr<Session>> active_;
  // Round scratch (inference thread): sessions in this round's passes (in
  // pass order), the steps of one pass, which sessions ended.
  std::vector<size_t> batch_;
  std::vector<Forward::Step> steps_;
  std::vector<bool> done_;
  struct LingeringRing {
    std::unique_ptr<shm::TokenRingWriter> ring;
    Clock::time_point until;
  };
  std::vector<LingeringRing> lingering_;
  std::thread thread_;
  std::atomic<int64_t> progress_ns_{0};
  const std::string id_prefix_;
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_SCHEDULER_H_
