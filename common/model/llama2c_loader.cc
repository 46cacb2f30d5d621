// llama2.c checkpoint format (karpathy/llama2.c run.c): a header of 7 int32
// (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
// negative vocab_size = separate classifier), then fp32 weights in a fixed
// order, each matrix row-major (out, in).
#include <cstring>

#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/model/model_loader.h"

namespace flashd {
namespace {

constexpr int32_t kMaxDim = 1 << 20;

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};
static_assert(sizeof(Header) == 28);

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> ModelFromLlama2c(
    std::shared_ptr<const MappedFile> file) {
  if (file->size() < sizeof(Header)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a GGUF file and too short (", file->size(),
        " bytes) for a llama2.c checkpoint header (28 bytes)"));
  }
  Header h;
  std::memcpy(&h, file->data(), sizeof(h));
  const bool shared_classifier = h.vocab_size > 0;
  const int64_t vocab = shared_classifier ? h.vocab_size : -int64_t{h.vocab_size};
  const std::pair<const char*, int64_t> fields[] = {
      {"dim", h.dim},         {"hidden_dim", h.hidden_dim},
      {"n_layers", h.n_layers}, {"n_heads", h.n_heads},
      {"n_kv_heads", h.n_kv_heads}, {"vocab_size", vocab},
      {"seq_len", h.seq_len}};
  for (const auto& [name, v] : fields) {
    if (v <= 0 || v > kMaxDim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "not a GGUF file, and as a llama2.c checkpoint its header field ",
          name, " = ", v, " is out of range [1, ", kMaxDim, "]"));
    }
  }
  auto m = std::make_unique<Model>();
  m->format = "llama2.c";
  m->type_name = "f32";
  m->file = file;
  ModelConfig& c = m->config;
  c.n_embd = h.dim;
  c.n_ff = h.hidden_dim;
  c.n_layer = h.n_layers;
  c.n_head = h.n_heads;
  c.n_head_kv = h.n_kv_heads;
  c.n_vocab = static_cast<int32_t>(vocab);
  c.n_ctx_train = h.seq_len;
  if (c.n_embd % c.n_head != 0 || c.n_head % c.n_head_kv != 0 ||
      (c.n_embd / c.n_head) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "llama2.c header: dim ", c.n_embd, ", n_heads ", c.n_head,
        ", n_kv_heads ", c.n_head_kv, " do not form whole, even-sized heads"));
  }
  c.head_dim = c.n_embd / c.n_head;
  c.n_rot = c.head_dim;
  const int64_t dim = c.n_embd, hid = c.n_ff, L = c.n_layer;
  const int64_t kv = c.kv_dim();
  // Sizes in floats, in file order. Every factor is <= 2^20 and at most
  // three are multiplied, so each term fits in int64, but their sum may
  // not: it is taken in 128 bits before it is compared with the file.
  const int64_t n_embd_table = vocab * dim;
  const absl::uint128 n_total =
      absl::uint128(n_embd_table) + L * dim + absl::uint128(L * dim * dim) +
      absl::uint128(2) * (L * dim * kv) + absl::uint128(L * dim * dim) +
      L * dim + absl::uint128(3) * (L * dim * hid) + dim +
      int64_t{h.seq_len} * c.head_dim + (shared_classifier ? 0 : vocab * dim);
  const absl::uint128 need = sizeof(Header) + n_total * 4;
  if (absl::uint128(file->size()) < need) {
    return absl::InvalidArgumentError(absl::StrCat(
        "llama2.c checkpoint truncated: the header (dim ", dim, ", hidden ",
        hid, ", layers ", L, ", heads ", c.n_head, ", kv_heads ", c.n_head_kv,
        ", vocab ", vocab, ", seq_len ", h.seq_len, ") needs ",
        absl::Uint128High64(need) == 0 ? absl::StrCat(absl::Uint128Low64(need))
                                       : std::string("more than 2^64"),
        " bytes, file has ", file->size(),
        "; the file is truncated or not a llama2.c checkpoint"));
  }
  const float* p = reinterpret_cast<const float*>(file->data() + sizeof(Header));
  auto take = [&p](int64_t n) {
    const float* at = p;
    p += n;
    return at;
  };
  auto mat = [](const float* base, int64_t rows, int64_t cols) {
    Matrix m;
    m.type = GgmlType::kF32;
    m.rows = rows;
    m.cols = cols;
    m.row_bytes = static_cast<size_t>(cols) * 4;
    m.data = reinterpret_cast<const uint8_t*>(base);
    return m;
  };
  m->tok_embd = mat(take(n_embd_table), vocab, dim);
  m->layers.resize(L);
  const float* rms_att = take(L * dim);
  const float* wq = take(L * dim * dim);
  const float* wk = take(L * dim * kv);
  const float* wv = take(L * dim * kv);
  const float* wo = take(L * dim * dim);
  const float* rms_ffn = take(L * dim);
  const float* w1 = take(L * dim * hid);
  const float* w2 = take(L * hid * dim);
  const float* w3 = take(L * dim * hid);
  for (int64_t l = 0; l < L; ++l) {
    LayerWeights& lw = m->layers[l];
    lw.attn_norm = rms_att + l * dim;
    lw.wq = mat(wq + l * dim * dim, dim, dim);
    lw.wk = mat(wk + l * dim * kv, kv, dim);
    lw.wv = mat(wv + l * dim * kv, kv, dim);
    lw.wo = mat(wo + l * dim * dim, dim, dim);
    lw.ffn_norm = rms_ffn + l * dim;
    lw.ffn.gate = mat(w1 + l * dim * hid, hid, dim);
    lw.ffn.down = mat(w2 + l * hid * dim, dim, hid);
    lw.ffn.up = mat(w3 + l * dim * hid, hid, dim);
  }
  m->output_norm = take(dim);
  take(int64_t{h.seq_len} * c.head_dim);  // freq_cis_real + freq_cis_imag
  m->output = shared_classifier ? m->tok_embd : mat(take(vocab * dim), vocab, dim);
  return m;
}

}  // namespace flashd
