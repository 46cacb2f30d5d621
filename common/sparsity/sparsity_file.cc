#include "common/sparsity/sparsity_file.h"

#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/gguf/gguf_file.h"
#include "common/gguf/gguf_writer.h"
#include "common/sparsity/selector.h"

namespace flashd {
namespace {

constexpr char kPrefix[] = "flashd.sparsity.";

std::string Key(const std::string& name) { return kPrefix + name; }
std::string SettingKey(size_t i, const std::string& name) {
  return absl::StrCat(kPrefix, "setting.", i, ".", name);
}
std::string GateName(int32_t l) {
  return absl::StrCat("blk.", l, ".pred_gate");
}
std::string UpName(int32_t l) { return absl::StrCat("blk.", l, ".pred_up"); }

// The measured statistics and their keys, in one table for Write and Load.
struct StatField {
  const char* name;
  double SettingStats::*field;
};
constexpr StatField kStatFields[] = {
    {"fraction_loaded", &SettingStats::fraction_loaded},
    {"recall", &SettingStats::recall},
    {"precision", &SettingStats::precision},
    {"ppl_dense", &SettingStats::ppl_dense},
    {"ppl_sparse", &SettingStats::ppl_sparse},
    {"ppl_oracle", &SettingStats::ppl_oracle},
    {"kl_sparse", &SettingStats::kl_sparse},
    {"kl_oracle", &SettingStats::kl_oracle},
};

// A fast 64-bit checksum of the predictor bytes (corruption detection, not
// security): 8 bytes per step, then a final avalanche.
uint64_t Checksum(const uint8_t* p, size_t n, uint64_t h) {
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  h ^= n * kMul;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = ((h << 23 | h >> 41) ^ w) * kMul;
  }
  for (; i < n; ++i) h = ((h << 23 | h >> 41) ^ p[i]) * kMul;
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  return h;
}

uint64_t PredictorChecksum(const Predictor& p) {
  uint64_t h = 0;
  for (int32_t l = 0; l < p.n_layer(); ++l) {
    h = Checksum(p.gate(l).data, p.gate(l).bytes(), h);
    if (p.variant() == PredictorVariant::kGateUp) {
      h = Checksum(p.up(l).data, p.up(l).bytes(), h);
    }
  }
  return h;
}

absl::Status Error(absl::StatusCode code, const std::string& path,
                   const std::string& what) {
  return absl::Status(code, absl::StrCat(path, ": ", what));
}

// A required uint field that must equal `want` (the model's value).
absl::Status CheckDim(const GgufFile& f, const std::string& path,
                      const std::string& name, int64_t want) {
  absl::StatusOr<uint64_t> got = f.GetUint(Key(name));
  if (!got.ok()) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 std::string(got.status().message()));
  }
  if (static_cast<int64_t>(*got) != want) {
    return Error(absl::StatusCode::kFailedPrecondition, path,
                 absl::StrCat(name, " is ", *got, " but the model has ", want,
                              "; re-run flashd calibrate for this model"));
  }
  return absl::OkStatus();
}

// A predictor tensor, checked for presence, type and shape.
absl::StatusOr<Matrix> LoadMatrix(const GgufFile& f, const std::string& path,
                                  const std::string& name,
                                  const ModelConfig& c) {
  const GgufTensorInfo* t = f.FindTensor(name);
  if (t == nullptr) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 absl::StrCat("tensor ", name, " is missing"));
  }
  if (t->type != Predictor::kType) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 absl::StrCat("tensor ", name, " has type ",
                              std::string(TypeName(uint32_t(t->type))),
                              "; the predictor is q4_0"));
  }
  if (t->dims.size() != 2 || t->dims[0] != c.n_embd || t->dims[1] != c.n_ff) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 absl::StrCat("tensor ", name, " has shape [",
                              absl::StrJoin(t->dims, ", "), "], expected [",
                              c.n_embd, ", ", c.n_ff, "]"));
  }
  Matrix m;
  m.type = t->type;
  m.cols = c.n_embd;
  m.rows = c.n_ff;
  m.row_bytes = RowSize(m.type, m.cols);
  m.data = f.TensorData(*t);
  return m;
}

absl::StatusOr<std::vector<float>> LoadThresholds(const GgufFile& f,
                                                  const std::string& path,
                                                  const std::string& key,
                                                  int32_t n_layer) {
  absl::StatusOr<std::vector<float>> v = f.GetFloatArray(key);
  if (!v.ok()) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 std::string(v.status().message()));
  }
  if (static_cast<int32_t>(v->size()) != n_layer) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 absl::StrCat(key, " has ", v->size(), " values for ", n_layer,
                              " layers"));
  }
  for (size_t l = 0; l < v->size(); ++l) {
    if (std::isnan((*v)[l])) {
      return Error(absl::StatusCode::kInvalidArgument, path,
                   absl::StrCat(key, "[", l, "] is NaN"));
    }
  }
  return v;
}

}  // namespace

SparsityProfile::SparsityProfile(Predictor predictor,
                                 std::vector<SparsitySetting> settings,
                                 uint64_t source_identity)
    : predictor_(std::move(predictor)),
      settings_(std::move(settings)),
      source_identity_(source_identity) {}

std::vector<double> SparsityProfile::settings() const {
  std::vector<double> keeps;
  for (const SparsitySetting& s : settings_) keeps.push_back(s.keep);
  return keeps;
}

absl::StatusOr<const SparsitySetting*> SparsityProfile::FindSetting(
    double keep) const {
  for (const SparsitySetting& s : settings_) {
    if (std::fabs(s.keep - keep) < 1e-6) return &s;
  }
  return absl::NotFoundError(absl::StrCat(
      "keep fraction ", keep, " was not calibrated (calibrated: ",
      absl::StrJoin(settings(), ", "), "); re-run flashd calibrate --keep"));
}

absl::StatusOr<std::unique_ptr<NeuronSelector>> SparsityProfile::MakeSelector(
    double keep, ThreadPool* pool, int32_t max_batch) const {
  absl::StatusOr<const SparsitySetting*> s = FindSetting(keep);
  if (!s.ok()) return s.status();
  if (max_batch <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch ", max_batch, " must be positive"));
  }
  return std::unique_ptr<NeuronSelector>(
      new PredictedSelector(&predictor_, (*s)->thresholds, pool, max_batch));
}

absl::Status SparsityProfile::Write(const std::string& path) const {
  const Predictor& p = predictor_;
  GgufWriter w;
  w.AddString("general.architecture", "flashd.sparsity");
  w.AddUint32(Key("version"), kSparsityVersion);
  w.AddUint64(Key("source_identity"), source_identity_);
  w.AddString(Key("predictor"), std::string(PredictorVariantName(p.variant())));
  w.AddUint32(Key("n_layer"), static_cast<uint32_t>(p.n_layer()));
  w.AddUint32(Key("n_embd"), static_cast<uint32_t>(p.n_embd()));
  w.AddUint32(Key("n_ff"), static_cast<uint32_t>(p.n_ff()));
  w.AddUint64(Key("calib_tokens"), static_cast<uint64_t>(calib_tokens_));
  w.AddUint64(Key("eval_tokens"), static_cast<uint64_t>(eval_tokens_));
  w.AddUint64(Key("predictor_checksum"), PredictorChecksum(p));
  std::vector<float> keeps;
  for (const SparsitySetting& s : settings_) keeps.push_back(float(s.keep));
  w.AddFloat32Array(Key("keep"), keeps);
  for (size_t i = 0; i < settings_.size(); ++i) {
    const SparsitySetting& s = settings_[i];
    w.AddFloat32Array(SettingKey(i, "thresholds"), s.thresholds);
    w.AddFloat32Array(SettingKey(i, "oracle_thresholds"), s.oracle_thresholds);
    for (const StatField& f : kStatFields) {
      w.AddFloat64(SettingKey(i, f.name), s.stats.*(f.field));
    }
  }
  auto add = [&](const std::string& name, const Matrix& m) {
    w.AddTensor(
        name, {m.cols, m.rows}, m.type,
        [&m](uint8_t* dst, size_t n) -> absl::Status {
          if (n != m.bytes()) {
            return absl::InternalError(absl::StrCat(
                "tensor needs ", n, " bytes, predictor has ", m.bytes()));
          }
          std::memcpy(dst, m.data, n);
          return absl::OkStatus();
        });
  };
  for (int32_t l = 0; l < p.n_layer(); ++l) {
    add(GateName(l), p.gate(l));
    if (p.variant() == PredictorVariant::kGateUp) add(UpName(l), p.up(l));
  }
  return w.Write(path);
}

absl::StatusOr<size_t> SparsityProfile::PeekPredictorBytes(
    const std::string& path, const ModelConfig& config) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  if (!f.ok()) return f.status();
  absl::StatusOr<std::string> name = (*f)->GetString(Key("predictor"));
  if (!name.ok()) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 absl::StrCat("not a flashd sparsity file: ",
                              name.status().message()));
  }
  absl::StatusOr<PredictorVariant> variant = ParsePredictorVariant(*name);
  if (!variant.ok()) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 std::string(variant.status().message()));
  }
  const size_t matrix =
      static_cast<size_t>(config.n_ff) * RowSize(Predictor::kType, config.n_embd);
  const size_t per_layer = *variant == PredictorVariant::kGateUp ? 2 : 1;
  return matrix * per_layer * static_cast<size_t>(config.n_layer);
}

absl::StatusOr<std::unique_ptr<SparsityProfile>> SparsityProfile::Load(
    const std::string& path, const ModelConfig& config,
    uint64_t expected_source_identity) {
  absl::StatusOr<std::unique_ptr<GgufFile>> opened =
      GgufFile::Open(path, /*resident=*/true);
  if (!opened.ok()) return opened.status();
  std::shared_ptr<const GgufFile> f = std::move(*opened);
  const auto invalid = [&](const absl::Status& s) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 std::string(s.message()));
  };

  absl::StatusOr<uint64_t> version = f->GetUint(Key("version"));
  if (!version.ok()) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 absl::StrCat("not a flashd sparsity file: ",
                              version.status().message()));
  }
  if (*version != kSparsityVersion) {
    return Error(
        absl::StatusCode::kFailedPrecondition, path,
        absl::StrCat("sparsity file version ", *version, "; this flashd reads ",
                     kSparsityVersion, "; re-run flashd calibrate"));
  }
  absl::StatusOr<uint64_t> identity = f->GetUint(Key("source_identity"));
  if (!identity.ok()) return invalid(identity.status());
  if (*identity != expected_source_identity) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s was calibrated for a different model; re-run flashd calibrate "
        "(file's source identity %#018x, this model's %#018x)",
        path, *identity, expected_source_identity));
  }
  for (const auto& [name, want] :
       {std::pair<const char*, int64_t>{"n_layer", config.n_layer},
        {"n_embd", config.n_embd},
        {"n_ff", config.n_ff}}) {
    if (absl::Status s = CheckDim(*f, path, name, want); !s.ok()) return s;
  }
  absl::StatusOr<std::string> variant_name = f->GetString(Key("predictor"));
  if (!variant_name.ok()) return invalid(variant_name.status());
  absl::StatusOr<PredictorVariant> variant =
      ParsePredictorVariant(*variant_name);
  if (!variant.ok()) return invalid(variant.status());

  absl::StatusOr<std::vector<float>> keeps = f->GetFloatArray(Key("keep"));
  if (!keeps.ok()) return invalid(keeps.status());
  if (keeps->empty()) {
    return Error(absl::StatusCode::kInvalidArgument, path,
                 "no keep fractions (flashd.sparsity.keep is empty)");
  }
  std::vector<SparsitySetting> settings(keeps->size());
  for (size_t i = 0; i < keeps->size(); ++i) {
    SparsitySetting& s = settings[i];
    s.keep = (*keeps)[i];
    if (!(s.keep > 0.0 && s.keep <= 1.0)) {
      return Error(absl::StatusCode::kInvalidArgument, path,
                   absl::StrCat("keep fraction ", s.keep, " (setting ", i,
                                ") is outside (0, 1]"));
    }
    absl::StatusOr<std::vector<float>> t =
        LoadThresholds(*f, path, SettingKey(i, "thresholds"), config.n_layer);
    if (!t.ok()) return t.status();
    s.thresholds = std::move(*t);
    t = LoadThresholds(*f, path, SettingKey(i, "oracle_thresholds"),
                       config.n_layer);
    if (!t.ok()) return t.status();
    s.oracle_thresholds = std::move(*t);
    for (const StatField& field : kStatFields) {
      absl::StatusOr<double> v = f->GetFloat(SettingKey(i, field.name));
      if (v.ok()) s.stats.*(field.field) = *v;  // optional
    }
  }

  std::vector<Matrix> gate, up;
  for (int32_t l = 0; l < config.n_layer; ++l) {
    absl::StatusOr<Matrix> m = LoadMatrix(*f, path, GateName(l), config);
    if (!m.ok()) return m.status();
    gate.push_back(*m);
    if (*variant == PredictorVariant::kGateUp) {
      m = LoadMatrix(*f, path, UpName(l), config);
      if (!m.ok()) return m.status();
      up.push_back(*m);
    }
  }
  Predictor predictor =
      Predictor::FromMatrices(*variant, std::move(gate), std::move(up), f);
  absl::StatusOr<uint64_t> checksum = f->GetUint(Key("predictor_checksum"));
  if (!checksum.ok()) return invalid(checksum.status());
  const uint64_t actual = PredictorChecksum(predictor);
  if (actual != *checksum) {
    return Error(absl::StatusCode::kDataLoss, path,
                 absl::StrFormat("predictor tensors are corrupt (checksum "
                                 "%#018x, file records %#018x); re-run "
                                 "flashd calibrate",
                                 actual, *checksum));
  }
  auto profile = std::make_unique<SparsityProfile>(
      std::move(predictor), std::move(settings), *identity);
  absl::StatusOr<uint64_t> calib = f->GetUint(Key("calib_tokens"));
  absl::StatusOr<uint64_t> eval = f->GetUint(Key("eval_tokens"));
  profile->set_token_counts(calib.ok() ? int64_t(*calib) : 0,
                            eval.ok() ? int64_t(*eval) : 0);
  return profile;
}

std::string DefaultSparsityPath(const std::string& model_path) {
  const size_t slash = model_path.find_last_of('/');
  const size_t dot = model_path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash) ||
      dot == (slash == std::string::npos ? 0 : slash + 1)) {
    return model_path + ".sparsity";
  }
  return model_path.substr(0, dot) + ".sparsity";
}

}  // namespace flashd
