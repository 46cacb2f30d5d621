#include "common/model/model_maker.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/gguf/gguf_file.h"
#include "common/gguf/gguf_writer.h"
#include "common/kernels/kernels.h"
#include "common/model/llama_keys.h"

namespace flashd {
namespace {

constexpr float kWeightStd = 0.02f;

// splitmix64: a tiny, fast, well-mixed generator; one stream per row so the
// output does not depend on how rows are split across threads.
struct SplitMix {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float Uniform() {  // (0, 1]
    return static_cast<float>((Next() >> 40) + 1) * (1.0f / 16777216.0f);
  }
};

void GaussianRow(uint64_t seed, float* out, int64_t n) {
  SplitMix rng{seed};
  for (int64_t i = 0; i < n; i += 2) {
    const float r = std::sqrt(-2.0f * std::log(rng.Uniform())) * kWeightStd;
    const float a = 6.283185307f * rng.Uniform();
    out[i] = r * std::cos(a);
    if (i + 1 < n) out[i + 1] = r * std::sin(a);
  }
}

// llama.cpp's rule for which layers get more bits in *_K_M files.
bool UseMoreBits(int layer, int n_layer) {
  return layer < n_layer / 8 || layer >= 7 * n_layer / 8 ||
         (layer - n_layer / 8) % 3 == 2;
}

struct TypePlan {
  GgmlType base;
  uint32_t file_type;  // general.file_type (llama_ftype)
};

absl::StatusOr<TypePlan> PlanFor(const std::string& type) {
  if (type == "f16") return TypePlan{GgmlType::kF16, 1};
  if (type == "q8_0") return TypePlan{GgmlType::kQ8_0, 7};
  if (type == "q4_0") return TypePlan{GgmlType::kQ4_0, 2};
  if (type == "q4_k_m") return TypePlan{GgmlType::kQ4_K, 15};
  return absl::InvalidArgumentError(absl::StrCat(
      "--type '", type, "' is not one of f16, q8_0, q4_0, q4_k_m"));
}

// The tensor type llama.cpp's quantizer picks for `name` in file `type`.
GgmlType TensorType(const std::string& type, const TypePlan& plan,
                    const std::string& name, int layer, int n_layer) {
  if (type == "f16") return GgmlType::kF16;
  if (name == "output.weight") {
    return type == "q8_0" ? GgmlType::kQ8_0 : GgmlType::kQ6_K;
  }
  if (type == "q4_k_m" &&
      (name.find("attn_v") != std::string::npos ||
       name.find("ffn_down") != std::string::npos) &&
      UseMoreBits(layer, n_layer)) {
    return GgmlType::kQ6_K;
  }
  return plan.base;
}

}  // namespace

absl::StatusOr<ModelConfig> PresetConfig(const std::string& preset) {
  ModelConfig c;
  c.n_vocab = 32000;
  c.n_ctx_train = 2048;
  c.rms_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  if (preset == "tinyllama-1.1b") {
    c.n_embd = 2048, c.n_ff = 5632, c.n_layer = 22, c.n_head = 32,
    c.n_head_kv = 4;
  } else if (preset == "tiny") {
    c.n_embd = 256, c.n_ff = 768, c.n_layer = 4, c.n_head = 8, c.n_head_kv = 2;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--preset '", preset, "' is not one of tinyllama-1.1b, tiny"));
  }
  c.head_dim = c.n_embd / c.n_head;
  c.n_rot = c.head_dim;
  return c;
}

std::vector<std::string> BuiltinVocabPieces(int32_t n_vocab) {
  std::vector<std::string> p = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) p.push_back(absl::StrFormat("<0x%02X>", b));
  const std::string kSpace = "\xe2\x96\x81";  // U+2581
  p.push_back(kSpace);
  for (char ch = 33; ch < 127; ++ch) p.push_back(std::string(1, ch));
  for (char ch = 33; ch < 127; ++ch) p.push_back(kSpace + std::string(1, ch));
  // Lowercase n-grams, plain and word-initial, until the vocabulary is full.
  std::string gram;
  for (int len = 2; static_cast<int32_t>(p.size()) < n_vocab; ++len) {
    std::vector<int> idx(len, 0);
    while (static_cast<int32_t>(p.size()) < n_vocab) {
      gram.clear();
      for (int i : idx) gram += static_cast<char>('a' + i);
      p.push_back(kSpace + gram);
      if (static_cast<int32_t>(p.size()) < n_vocab) p.push_back(gram);
      int k = len - 1;
      while (k >= 0 && ++idx[k] == 26) idx[k--] = 0;
      if (k < 0) break;
    }
  }
  p.resize(n_vocab);
  return p;
}

absl::Status MakeModel(const MakeModelOptions& o) {
  absl::StatusOr<ModelConfig> cfg = PresetConfig(o.preset);
  if (!cfg.ok()) return cfg.status();
  absl::StatusOr<TypePlan> plan = PlanFor(o.type);
  if (!plan.ok()) return plan.status();
  if (o.out_path.empty()) return absl::InvalidArgumentError("--out is required");
  ModelConfig c = *cfg;

  GgufWriter w;
  AddLlamaHyperparameters(w, c, absl::StrCat("flashd-random-", o.preset),
                          plan->file_type);
  w.AddUint32("general.quantization_version", 2);

  // Vocabulary: from a GGUF, or built in.
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;
  if (!o.vocab_path.empty()) {
    absl::StatusOr<std::unique_ptr<GgufFile>> v = GgufFile::Open(o.vocab_path);
    if (!v.ok()) return v.status();
    absl::StatusOr<std::vector<std::string>> t =
        (*v)->GetStringArray("tokenizer.ggml.tokens");
    if (!t.ok()) return t.status();
    pieces = std::move(*t);
    if (auto s = (*v)->GetFloatArray("tokenizer.ggml.scores"); s.ok()) scores = *s;
    if (auto s = (*v)->GetIntArray("tokenizer.ggml.token_type"); s.ok()) types = *s;
    c.n_vocab = static_cast<int32_t>(pieces.size());
  } else {
    pieces = BuiltinVocabPieces(c.n_vocab);
  }
  if (scores.size() != pieces.size()) {
    scores.resize(pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) scores[i] = -static_cast<float>(i);
  }
  if (types.size() != pieces.size()) {
    types.assign(pieces.size(), 1);  // normal
    types[0] = 2;                    // unknown
    types[1] = types[2] = 3;         // control
    for (int b = 0; b < 256 && 3 + b < static_cast<int>(types.size()); ++b) {
      types[3 + b] = 6;  // byte
    }
  }
  w.AddString("tokenizer.ggml.model", "llama");
  w.AddStringArray("tokenizer.ggml.tokens", pieces);
  w.AddFloat32Array("tokenizer.ggml.scores", scores);
  w.AddInt32Array("tokenizer.ggml.token_type", types);
  w.AddUint32("tokenizer.ggml.bos_token_id", 1);
  w.AddUint32("tokenizer.ggml.eos_token_id", 2);
  w.AddUint32("tokenizer.ggml.unknown_token_id", 0);
  w.AddBool("tokenizer.ggml.add_bos_token", true);
  w.AddBool("tokenizer.ggml.add_eos_token", false);

  const int threads = std::max(1, o.threads);
  uint64_t tensor_index = 0;
  // A random matrix of `rows` x `cols`, quantized row by row in parallel.
  auto matrix = [&](const std::string& name, int64_t cols, int64_t rows,
                    int layer) {
    const GgmlType type = TensorType(o.type, *plan, name, layer, c.n_layer);
    const uint64_t tensor_seed = o.seed * 0x100000001b3ull + (++tensor_index << 32);
    w.AddTensor(name, {cols, rows}, type,
                [=](uint8_t* dst, size_t n_bytes) -> absl::Status {
                  const size_t row_bytes = RowSize(type, cols);
                  if (n_bytes != row_bytes * rows) {
                    return absl::InternalError("tensor size mismatch");
                  }
                  std::vector<std::thread> pool;
                  for (int t = 0; t < threads; ++t) {
                    pool.emplace_back([=] {
                      std::vector<float> row(cols);
                      for (int64_t r = t; r < rows; r += threads) {
                        GaussianRow(tensor_seed + r, row.data(), cols);
                        kernels::FromFloat(type, row.data(),
                                           dst + r * row_bytes, cols);
                      }
                    });
                  }
                  for (auto& th : pool) th.join();
                  return absl::OkStatus();
                });
  };
  auto ones = [&](const std::string& name) {
    w.AddTensor(name, {c.n_embd}, GgmlType::kF32,
                [n = c.n_embd](uint8_t* dst, size_t n_bytes) -> absl::Status {
                  std::vector<float> v(n, 1.0f);
                  std::memcpy(dst, v.data(), n_bytes);
                  return absl::OkStatus();
                });
  };
  matrix("token_embd.weight", c.n_embd, c.n_vocab, 0);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    ones(p + "attn_norm.weight");
    matrix(p + "attn_q.weight", c.n_embd, c.n_embd, l);
    matrix(p + "attn_k.weight", c.n_embd, c.kv_dim(), l);
    matrix(p + "attn_v.weight", c.n_embd, c.kv_dim(), l);
    matrix(p + "attn_output.weight", c.n_embd, c.n_embd, l);
    ones(p + "ffn_norm.weight");
    matrix(p + "ffn_gate.weight", c.n_embd, c.n_ff, l);
    matrix(p + "ffn_up.weight", c.n_embd, c.n_ff, l);
    matrix(p + "ffn_down.weight", c.n_ff, c.n_embd, l);
  }
  ones("output_norm.weight");
  matrix("output.weight", c.n_embd, c.n_vocab, c.n_layer - 1);
  return w.Write(o.out_path, o.progress);
}

}  // namespace flashd
