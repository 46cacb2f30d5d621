#include "common/model/model_loader.h"

#include <unistd.h>

#include <cstring>
#include <map>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/fp16.h"
#include "common/kernels/kernels.h"

namespace flashd {
namespace {

constexpr int32_t kMaxDim = 1 << 20;

std::string SupportedTypeList() {
  std::vector<std::string> names;
  for (uint32_t id = 0; id <= 30; ++id) {
    auto t = GetTypeTraits(id);
    if (t && t->supported && id != static_cast<uint32_t>(GgmlType::kQ8_K)) {
      names.emplace_back(t->name);
    }
  }
  return absl::StrJoin(names, ", ");
}

// Reads a positive int hyperparameter; `fallback` < 0 means required.
absl::StatusOr<int32_t> GetDim(const GgufFile& g, const std::string& key,
                               int64_t fallback = -1) {
  if (g.Find(key) == nullptr) {
    if (fallback >= 0) return static_cast<int32_t>(fallback);
    return absl::InvalidArgumentError(
        absl::StrCat("model metadata lacks required key ", key));
  }
  absl::StatusOr<uint64_t> v = g.GetUint(key);
  if (!v.ok()) return v.status();
  if (*v == 0 || *v > static_cast<uint64_t>(kMaxDim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model metadata ", key, " = ", *v, " is out of range [1, ", kMaxDim, "]"));
  }
  return static_cast<int32_t>(*v);
}

class GgufModelBuilder {
 public:
  GgufModelBuilder(const GgufFile& g, Model& m) : g_(g), m_(m) {}

  // Binds a tensor as a matrix of exactly (rows, cols).
  absl::StatusOr<Matrix> Mat(const std::string& name, int64_t cols,
                             int64_t rows) {
    const GgufTensorInfo* t = g_.FindTensor(name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("model lacks tensor ", name));
    }
    if (t->dims.size() != 2 || t->dims[0] != cols || t->dims[1] != rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, " has shape [", absl::StrJoin(t->dims, ", "),
          "], expected [", cols, ", ", rows, "]"));
    }
    const TypeTraits& tr = Traits(t->type);
    if (!tr.supported || t->type == GgmlType::kQ8_K) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, " has type ", std::string(tr.name),
          ", which flashd does not support (supported: ", SupportedTypeList(),
          ")"));
    }
    if (cols % tr.block_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, " row length ", cols,
          " is not a multiple of the ", std::string(tr.name), " block size ", tr.block_size));
    }
    Matrix m;
    m.type = t->type;
    m.cols = cols;
    m.rows = rows;
    m.row_bytes = RowSize(t->type, cols);
    m.data = g_.TensorData(*t);
    bytes_by_type_[std::string(tr.name)] += m.bytes();
    return m;
  }

  // Binds a vector of n floats (converted to f32 when stored otherwise).
  absl::StatusOr<const float*> Vec(const std::string& name, int64_t n) {
    const GgufTensorInfo* t = g_.FindTensor(name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("model lacks tensor ", name));
    }
    if (t->dims.size() != 1 || t->dims[0] != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, " has shape [",
                       absl::StrJoin(t->dims, ", "), "], expected [", n, "]"));
    }
    const uint8_t* data = g_.TensorData(*t);
    if (t->type == GgmlType::kF32 &&
        reinterpret_cast<uintptr_t>(data) % alignof(float) == 0) {
      return reinterpret_cast<const float*>(data);
    }
    const TypeTraits& tr = Traits(t->type);
    if (!tr.supported || n % tr.block_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, " has type ", std::string(tr.name), ", not usable for a norm"));
    }
    std::vector<float> out(n);
    kernels::ToFloat(t->type, data, out.data(), n);
    m_.owned_floats.push_back(std::move(out));
    return m_.owned_floats.back().data();
  }

  std::string DominantType() const {
    std::string best;
    size_t best_bytes = 0;
    for (const auto& [name, bytes] : bytes_by_type_) {
      if (bytes > best_bytes) best = name, best_bytes = bytes;
    }
    return best;
  }

 private:
  const GgufFile& g_;
  Model& m_;
  std::map<std::string, size_t> bytes_by_type_;
};

#define FLASHD_ASSIGN(lhs, expr)            \
  do {                                      \
    auto status_or_ = (expr);               \
    if (!status_or_.ok()) return status_or_.status(); \
    lhs = *std::move(status_or_);           \
  } while (0)

absl::Status CheckShape(const ModelConfig& c) {
  if (c.n_embd % c.n_head != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "embedding length ", c.n_embd, " is not divisible by head count ",
        c.n_head));
  }
  if (c.n_head_kv > c.n_head || c.n_head % c.n_head_kv != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head count ", c.n_head,
                     " is not a multiple of KV head count ", c.n_head_kv));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head dimension ", c.head_dim, " is odd; RoPE needs pairs"));
  }
  return absl::OkStatus();
}

// llama2.c's tokenizer beside a checkpoint: tokenizer.bin, else
// tok<vocab>.bin (as llama2.c names its small vocabularies).
std::string DefaultTokenizerPath(const std::string& model_path,
                                 int32_t n_vocab) {
  const size_t slash = model_path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? "." : model_path.substr(0, slash);
  const std::string plain = dir + "/tokenizer.bin";
  if (::access(plain.c_str(), R_OK) == 0) return plain;
  return absl::StrCat(dir, "/tok", n_vocab, ".bin");
}

// A GGUF vocabulary or a llama2.c tokenizer.bin, told apart by magic.
absl::StatusOr<Vocab> LoadVocabFile(const std::string& path, int32_t n_vocab) {
  absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(path);
  if (!f.ok()) return f.status();
  std::shared_ptr<const MappedFile> file = std::move(*f);
  if (file->size() >= 4 && std::memcmp(file->data(), "GGUF", 4) == 0) {
    absl::StatusOr<std::unique_ptr<GgufFile>> g = GgufFile::Parse(file);
    if (!g.ok()) return g.status();
    return LoadVocabFromGguf(**g);
  }
  return ParseLlama2cVocab(file->bytes(), n_vocab, path);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> ModelFromGguf(const GgufFile& g) {
  absl::StatusOr<std::string> arch = g.GetString("general.architecture");
  if (!arch.ok()) {
    return absl::InvalidArgumentError(
        "model metadata lacks general.architecture");
  }
  if (*arch != "llama") {
    return absl::InvalidArgumentError(
        absl::StrCat("architecture '", *arch,
                     "' is not supported (flashd runs 'llama' models)"));
  }
  if (g.Find("llama.expert_count") != nullptr) {
    absl::StatusOr<uint64_t> experts = g.GetUint("llama.expert_count");
    if (experts.ok() && *experts > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "mixture-of-experts llama models (", *experts,
          " experts) are not supported"));
    }
  }
  if (const GgufValue* v = g.Find("llama.rope.scaling.type")) {
    absl::StatusOr<std::string> s = g.GetString("llama.rope.scaling.type");
    if (s.ok() && *s != "none") {
      return absl::InvalidArgumentError(
          absl::StrCat("RoPE scaling '", *s, "' is not supported"));
    }
    (void)v;
  }

  auto m = std::make_unique<Model>();
  m->format = "gguf";
  m->file = g.shared_file();
  if (absl::StatusOr<std::string> name = g.GetString("general.name"); name.ok()) {
    m->name = *name;
  }
  ModelConfig& c = m->config;
  FLASHD_ASSIGN(c.n_embd, GetDim(g, "llama.embedding_length"));
  FLASHD_ASSIGN(c.n_layer, GetDim(g, "llama.block_count"));
  FLASHD_ASSIGN(c.n_ff, GetDim(g, "llama.feed_forward_length"));
  FLASHD_ASSIGN(c.n_head, GetDim(g, "llama.attention.head_count"));
  FLASHD_ASSIGN(c.n_head_kv,
                GetDim(g, "llama.attention.head_count_kv", c.n_head));
  FLASHD_ASSIGN(c.n_ctx_train, GetDim(g, "llama.context_length", 2048));
  if (c.n_embd % c.n_head == 0) c.head_dim = c.n_embd / c.n_head;
  if (absl::Status s = CheckShape(c); !s.ok()) return s;
  FLASHD_ASSIGN(c.n_rot, GetDim(g, "llama.rope.dimension_count", c.head_dim));
  if (c.n_rot != c.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "partial RoPE (rope.dimension_count ", c.n_rot, " != head dim ",
        c.head_dim, ") is not supported"));
  }
  if (g.Find("llama.attention.layer_norm_rms_epsilon") != nullptr) {
    double eps = 0;
    FLASHD_ASSIGN(eps, g.GetFloat("llama.attention.layer_norm_rms_epsilon"));
    c.rms_eps = static_cast<float>(eps);
  }
  if (g.Find("llama.rope.freq_base") != nullptr) {
    double base = 0;
    FLASHD_ASSIGN(base, g.GetFloat("llama.rope.freq_base"));
    c.rope_theta = static_cast<float>(base);
  }
  if (!(c.rms_eps > 0.0f && c.rms_eps < 1.0f) ||
      !(c.rope_theta > 1.0f && c.rope_theta < 1e9f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("implausible rms epsilon ", c.rms_eps,
                     " or rope base ", c.rope_theta));
  }
  const GgufTensorInfo* embd = g.FindTensor("token_embd.weight");
  if (embd == nullptr) {
    return absl::InvalidArgumentError("model lacks tensor token_embd.weight");
  }
  if (embd->dims.size() != 2 || embd->dims[1] <= 0 || embd->dims[1] > kMaxDim) {
    return absl::InvalidArgumentError(
        "tensor token_embd.weight must be 2-D [n_embd, n_vocab]");
  }
  c.n_vocab = static_cast<int32_t>(embd->dims[1]);

  GgufModelBuilder b(g, *m);
  FLASHD_ASSIGN(m->tok_embd, b.Mat("token_embd.weight", c.n_embd, c.n_vocab));
  FLASHD_ASSIGN(m->output_norm, b.Vec("output_norm.weight", c.n_embd));
  if (g.FindTensor("output.weight") != nullptr) {
    FLASHD_ASSIGN(m->output, b.Mat("output.weight", c.n_embd, c.n_vocab));
  } else {
    m->output = m->tok_embd;  // tied embeddings
  }
  m->layers.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    LayerWeights& L = m->layers[l];
    const std::string p = absl::StrCat("blk.", l, ".");
    FLASHD_ASSIGN(L.attn_norm, b.Vec(p + "attn_norm.weight", c.n_embd));
    FLASHD_ASSIGN(L.wq, b.Mat(p + "attn_q.weight", c.n_embd, c.n_embd));
    FLASHD_ASSIGN(L.wk, b.Mat(p + "attn_k.weight", c.n_embd, c.kv_dim()));
    FLASHD_ASSIGN(L.wv, b.Mat(p + "attn_v.weight", c.n_embd, c.kv_dim()));
    FLASHD_ASSIGN(L.wo, b.Mat(p + "attn_output.weight", c.n_embd, c.n_embd));
    FLASHD_ASSIGN(L.ffn_norm, b.Vec(p + "ffn_norm.weight", c.n_embd));
    FLASHD_ASSIGN(L.ffn.gate, b.Mat(p + "ffn_gate.weight", c.n_embd, c.n_ff));
    FLASHD_ASSIGN(L.ffn.up, b.Mat(p + "ffn_up.weight", c.n_embd, c.n_ff));
    FLASHD_ASSIGN(L.ffn.down, b.Mat(p + "ffn_down.weight", c.n_ff, c.n_embd));
  }
  m->type_name = b.DominantType();
  return m;
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& path,
                                      const LoadOptions& options) {
  absl::StatusOr<std::unique_ptr<MappedFile>> mapped =
      MappedFile::Open(path, options.resident);
  if (!mapped.ok()) return mapped.status();
  std::shared_ptr<const MappedFile> file = std::move(*mapped);
  LoadedModel out;
  auto prefix = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  };
  if (file->size() >= 4 && std::memcmp(file->data(), "GGUF", 4) == 0) {
    absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Parse(file);
    if (!gguf.ok()) return prefix(gguf.status());
    absl::StatusOr<std::unique_ptr<Model>> model = ModelFromGguf(**gguf);
    if (!model.ok()) return prefix(model.status());
    out.model = std::move(*model);
    if (options.tokenizer_path.empty()) {
      absl::StatusOr<Vocab> vocab = LoadVocabFromGguf(**gguf);
      if (!vocab.ok()) return prefix(vocab.status());
      out.tokenizer = std::make_unique<Tokenizer>(std::move(*vocab));
    }
  } else {
    absl::StatusOr<std::unique_ptr<Model>> model = ModelFromLlama2c(file);
    if (!model.ok()) return prefix(model.status());
    out.model = std::move(*model);
  }
  if (out.tokenizer == nullptr) {
    const std::string tok =
        options.tokenizer_path.empty()
            ? DefaultTokenizerPath(path, out.model->config.n_vocab)
            : options.tokenizer_path;
    absl::StatusOr<Vocab> vocab = LoadVocabFile(tok, out.model->config.n_vocab);
    if (!vocab.ok()) {
      return absl::Status(vocab.status().code(),
                          absl::StrCat("tokenizer ", tok, ": ",
                                       vocab.status().message()));
    }
    out.tokenizer = std::make_unique<Tokenizer>(std::move(*vocab));
  }
  if (out.tokenizer->vocab().size() != out.model->config.n_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer has ", out.tokenizer->vocab().size(),
        " tokens but the model's vocabulary is ", out.model->config.n_vocab));
  }
  return out;
}

}  // namespace flashd
