#include "common/flash/source_util.h"

#include <algorithm>
#include <atomic>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/io/uring_file.h"

namespace flashd::flash {

Range AlignRange(uint64_t begin, uint64_t end, size_t alignment) {
  const uint64_t a = alignment == 0 ? 1 : alignment;
  const uint64_t b = begin - begin % a;
  const uint64_t e = (end + a - 1) / a * a;
  return {b, e - b};
}

Range LayerRegion(const LayerLayout& l) {
  return {l.attn_norm.extent.offset,
          l.bundles.offset + l.bundles.bytes - l.attn_norm.extent.offset};
}

Matrix TensorView(const TensorExtent& t, const uint8_t* base,
                  uint64_t base_offset) {
  Matrix m;
  m.type = t.type;
  m.cols = t.cols;
  m.rows = t.rows;
  m.row_bytes = RowSize(t.type, t.cols);
  m.data = base + (t.extent.offset - base_offset);
  return m;
}

LayerWeights LayerViews(const LayerLayout& l, const uint8_t* base,
                        uint64_t base_offset) {
  LayerWeights w;
  w.attn_norm = reinterpret_cast<const float*>(
      base + (l.attn_norm.extent.offset - base_offset));
  w.ffn_norm = reinterpret_cast<const float*>(
      base + (l.ffn_norm.extent.offset - base_offset));
  w.wq = TensorView(l.wq, base, base_offset);
  w.wk = TensorView(l.wk, base, base_offset);
  w.wv = TensorView(l.wv, base, base_offset);
  w.wo = TensorView(l.wo, base, base_offset);
  return w;
}

DownTables DownTablesAt(const LayerLayout& l, const uint8_t* base,
                        uint64_t base_offset) {
  DownTables t;
  if (l.geometry.down.kind != DownFormat::Kind::kInt8Scaled) return t;
  t.scale = reinterpret_cast<const float*>(
      base + (l.down_scale.offset - base_offset));
  if (l.geometry.down.has_min && l.down_min.bytes > 0) {
    t.min = reinterpret_cast<const float*>(
        base + (l.down_min.offset - base_offset));
  }
  return t;
}

absl::Status VerifyLayer(const FlashFile& file, int32_t layer,
                         const uint8_t* base, uint64_t base_offset,
                         bool bundles, ThreadPool* pool) {
  const LayerLayout& l = file.layout().layers[layer];
  const std::string prefix = absl::StrCat("blk.", layer, ".");
  struct Named {
    const Extent* e;
    const char* name;
  };
  const Named extents[] = {
      {&l.attn_norm.extent, "attn_norm"}, {&l.wq.extent, "attn_q"},
      {&l.wk.extent, "attn_k"},           {&l.wv.extent, "attn_v"},
      {&l.wo.extent, "attn_output"},      {&l.ffn_norm.extent, "ffn_norm"},
      {&l.down_scale, "ffn_down_scale"},  {&l.down_min, "ffn_down_min"},
      {&l.bundle_crcs, "bundle_crcs"}};
  for (const Named& n : extents) {
    if (n.e->bytes == 0) continue;
    absl::Status s = FlashFile::VerifyExtent(
        *n.e, base + (n.e->offset - base_offset), prefix + n.name);
    if (!s.ok()) return s;
  }
  if (!bundles) return absl::OkStatus();
  const size_t bb = l.geometry.bundle_bytes();
  const uint8_t* first = base + (l.bundles.offset - base_offset);
  constexpr int64_t kGroup = 48;
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
  pool->ParallelFor(l.geometry.n_ff, kGroup, [&](int64_t b, int64_t e) {
    int32_t ids[kGroup];
    const uint8_t* ptrs[kGroup];
    for (int64_t g = b; g < e; g += kGroup) {
      const int32_t n = static_cast<int32_t>(std::min<int64_t>(kGroup, e - g));
      for (int32_t k = 0; k < n; ++k) {
        ids[k] = static_cast<int32_t>(g + k);
        ptrs[k] = first + (g + k) * bb;
      }
      if (!file.VerifyBundles(layer, ids, ptrs, n).ok()) {
        int64_t cur = bad.load();
        while (g < cur && !bad.compare_exchange_weak(cur, g)) {
        }
        return;
      }
    }
  });
  if (bad.load() != std::numeric_limits<int64_t>::max()) {
    for (int64_t i = bad.load(); i < l.geometry.n_ff; ++i) {
      absl::Status s = file.VerifyBundle(layer, static_cast<int32_t>(i),
                                         first + i * bb);
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

void SplitReads(const Range& range, size_t max_read, uint8_t* dst,
                std::vector<io::ReadRequest>* reqs) {
  for (uint64_t done = 0; done < range.bytes;) {
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(max_read, range.bytes - done));
    io::ReadRequest r;
    r.offset = range.offset + done;
    r.n = n;
    r.dst = dst + done;
    reqs->push_back(r);
    done += n;
  }
}

absl::StatusOr<std::unique_ptr<io::RandomAccessFile>> OpenForReading(
    const SourceOptions& options, const std::string& path) {
  if (options.open_file) return options.open_file(path);
  io::UringFileOptions o;
  o.queue_depth = options.queue_depth;
  absl::StatusOr<std::unique_ptr<io::UringFile>> f = io::UringFile::Open(path, o);
  if (!f.ok()) return f.status();
  return std::unique_ptr<io::RandomAccessFile>(std::move(*f));
}

int64_t OutputRowsPerChunk(const TensorExtent& output, uint64_t max_bytes,
                           size_t alignment) {
  const uint64_t row = RowSize(output.type, output.cols);
  // Two alignment units of slack: a chunk's range is rounded out at both
  // ends.
  const uint64_t usable =
      max_bytes > 2 * alignment ? max_bytes - 2 * alignment : row;
  const int64_t rows = static_cast<int64_t>(std::max<uint64_t>(1, usable / row));
  return std::min<int64_t>(rows, output.rows);
}

}  // namespace flashd::flash
