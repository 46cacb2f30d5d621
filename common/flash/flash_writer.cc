// ConvertToFlash: plans every extent of the .flash file, then streams it
// layer by layer (resident tensors copied as stored, the FFN rearranged into
// neuron bundles with down columns transposed exactly), and finally writes
// the manifest and header and renames the file into place.
#include "common/flash/flash_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/errno_status.h"
#include "common/base/fp16.h"
#include "common/flash/bundle_builder.h"
#include "common/flash/flash_file.h"
#include "common/flash/flash_format.h"
#include "common/flash/flash_records.h"
#include "common/gguf/gguf_file.h"
#include "common/gguf/gguf_writer.h"
#include "common/model/llama_keys.h"
#include "common/model/model_loader.h"

namespace flashd::flash {
namespace {

using internal::AlignUp;

constexpr size_t kWriteChunk = size_t{16} << 20;

// The output file: positional writes with progress accounting.
class Output {
 public:
  Output(std::string path, uint64_t total,
         const std::function<void(uint64_t, uint64_t)>& progress)
      : path_(std::move(path)), total_(total), progress_(progress) {}
  ~Output() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }

  absl::Status Create() {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return FileErrnoStatus(errno, absl::StrCat("cannot create ", path_));
    if (::ftruncate(fd_, static_cast<off_t>(total_)) != 0) return Error("ftruncate");
    return absl::OkStatus();
  }

  absl::Status Write(uint64_t offset, const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const size_t chunk = std::min(n, kWriteChunk);
      const ssize_t w = ::pwrite(fd_, p, chunk, static_cast<off_t>(offset));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return Error(absl::StrCat("write of ", chunk, " bytes at ", offset));
      p += w, offset += w, n -= w, done_ += w;
      if (progress_) progress_(std::min(done_, total_), total_);
    }
    return absl::OkStatus();
  }

  // fsync, close and rename to `final_path`.
  absl::Status Commit(const std::string& final_path) {
    if (::fsync(fd_) != 0) return Error("fsync");
    if (::close(fd_) != 0) {
      fd_ = -1;
      return Error("close");
    }
    fd_ = -1;
    if (::rename(path_.c_str(), final_path.c_str()) != 0) {
      return Error(absl::StrCat("rename to ", final_path));
    }
    committed_ = true;
    if (progress_) progress_(total_, total_);
    return absl::OkStatus();
  }

 private:
  absl::Status Error(const std::string& what) {
    return absl::InternalError(absl::StrCat(path_, ": ", what, " failed: ",
                                            std::strerror(errno)));
  }
  std::string path_;
  uint64_t total_;
  const std::function<void(uint64_t, uint64_t)>& progress_;
  int fd_ = -1;
  uint64_t done_ = 0;
  bool committed_ = false;
};

std::string Stem(const std::string& path) {
  std::string base = path.substr(path.find_last_of('/') + 1);
  const size_t dot = base.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? base : base.substr(0, dot);
}

// The embedded metadata GGUF: the source's key/values (tokenizer keys
// dropped when another tokenizer was given), llama hyperparameters for
// llama2.c sources, and the tokenizer actually loaded, written from its
// Vocab so MakeTokenizer rebuilds exactly that tokenizer.
absl::StatusOr<std::string> BuildMetadata(const ConvertOptions& o,
                                          const LoadedModel& loaded,
                                          const std::string& name) {
  const Model& m = *loaded.model;
  const ModelConfig& c = m.config;
  GgufWriter w;
  if (m.format == "gguf") {
    absl::StatusOr<std::unique_ptr<GgufFile>> g = GgufFile::Open(o.model_path);
    if (!g.ok()) return g.status();
    for (const std::string& key : (*g)->keys()) {
      if (key == "general.alignment") continue;
      if (!o.tokenizer_path.empty() && absl::StartsWith(key, "tokenizer.")) continue;
      w.AddValue(key, *(*g)->Find(key));
    }
  } else {
    AddLlamaHyperparameters(w, c, name, /*file_type=*/0);  // all f32
  }
  const Vocab& v = loaded.tokenizer->vocab();
  std::vector<int32_t> types(v.types.size());
  for (size_t i = 0; i < types.size(); ++i) types[i] = static_cast<int32_t>(v.types[i]);
  std::vector<float> scores = v.scores;
  scores.resize(v.pieces.size(), 0.0f);
  types.resize(v.pieces.size(), static_cast<int32_t>(TokenType::kNormal));
  w.AddString("tokenizer.ggml.model", "llama");
  w.AddStringArray("tokenizer.ggml.tokens", v.pieces);
  w.AddFloat32Array("tokenizer.ggml.scores", scores);
  w.AddInt32Array("tokenizer.ggml.token_type", types);
  w.AddUint32("tokenizer.ggml.bos_token_id", v.bos_id);
  w.AddUint32("tokenizer.ggml.eos_token_id", v.eos_id);
  w.AddUint32("tokenizer.ggml.unknown_token_id", v.unk_id);
  w.AddBool("tokenizer.ggml.add_bos_token", v.add_bos);
  w.AddBool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  w.AddBool("flashd.tokenizer.llama2c_style", v.llama2c_style);
  w.AddString("flashd.source.format", m.format);

  // GgufWriter writes files; stage the blob beside the output.
  const std::string staged = o.out_path + ".meta";
  absl::Status s = w.Write(staged);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("metadata: ", s.message()));
  absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(staged);
  ::unlink(staged.c_str());
  if (!f.ok()) return f.status();
  return std::string((*f)->bytes());
}

TensorExtent Plan(GgmlType type, int64_t cols, int64_t rows, uint64_t bytes,
                  uint64_t* cursor) {
  TensorExtent t{type, cols, rows, {*cursor, bytes, 0}};
  *cursor = AlignUp(*cursor + bytes);
  return t;
}

Extent PlanExtent(uint64_t bytes, uint64_t* cursor) {
  if (bytes == 0) return {};
  Extent e{*cursor, bytes, 0};
  *cursor = AlignUp(*cursor + bytes);
  return e;
}

TensorExtent PlanMatrix(const Matrix& m, uint64_t* cursor) {
  return Plan(m.type, m.cols, m.rows, m.bytes(), cursor);
}

TensorExtent PlanNorm(int64_t n, uint64_t* cursor) {
  return Plan(GgmlType::kF32, n, 1, uint64_t(n) * sizeof(float), cursor);
}

// Writes a tensor's bytes and records their CRC.
absl::Status WriteTensor(Output& out, const void* data, Extent* e) {
  e->crc32c = Crc32c(data, e->bytes);
  return out.Write(e->offset, data, e->bytes);
}

}  // namespace

absl::Status ConvertToFlash(const ConvertOptions& o) {
  if (o.out_path.empty()) return absl::InvalidArgumentError("no output path given");
  LoadOptions load;
  load.tokenizer_path = o.tokenizer_path;
  absl::StatusOr<LoadedModel> loaded = LoadModel(o.model_path, load);
  if (!loaded.ok()) return loaded.status();
  const Model& m = *loaded->model;
  const ModelConfig& c = m.config;

  FlashLayout layout;
  layout.config = c;
  layout.name = m.name.empty() ? Stem(o.model_path) : m.name;
  layout.type_name = m.type_name;
  absl::StatusOr<uint64_t> identity = SourceIdentity(o.model_path);
  if (!identity.ok()) return identity.status();
  layout.source_identity = *identity;
  layout.layers.resize(c.n_layer);
  for (int32_t l = 0; l < c.n_layer; ++l) {
    absl::StatusOr<BundleGeometry> g = internal::GeometryFor(m.layers[l].ffn, c);
    if (!g.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          o.model_path, ": blk.", l, ".ffn_down.weight: ", g.status().message()));
    }
    layout.layers[l].geometry = *g;
  }

  absl::StatusOr<std::string> metadata = BuildMetadata(o, *loaded, layout.name);
  if (!metadata.ok()) return metadata.status();

  // Plan: header, manifest, metadata, then the data in file order.
  const uint64_t manifest_bytes = internal::ManifestBytes(layout);
  const uint64_t metadata_offset = AlignUp(internal::kHeaderBytes + manifest_bytes);
  uint64_t cursor = AlignUp(metadata_offset + metadata->size());
  const bool tied = m.output.data == m.tok_embd.data;
  layout.token_embd = PlanMatrix(m.tok_embd, &cursor);
  layout.output_norm = PlanNorm(c.n_embd, &cursor);
  if (!tied) layout.output = PlanMatrix(m.output, &cursor);
  internal::ChunkTables chunks;
  chunks.token_embd = PlanExtent(internal::ChunkCount(m.tok_embd.bytes()) * 4, &cursor);
  chunks.output = tied ? chunks.token_embd
                       : PlanExtent(internal::ChunkCount(m.output.bytes()) * 4, &cursor);
  for (int32_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = m.layers[l];
    LayerLayout& L = layout.layers[l];
    L.attn_norm = PlanNorm(c.n_embd, &cursor);
    L.wq = PlanMatrix(w.wq, &cursor);
    L.wk = PlanMatrix(w.wk, &cursor);
    L.wv = PlanMatrix(w.wv, &cursor);
    L.wo = PlanMatrix(w.wo, &cursor);
    L.ffn_norm = PlanNorm(c.n_embd, &cursor);
    const BundleGeometry& g = L.geometry;
    const uint64_t table = g.down.kind == DownFormat::Kind::kInt8Scaled
                               ? uint64_t(c.n_ff / g.down.group) * c.n_embd * 4
                               : 0;
    L.down_scale = PlanExtent(table, &cursor);
    L.down_min = PlanExtent(g.down.has_min ? table : 0, &cursor);
    L.bundle_crcs = PlanExtent(uint64_t(c.n_ff) * 4, &cursor);
    L.bundles = PlanExtent(uint64_t(c.n_ff) * g.bundle_bytes(), &cursor);
  }
  const uint64_t file_bytes = cursor;

  Output out(o.out_path + ".tmp", file_bytes, o.progress);
  if (absl::Status s = out.Create(); !s.ok()) return s;
  auto named = [&](const std::string& what, const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
  };
  if (absl::Status s = WriteTensor(out, m.tok_embd.data, &layout.token_embd.extent); !s.ok()) {
    return named("token_embd.weight", s);
  }
  if (absl::Status s = WriteTensor(out, m.output_norm, &layout.output_norm.extent); !s.ok()) {
    return named("output_norm.weight", s);
  }
  if (tied) {
    layout.output = layout.token_embd;
  } else if (absl::Status s = WriteTensor(out, m.output.data, &layout.output.extent);
             !s.ok()) {
    return named("output.weight", s);
  }
  for (const auto& [what, data, bytes, table] :
       {std::tuple{"token_embd.weight", m.tok_embd.data, m.tok_embd.bytes(), &chunks.token_embd},
        std::tuple{"output.weight", m.output.data, m.output.bytes(), &chunks.output}}) {
    if (tied && table == &chunks.output) {
      chunks.output = chunks.token_embd;
      break;
    }
    std::vector<uint32_t> crcs(internal::ChunkCount(bytes));
    for (size_t k = 0; k < crcs.size(); ++k) {
      const uint64_t at = k * kStreamChunkBytes;
      crcs[k] = Crc32c(data + at, std::min<uint64_t>(kStreamChunkBytes, bytes - at));
    }
    if (absl::Status s = WriteTensor(out, crcs.data(), table); !s.ok()) {
      return named(what, s);
    }
  }

  internal::BundleBuilder builder;
  for (int32_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = m.layers[l];
    LayerLayout& L = layout.layers[l];
    const std::string p = absl::StrCat("blk.", l, ".");
    const std::pair<const char*, std::pair<const void*, Extent*>> tensors[] = {
        {"attn_norm.weight", {w.attn_norm, &L.attn_norm.extent}},
        {"attn_q.weight", {w.wq.data, &L.wq.extent}},
        {"attn_k.weight", {w.wk.data, &L.wk.extent}},
        {"attn_v.weight", {w.wv.data, &L.wv.extent}},
        {"attn_output.weight", {w.wo.data, &L.wo.extent}},
        {"ffn_norm.weight", {w.ffn_norm, &L.ffn_norm.extent}}};
    for (const auto& [name, t] : tensors) {
      if (absl::Status s = WriteTensor(out, t.first, t.second); !s.ok()) {
        return named(p + name, s);
      }
    }
    builder.Build(w.ffn, L.geometry);
    const std::string what = p + "ffn bundles";
    if (L.down_scale.bytes > 0) {
      if (absl::Status s = WriteTensor(out, builder.scale(), &L.down_scale); !s.ok()) {
        return named(what, s);
      }
    }
    if (L.down_min.bytes > 0) {
      if (absl::Status s = WriteTensor(out, builder.min(), &L.down_min); !s.ok()) {
        return named(what, s);
      }
    }
    if (absl::Status s = WriteTensor(out, builder.crcs(), &L.bundle_crcs); !s.ok()) {
      return named(what, s);
    }
    if (absl::Status s = out.Write(L.bundles.offset, builder.bundles(), L.bundles.bytes);
        !s.ok()) {
      return named(what, s);
    }
  }

  const std::string manifest = internal::EncodeManifest(layout, chunks);
  internal::FileHeader h{};
  h.version = kLayoutVersion;
  h.header_bytes = internal::kHeaderBytes;
  h.alignment = kFlashAlign;
  h.file_bytes = file_bytes;
  h.manifest_offset = internal::kHeaderBytes;
  h.manifest_bytes = manifest.size();
  h.manifest_crc32c = Crc32c(manifest.data(), manifest.size());
  h.metadata_offset = metadata_offset;
  h.metadata_bytes = metadata->size();
  h.metadata_crc32c = Crc32c(metadata->data(), metadata->size());
  const std::string header = internal::EncodeHeader(h);
  for (const auto& [offset, bytes] :
       {std::pair<uint64_t, const std::string*>{h.metadata_offset, &*metadata},
        {h.manifest_offset, &manifest},
        {0, &header}}) {
    if (absl::Status s = out.Write(offset, bytes->data(), bytes->size()); !s.ok()) return s;
  }
  return out.Commit(o.out_path);
}

}  // namespace flashd::flash
