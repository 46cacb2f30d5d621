// ggml tensor types: ids as stored in GGUF, block layouts, sizes.
// Block layouts follow ggml-common.h of llama.cpp byte for byte.
#ifndef FLASHD_COMMON_KERNELS_GGML_TYPES_H_
#define FLASHD_COMMON_KERNELS_GGML_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace flashd {

// Type ids exactly as in GGUF's tensor info (ggml_type).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
};

inline constexpr int kQK8_0 = 32;
inline constexpr int kQK4_0 = 32;
inline constexpr int kQK_K = 256;
inline constexpr int kKScaleSize = 12;

// 32 weights: x = d * q, q in [-128, 127]. 34 bytes.
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34);

// 32 weights: x = d * (q - 8), q in [0, 15]. Byte j holds element j in the
// low nibble and element j + 16 in the high nibble. 18 bytes.
struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

// 256 weights in 8 sub-blocks of 32: x = d * sc * q - dmin * m, q in [0, 15],
// 6-bit sc and m packed in `scales`. 144 bytes.
struct BlockQ4_K {
  uint16_t d;     // fp16 super-block scale for the scales
  uint16_t dmin;  // fp16 super-block scale for the mins
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 144);

// 256 weights in 16 sub-blocks of 16: x = d * sc * (q - 32), q 6-bit
// (4 low bits in ql, 2 high bits in qh), sc int8. 210 bytes.
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;  // fp16 super-block scale
};
static_assert(sizeof(BlockQ6_K) == 210);

// Activation format for K-quant dot products: 256 int8 with a float scale
// and the sums of each group of 16. 292 bytes.
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
static_assert(sizeof(BlockQ8_K) == 292);

// Static facts about a type.
struct TypeTraits {
  std::string_view name;  // "f16", "q4_K", ... as llama.cpp prints them
  int block_size = 0;     // elements per block (1 for plain floats)
  int type_size = 0;      // bytes per block
  bool supported = false; // this engine has kernels for it
};

// Traits for `type`, or nullopt when the id is not a ggml type at all.
std::optional<TypeTraits> GetTypeTraits(uint32_t type_id);
// Traits of a known type id (FLASHD_CHECKs that it is known).
const TypeTraits& Traits(GgmlType type);
// Name of a type id, "type#N" for unknown ids.
std::string_view TypeName(uint32_t type_id);

// Bytes of one row of `n` elements; n must be a multiple of the block size.
inline size_t RowSize(GgmlType type, int64_t n);

}  // namespace flashd

#include "common/kernels/ggml_types_inl.h"  // IWYU pragma: keep

#endif  // FLASHD_COMMON_KERNELS_GGML_TYPES_H_
