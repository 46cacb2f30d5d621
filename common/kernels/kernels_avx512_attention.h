// AVX-512 grouped-query attention over an fp16 KV cache (internal).
#ifndef FLASHD_COMMON_KERNELS_KERNELS_AVX512_ATTENTION_H_
#define FLASHD_COMMON_KERNELS_KERNELS_AVX512_ATTENTION_H_

#include <cstddef>
#include <cstdint>

namespace flashd::kernels::internal {

// Same contract as kernels::AttendF16.
void AttendF16Avx512(const float* q, int32_t n_q, int32_t hd,
                     const uint16_t* k, const uint16_t* v, size_t kv_stride,
                     int32_t n_keys, float scale, float* scores, float* out);

}  // namespace flashd::kernels::internal

#endif  // FLASHD_COMMON_KERNELS_KERNELS_AVX512_ATTENTION_H_
