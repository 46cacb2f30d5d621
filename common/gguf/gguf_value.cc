// GGUF value types: names, sizes, and GgufFile's typed getters, which
// convert between integer widths only when the value fits.
#include <cstring>
#include <limits>
#include <string>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/gguf/gguf_file.h"

namespace flashd {

std::string GgufTypeName(uint32_t type) {
  static constexpr std::string_view kNames[] = {
      "uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
      "bool",  "string", "array",  "uint64", "int64",  "float64"};
  if (type < std::size(kNames)) return std::string(kNames[type]);
  return absl::StrCat("type#", type);
}

uint64_t GgufTypeSize(uint32_t type) {
  switch (static_cast<GgufType>(type)) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

namespace {

// Debian's Abseil has its own string_view; convert at the StrCat calls.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("gguf: ", message));
}

bool IsInteger(GgufType t) {
  return t <= GgufType::kInt32 || t == GgufType::kUint64 ||
         t == GgufType::kInt64;
}

std::string Describe(const GgufValue& v) {
  if (v.type != GgufType::kArray) return GgufTypeName(uint32_t(v.type));
  return absl::StrCat("array[", GgufTypeName(uint32_t(v.elem_type)), "]");
}

absl::Status NotFound(std::string_view key) {
  return absl::NotFoundError(
      absl::StrCat("gguf: key '", Sv(key), "' not found"));
}

absl::Status WrongType(std::string_view key, const GgufValue& v,
                       std::string_view expected) {
  return Invalid(absl::StrCat("key '", Sv(key), "' has type ", Describe(v),
                              ", expected ", Sv(expected)));
}

std::string IntToString(__int128 x) {
  return x < 0 ? absl::StrCat(static_cast<int64_t>(x))
               : absl::StrCat(static_cast<uint64_t>(x));
}

// Integer element of a raw numeric array (little-endian, validated type).
__int128 IntElement(GgufType t, const char* p) {
  auto get = [p](auto x) -> __int128 {
    std::memcpy(&x, p, sizeof(x));
    return x;
  };
  switch (t) {
    case GgufType::kUint8:
      return get(uint8_t{});
    case GgufType::kInt8:
      return get(int8_t{});
    case GgufType::kUint16:
      return get(uint16_t{});
    case GgufType::kInt16:
      return get(int16_t{});
    case GgufType::kUint32:
      return get(uint32_t{});
    case GgufType::kInt32:
      return get(int32_t{});
    case GgufType::kUint64:
      return get(uint64_t{});
    default:
      return get(int64_t{});
  }
}

// Integer scalar `key` converted to T when it fits.
template <typename T>
absl::StatusOr<T> IntScalar(std::string_view key, const GgufValue* v,
                            std::string_view target) {
  if (v == nullptr) return NotFound(key);
  if (!IsInteger(v->type)) return WrongType(key, *v, target);
  __int128 x = std::holds_alternative<uint64_t>(v->scalar)
                   ? __int128{std::get<uint64_t>(v->scalar)}
                   : __int128{std::get<int64_t>(v->scalar)};
  if (x < std::numeric_limits<T>::min() || x > std::numeric_limits<T>::max()) {
    return Invalid(absl::StrCat("key '", Sv(key), "' = ", IntToString(x), " (",
                                Describe(*v), ") does not fit ", Sv(target)));
  }
  return static_cast<T>(x);
}

}  // namespace

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  return IntScalar<uint64_t>(key, Find(key), "uint64");
}

absl::StatusOr<uint32_t> GgufFile::GetUint32(std::string_view key) const {
  return IntScalar<uint32_t>(key, Find(key), "uint32");
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  return IntScalar<int64_t>(key, Find(key), "int64");
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type == GgufType::kFloat32 || v->type == GgufType::kFloat64) {
    return std::get<double>(v->scalar);
  }
  if (IsInteger(v->type)) {
    return std::holds_alternative<uint64_t>(v->scalar)
               ? static_cast<double>(std::get<uint64_t>(v->scalar))
               : static_cast<double>(std::get<int64_t>(v->scalar));
  }
  return WrongType(key, *v, "float32 or float64");
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type != GgufType::kBool) return WrongType(key, *v, "bool");
  return std::get<bool>(v->scalar);
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type != GgufType::kString) return WrongType(key, *v, "string");
  return std::get<std::string>(v->scalar);
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(
    std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type != GgufType::kArray || v->elem_type != GgufType::kString) {
    return WrongType(key, *v, "array[string]");
  }
  return v->strings;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(
    std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  const bool is_f32 = v->elem_type == GgufType::kFloat32;
  if (v->type != GgufType::kArray ||
      (!is_f32 && v->elem_type != GgufType::kFloat64)) {
    return WrongType(key, *v, "array[float32] or array[float64]");
  }
  std::vector<float> out(v->count);
  if (is_f32 && v->count > 0) {  // an empty vector's data() may be null
    std::memcpy(out.data(), v->raw.data(), v->count * sizeof(float));
  } else {
    for (uint64_t j = 0; j < v->count; ++j) {
      double d;
      std::memcpy(&d, v->raw.data() + j * sizeof(double), sizeof(double));
      out[j] = static_cast<float>(d);
    }
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> GgufFile::GetIntArray(
    std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type != GgufType::kArray || !IsInteger(v->elem_type)) {
    return WrongType(key, *v, "an integer array");
  }
  const uint64_t size = GgufTypeSize(uint32_t(v->elem_type));
  std::vector<int32_t> out(v->count);
  for (uint64_t j = 0; j < v->count; ++j) {
    __int128 x = IntElement(v->elem_type, v->raw.data() + j * size);
    if (x < std::numeric_limits<int32_t>::min() ||
        x > std::numeric_limits<int32_t>::max()) {
      return Invalid(absl::StrCat("key '", Sv(key), "' element ", j, " = ",
                                  IntToString(x), " (", Describe(*v),
                                  ") does not fit int32"));
    }
    out[j] = static_cast<int32_t>(x);
  }
  return out;
}

}  // namespace flashd
