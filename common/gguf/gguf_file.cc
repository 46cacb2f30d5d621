#include "common/gguf/gguf_file.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

// Propagates a non-OK absl::Status from `expr`.
#define GGUF_RETURN_IF_ERROR(expr)               \
  do {                                           \
    absl::Status gguf_status_ = (expr);          \
    if (!gguf_status_.ok()) return gguf_status_; \
  } while (0)

namespace flashd {

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader assumes a little-endian host");

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read little-endian
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
// Smallest encodings, used to bound counts before anything is allocated:
// a kv is key length + 1-byte key + type + 1-byte value; a tensor info is
// name length + 1-byte name + n_dims + one dim + type + offset.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;
constexpr uint64_t kMinStringBytes = 8;
// Counts are only bounded by the file size, and in-memory entries are larger
// than their encodings, so containers reserve at most this much up front and
// otherwise grow with what was actually parsed.
constexpr uint64_t kMaxReserve = 1 << 16;

uint64_t ReserveBound(uint64_t count) { return std::min(count, kMaxReserve); }

// Lazily built description of the field being read ("kv 3 (key) value").
using What = absl::FunctionRef<std::string()>;

// Debian's Abseil has its own string_view; convert at the StrCat calls.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("gguf: ", message));
}

// Bounds-checked little-endian reads over the mapped file.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t size() const { return size_; }
  uint64_t remaining() const { return size_ - pos_; }

  // OK when `n` more bytes exist at the current position.
  absl::Status Need(uint64_t n, What what) const {
    if (n <= remaining()) return absl::OkStatus();
    return Invalid(absl::StrCat("truncated: ", what(), " needs ", n,
                                " bytes at offset ", pos_, ", file has ",
                                size_));
  }

  template <typename T>
  absl::Status Read(T* out, What what) {
    GGUF_RETURN_IF_ERROR(Need(sizeof(T), what));
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status ReadBytes(uint64_t n, std::string_view* out, What what) {
    GGUF_RETURN_IF_ERROR(Need(n, what));
    *out = std::string_view(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return absl::OkStatus();
  }

  // uint64 length + bytes (no terminator).
  absl::Status ReadString(std::string_view* out, What what) {
    uint64_t len = 0;
    GGUF_RETURN_IF_ERROR(
        Read(&len, [&] { return absl::StrCat(what(), " length"); }));
    return ReadBytes(len, out, what);
  }

  // Fails unless `count` items of at least `min_bytes` each can fit.
  absl::Status CheckCount(uint64_t count, uint64_t min_bytes,
                          std::string_view item, What what) const {
    if (count <= remaining() / min_bytes) return absl::OkStatus();
    return Invalid(absl::StrCat(
        what(), " count ", count, " is impossible: each ", Sv(item), " needs ",
        min_bytes, " bytes or more, ", remaining(), " bytes left at offset ",
        pos_, ", file has ", size_, " (corrupt or truncated file)"));
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

}  // namespace

// Parses the whole header, metadata and tensor index into a GgufFile.
class GgufParser {
 public:
  explicit GgufParser(GgufFile* out)
      : out_(out), cur_(out->file_->data(), out->file_->size()) {}

  absl::Status Run() {
    GGUF_RETURN_IF_ERROR(ReadHeader());
    for (uint64_t i = 0; i < kv_count_; ++i) GGUF_RETURN_IF_ERROR(ReadKv(i));
    GGUF_RETURN_IF_ERROR(ReadAlignment());
    for (uint64_t i = 0; i < tensor_count_; ++i) {
      GGUF_RETURN_IF_ERROR(ReadTensorInfo(i));
    }
    return PlaceTensors();
  }

 private:
  absl::Status ReadHeader() {
    uint32_t magic = 0;
    GGUF_RETURN_IF_ERROR(cur_.Read(&magic, [] { return "magic"; }));
    if (magic != kGgufMagic) {
      std::string got(reinterpret_cast<const char*>(&magic), 4);
      return Invalid(absl::StrCat("bad magic \"", absl::CHexEscape(got),
                                  "\" (expected \"GGUF\"): not a GGUF file"));
    }
    uint32_t version = 0;
    GGUF_RETURN_IF_ERROR(cur_.Read(&version, [] { return "version"; }));
    if (version == 1) {
      return Invalid(
          "version 1 is not supported (only versions 2 and 3); re-convert "
          "the model with a current llama.cpp");
    }
    if (version != 2 && version != 3) {
      std::string hint;
      if (__builtin_bswap32(version) == 2 || __builtin_bswap32(version) == 3) {
        hint = " (looks like a big-endian file; only little-endian is read)";
      }
      return Invalid(absl::StrCat("unsupported version ", version,
                                  " (supported: 2, 3)", hint));
    }
    out_->version_ = version;
    GGUF_RETURN_IF_ERROR(
        cur_.Read(&tensor_count_, [] { return "tensor_count"; }));
    GGUF_RETURN_IF_ERROR(cur_.Read(&kv_count_, [] { return "kv_count"; }));
    GGUF_RETURN_IF_ERROR(cur_.CheckCount(kv_count_, kMinKvBytes, "key/value",
                                         [] { return "kv"; }));
    GGUF_RETURN_IF_ERROR(cur_.CheckCount(tensor_count_, kMinTensorInfoBytes,
                                         "tensor info",
                                         [] { return "tensor"; }));
    // Both tables share the remaining bytes.
    if (kv_count_ * kMinKvBytes + tensor_count_ * kMinTensorInfoBytes >
        cur_.remaining()) {
      return Invalid(absl::StrCat(
          "truncated: ", kv_count_, " key/values and ", tensor_count_,
          " tensor infos cannot fit in the ", cur_.remaining(),
          " bytes after the header, file has ", cur_.size()));
    }
    out_->key_order_.reserve(ReserveBound(kv_count_));
    out_->kv_.reserve(ReserveBound(kv_count_));
    out_->tensors_.reserve(ReserveBound(tensor_count_));
    out_->tensor_index_.reserve(ReserveBound(tensor_count_));
    return absl::OkStatus();
  }

  absl::Status ReadKv(uint64_t i) {
    std::string_view key;
    GGUF_RETURN_IF_ERROR(
        cur_.ReadString(&key, [&] { return absl::StrCat("kv ", i, " key"); }));
    if (key.empty()) {
      return Invalid(absl::StrCat("kv ", i, " has an empty key"));
    }
    auto desc = [&] { return absl::StrCat("kv ", i, " (", Sv(key), ")"); };
    uint32_t type = 0;
    GGUF_RETURN_IF_ERROR(
        cur_.Read(&type, [&] { return absl::StrCat(desc(), " type"); }));
    GgufValue value;
    GGUF_RETURN_IF_ERROR(ReadValue(type, &value, desc));
    auto [it, inserted] = out_->kv_.try_emplace(Sv(key), std::move(value));
    if (!inserted) {
      return Invalid(
          absl::StrCat("duplicate key '", Sv(key), "' (kv ", i, ")"));
    }
    out_->key_order_.emplace_back(key);
    return absl::OkStatus();
  }

  absl::Status ReadValue(uint32_t type, GgufValue* v, What desc) {
    auto what = [&] {
      return absl::StrCat(desc(), " ", GgufTypeName(type), " value");
    };
    v->type = static_cast<GgufType>(type);
    switch (v->type) {
      case GgufType::kUint8:
        return ReadScalar<uint8_t, uint64_t>(v, what);
      case GgufType::kInt8:
        return ReadScalar<int8_t, int64_t>(v, what);
      case GgufType::kUint16:
        return ReadScalar<uint16_t, uint64_t>(v, what);
      case GgufType::kInt16:
        return ReadScalar<int16_t, int64_t>(v, what);
      case GgufType::kUint32:
        return ReadScalar<uint32_t, uint64_t>(v, what);
      case GgufType::kInt32:
        return ReadScalar<int32_t, int64_t>(v, what);
      case GgufType::kUint64:
        return ReadScalar<uint64_t, uint64_t>(v, what);
      case GgufType::kInt64:
        return ReadScalar<int64_t, int64_t>(v, what);
      case GgufType::kFloat32:
        return ReadScalar<float, double>(v, what);
      case GgufType::kFloat64:
        return ReadScalar<double, double>(v, what);
      case GgufType::kBool: {
        uint8_t b = 0;
        GGUF_RETURN_IF_ERROR(cur_.Read(&b, what));
        if (b > 1) {
          return Invalid(
              absl::StrCat(desc(), " bool value ", int{b}, " is not 0 or 1"));
        }
        v->scalar = b == 1;
        return absl::OkStatus();
      }
      case GgufType::kString: {
        std::string_view s;
        GGUF_RETURN_IF_ERROR(cur_.ReadString(&s, what));
        v->scalar = std::string(s);
        return absl::OkStatus();
      }
      case GgufType::kArray:
        return ReadArray(v, desc);
    }
    return Invalid(absl::StrCat(desc(), " has unknown value type ", type));
  }

  template <typename Stored, typename Widened>
  absl::Status ReadScalar(GgufValue* v, What what) {
    Stored x{};
    GGUF_RETURN_IF_ERROR(cur_.Read(&x, what));
    v->scalar = static_cast<Widened>(x);
    return absl::OkStatus();
  }

  absl::Status ReadArray(GgufValue* v, What desc) {
    uint32_t elem = 0;
    GGUF_RETURN_IF_ERROR(cur_.Read(
        &elem, [&] { return absl::StrCat(desc(), " array element type"); }));
    GGUF_RETURN_IF_ERROR(cur_.Read(
        &v->count, [&] { return absl::StrCat(desc(), " array count"); }));
    v->elem_type = static_cast<GgufType>(elem);
    auto what = [&] {
      return absl::StrCat(desc(), " array of ", GgufTypeName(elem));
    };
    if (v->elem_type == GgufType::kArray) {
      return Invalid(absl::StrCat(desc(), ": nested arrays are not supported"));
    }
    if (v->elem_type == GgufType::kString) {
      GGUF_RETURN_IF_ERROR(
          cur_.CheckCount(v->count, kMinStringBytes, "string", what));
      v->strings.reserve(ReserveBound(v->count));
      for (uint64_t j = 0; j < v->count; ++j) {
        std::string_view s;
        GGUF_RETURN_IF_ERROR(cur_.ReadString(
            &s, [&] { return absl::StrCat(desc(), " string element ", j); }));
        v->strings.emplace_back(s);
      }
      return absl::OkStatus();
    }
    const uint64_t size = GgufTypeSize(elem);
    if (size == 0) {
      return Invalid(
          absl::StrCat(desc(), " array has unknown element type ", elem));
    }
    GGUF_RETURN_IF_ERROR(cur_.CheckCount(v->count, size, "element", what));
    return cur_.ReadBytes(v->count * size, &v->raw, what);
  }

  absl::Status ReadAlignment() {
    if (out_->Find("general.alignment") == nullptr) {
      out_->alignment_ = kDefaultAlignment;
      return absl::OkStatus();
    }
    absl::StatusOr<uint32_t> a = out_->GetUint32("general.alignment");
    if (!a.ok()) return a.status();
    if (*a == 0 || !std::has_single_bit(*a)) {
      return Invalid(absl::StrCat("general.alignment = ", *a,
                                  " must be a nonzero power of two"));
    }
    out_->alignment_ = *a;
    return absl::OkStatus();
  }

  absl::Status ReadTensorInfo(uint64_t i) {
    GgufTensorInfo t;
    std::string_view name;
    GGUF_RETURN_IF_ERROR(cur_.ReadString(
        &name, [&] { return absl::StrCat("tensor info ", i, " name"); }));
    if (name.empty()) {
      return Invalid(absl::StrCat("tensor info ", i, " has an empty name"));
    }
    auto desc = [&] {
      return absl::StrCat("tensor info ", i, " (", Sv(name), ")");
    };
    uint32_t n_dims = 0;
    GGUF_RETURN_IF_ERROR(
        cur_.Read(&n_dims, [&] { return absl::StrCat(desc(), " n_dims"); }));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return Invalid(absl::StrCat(desc(), " n_dims ", n_dims,
                                  " out of range [1, ", kMaxDims, "]"));
    }
    uint64_t n_elements = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = 0;
      GGUF_RETURN_IF_ERROR(cur_.Read(
          &dim, [&] { return absl::StrCat(desc(), " dims[", d, "]"); }));
      if (dim == 0 || dim > uint64_t{std::numeric_limits<int64_t>::max()}) {
        return Invalid(absl::StrCat(desc(), " dims[", d,
                                    "] = ", static_cast<int64_t>(dim),
                                    " must be positive"));
      }
      t.dims.push_back(static_cast<int64_t>(dim));
      overflow =
          overflow || __builtin_mul_overflow(n_elements, dim, &n_elements);
    }
    if (overflow ||
        n_elements > uint64_t{std::numeric_limits<int64_t>::max()}) {
      return Invalid(absl::StrCat(desc(), " element count overflows: dims [",
                                  absl::StrJoin(t.dims, ", "), "]"));
    }
    uint32_t type_id = 0;
    GGUF_RETURN_IF_ERROR(
        cur_.Read(&type_id, [&] { return absl::StrCat(desc(), " type"); }));
    std::optional<TypeTraits> traits = GetTypeTraits(type_id);
    if (!traits.has_value()) {
      return Invalid(
          absl::StrCat(desc(), " has unknown ggml type id ", type_id));
    }
    if (t.dims[0] % traits->block_size != 0) {
      return Invalid(absl::StrCat(
          desc(), " of type ", Sv(traits->name), ": ne[0] = ", t.dims[0],
          " is not a multiple of the block size ", traits->block_size));
    }
    if (__builtin_mul_overflow(n_elements / traits->block_size,
                               uint64_t(traits->type_size), &t.n_bytes)) {
      return Invalid(absl::StrCat(desc(), " byte size overflows: ", n_elements,
                                  " elements of ", Sv(traits->name)));
    }
    GGUF_RETURN_IF_ERROR(
        cur_.Read(&t.offset, [&] { return absl::StrCat(desc(), " offset"); }));
    if (t.offset % out_->alignment_ != 0) {
      return Invalid(absl::StrCat(desc(), " offset ", t.offset,
                                  " is not a multiple of the alignment ",
                                  out_->alignment_));
    }
    t.type = static_cast<GgmlType>(type_id);
    t.n_elements = n_elements;
    t.name = std::string(name);
    auto [it, inserted] =
        out_->tensor_index_.try_emplace(t.name, out_->tensors_.size());
    if (!inserted) {
      return Invalid(absl::StrCat("duplicate tensor name '", Sv(name),
                                  "' (tensor infos ", it->second, " and ", i,
                                  ")"));
    }
    out_->tensors_.push_back(std::move(t));
    return absl::OkStatus();
  }

  // The data section starts after the tensor infos, aligned up; every
  // tensor's bytes must lie inside the file.
  absl::Status PlaceTensors() {
    const uint64_t a = out_->alignment_;
    const uint64_t end_of_infos = cur_.pos();
    // end_of_infos <= file size and a <= 2^31, so this cannot overflow.
    out_->data_offset_ = (end_of_infos + a - 1) / a * a;
    const uint64_t size = cur_.size();
    for (GgufTensorInfo& t : out_->tensors_) {
      const bool start_overflows =
          __builtin_add_overflow(out_->data_offset_, t.offset, &t.file_offset);
      uint64_t end = 0;
      if (start_overflows ||
          __builtin_add_overflow(t.file_offset, t.n_bytes, &end) ||
          end > size) {
        const std::string start =
            start_overflows ? absl::StrCat(out_->data_offset_, " + ", t.offset)
                            : absl::StrCat(t.file_offset);
        return Invalid(absl::StrCat("tensor ", t.name, " data [offset ", start,
                                    ", +", t.n_bytes, ") exceeds file size ",
                                    size, " (file truncated?)"));
      }
    }
    return absl::OkStatus();
  }

  GgufFile* out_;
  Cursor cur_;
  uint64_t tensor_count_ = 0;
  uint64_t kv_count_ = 0;
};

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(
    const std::string& path, bool resident) {
  absl::StatusOr<std::unique_ptr<MappedFile>> mapped =
      MappedFile::Open(path, resident);
  if (!mapped.ok()) return mapped.status();
  absl::StatusOr<std::unique_ptr<GgufFile>> file =
      Parse(std::shared_ptr<const MappedFile>(std::move(*mapped)));
  if (!file.ok()) {
    return absl::Status(file.status().code(),
                        absl::StrCat(path, ": ", file.status().message()));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(
    std::shared_ptr<const MappedFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("gguf: no file");
  auto out = std::unique_ptr<GgufFile>(new GgufFile());
  out->file_ = std::move(file);
  GgufParser parser(out.get());
  GGUF_RETURN_IF_ERROR(parser.Run());
  return out;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = kv_.find(Sv(key));
  return it == kv_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(Sv(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace flashd
