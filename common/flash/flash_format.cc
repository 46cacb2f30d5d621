// CRC32C, the 64-bit identity hash, and the .flash header and manifest
// codecs (see flash_records.h for the on-disk records).
#include "common/flash/flash_format.h"

#include <nmmintrin.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/flash/flash_records.h"

namespace flashd::flash {
namespace internal {
namespace {

// ----------------------------------------------------------------- CRC32C

constexpr uint32_t kCastagnoliReflected = 0x82F63B78u;

// Slicing-by-8 tables: t[0] is the classic byte table, t[k][b] the CRC of
// byte b followed by k zero bytes.
struct CrcTables {
  std::array<std::array<uint32_t, 256>, 8> t;
  CrcTables() {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t c = b;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kCastagnoliReflected & -(c & 1));
      t[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; ++b) {
      for (int k = 1; k < 8; ++k) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
    }
  }
};

const CrcTables& Tables() {
  static const CrcTables tables;
  return tables;
}

// `c` is the running (inverted) register.
uint32_t CrcSoftware(uint32_t c, const uint8_t* p, size_t n) {
  const auto& t = Tables().t;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= c;
    c = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^
        t[4][(w >> 24) & 0xFF] ^ t[3][(w >> 32) & 0xFF] ^
        t[2][(w >> 40) & 0xFF] ^ t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xFF];
  return c;
}

__attribute__((target("sse4.2"))) uint32_t CrcSse42(uint32_t c,
                                                    const uint8_t* p,
                                                    size_t n) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c64);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

__attribute__((target("sse4.2"))) void CrcSse42x3(const uint8_t* a,
                                                 const uint8_t* b,
                                                 const uint8_t* c, size_t n,
                                                 uint32_t out[3]) {
  uint64_t ca = 0xFFFFFFFFu, cb = 0xFFFFFFFFu, cc = 0xFFFFFFFFu;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t wa, wb, wc;
    std::memcpy(&wa, a + i, 8);
    std::memcpy(&wb, b + i, 8);
    std::memcpy(&wc, c + i, 8);
    ca = _mm_crc32_u64(ca, wa);
    cb = _mm_crc32_u64(cb, wb);
    cc = _mm_crc32_u64(cc, wc);
  }
  uint32_t ra = static_cast<uint32_t>(ca), rb = static_cast<uint32_t>(cb),
           rc = static_cast<uint32_t>(cc);
  for (; i < n; ++i) {
    ra = _mm_crc32_u8(ra, a[i]);
    rb = _mm_crc32_u8(rb, b[i]);
    rc = _mm_crc32_u8(rc, c[i]);
  }
  out[0] = ~ra;
  out[1] = ~rb;
  out[2] = ~rc;
}

bool HasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}

// ------------------------------------------------------------- validation

constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr uint32_t kMaxNameBytes = 4096;

Extent FromRecord(const ExtentRecord& r) { return {r.offset, r.bytes, r.crc32c}; }
ExtentRecord ToRecord(const Extent& e) { return {e.offset, e.bytes, e.crc32c, 0}; }

TensorRecord ToRecord(const TensorExtent& t) {
  return {static_cast<uint32_t>(t.type), 0, t.cols, t.rows, ToRecord(t.extent)};
}

std::string TypeLabel(uint32_t id) { return std::string(TypeName(id)); }

// Checks records against the file and the model's config.
class Checker {
 public:
  Checker(uint64_t file_bytes, uint64_t data_start)
      : file_bytes_(file_bytes), data_start_(data_start) {}

  absl::Status Extent(const std::string& what, const ExtentRecord& r,
                      flash::Extent* out) {
    *out = FromRecord(r);
    if (r.bytes == 0) {
      if (r.offset != 0 || r.crc32c != 0) {
        return Bad(what, absl::StrCat("is empty but has offset ", r.offset,
                                      " and crc ", r.crc32c));
      }
      return absl::OkStatus();
    }
    if (r.offset % kFlashAlign != 0) {
      return Bad(what, absl::StrCat("offset ", r.offset,
                                    " is not a multiple of ", kFlashAlign));
    }
    if (r.offset < data_start_) {
      return Bad(what, absl::StrCat("offset ", r.offset,
                                    " lies before the data section (", data_start_, ")"));
    }
    if (r.bytes > file_bytes_ || r.offset > file_bytes_ - r.bytes) {
      return Bad(what, absl::StrCat("extent [", r.offset, ", +", r.bytes,
                                    ") runs past the end of the file (",
                                    file_bytes_, " bytes)"));
    }
    all_.push_back({what, *out});
    return absl::OkStatus();
  }

  // A matrix or vector of exactly (cols, rows); `f32_only` for norms.
  absl::Status Tensor(const std::string& what, const TensorRecord& r,
                      int64_t cols, int64_t rows, bool f32_only,
                      TensorExtent* out) {
    if (absl::Status s = RowType(what, r.type, cols); !s.ok()) return s;
    if (f32_only && r.type != static_cast<uint32_t>(GgmlType::kF32)) {
      return Bad(what, absl::StrCat("has type ", TypeLabel(r.type), ", expected f32"));
    }
    if (r.cols != cols || r.rows != rows) {
      return Bad(what, absl::StrCat("has shape [", r.cols, ", ", r.rows,
                                    "], expected [", cols, ", ", rows, "]"));
    }
    out->type = static_cast<GgmlType>(r.type);
    out->cols = r.cols;
    out->rows = r.rows;
    const uint64_t want = RowSize(out->type, cols) * static_cast<uint64_t>(rows);
    if (r.extent.bytes != want) {
      return Bad(what, absl::StrCat("has ", r.extent.bytes, " bytes; ",
                                    TypeLabel(r.type), " [", cols, ", ", rows,
                                    "] needs ", want));
    }
    return Extent(what, r.extent, &out->extent);
  }

  // A supported weight type whose block divides `cols`.
  absl::Status RowType(const std::string& what, uint32_t id, int64_t cols) {
    std::optional<TypeTraits> t = GetTypeTraits(id);
    if (!t || !t->supported || id == static_cast<uint32_t>(GgmlType::kQ8_K)) {
      return Bad(what, absl::StrCat("has type ", TypeLabel(id),
                                    ", which flashd does not support"));
    }
    if (cols % t->block_size != 0) {
      return Bad(what, absl::StrCat("row length ", cols, " is not a multiple of the ",
                                    std::string(t->name), " block size ",
                                    t->block_size));
    }
    return absl::OkStatus();
  }

  // No two extents overlap (a tied output is passed once).
  absl::Status Disjoint() {
    std::sort(all_.begin(), all_.end(), [](const auto& a, const auto& b) {
      return a.second.offset < b.second.offset;
    });
    for (size_t i = 1; i < all_.size(); ++i) {
      const flash::Extent& p = all_[i - 1].second;
      if (p.offset + p.bytes > all_[i].second.offset) {
        return Bad(all_[i].first,
                   absl::StrCat("at offset ", all_[i].second.offset,
                                " overlaps ", all_[i - 1].first, " [",
                                p.offset, ", +", p.bytes, ")"));
      }
    }
    return absl::OkStatus();
  }

  void Forget(const std::string& what) {
    all_.erase(std::remove_if(all_.begin(), all_.end(),
                              [&](const auto& e) { return e.first == what; }),
               all_.end());
  }

  static absl::Status Bad(const std::string& what, const std::string& msg) {
    return absl::InvalidArgumentError(absl::StrCat("manifest: ", what, " ", msg));
  }

 private:
  const uint64_t file_bytes_;
  const uint64_t data_start_;
  std::vector<std::pair<std::string, flash::Extent>> all_;
};

absl::Status CheckConfig(const ManifestHead& h) {
  const std::pair<const char*, int64_t> dims[] = {
      {"n_vocab", h.n_vocab}, {"n_embd", h.n_embd},   {"n_ff", h.n_ff},
      {"n_layer", h.n_layer}, {"n_head", h.n_head},   {"n_head_kv", h.n_head_kv},
      {"head_dim", h.head_dim}, {"n_rot", h.n_rot}, {"n_ctx_train", h.n_ctx_train}};
  for (const auto& [name, v] : dims) {
    if (v <= 0 || v > kMaxDim) {
      return Checker::Bad(name, absl::StrCat("= ", v, " is out of range [1, ", kMaxDim, "]"));
    }
  }
  if (h.n_embd % h.n_head != 0 || h.head_dim != h.n_embd / h.n_head ||
      h.n_head % h.n_head_kv != 0 || h.head_dim % 2 != 0 || h.n_rot != h.head_dim) {
    return Checker::Bad(
        "config", absl::StrCat("n_embd ", h.n_embd, ", n_head ", h.n_head,
                               ", n_head_kv ", h.n_head_kv, ", head_dim ", h.head_dim,
                               ", n_rot ", h.n_rot, " are inconsistent"));
  }
  if (!(h.rms_eps > 0.0f && h.rms_eps < 1.0f) ||
      !(h.rope_theta > 1.0f && h.rope_theta < 1e9f)) {
    return Checker::Bad("config", absl::StrCat("rms_eps ", h.rms_eps, " or rope_theta ",
                                               h.rope_theta, " is implausible"));
  }
  return absl::OkStatus();
}

absl::Status CheckGeometry(const std::string& p, const LayerRecord& r,
                           const ModelConfig& c, Checker& check,
                           LayerLayout* out) {
  BundleGeometry& g = out->geometry;
  if (r.n_embd != c.n_embd || r.n_ff != c.n_ff) {
    return Checker::Bad(p + "geometry", absl::StrCat("is [", r.n_embd, ", ", r.n_ff,
                                                     "], the config says [", c.n_embd,
                                                     ", ", c.n_ff, "]"));
  }
  g.n_embd = r.n_embd;
  g.n_ff = r.n_ff;
  for (const auto& [name, id, bytes] :
       {std::tuple{"gate", r.gate_type, r.gate_bytes},
        std::tuple{"up", r.up_type, r.up_bytes}}) {
    const std::string what = p + name;
    if (absl::Status s = check.RowType(what, id, c.n_embd); !s.ok()) return s;
    const uint64_t want = RowSize(static_cast<GgmlType>(id), c.n_embd);
    if (bytes != want) {
      return Checker::Bad(what, absl::StrCat("row has ", bytes, " bytes; ",
                                             TypeLabel(id), " needs ", want));
    }
  }
  g.gate_type = static_cast<GgmlType>(r.gate_type);
  g.up_type = static_cast<GgmlType>(r.up_type);
  g.gate_bytes = r.gate_bytes;
  g.up_bytes = r.up_bytes;
  g.down_bytes = r.down_bytes;
  uint64_t table_bytes = 0;
  if (r.down_kind == static_cast<uint32_t>(DownFormat::Kind::kTyped)) {
    const auto t = static_cast<GgmlType>(r.down_type);
    if (t != GgmlType::kF32 && t != GgmlType::kF16 && t != GgmlType::kBF16) {
      return Checker::Bad(p + "down", absl::StrCat("is typed ", TypeLabel(r.down_type),
                                                   "; only f32, f16, bf16 are"));
    }
    const uint64_t want = uint64_t(Traits(t).type_size) * c.n_embd;
    if (r.down_bytes != want || r.down_group != 0 || r.down_has_min != 0) {
      return Checker::Bad(p + "down", absl::StrCat("column has ", r.down_bytes,
                                                   " bytes (want ", want, "), group ",
                                                   r.down_group, ", min ", r.down_has_min));
    }
    g.down = {DownFormat::Kind::kTyped, t, 0, false};
  } else if (r.down_kind == static_cast<uint32_t>(DownFormat::Kind::kInt8Scaled)) {
    if ((r.down_group != 16 && r.down_group != 32) || c.n_ff % r.down_group != 0 ||
        r.down_has_min > 1 || r.down_bytes != static_cast<uint64_t>(c.n_embd)) {
      return Checker::Bad(p + "down", absl::StrCat("int8 column: group ", r.down_group,
                                                   " (16 or 32 dividing n_ff ", c.n_ff,
                                                   "), min flag ", r.down_has_min,
                                                   ", ", r.down_bytes, " bytes (want ",
                                                   c.n_embd, ")"));
    }
    g.down = {DownFormat::Kind::kInt8Scaled, GgmlType::kF32, r.down_group,
              r.down_has_min == 1};
    table_bytes = uint64_t(c.n_ff / r.down_group) * c.n_embd * sizeof(float);
  } else {
    return Checker::Bad(p + "down", absl::StrCat("format kind ", r.down_kind, " is unknown"));
  }
  const std::tuple<const char*, const ExtentRecord*, uint64_t, Extent*> extents[] = {
      {"down_scale", &r.down_scale, table_bytes, &out->down_scale},
      {"down_min", &r.down_min, g.down.has_min ? table_bytes : 0, &out->down_min},
      {"bundles", &r.bundles, uint64_t(c.n_ff) * g.bundle_bytes(), &out->bundles},
      {"bundle_crcs", &r.bundle_crcs, uint64_t(c.n_ff) * 4, &out->bundle_crcs}};
  for (const auto& [name, rec, want, dst] : extents) {
    if (rec->bytes != want) {
      return Checker::Bad(p + name, absl::StrCat("has ", rec->bytes, " bytes, expected ", want));
    }
    if (absl::Status s = check.Extent(p + name, *rec, dst); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc) {
  return ~CrcSoftware(~crc, static_cast<const uint8_t*>(data), n);
}

bool Crc32cIsHardware() { return HasSse42(); }

uint64_t Hash64(const void* data, size_t n, uint64_t seed) {
  constexpr uint64_t k1 = 0x9E3779B97F4A7C15ull, k2 = 0xC2B2AE3D27D4EB4Full;
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t h = mix(seed + k1) ^ (n * k2);
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = std::rotl(h ^ (w * k2), 29) * k1;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, p, n);
  h = std::rotl(h ^ ((tail + n) * k2), 29) * k1;
  return mix(h);
}

int LayerRegion(const LayerLayout& l, NamedExtent out[10]) {
  int n = 0;
  out[n++] = {"attn_norm", &l.attn_norm.extent};
  out[n++] = {"wq", &l.wq.extent};
  out[n++] = {"wk", &l.wk.extent};
  out[n++] = {"wv", &l.wv.extent};
  out[n++] = {"wo", &l.wo.extent};
  out[n++] = {"ffn_norm", &l.ffn_norm.extent};
  if (l.down_scale.bytes > 0) out[n++] = {"down_scale", &l.down_scale};
  if (l.down_min.bytes > 0) out[n++] = {"down_min", &l.down_min};
  out[n++] = {"bundle_crcs", &l.bundle_crcs};
  out[n++] = {"bundles", &l.bundles};
  return n;
}

uint64_t ManifestBytes(const FlashLayout& layout) {
  return sizeof(ManifestHead) + layout.layers.size() * sizeof(LayerRecord) +
         layout.name.size() + layout.type_name.size();
}

std::string EncodeManifest(const FlashLayout& l, const ChunkTables& chunks) {
  const ModelConfig& c = l.config;
  ManifestHead h{};
  h.n_vocab = c.n_vocab, h.n_embd = c.n_embd, h.n_ff = c.n_ff;
  h.n_layer = c.n_layer, h.n_head = c.n_head, h.n_head_kv = c.n_head_kv;
  h.head_dim = c.head_dim, h.n_rot = c.n_rot, h.n_ctx_train = c.n_ctx_train;
  h.rms_eps = c.rms_eps;
  h.rope_theta = c.rope_theta;
  h.name_bytes = static_cast<uint32_t>(l.name.size());
  h.type_name_bytes = static_cast<uint32_t>(l.type_name.size());
  h.source_identity = l.source_identity;
  h.token_embd = ToRecord(l.token_embd);
  h.output_norm = ToRecord(l.output_norm);
  h.output = ToRecord(l.output);
  h.token_embd_chunk_crcs = ToRecord(chunks.token_embd);
  h.output_chunk_crcs = ToRecord(chunks.output);
  std::string out(reinterpret_cast<const char*>(&h), sizeof(h));
  for (const LayerLayout& L : l.layers) {
    LayerRecord r{};
    r.attn_norm = ToRecord(L.attn_norm), r.wq = ToRecord(L.wq);
    r.wk = ToRecord(L.wk), r.wv = ToRecord(L.wv), r.wo = ToRecord(L.wo);
    r.ffn_norm = ToRecord(L.ffn_norm);
    const BundleGeometry& g = L.geometry;
    r.n_embd = g.n_embd, r.n_ff = g.n_ff;
    r.gate_type = static_cast<uint32_t>(g.gate_type);
    r.up_type = static_cast<uint32_t>(g.up_type);
    r.gate_bytes = g.gate_bytes, r.up_bytes = g.up_bytes, r.down_bytes = g.down_bytes;
    r.down_kind = static_cast<uint32_t>(g.down.kind);
    r.down_type = g.down.kind == DownFormat::Kind::kTyped
                      ? static_cast<uint32_t>(g.down.type) : 0;
    r.down_group = g.down.group;
    r.down_has_min = g.down.has_min ? 1 : 0;
    r.down_scale = ToRecord(L.down_scale), r.down_min = ToRecord(L.down_min);
    r.bundles = ToRecord(L.bundles), r.bundle_crcs = ToRecord(L.bundle_crcs);
    out.append(reinterpret_cast<const char*>(&r), sizeof(r));
  }
  out += l.name;
  out += l.type_name;
  return out;
}

absl::StatusOr<FlashLayout> DecodeManifest(std::string_view bytes,
                                           uint64_t file_bytes,
                                           uint64_t data_start,
                                           ChunkTables* chunks) {
  ManifestHead h;
  if (bytes.size() < sizeof(h)) {
    return Checker::Bad("", absl::StrCat("has ", bytes.size(), " bytes, less than its ",
                                         sizeof(h), "-byte head"));
  }
  std::memcpy(&h, bytes.data(), sizeof(h));
  if (absl::Status s = CheckConfig(h); !s.ok()) return s;
  if (h.name_bytes > kMaxNameBytes || h.type_name_bytes > kMaxNameBytes) {
    return Checker::Bad("name", absl::StrCat("lengths ", h.name_bytes, ", ",
                                             h.type_name_bytes, " exceed ", kMaxNameBytes));
  }
  const uint64_t want = sizeof(h) + uint64_t(h.n_layer) * sizeof(LayerRecord) +
                        h.name_bytes + h.type_name_bytes;
  if (bytes.size() != want) {
    return Checker::Bad("", absl::StrCat("has ", bytes.size(), " bytes; ", h.n_layer,
                                         " layers and the names need ", want));
  }
  FlashLayout l;
  ModelConfig& c = l.config;
  c.n_vocab = h.n_vocab, c.n_embd = h.n_embd, c.n_ff = h.n_ff;
  c.n_layer = h.n_layer, c.n_head = h.n_head, c.n_head_kv = h.n_head_kv;
  c.head_dim = h.head_dim, c.n_rot = h.n_rot, c.n_ctx_train = h.n_ctx_train;
  c.rms_eps = h.rms_eps;
  c.rope_theta = h.rope_theta;
  l.source_identity = h.source_identity;
  const char* names = bytes.data() + sizeof(h) + uint64_t(h.n_layer) * sizeof(LayerRecord);
  l.name.assign(names, h.name_bytes);
  l.type_name.assign(names + h.name_bytes, h.type_name_bytes);

  Checker check(file_bytes, data_start);
  const int64_t E = c.n_embd, V = c.n_vocab, KV = c.kv_dim();
  if (absl::Status s = check.Tensor("token_embd", h.token_embd, E, V, false, &l.token_embd);
      !s.ok()) return s;
  if (absl::Status s = check.Tensor("output_norm", h.output_norm, E, 1, true, &l.output_norm);
      !s.ok()) return s;
  if (absl::Status s = check.Tensor("output", h.output, E, V, false, &l.output); !s.ok()) {
    return s;
  }
  const bool tied = std::memcmp(&h.output, &h.token_embd, sizeof(TensorRecord)) == 0;
  if (tied) check.Forget("output");  // the same extent, counted once
  for (const auto& [name, rec, tensor, dst] :
       {std::tuple{"token_embd chunk CRCs", &h.token_embd_chunk_crcs, &l.token_embd,
                   &chunks->token_embd},
        std::tuple{"output chunk CRCs", &h.output_chunk_crcs, &l.output, &chunks->output}}) {
    const uint64_t want = ChunkCount(tensor->extent.bytes) * sizeof(uint32_t);
    if (rec->bytes != want) {
      return Checker::Bad(name, absl::StrCat("has ", rec->bytes, " bytes, expected ", want));
    }
    if (absl::Status s = check.Extent(name, *rec, dst); !s.ok()) return s;
  }
  if (tied != (std::memcmp(&h.output_chunk_crcs, &h.token_embd_chunk_crcs,
                           sizeof(ExtentRecord)) == 0)) {
    return Checker::Bad("output chunk CRCs", "must be token_embd's exactly when output is");
  }
  if (tied) check.Forget("output chunk CRCs");
  l.layers.resize(c.n_layer);
  for (int32_t i = 0; i < c.n_layer; ++i) {
    LayerRecord r;
    std::memcpy(&r, bytes.data() + sizeof(h) + uint64_t(i) * sizeof(r), sizeof(r));
    LayerLayout& L = l.layers[i];
    const std::string p = absl::StrCat("layer ", i, " ");
    const std::tuple<const char*, const TensorRecord*, int64_t, int64_t, bool,
                     TensorExtent*> tensors[] = {
        {"attn_norm", &r.attn_norm, E, 1, true, &L.attn_norm},
        {"wq", &r.wq, E, E, false, &L.wq},
        {"wk", &r.wk, E, KV, false, &L.wk},
        {"wv", &r.wv, E, KV, false, &L.wv},
        {"wo", &r.wo, E, E, false, &L.wo},
        {"ffn_norm", &r.ffn_norm, E, 1, true, &L.ffn_norm}};
    for (const auto& [name, rec, cols, rows, f32, dst] : tensors) {
      if (absl::Status s = check.Tensor(p + name, *rec, cols, rows, f32, dst); !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = CheckGeometry(p, r, c, check, &L); !s.ok()) return s;
    NamedExtent region[10];
    const int n = LayerRegion(L, region);
    for (int k = 1; k < n; ++k) {
      const Extent& prev = *region[k - 1].extent;
      if (region[k].extent->offset != AlignUp(prev.offset + prev.bytes)) {
        return Checker::Bad(p + region[k].name,
                            absl::StrCat("starts at ", region[k].extent->offset,
                                         ", not right after ", region[k - 1].name,
                                         " (", AlignUp(prev.offset + prev.bytes),
                                         "): a layer is one contiguous region"));
      }
    }
  }
  if (absl::Status s = check.Disjoint(); !s.ok()) return s;
  return l;
}

uint32_t HeaderCrc(std::string_view image) {
  constexpr size_t at = offsetof(FileHeader, header_crc32c);
  const uint32_t zero = 0;
  uint32_t crc = Crc32c(image.data(), at);
  crc = Crc32c(&zero, sizeof(zero), crc);
  return Crc32c(image.data() + at + 4, image.size() - at - 4, crc);
}

std::string EncodeHeader(FileHeader header) {
  std::memcpy(header.magic, kMagic, sizeof(kMagic));
  header.header_crc32c = 0;
  std::string image(kHeaderBytes, '\0');
  std::memcpy(image.data(), &header, sizeof(header));
  header.header_crc32c = HeaderCrc(image);
  std::memcpy(image.data(), &header, sizeof(header));
  return image;
}

}  // namespace internal

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  return internal::HasSse42() ? ~internal::CrcSse42(~crc, p, n)
                              : ~internal::CrcSoftware(~crc, p, n);
}

void Crc32c3(const void* a, const void* b, const void* c, size_t n,
             uint32_t out[3]) {
  const auto* pa = static_cast<const uint8_t*>(a);
  const auto* pb = static_cast<const uint8_t*>(b);
  const auto* pc = static_cast<const uint8_t*>(c);
  if (internal::HasSse42()) {
    internal::CrcSse42x3(pa, pb, pc, n, out);
    return;
  }
  out[0] = Crc32c(pa, n);
  out[1] = Crc32c(pb, n);
  out[2] = Crc32c(pc, n);
}

}  // namespace flashd::flash
