#include "common/kernels/ggml_types.h"

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"

namespace flashd {
namespace {

// Ids 0..39 of ggml_type. Gaps (4, 5: the removed q4_2/q4_3; 31..33 and
// 36..38: removed repacked layouts) have block_size 0 and count as unknown.
// Sizes follow ggml's type_traits table (ggml.c) and ggml-common.h.
constexpr std::array<TypeTraits, 40> kTraits = {{
    {"f32", 1, 4, true},          // 0  kF32
    {"f16", 1, 2, true},          // 1  kF16
    {"q4_0", 32, 18, true},       // 2  kQ4_0
    {"q4_1", 32, 20, false},      // 3  kQ4_1
    {},                           // 4  (q4_2, removed)
    {},                           // 5  (q4_3, removed)
    {"q5_0", 32, 22, false},      // 6  kQ5_0
    {"q5_1", 32, 24, false},      // 7  kQ5_1
    {"q8_0", 32, 34, true},       // 8  kQ8_0
    {"q8_1", 32, 36, false},      // 9  kQ8_1
    {"q2_K", 256, 84, false},     // 10 kQ2_K
    {"q3_K", 256, 110, false},    // 11 kQ3_K
    {"q4_K", 256, 144, true},     // 12 kQ4_K
    {"q5_K", 256, 176, false},    // 13 kQ5_K
    {"q6_K", 256, 210, true},     // 14 kQ6_K
    {"q8_K", 256, 292, true},     // 15 kQ8_K
    {"iq2_xxs", 256, 66, false},  // 16 kIQ2_XXS
    {"iq2_xs", 256, 74, false},   // 17 kIQ2_XS
    {"iq3_xxs", 256, 98, false},  // 18 kIQ3_XXS
    {"iq1_s", 256, 50, false},    // 19 kIQ1_S
    {"iq4_nl", 32, 18, false},    // 20 kIQ4_NL
    {"iq3_s", 256, 110, false},   // 21 kIQ3_S
    {"iq2_s", 256, 82, false},    // 22 kIQ2_S
    {"iq4_xs", 256, 136, false},  // 23 kIQ4_XS
    {"i8", 1, 1, false},          // 24 kI8
    {"i16", 1, 2, false},         // 25 kI16
    {"i32", 1, 4, false},         // 26 kI32
    {"i64", 1, 8, false},         // 27 kI64
    {"f64", 1, 8, false},         // 28 kF64
    {"iq1_m", 256, 56, false},    // 29 kIQ1_M
    {"bf16", 1, 2, true},         // 30 kBF16
    {},                           // 31 (q4_0_4_4, removed)
    {},                           // 32 (q4_0_4_8, removed)
    {},                           // 33 (q4_0_8_8, removed)
    {"tq1_0", 256, 54, false},    // 34 (ternary, no enum value here)
    {"tq2_0", 256, 66, false},    // 35 (ternary, no enum value here)
    {},                           // 36 (iq4_nl_4_4, removed)
    {},                           // 37 (iq4_nl_4_8, removed)
    {},                           // 38 (iq4_nl_8_8, removed)
    {"mxfp4", 32, 17, false},     // 39 (no enum value here)
}};

static_assert(kTraits[static_cast<uint32_t>(GgmlType::kQ4_K)].type_size ==
              sizeof(BlockQ4_K));
static_assert(kTraits[static_cast<uint32_t>(GgmlType::kQ6_K)].type_size ==
              sizeof(BlockQ6_K));
static_assert(kTraits[static_cast<uint32_t>(GgmlType::kQ8_K)].type_size ==
              sizeof(BlockQ8_K));
static_assert(kTraits[static_cast<uint32_t>(GgmlType::kQ8_0)].type_size ==
              sizeof(BlockQ8_0));
static_assert(kTraits[static_cast<uint32_t>(GgmlType::kQ4_0)].type_size ==
              sizeof(BlockQ4_0));
static_assert(kTraits[static_cast<uint32_t>(GgmlType::kBF16)].name == "bf16");

// Names handed out for unknown ids must outlive the call: they are interned
// (and capped, so hostile inputs cannot grow the table without bound).
constexpr size_t kMaxInternedNames = 4096;

std::string_view InternUnknownName(uint32_t type_id) {
  static std::mutex mu;
  static auto* names = new std::map<uint32_t, std::unique_ptr<std::string>>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = names->find(type_id);
  if (it != names->end()) return *it->second;
  if (names->size() >= kMaxInternedNames) return "type#unknown";
  auto name = std::make_unique<std::string>(absl::StrCat("type#", type_id));
  std::string_view view = *name;
  names->emplace(type_id, std::move(name));
  return view;
}

}  // namespace

std::optional<TypeTraits> GetTypeTraits(uint32_t type_id) {
  if (type_id >= kTraits.size() || kTraits[type_id].block_size == 0) {
    return std::nullopt;
  }
  return kTraits[type_id];
}

const TypeTraits& Traits(GgmlType type) {
  const auto id = static_cast<uint32_t>(type);
  FLASHD_CHECK(id < kTraits.size() && kTraits[id].block_size != 0);
  return kTraits[id];
}

std::string_view TypeName(uint32_t type_id) {
  if (type_id < kTraits.size() && kTraits[type_id].block_size != 0) {
    return kTraits[type_id].name;
  }
  return InternUnknownName(type_id);
}

}  // namespace flashd
