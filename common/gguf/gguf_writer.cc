#include "common/gguf/gguf_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <new>
#include <optional>
#include <utility>
#include <variant>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace flashd {
namespace {

constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;
constexpr size_t kMaxDims = 4;
constexpr char kAlignmentKey[] = "general.alignment";

// Debian's Abseil has its own string_view; convert at the StrCat calls.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(v));
}

void PutString(std::string* out, std::string_view s) {
  Put<uint64_t>(out, s.size());
  out->append(s);
}

template <typename T>
std::string Scalar(GgufType type, T v) {
  std::string out;
  Put<uint32_t>(&out, static_cast<uint32_t>(type));
  Put<T>(&out, v);
  return out;
}

// Encodes an array header (type id, element type, count).
std::string ArrayHeader(GgufType elem, uint64_t count) {
  std::string out;
  Put<uint32_t>(&out, static_cast<uint32_t>(GgufType::kArray));
  Put<uint32_t>(&out, static_cast<uint32_t>(elem));
  Put<uint64_t>(&out, count);
  return out;
}

uint64_t AlignUp(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

absl::Status ErrnoError(std::string_view what, const std::string& path,
                        int err) {
  return absl::InternalError(absl::StrCat("gguf writer: ", Sv(what), " ", path,
                                          ": ", std::strerror(err)));
}

// Owns the temporary file: closes it and removes it unless committed.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }

  absl::Status Create() {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return ErrnoError("cannot create", path_, errno);
    return absl::OkStatus();
  }

  absl::Status Write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return ErrnoError("cannot write", path_, errno);
      p += w;
      n -= static_cast<size_t>(w);
    }
    return absl::OkStatus();
  }

  absl::Status Pad(uint64_t n) {
    static constexpr char kZeros[256] = {};
    while (n > 0) {
      size_t k = std::min<uint64_t>(n, sizeof(kZeros));
      if (absl::Status s = Write(kZeros, k); !s.ok()) return s;
      n -= k;
    }
    return absl::OkStatus();
  }

  // Flushes, closes and renames onto `final_path`.
  absl::Status Commit(const std::string& final_path) {
    if (::fsync(fd_) != 0) return ErrnoError("cannot sync", path_, errno);
    int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) return ErrnoError("cannot close", path_, errno);
    if (::rename(path_.c_str(), final_path.c_str()) != 0) {
      return ErrnoError(absl::StrCat("cannot rename ", path_, " to"),
                        final_path, errno);
    }
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

void GgufWriter::SetKv(const std::string& key, std::string encoded) {
  if (key.empty()) return Fail("empty key");
  for (Kv& kv : kvs_) {
    if (kv.key == key) {
      kv.encoded = std::move(encoded);
      return;
    }
  }
  kvs_.push_back({key, std::move(encoded)});
}

void GgufWriter::Fail(const std::string& message) {
  if (error_.ok()) {
    error_ = absl::InvalidArgumentError(absl::StrCat("gguf writer: ", message));
  }
}

void GgufWriter::AddString(const std::string& key, const std::string& value) {
  std::string out;
  Put<uint32_t>(&out, static_cast<uint32_t>(GgufType::kString));
  PutString(&out, value);
  SetKv(key, std::move(out));
}

void GgufWriter::AddUint8(const std::string& key, uint8_t v) {
  SetKv(key, Scalar(GgufType::kUint8, v));
}
void GgufWriter::AddInt8(const std::string& key, int8_t v) {
  SetKv(key, Scalar(GgufType::kInt8, v));
}
void GgufWriter::AddUint16(const std::string& key, uint16_t v) {
  SetKv(key, Scalar(GgufType::kUint16, v));
}
void GgufWriter::AddInt16(const std::string& key, int16_t v) {
  SetKv(key, Scalar(GgufType::kInt16, v));
}
void GgufWriter::AddUint32(const std::string& key, uint32_t v) {
  SetKv(key, Scalar(GgufType::kUint32, v));
}
void GgufWriter::AddInt32(const std::string& key, int32_t v) {
  SetKv(key, Scalar(GgufType::kInt32, v));
}
void GgufWriter::AddUint64(const std::string& key, uint64_t v) {
  SetKv(key, Scalar(GgufType::kUint64, v));
}
void GgufWriter::AddInt64(const std::string& key, int64_t v) {
  SetKv(key, Scalar(GgufType::kInt64, v));
}
void GgufWriter::AddFloat32(const std::string& key, float v) {
  SetKv(key, Scalar(GgufType::kFloat32, v));
}
void GgufWriter::AddFloat64(const std::string& key, double v) {
  SetKv(key, Scalar(GgufType::kFloat64, v));
}
void GgufWriter::AddBool(const std::string& key, bool v) {
  SetKv(key, Scalar(GgufType::kBool, uint8_t{v}));
}

void GgufWriter::AddStringArray(const std::string& key,
                                const std::vector<std::string>& values) {
  std::string out = ArrayHeader(GgufType::kString, values.size());
  for (const std::string& s : values) PutString(&out, s);
  SetKv(key, std::move(out));
}

void GgufWriter::AddFloat32Array(const std::string& key,
                                 const std::vector<float>& values) {
  AddRawArray(key, GgufType::kFloat32, values.size(),
              {reinterpret_cast<const char*>(values.data()),
               values.size() * sizeof(float)});
}

void GgufWriter::AddInt32Array(const std::string& key,
                               const std::vector<int32_t>& values) {
  AddRawArray(key, GgufType::kInt32, values.size(),
              {reinterpret_cast<const char*>(values.data()),
               values.size() * sizeof(int32_t)});
}

void GgufWriter::AddRawArray(const std::string& key, GgufType elem_type,
                             uint64_t count, std::string_view raw) {
  const uint64_t size = GgufTypeSize(static_cast<uint32_t>(elem_type));
  if (size == 0) {
    return Fail(absl::StrCat("key '", key, "': element type ",
                             GgufTypeName(uint32_t(elem_type)),
                             " is not a fixed-size numeric type"));
  }
  if (count > raw.size() / size || raw.size() != count * size) {
    return Fail(absl::StrCat(
        "key '", key, "': ", count, " ", GgufTypeName(uint32_t(elem_type)),
        " elements need ", count * size, " bytes, got ", raw.size()));
  }
  std::string out = ArrayHeader(elem_type, count);
  out.append(raw);
  SetKv(key, std::move(out));
}

void GgufWriter::AddValue(const std::string& key, const GgufValue& v) {
  const auto* u = std::get_if<uint64_t>(&v.scalar);
  const auto* i = std::get_if<int64_t>(&v.scalar);
  const auto* d = std::get_if<double>(&v.scalar);
  const auto* b = std::get_if<bool>(&v.scalar);
  const auto* s = std::get_if<std::string>(&v.scalar);
  switch (v.type) {
    case GgufType::kUint8:
      if (u) return AddUint8(key, uint8_t(*u));
      break;
    case GgufType::kInt8:
      if (i) return AddInt8(key, int8_t(*i));
      break;
    case GgufType::kUint16:
      if (u) return AddUint16(key, uint16_t(*u));
      break;
    case GgufType::kInt16:
      if (i) return AddInt16(key, int16_t(*i));
      break;
    case GgufType::kUint32:
      if (u) return AddUint32(key, uint32_t(*u));
      break;
    case GgufType::kInt32:
      if (i) return AddInt32(key, int32_t(*i));
      break;
    case GgufType::kUint64:
      if (u) return AddUint64(key, *u);
      break;
    case GgufType::kInt64:
      if (i) return AddInt64(key, *i);
      break;
    case GgufType::kFloat32:
      if (d) return AddFloat32(key, float(*d));
      break;
    case GgufType::kFloat64:
      if (d) return AddFloat64(key, *d);
      break;
    case GgufType::kBool:
      if (b) return AddBool(key, *b);
      break;
    case GgufType::kString:
      if (s) return AddString(key, *s);
      break;
    case GgufType::kArray:
      if (v.elem_type == GgufType::kString) {
        if (v.strings.size() == v.count) return AddStringArray(key, v.strings);
        break;
      }
      return AddRawArray(key, v.elem_type, v.count, v.raw);
  }
  Fail(absl::StrCat("key '", key, "': inconsistent value of type ",
                    GgufTypeName(uint32_t(v.type))));
}

void GgufWriter::AddTensor(const std::string& name, std::vector<int64_t> dims,
                           GgmlType type, FillFn fill) {
  tensors_.push_back({name, std::move(dims), type, std::move(fill)});
}

absl::Status GgufWriter::Write(
    const std::string& path,
    const std::function<void(size_t, size_t)>& progress) {
  if (!error_.ok()) return error_;
  if (alignment_ == 0 || !std::has_single_bit(alignment_)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gguf writer: alignment ", alignment_,
                     " must be a nonzero power of two"));
  }
  // general.alignment: written only when not the default, unless the caller
  // added it (then it must agree with the constructor).
  const std::string expected_alignment = Scalar(GgufType::kUint32, alignment_);
  bool has_alignment_key = false;
  for (const Kv& kv : kvs_) {
    if (kv.key != kAlignmentKey) continue;
    if (kv.encoded != expected_alignment) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gguf writer: key general.alignment must be a uint32 equal to the "
          "writer's alignment ",
          alignment_));
    }
    has_alignment_key = true;
  }
  const bool add_alignment_key =
      !has_alignment_key && alignment_ != kDefaultAlignment;

  // Header, metadata and tensor infos; tensor sizes and offsets.
  std::string meta;
  meta.append("GGUF", 4);
  Put<uint32_t>(&meta, kVersion);
  Put<uint64_t>(&meta, tensors_.size());
  Put<uint64_t>(&meta, kvs_.size() + (add_alignment_key ? 1 : 0));
  if (add_alignment_key) {
    PutString(&meta, kAlignmentKey);
    meta.append(expected_alignment);
  }
  for (const Kv& kv : kvs_) {
    PutString(&meta, kv.key);
    meta.append(kv.encoded);
  }
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  absl::flat_hash_set<std::string_view> names;
  for (const Tensor& t : tensors_) {
    auto bad = [&t](std::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("gguf writer: tensor '", t.name, "' dims [",
                       absl::StrJoin(t.dims, ", "), "]: ", Sv(why)));
    };
    if (t.name.empty()) return bad("empty name");
    if (!names.insert(t.name).second) return bad("duplicate name");
    std::optional<TypeTraits> traits = GetTypeTraits(uint32_t(t.type));
    if (!traits) return bad(absl::StrCat("unknown type id ", uint32_t(t.type)));
    if (t.dims.empty() || t.dims.size() > kMaxDims) {
      return bad("need 1 to 4 dims");
    }
    uint64_t n = 1;
    for (int64_t d : t.dims) {
      if (d <= 0) return bad("dims must be positive");
      if (__builtin_mul_overflow(n, uint64_t(d), &n)) return bad("too large");
    }
    if (t.dims[0] % traits->block_size != 0) {
      return bad(absl::StrCat("ne[0] is not a multiple of the ",
                              Sv(traits->name), " block size ",
                              traits->block_size));
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(n / traits->block_size,
                               uint64_t(traits->type_size), &bytes) ||
        bytes > (uint64_t{1} << 62)) {
      return bad("too large");
    }
    sizes.push_back(bytes);
    // Like ggml_n_dims: trailing dimensions of 1 are not written.
    size_t n_dims = t.dims.size();
    while (n_dims > 1 && t.dims[n_dims - 1] == 1) --n_dims;
    PutString(&meta, t.name);
    Put<uint32_t>(&meta, static_cast<uint32_t>(n_dims));
    for (size_t d = 0; d < n_dims; ++d) {
      Put<uint64_t>(&meta, static_cast<uint64_t>(t.dims[d]));
    }
    Put<uint32_t>(&meta, static_cast<uint32_t>(t.type));
    Put<uint64_t>(&meta, offset);
    if (__builtin_add_overflow(offset, AlignUp(bytes, alignment_), &offset)) {
      return bad("data section too large");
    }
  }
  meta.append(AlignUp(meta.size(), alignment_) - meta.size(), '\0');

  // Stream everything to path.tmp, then rename.
  TempFile out(path + ".tmp");
  if (absl::Status s = out.Create(); !s.ok()) return s;
  if (absl::Status s = out.Write(meta.data(), meta.size()); !s.ok()) return s;
  std::string().swap(meta);
  std::vector<uint8_t> buffer;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    try {
      buffer.resize(sizes[i]);
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(
          absl::StrCat("gguf writer: tensor '", t.name, "': cannot allocate ",
                       sizes[i], " bytes"));
    }
    if (t.fill) {
      if (absl::Status s = t.fill(buffer.data(), buffer.size()); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("gguf writer: tensor '",
                                                   t.name, "': ", s.message()));
      }
    } else {
      std::fill(buffer.begin(), buffer.end(), 0);
    }
    if (absl::Status s = out.Write(buffer.data(), buffer.size()); !s.ok()) {
      return s;
    }
    if (absl::Status s = out.Pad(AlignUp(sizes[i], alignment_) - sizes[i]);
        !s.ok()) {
      return s;
    }
    if (progress) progress(i + 1, tensors_.size());
  }
  return out.Commit(path);
}

}  // namespace flashd
