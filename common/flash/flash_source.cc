#include "common/flash/flash_source.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/flash/bundle_ffn.h"
#include "common/flash/cache_segment.h"
#include "common/flash/io_worker.h"
#include "common/flash/neuron_cache.h"
#include "common/flash/read_planner.h"
#include "common/flash/source_util.h"
#include "common/flash/streamed_tensor.h"
#include "common/io/aligned_buffer.h"
#include "common/kernels/kernels.h"

namespace flashd::flash {
namespace {

// Staging for the reads of missing neurons: kStages buffers, each filled by
// one IoWorker batch of up to kStageBytes while the previous one computes.
constexpr int kStages = 3;
constexpr uint64_t kStageBytes = uint64_t{8} << 20;
// Runs of at least this many wanted neurons are computed straight from
// staging; shorter runs are gathered into a contiguous scratch first.
constexpr int32_t kDirectRun = 8;

// Largest buffer the classifier streams through when it does not fit.
constexpr uint64_t kOutputChunkBytes = uint64_t{8} << 20;

// What flash mode keeps for the whole run, and the staging size.
struct Footprint {
  uint64_t resident = 0;  // per-layer resident ranges, norms, CRC tables
  uint64_t output = 0;    // the classifier, resident when it fits
  uint64_t out_chunk = 0; // its streaming buffer otherwise
  uint64_t embd = 0;      // row buffer for streamed token embeddings
  uint64_t stage = 0;     // one staging buffer
  uint64_t scratch = 0;   // gather scratch (one stage's worth of bundles)
  bool tied = false;      // output shares token_embd's bytes

  uint64_t fixed(uint64_t predictor) const {
    return resident + kStages * stage + scratch + predictor;
  }
  // With the classifier resident (embeddings then come from it if tied).
  uint64_t with_output(uint64_t predictor) const {
    return fixed(predictor) + output + (tied ? 0 : embd);
  }
  // With the classifier streamed in chunks: the least flash mode needs.
  uint64_t minimum(uint64_t predictor) const {
    return fixed(predictor) + out_chunk + embd;
  }
};

Range LayerResidentRange(const LayerLayout& l) {
  return AlignRange(l.attn_norm.extent.offset, l.bundles.offset, kFlashAlign);
}

Footprint Measure(const FlashFile& file) {
  const FlashLayout& lay = file.layout();
  Footprint f;
  size_t max_bundle = 0;
  uint64_t max_array = 0;
  for (const LayerLayout& l : lay.layers) {
    f.resident += LayerResidentRange(l).bytes;
    f.resident += static_cast<uint64_t>(l.geometry.n_ff) * 4;  // CRC table
    max_bundle = std::max(max_bundle, l.geometry.bundle_bytes());
    max_array = std::max(max_array, l.bundles.bytes);
  }
  f.tied = lay.output.extent.offset == lay.token_embd.extent.offset;
  const Extent& o = lay.output.extent;
  f.output = AlignRange(o.offset, o.offset + o.bytes, kFlashAlign).bytes;
  f.out_chunk = std::min<uint64_t>(f.output, kOutputChunkBytes);
  const Extent& n = lay.output_norm.extent;
  f.resident += AlignRange(n.offset, n.offset + n.bytes, kFlashAlign).bytes;
  const uint64_t row = RowSize(lay.token_embd.type, lay.token_embd.cols);
  f.embd = ((row + kStreamChunkBytes - 1) / kStreamChunkBytes + 1) *
           kStreamChunkBytes;
  // A stage holds at least one bundle rounded out to the alignment.
  const uint64_t one = (max_bundle + 2 * kFlashAlign) / kFlashAlign * kFlashAlign;
  f.stage = std::max<uint64_t>(
      one, std::min<uint64_t>(kStageBytes, max_array + 2 * kFlashAlign));
  f.scratch = f.stage;
  return f;
}

// How flash mode splits a budget: whether the classifier streams, the
// plan without the caches, and the cache bytes each layer gets.
struct BudgetSplit {
  bool stream_output = false;
  MemoryPlan plan;
  uint64_t per_layer_cache = 0;  // max() when the budget is unbounded

  // Slots of a layer whose bundles are `bundle_bytes` long.
  int32_t Slots(int32_t n_ff, size_t bundle_bytes) const {
    return static_cast<int32_t>(
        std::min<uint64_t>(n_ff, per_layer_cache / bundle_bytes));
  }
};

ReadPlannerOptions PlannerOptions(const SourceOptions& options,
                                  size_t alignment) {
  ReadPlannerOptions po;
  po.alignment = alignment;
  po.max_read_bytes = std::max<size_t>(
      alignment, options.max_read_bytes / alignment * alignment);
  po.profile = options.profile;
  po.queue_depth = options.queue_depth;
  return po;
}

// Requires a budget of at least fp.minimum(options.predictor_bytes) (or 0).
BudgetSplit SplitBudget(const Footprint& fp, const SourceOptions& options,
                        int32_t n_layer) {
  const uint64_t predictor = options.predictor_bytes;
  BudgetSplit b;
  b.stream_output = options.dram_budget != 0 &&
                    options.dram_budget < fp.with_output(predictor);
  b.plan.budget = options.dram_budget;
  b.plan.minimum = fp.minimum(predictor);
  b.plan.resident = fp.resident + (b.stream_output ? 0 : fp.output);
  b.plan.buffers = kStages * fp.stage + fp.scratch +
                   (b.stream_output ? fp.out_chunk : 0) +
                   (b.stream_output || !fp.tied ? fp.embd : 0);
  b.plan.predictor = predictor;
  b.per_layer_cache =
      options.dram_budget == 0
          ? std::numeric_limits<uint64_t>::max()
          : (options.dram_budget - b.plan.total()) / n_layer;
  return b;
}

class FlashModeSource final : public FlashSource {
 public:
  FlashModeSource(const FlashFile& file, const SourceOptions& options,
                  ThreadPool* pool, int32_t max_batch)
      : file_(file),
        layout_(file.layout()),
        options_(options),
        pool_(pool),
        ffn_(layout_.config, pool, max_batch, MaxSpan(file)) {}

  static int32_t MaxSpan(const FlashFile& file) {
    return file.layout().config.n_ff;
  }

  absl::Status Init(const Footprint& fp) {
    const FlashLayout& lay = layout_;
    const int32_t n_layer = lay.config.n_layer;
    const int32_t n_ff = lay.config.n_ff;
    const BudgetSplit split = SplitBudget(fp, options_, n_layer);
    stream_output_ = split.stream_output;
    plan_ = split.plan;

    absl::Status started = StartIo(options_, file_.path(), kStages + 2);
    if (!started.ok()) return started;
    const size_t alignment = worker_->file().required_alignment();

    // Resident part: per-layer ranges, then output (and norm).
    uint64_t total = 0;
    std::vector<Range> ranges;
    for (const LayerLayout& l : lay.layers) {
      ranges.push_back(LayerResidentRange(l));
      total += ranges.back().bytes;
    }
    const Extent& o = lay.output.extent;
    ranges.push_back(stream_output_ ? Range{}
                                    : AlignRange(o.offset, o.offset + o.bytes,
                                                 kFlashAlign));
    total += ranges.back().bytes;
    const Extent& on = lay.output_norm.extent;
    ranges.push_back(AlignRange(on.offset, on.offset + on.bytes, kFlashAlign));
    total += ranges.back().bytes;
    absl::StatusOr<io::AlignedBuffer> res = io::AlignedBuffer::Create(total);
    if (!res.ok()) return res.status();
    resident_ = std::move(*res);
    std::vector<io::ReadRequest> reqs;
    std::vector<uint64_t> at;  // buffer offset of each range
    uint64_t pos = 0;
    for (const Range& r : ranges) {
      at.push_back(pos);
      SplitReads(r, options_.max_read_bytes, resident_.data() + pos, &reqs);
      pos += r.bytes;
    }
    absl::StatusOr<IoWorker::Ticket> t = worker_->Submit(absl::MakeSpan(reqs));
    if (!t.ok()) return t.status();
    absl::Status s = worker_->Wait(*t);
    if (!s.ok()) return s;
    layers_.resize(n_layer);
    for (int32_t l = 0; l < n_layer; ++l) {
      const uint8_t* base = resident_.data() + at[l];
      s = VerifyLayer(file_, l, base, ranges[l].offset, /*bundles=*/false,
                      pool_);
      if (!s.ok()) return s;
      layers_[l].weights = LayerViews(lay.layers[l], base, ranges[l].offset);
      layers_[l].tables = DownTablesAt(lay.layers[l], base, ranges[l].offset);
    }
    if (stream_output_) {
      absl::StatusOr<io::AlignedBuffer> ob =
          io::AlignedBuffer::Create(fp.out_chunk);
      if (!ob.ok()) return ob.status();
      out_buf_ = std::move(*ob);
      out_rows_ = OutputRowsPerChunk(lay.output, fp.out_chunk, kStreamChunkBytes);
      out_reqs_.reserve(fp.out_chunk / options_.max_read_bytes + 2);
    } else {
      const uint8_t* out_base = resident_.data() + at[n_layer];
      s = FlashFile::VerifyExtent(
          o, out_base + (o.offset - ranges[n_layer].offset), "output");
      if (!s.ok()) return s;
      output_ = TensorView(lay.output, out_base, ranges[n_layer].offset);
    }
    const uint8_t* norm_base = resident_.data() + at[n_layer + 1];
    s = FlashFile::VerifyExtent(
        on, norm_base + (on.offset - ranges[n_layer + 1].offset), "output_norm");
    if (!s.ok()) return s;
    output_norm_ = reinterpret_cast<const float*>(
        norm_base + (on.offset - ranges[n_layer + 1].offset));
    embd_from_output_ = fp.tied && !stream_output_;
    if (!embd_from_output_) {
      absl::StatusOr<StreamedTensor> emb = StreamedTensor::Create(
          file_, lay.token_embd, "token_embd", worker_.get());
      if (!emb.ok()) return emb.status();
      embd_ = std::move(*emb);
    }

    // Neuron caches (in a shared-memory segment when asked: a restarted
    // engine for the same file then starts warm), planners, staging.
    std::vector<CacheSegment::LayerSpec> specs(n_layer);
    for (int32_t l = 0; l < n_layer; ++l) {
      specs[l].bundle_bytes = lay.layers[l].geometry.bundle_bytes();
      specs[l].capacity = split.Slots(n_ff, specs[l].bundle_bytes);
    }
    if (!options_.cache_segment.empty()) {
      if (options_.cache_dir == nullptr) {
        return absl::InvalidArgumentError(
            "a neuron cache segment needs a shared-memory directory");
      }
      absl::StatusOr<std::unique_ptr<CacheSegment>> seg =
          CacheSegment::OpenOrCreate(options_.cache_dir, options_.cache_segment,
                                     lay.identity, n_ff, specs);
      if (seg.ok()) {
        segment_ = std::move(*seg);
        segment_name_ = segment_->name();
        segment_state_ = segment_->how();
        if (options_.cache_segment_auto) {
          for (const std::string& r : CacheSegment::RemoveStale(
                   *options_.cache_dir, kAutoCacheSegmentPrefix, lay.identity,
                   segment_name_)) {
            absl::StrAppend(&segment_state_, "; removed stale ", r);
          }
        }
      } else if (options_.cache_segment_auto &&
                 seg.status().code() != absl::StatusCode::kFailedPrecondition) {
        segment_state_ = absl::StrCat("private memory: ", seg.status().message());
      } else {
        return seg.status();
      }
    }
    for (int32_t l = 0; l < n_layer; ++l) {
      const LayerLayout& ll = lay.layers[l];
      const size_t bb = ll.geometry.bundle_bytes();
      const int32_t slots = specs[l].capacity;
      absl::StatusOr<NeuronCache> c = NeuronCache::Create(
          n_ff, bb, slots, segment_ ? segment_->slots(l) : nullptr);
      if (!c.ok()) return c.status();
      layers_[l].cache = std::make_unique<NeuronCache>(std::move(*c));
      if (segment_ != nullptr && segment_->attached()) Readopt(l);
      plan_.cache += static_cast<uint64_t>(slots) * bb;
      plan_.cache_slots = slots;
      absl::StatusOr<ReadPlanner> p =
          ReadPlanner::Create({ll.bundles.offset, bb, ll.geometry.n_ff},
                              PlannerOptions(options_, alignment));
      if (!p.ok()) return p.status();
      layers_[l].planner = std::make_unique<ReadPlanner>(std::move(*p));
    }
    for (Stage& st : stages_) {
      absl::StatusOr<io::AlignedBuffer> b = io::AlignedBuffer::Create(fp.stage);
      if (!b.ok()) return b.status();
      st.memory = std::move(*b);
      st.reqs.reserve(ReadPlanner::MaxReads(n_ff));
    }
    absl::StatusOr<io::AlignedBuffer> sc = io::AlignedBuffer::Create(fp.scratch);
    if (!sc.ok()) return sc.status();
    scratch_ = std::move(*sc);
    stage_bytes_ = fp.stage;
    scratch_ids_.resize(n_ff);
    bundle_ptrs_.resize(n_ff);
    persisted_.assign(n_layer, ~uint64_t{0});
    for (Pass& p : passes_) {
      p.misses.resize(n_ff);
      p.plan.Reserve(ReadPlanner::MaxReads(n_ff));
    }
    return absl::OkStatus();
  }

  absl::Status BeginEval(absl::Span<const int32_t> tokens) override {
    token_ += static_cast<int64_t>(tokens.size());
    stats_.tokens += tokens.size();
    return absl::OkStatus();
  }

  absl::Status Embed(absl::Span<const int32_t> tokens, float* x) override {
    const int32_t n_embd = layout_.config.n_embd;
    for (size_t t = 0; t < tokens.size(); ++t) {
      const uint8_t* row = nullptr;
      if (embd_from_output_) {
        row = output_.Row(tokens[t]);
      } else {
        absl::StatusOr<const uint8_t*> r = embd_.Row(tokens[t]);
        if (!r.ok()) return r.status();
        row = *r;
      }
      kernels::ToFloat(layout_.token_embd.type, row, x + t * n_embd, n_embd);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<const LayerWeights*> AcquireLayer(int32_t l) override {
    return &layers_[l].weights;
  }
  void ReleaseLayer(int32_t) override {}
  bool ffn_in_source() const override { return true; }
  absl::Status RunFfn(int32_t l, const float* xb, int32_t n_tokens,
                      const uint8_t* keep, float* out) override;
  const float* output_norm() override { return output_norm_; }
  int32_t output_chunks() const override {
    if (!stream_output_) return 1;
    return static_cast<int32_t>((layout_.output.rows + out_rows_ - 1) /
                                out_rows_);
  }
  absl::StatusOr<OutputChunk> AcquireOutput(int32_t chunk) override {
    if (!stream_output_) return OutputChunk{&output_, 0};
    const TensorExtent& t = layout_.output;
    const int64_t first = chunk * out_rows_;
    const int64_t rows = std::min(out_rows_, t.rows - first);
    const Range r = StreamedRowsRange(t, first, rows);
    out_reqs_.clear();
    SplitReads(r, options_.max_read_bytes, out_buf_.data(), &out_reqs_);
    absl::StatusOr<IoWorker::Ticket> ticket =
        worker_->Submit(absl::MakeSpan(out_reqs_));
    if (!ticket.ok()) return ticket.status();
    absl::Status s = worker_->Wait(*ticket);
    if (s.ok()) {
      s = VerifyStreamedRows(file_, t, "output", first, rows, out_buf_.data(),
                             r.offset);
    }
    if (!s.ok()) return s;
    output_ = TensorView(t, out_buf_.data(), r.offset);
    output_.data += first * output_.row_bytes;
    output_.rows = rows;
    return OutputChunk{&output_, first};
  }
  void ReleaseOutput(int32_t) override {}


  ~FlashModeSource() override { Drain(); }

 private:
  struct Layer {
    LayerWeights weights;
    DownTables tables;
    std::unique_ptr<NeuronCache> cache;
    std::unique_ptr<ReadPlanner> planner;
  };
  // The reads of one layer's missing neurons, in file order.
  struct Pass {
    int32_t layer = -1;       // -1: empty
    int32_t n_misses = 0;
    std::vector<int32_t> misses;  // [n_ff], ascending
    ReadPlan plan;
    size_t next = 0;          // next planned read to submit
  };
  // One staging buffer: reads [first_read, end_read) of a pass, packed back
  // to back, submitted as one IoWorker batch.
  struct Stage {
    io::AlignedBuffer memory;
    std::vector<io::ReadRequest> reqs;
    Pass* pass = nullptr;
    size_t first_read = 0;
    size_t end_read = 0;
    bool pending = false;
    uint64_t seq = 0;  // submission order
    IoWorker::Ticket ticket = 0;
  };

  // Plans `pass` for layer l: the needed neurons (all when keep is null)
  // that are not cached; counts hits and marks them used.
  void PlanPass(Pass& pass, int32_t l, int32_t n_tokens, const uint8_t* keep);
  // Submits the next reads into free stages: the current pass, then (dense
  // only) the next layer's, so reads run ahead across layer boundaries.
  absl::Status FillStages(bool dense);
  // Packs the next reads of `pass` into `st` and submits.
  absl::Status Fill(Stage& st, Pass& pass);
  // Verifies, computes and admits the neurons of a filled stage.
  absl::Status Consume(Stage& st, bool admit_by_eviction);
  // Waits for every stage in flight and forgets the passes.
  void Drain();
  // Takes back the neurons an earlier engine left in the segment for layer
  // l, each only if its bundle still matches the file's CRC.
  void Readopt(int32_t l);

  const FlashFile& file_;
  const FlashLayout& layout_;
  const SourceOptions options_;
  ThreadPool* pool_;
  BundleFfn ffn_;
  bool embd_from_output_ = false;  // tied and the classifier is resident
  bool stream_output_ = false;     // classifier read in chunks per token
  io::AlignedBuffer out_buf_;
  int64_t out_rows_ = 0;           // rows per streamed chunk
  std::vector<io::ReadRequest> out_reqs_;
  io::AlignedBuffer resident_;
  std::vector<Layer> layers_;
  Matrix output_;
  const float* output_norm_ = nullptr;
  StreamedTensor embd_;
  Stage stages_[kStages];
  uint64_t stage_bytes_ = 0;
  io::AlignedBuffer scratch_;
  std::vector<int32_t> scratch_ids_;
  std::vector<const uint8_t*> bundle_ptrs_;  // [n_ff] verify scratch
  std::unique_ptr<CacheSegment> segment_;    // null: private caches
  std::vector<uint64_t> persisted_;  // per layer: inserts+evictions saved
  Pass passes_[2];
  Pass* current_ = nullptr;  // the pass of the layer being computed
  uint64_t seq_ = 0;
  int64_t token_ = 0;
};

void FlashModeSource::PlanPass(Pass& pass, int32_t l, int32_t n_tokens,
                               const uint8_t* keep) {
  NeuronCache& cache = *layers_[l].cache;
  const int32_t n_ff = layout_.config.n_ff;
  pass.layer = l;
  pass.n_misses = 0;
  pass.next = 0;
  int64_t needed = 0;
  for (int32_t i = 0; i < n_ff; ++i) {
    bool need = keep == nullptr;
    for (int32_t t = 0; !need && t < n_tokens; ++t) {
      need = keep[static_cast<size_t>(t) * n_ff + i] != 0;
    }
    if (!need) continue;
    ++needed;
    const int32_t slot = cache.Lookup(i);
    if (slot >= 0) {
      cache.Touch(slot, token_);
    } else {
      pass.misses[pass.n_misses++] = i;
    }
  }
  stats_.neurons_needed += needed;
  stats_.neurons_hit += needed - pass.n_misses;
  layers_[l].planner->Plan(absl::MakeConstSpan(pass.misses.data(), pass.n_misses),
                           &pass.plan);
}

void FlashModeSource::Readopt(int32_t l) {
  NeuronCache& cache = *layers_[l].cache;
  const size_t bb = cache.bundle_bytes();
  const int32_t used = segment_->used(l);
  const int32_t* ids = segment_->ids(l);
  const int32_t n_ff = layout_.config.n_ff;
  for (int32_t s = 0; s < used && s < cache.capacity(); ++s) {
    const int32_t id = ids[s];
    const uint8_t* src = segment_->slots(l) + static_cast<size_t>(s) * bb;
    if (id < 0 || id >= n_ff || cache.SlotOf(id) >= 0 ||
        !file_.VerifyBundle(l, id, src).ok()) {
      continue;  // torn or stale: forget it
    }
    uint8_t* dst = cache.Insert(id, 0);
    if (dst != src) std::memmove(dst, src, bb);
    ++stats_.warm_neurons;
  }
  segment_->Persist(l, cache.ids(), cache.size());
}

void FlashModeSource::Drain() {
  for (Stage& st : stages_) {
    if (st.pending) (void)worker_->Wait(st.ticket);
    st.pending = false;
  }
  for (Pass& p : passes_) p.layer = -1;
  current_ = nullptr;
}

absl::Status FlashModeSource::Fill(Stage& st, Pass& pass) {
  st.reqs.clear();
  st.pass = &pass;
  st.first_read = pass.next;
  uint64_t used = 0;
  while (pass.next < pass.plan.size()) {
    const PlannedRead& r = pass.plan[pass.next];
    if (used + r.length > stage_bytes_ && used > 0) break;
    FLASHD_CHECK(r.length <= stage_bytes_);
    io::ReadRequest q;
    q.offset = r.offset;
    q.n = r.length;
    q.dst = st.memory.data() + used;
    st.reqs.push_back(q);
    used += r.length;
    ++pass.next;
  }
  st.end_read = pass.next;
  absl::StatusOr<IoWorker::Ticket> t = worker_->Submit(absl::MakeSpan(st.reqs));
  if (!t.ok()) return t.status();
  st.ticket = *t;
  st.pending = true;
  st.seq = ++seq_;
  return absl::OkStatus();
}

absl::Status FlashModeSource::FillStages(bool dense) {
  const int32_t n_layer = layout_.config.n_layer;
  for (Stage& st : stages_) {
    if (st.pending) continue;
    Pass* pass = current_;
    if (pass->next >= pass->plan.size()) {
      // The current layer is fully submitted; dense passes know the next
      // layer's misses already (every neuron not cached), so read ahead.
      if (!dense || n_layer < 2) return absl::OkStatus();
      Pass& other = (current_ == &passes_[0]) ? passes_[1] : passes_[0];
      const int32_t next_layer = (current_->layer + 1) % n_layer;
      if (other.layer != next_layer) PlanPass(other, next_layer, 1, nullptr);
      pass = &other;
      if (pass->next >= pass->plan.size()) return absl::OkStatus();
    }
    absl::Status s = Fill(st, *pass);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status FlashModeSource::RunFfn(int32_t l, const float* xb,
                                     int32_t n_tokens, const uint8_t* keep,
                                     float* out) {
  const bool dense = keep == nullptr;
  Pass* found = nullptr;
  for (Pass& p : passes_) {
    if (p.layer == l) found = &p;
  }
  if (!dense || found == nullptr) {
    // Not read ahead (first layer, sparse mode, or after an error): start
    // from a clean slate.
    Drain();
    found = &passes_[0];
    PlanPass(*found, l, n_tokens, keep);
  }
  current_ = found;
  absl::Status status = FillStages(dense);
  // Cached neurons compute while the first stages read.
  NeuronCache& cache = *layers_[l].cache;
  ffn_.Begin(layout_.layers[l].geometry, layers_[l].tables, xb, n_tokens, keep);
  if (cache.size() > 0) ffn_.Add(cache.span());
  while (status.ok()) {
    Stage* oldest = nullptr;
    for (Stage& st : stages_) {
      if (st.pending && st.pass == current_ &&
          (oldest == nullptr || st.seq < oldest->seq)) {
        oldest = &st;
      }
    }
    if (oldest == nullptr) break;
    oldest->pending = false;
    const auto w0 = std::chrono::steady_clock::now();
    status = worker_->Wait(oldest->ticket);
    stats_.wait_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - w0)
            .count();
    if (status.ok()) status = Consume(*oldest, /*admit_by_eviction=*/!dense);
    if (status.ok()) status = FillStages(dense);
  }
  if (!status.ok()) {
    Drain();  // leave no read in flight into our buffers
    return status;
  }
  ffn_.Finish(out);
  current_->layer = -1;  // consumed
  current_ = nullptr;
  if (segment_ != nullptr) {
    // Someone truncated the segment: the cached rows just read were zeros.
    if (absl::Status s = segment_->CheckIntact(); !s.ok()) return s;
    const NeuronCache::Stats& cs = layers_[l].cache->stats();
    if (cs.inserts + cs.evictions != persisted_[l]) {
      segment_->Persist(l, layers_[l].cache->ids(), layers_[l].cache->size());
      persisted_[l] = cs.inserts + cs.evictions;
    }
  }
  return absl::OkStatus();
}

absl::Status FlashModeSource::Consume(Stage& st, bool admit_by_eviction) {
  const Pass& pass = *st.pass;
  const int32_t l = pass.layer;
  NeuronCache& cache = *layers_[l].cache;
  const ReadPlanner& planner = *layers_[l].planner;
  const size_t bb = layout_.layers[l].geometry.bundle_bytes();
  const int32_t* misses = pass.misses.data();
  // Verify every wanted bundle of the stage (in parallel, three CRC
  // streams per thread).
  const size_t n_reads = st.end_read - st.first_read;
  const uint8_t** ptrs = bundle_ptrs_.data();
  for (size_t i = 0; i < n_reads; ++i) {
    const PlannedRead& r = pass.plan[st.first_read + i];
    for (int32_t k = 0; k < r.count; ++k) {
      const int32_t id = misses[r.first + k];
      ptrs[r.first + k] = st.reqs[i].dst + planner.OffsetInRead(r, id);
    }
  }
  const int32_t first = pass.plan[st.first_read].first;
  const PlannedRead& last = pass.plan[st.end_read - 1];
  const int32_t count = last.first + last.count - first;
  std::atomic<int32_t> bad{std::numeric_limits<int32_t>::max()};
  pool_->ParallelFor(count, 48, [&](int64_t b, int64_t e) {
    if (!file_.VerifyBundles(l, misses + first + b, ptrs + first + b,
                             static_cast<int32_t>(e - b))
             .ok()) {
      int32_t cur = bad.load();
      while (b < cur && !bad.compare_exchange_weak(cur, static_cast<int32_t>(b))) {
      }
    }
  });
  if (bad.load() != std::numeric_limits<int32_t>::max()) {
    const int32_t b = bad.load();
    return file_.VerifyBundles(l, misses + first + b, ptrs + first + b,
                               count - b);
  }
  // Compute: long runs of consecutive neurons straight from staging, the
  // rest gathered into the scratch.
  int32_t gathered = 0;
  for (size_t i = 0; i < n_reads; ++i) {
    const PlannedRead& r = pass.plan[st.first_read + i];
    const uint8_t* buf = st.reqs[i].dst;
    int32_t k = 0;
    while (k < r.count) {
      int32_t run = 1;
      while (k + run < r.count &&
             misses[r.first + k + run] == misses[r.first + k] + run) {
        ++run;
      }
      const int32_t* ids = misses + r.first + k;
      const uint8_t* first = buf + planner.OffsetInRead(r, ids[0]);
      if (run >= kDirectRun) {
        ffn_.Add({first, ids, run});
      } else {
        for (int32_t j = 0; j < run; ++j) {
          if ((gathered + 1) * bb > scratch_.size()) {
            ffn_.Add({scratch_.data(), scratch_ids_.data(), gathered});
            gathered = 0;
          }
          std::memcpy(scratch_.data() + gathered * bb, first + j * bb, bb);
          scratch_ids_[gathered++] = ids[j];
        }
      }
      k += run;
    }
  }
  if (gathered > 0) ffn_.Add({scratch_.data(), scratch_ids_.data(), gathered});

  // Admission: free slots first; then, when the selector varies the needed
  // set (sparse), least-recently-used neurons outside the window. Dense
  // passes need every neuron every token, so swapping would only copy.
  if (cache.capacity() == 0) return absl::OkStatus();
  const int64_t window = options_.window;
  const int64_t now = token_;
  for (size_t i = 0; i < n_reads; ++i) {
    const PlannedRead& r = pass.plan[st.first_read + i];
    for (int32_t k = 0; k < r.count; ++k) {
      const int32_t id = misses[r.first + k];
      if (cache.full()) {
        if (!admit_by_eviction) return absl::OkStatus();
        int32_t victim = -1;
        const int32_t got = cache.ChooseVictims(
            now,
            [&](int32_t vid) {
              const int32_t slot = cache.SlotOf(vid);
              return window > 0 && cache.last_used(slot) >= now - window;
            },
            1, &victim);
        if (got == 0) return absl::OkStatus();  // nothing may leave
        cache.Evict(victim);
      }
      uint8_t* dst = cache.Insert(id, now);
      FLASHD_CHECK(dst != nullptr);
      std::memcpy(dst, st.reqs[i].dst + planner.OffsetInRead(r, id), bb);
    }
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t FlashModeMinimum(const FlashFile& file, uint64_t predictor_bytes) {
  return Measure(file).minimum(predictor_bytes);
}

absl::StatusOr<ReadEstimate> EstimateFlashDecodeReads(
    const FlashFile& file, const SourceOptions& options, double keep,
    size_t alignment) {
  const FlashLayout& lay = file.layout();
  const Footprint fp = Measure(file);
  ReadEstimate e;
  if (options.dram_budget != 0 &&
      options.dram_budget < fp.minimum(options.predictor_bytes)) {
    return e;
  }
  e.fits = true;
  auto read = [&](uint64_t length) {
    e.bytes += length;
    if (options.profile != nullptr) {
      e.seconds += options.profile->EstimateSeconds(length, length,
                                                    options.queue_depth);
    }
  };
  const BudgetSplit split = SplitBudget(fp, options, lay.config.n_layer);
  if (split.stream_output) {
    for (uint64_t left = fp.output; left > 0;) {
      const uint64_t n = std::min<uint64_t>(left, options.max_read_bytes);
      read(n);
      left -= n;
    }
  }
  if (split.stream_output || !fp.tied) read(kStreamChunkBytes);  // embedding

  // No locality (as in random-weight models and, nearly, trained ones):
  // a wanted neuron is cached with probability slots / n_ff. Dense passes
  // keep the neurons they read first, so their misses are one run.
  std::mt19937_64 rng(0x5eed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<int32_t> misses;
  ReadPlan plan;
  for (const LayerLayout& l : lay.layers) {
    const int32_t n_ff = l.geometry.n_ff;
    const size_t bb = l.geometry.bundle_bytes();
    const int32_t slots = split.Slots(n_ff, bb);
    misses.clear();
    for (int32_t i = 0; i < n_ff; ++i) {
      if (keep >= 1.0) {
        if (i >= slots) misses.push_back(i);
      } else if (uniform(rng) < keep &&
                 uniform(rng) >= static_cast<double>(slots) / n_ff) {
        misses.push_back(i);
      }
    }
    absl::StatusOr<ReadPlanner> planner = ReadPlanner::Create(
        {l.bundles.offset, bb, n_ff}, PlannerOptions(options, alignment));
    if (!planner.ok()) return planner.status();
    plan.Reserve(ReadPlanner::MaxReads(misses.size()));
    planner->Plan(misses, &plan);
    for (const PlannedRead& r : plan.reads()) read(r.length);
  }
  return e;
}

absl::StatusOr<std::unique_ptr<FlashSource>> OpenFlashModeSource(
    const FlashFile& file, const SourceOptions& options, ThreadPool* pool,
    int32_t max_batch) {
  const Footprint fp = Measure(file);
  const uint64_t minimum = FlashModeMinimum(file, options.predictor_bytes);
  if (options.dram_budget != 0 && options.dram_budget < minimum) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "--dram-budget ", options.dram_budget,
        " bytes is below the minimum of mode flash for ", file.path(), ": ",
        minimum, " bytes (", minimum / 1048576.0, " MiB: resident attention, "
        "norms and down tables ", fp.resident, ", staging ",
        kStages * fp.stage + fp.scratch, ", classifier and embedding buffers ",
        fp.out_chunk + fp.embd, ", predictor ", options.predictor_bytes, ")"));
  }
  auto src = std::make_unique<FlashModeSource>(file, options, pool, max_batch);
  absl::Status s = src->Init(fp);
  if (!s.ok()) return s;
  return std::unique_ptr<FlashSource>(std::move(src));
}

}  // namespace flashd::flash
