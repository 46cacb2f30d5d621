#include "common/flash/layer_source.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/flash/bundle_ffn.h"
#include "common/flash/io_worker.h"
#include "common/flash/source_util.h"
#include "common/flash/streamed_tensor.h"
#include "common/io/aligned_buffer.h"
#include "common/kernels/kernels.h"

namespace flashd::flash {
namespace {

// One thing read into a buffer: a layer's region or a chunk of output rows.
struct Unit {
  Range range;            // aligned file range
  int32_t layer = -1;     // >= 0 for a layer
  int64_t first_row = 0;  // output chunk: rows [first_row, first_row + rows)
  int64_t rows = 0;
};

struct Plan {
  std::vector<Unit> units;
  uint64_t unit_bytes = 0;  // largest unit
  uint64_t fixed = 0;       // norms, CRC tables, embedding scratch
};

Plan MakePlan(const FlashFile& file) {
  const FlashLayout& lay = file.layout();
  Plan p;
  for (size_t l = 0; l < lay.layers.size(); ++l) {
    Unit u;
    const Range r = LayerRegion(lay.layers[l]);
    u.range = AlignRange(r.offset, r.end(), kFlashAlign);
    u.layer = static_cast<int32_t>(l);
    p.unit_bytes = std::max(p.unit_bytes, u.range.bytes);
    p.units.push_back(u);
  }
  const int64_t rows =
      OutputRowsPerChunk(lay.output, p.unit_bytes, StreamedChunkBytes());
  for (int64_t r0 = 0; r0 < lay.output.rows; r0 += rows) {
    Unit u;
    u.first_row = r0;
    u.rows = std::min(rows, lay.output.rows - r0);
    u.range = StreamedRowsRange(lay.output, u.first_row, u.rows);
    p.unit_bytes = std::max(p.unit_bytes, u.range.bytes);
    p.units.push_back(u);
  }
  p.fixed = lay.output_norm.extent.bytes +
            static_cast<uint64_t>(lay.layers.size()) * lay.config.n_ff * 4 +
            2 * StreamedRowsRange(lay.token_embd, 0, 1).bytes + 2 * kFlashAlign;
  return p;
}

class LayerSource final : public FlashSource {
 public:
  LayerSource(const FlashFile& file, const SourceOptions& options,
              ThreadPool* pool, int32_t max_batch, Plan plan)
      : file_(file),
        layout_(file.layout()),
        options_(options),
        pool_(pool),
        units_(std::move(plan.units)),
        ffn_(layout_.config, pool, max_batch, layout_.config.n_ff),
        ids_(layout_.config.n_ff) {
    std::iota(ids_.begin(), ids_.end(), 0);
    plan_.budget = options.dram_budget;
    plan_.buffers = plan.unit_bytes * (options.mode == Mode::kLayer ? 2 : 1);
    plan_.resident = plan.fixed;
    plan_.predictor = options.predictor_bytes;
    plan_.minimum = plan_.total();
  }

  absl::Status Init(uint64_t unit_bytes) {
    absl::Status started = StartIo(options_, file_.path(), 4);
    if (!started.ok()) return started;
    const int n_buf = options_.mode == Mode::kLayer ? 2 : 1;
    for (int b = 0; b < n_buf; ++b) {
      absl::StatusOr<io::AlignedBuffer> buf =
          io::AlignedBuffer::Create(unit_bytes);
      if (!buf.ok()) return buf.status();
      bufs_[b].memory = std::move(*buf);
      bufs_[b].reqs.reserve(unit_bytes / options_.max_read_bytes + 2);
    }
    absl::StatusOr<StreamedTensor> emb = StreamedTensor::Create(
        file_, layout_.token_embd, "token_embd", worker_.get());
    if (!emb.ok()) return emb.status();
    embd_ = std::move(*emb);
    // The output norm is tiny: read once and keep.
    const Extent& on = layout_.output_norm.extent;
    const Range r = AlignRange(on.offset, on.offset + on.bytes, kFlashAlign);
    absl::StatusOr<io::AlignedBuffer> nb = io::AlignedBuffer::Create(r.bytes);
    if (!nb.ok()) return nb.status();
    norm_buf_ = std::move(*nb);
    std::vector<io::ReadRequest> reqs;
    SplitReads(r, options_.max_read_bytes, norm_buf_.data(), &reqs);
    absl::Status s = ReadNow(absl::MakeSpan(reqs));
    if (!s.ok()) return s;
    const uint8_t* p = norm_buf_.data() + (on.offset - r.offset);
    s = FlashFile::VerifyExtent(on, p, "output_norm");
    if (!s.ok()) return s;
    output_norm_ = reinterpret_cast<const float*>(p);
    return absl::OkStatus();
  }

  absl::Status BeginEval(absl::Span<const int32_t> tokens) override {
    stats_.tokens += tokens.size();
    return absl::OkStatus();
  }

  absl::Status Embed(absl::Span<const int32_t> tokens, float* x) override {
    // Row reads share the worker's ticket ring with the prefetch of layer
    // 0, which is needed next anyway: collect it first.
    for (Buffer& b : bufs_) Collect(b);
    const int32_t n_embd = layout_.config.n_embd;
    for (size_t t = 0; t < tokens.size(); ++t) {
      absl::StatusOr<const uint8_t*> row = embd_.Row(tokens[t]);
      if (!row.ok()) return row.status();
      kernels::ToFloat(layout_.token_embd.type, *row, x + t * n_embd, n_embd);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<const LayerWeights*> AcquireLayer(int32_t l) override {
    absl::StatusOr<Buffer*> b = Acquire(l);
    if (!b.ok()) return b.status();
    const Unit& u = units_[l];
    weights_ = LayerViews(layout_.layers[l], (*b)->memory.data(), u.range.offset);
    tables_ = DownTablesAt(layout_.layers[l], (*b)->memory.data(), u.range.offset);
    bundles_ = (*b)->memory.data() +
               (layout_.layers[l].bundles.offset - u.range.offset);
    return &weights_;
  }

  void ReleaseLayer(int32_t l) override { Release(l); }

  bool ffn_in_source() const override { return true; }

  absl::Status RunFfn(int32_t l, const float* xb, int32_t n_tokens,
                      const uint8_t* keep, float* out) override {
    ffn_.Begin(layout_.layers[l].geometry, tables_, xb, n_tokens, keep);
    ffn_.Add({bundles_, ids_.data(), layout_.config.n_ff});
    ffn_.Finish(out);
    return absl::OkStatus();
  }

  const float* output_norm() override { return output_norm_; }
  int32_t output_chunks() const override {
    return static_cast<int32_t>(units_.size() - layout_.layers.size());
  }

  absl::StatusOr<OutputChunk> AcquireOutput(int32_t chunk) override {
    const int32_t index = static_cast<int32_t>(layout_.layers.size()) + chunk;
    absl::StatusOr<Buffer*> b = Acquire(index);
    if (!b.ok()) return b.status();
    const Unit& u = units_[index];
    out_matrix_ = TensorView(layout_.output, (*b)->memory.data(), u.range.offset);
    out_matrix_.data += u.first_row * out_matrix_.row_bytes;
    out_matrix_.rows = u.rows;
    return OutputChunk{&out_matrix_, u.first_row};
  }

  void ReleaseOutput(int32_t chunk) override {
    Release(static_cast<int32_t>(layout_.layers.size()) + chunk);
  }


  ~LayerSource() override {
    // Outstanding prefetches write into our buffers: finish them first.
    for (Buffer& b : bufs_) Collect(b);
  }

 private:
  struct Buffer {
    io::AlignedBuffer memory;
    std::vector<io::ReadRequest> reqs;
    int32_t unit = -1;      // unit held or being read
    bool pending = false;   // read submitted, not yet waited for
    bool verified = false;
    IoWorker::Ticket ticket = 0;
    absl::Status read_status;  // of the last collected read
  };

  // Waits for b's read if one is in flight and keeps its status.
  void Collect(Buffer& b) {
    if (!b.pending) return;
    b.pending = false;
    b.read_status = worker_->Wait(b.ticket);
  }

  absl::Status ReadNow(absl::Span<io::ReadRequest> reqs) {
    absl::StatusOr<IoWorker::Ticket> t = worker_->Submit(reqs);
    if (!t.ok()) return t.status();
    return worker_->Wait(*t);
  }

  absl::Status StartRead(Buffer& b, int32_t unit) {
    b.unit = unit;
    b.verified = false;
    b.read_status = absl::OkStatus();
    b.reqs.clear();
    SplitReads(units_[unit].range, options_.max_read_bytes, b.memory.data(),
               &b.reqs);
    absl::StatusOr<IoWorker::Ticket> t = worker_->Submit(absl::MakeSpan(b.reqs));
    if (!t.ok()) {
      b.unit = -1;
      return t.status();
    }
    b.ticket = *t;
    b.pending = true;
    return absl::OkStatus();
  }

  absl::StatusOr<Buffer*> Acquire(int32_t unit) {
    const int n_buf = options_.mode == Mode::kLayer ? 2 : 1;
    Buffer* b = nullptr;
    for (int i = 0; i < n_buf; ++i) {
      if (bufs_[i].unit == unit) b = &bufs_[i];
    }
    if (b == nullptr) {
      b = &bufs_[0];
      if (n_buf == 2 && in_use_ == &bufs_[0]) b = &bufs_[1];
      FLASHD_CHECK(b != in_use_);
      Collect(*b);  // a prefetch we no longer want
      absl::Status s = StartRead(*b, unit);
      if (!s.ok()) return s;
    }
    const auto w0 = std::chrono::steady_clock::now();
    Collect(*b);
    stats_.wait_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - w0)
            .count();
    if (!b->read_status.ok()) {
      b->unit = -1;
      return b->read_status;
    }
    in_use_ = b;
    if (n_buf == 2) {
      // Layer streaming: read the next unit while this one is verified and
      // computes (issued before verifying so the device never idles).
      Buffer& other = (b == &bufs_[0]) ? bufs_[1] : bufs_[0];
      const int32_t next = (unit + 1) % static_cast<int32_t>(units_.size());
      if (other.unit != next) {
        Collect(other);
        absl::Status s = StartRead(other, next);
        if (!s.ok()) return s;
      }
    }
    if (!b->verified) {
      absl::Status s = VerifyUnit(*b);
      if (!s.ok()) {
        b->unit = -1;
        in_use_ = nullptr;
        return s;
      }
      b->verified = true;
    }
    return b;
  }

  void Release(int32_t unit) {
    if (in_use_ != nullptr && in_use_->unit == unit) in_use_ = nullptr;
    // naive: nothing stays in memory between uses.
    if (options_.mode == Mode::kNaive) bufs_[0].unit = -1;
  }

  absl::Status VerifyUnit(const Buffer& b) {
    const Unit& u = units_[b.unit];
    if (u.layer >= 0) {
      return VerifyLayer(file_, u.layer, b.memory.data(), u.range.offset,
                         /*bundles=*/true, pool_);
    }
    return VerifyStreamedRows(file_, layout_.output, "output", u.first_row,
                              u.rows, b.memory.data(), u.range.offset);
  }

  const FlashFile& file_;
  const FlashLayout& layout_;
  const SourceOptions options_;
  ThreadPool* pool_;
  std::vector<Unit> units_;
  BundleFfn ffn_;
  std::vector<int32_t> ids_;  // 0..n_ff-1: the dense span's neuron ids
  Buffer bufs_[2];
  Buffer* in_use_ = nullptr;
  StreamedTensor embd_;
  io::AlignedBuffer norm_buf_;
  const float* output_norm_ = nullptr;
  LayerWeights weights_;
  DownTables tables_;
  const uint8_t* bundles_ = nullptr;
  Matrix out_matrix_;
};

}  // namespace

uint64_t LayerModeMinimum(const FlashFile& file, Mode mode) {
  const Plan p = MakePlan(file);
  return p.fixed + p.unit_bytes * (mode == Mode::kLayer ? 2 : 1);
}

absl::StatusOr<std::unique_ptr<FlashSource>> OpenLayerSource(
    const FlashFile& file, const SourceOptions& options, ThreadPool* pool,
    int32_t max_batch) {
  Plan plan = MakePlan(file);
  const uint64_t unit_bytes = plan.unit_bytes;
  auto src = std::make_unique<LayerSource>(file, options, pool, max_batch,
                                           std::move(plan));
  const MemoryPlan& mp = src->plan();
  if (options.dram_budget != 0 && options.dram_budget < mp.minimum) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "--dram-budget ", options.dram_budget, " bytes is below the minimum of mode ",
        ModeName(options.mode), " for ", file.path(), ": ", mp.minimum,
        " bytes (", mp.minimum / 1048576.0, " MiB: ",
        options.mode == Mode::kLayer ? "two buffers" : "one buffer", " of ",
        unit_bytes, " bytes, the largest layer, plus norms, checksum tables and ",
        "embedding scratch", options.predictor_bytes ? " and the predictor" : "",
        ")"));
  }
  absl::Status s = src->Init(unit_bytes);
  if (!s.ok()) return s;
  return std::unique_ptr<FlashSource>(std::move(src));
}

}  // namespace flashd::flash
