// Prefill GEMM (nt > 1) for Q8_0 / Q4_0 weights in kernels_avx512_q0.cc;
// kernels_avx512.cc routes nt > 1 there. GemmFn signature
// (kernels_internal.h); only call when the CPU has AVX-512 F/BW/VL/VNNI.
#ifndef FLASHD_COMMON_KERNELS_KERNELS_AVX512_Q0_H_
#define FLASHD_COMMON_KERNELS_KERNELS_AVX512_Q0_H_

#include <cstddef>
#include <cstdint>

namespace flashd::kernels::internal {

void GemmQ8_0PrefillAvx512(int64_t n, const void* w, size_t w_stride,
                           int64_t nr, const void* a, size_t a_stride,
                           int64_t nt, float* out, size_t out_stride);
void GemmQ4_0PrefillAvx512(int64_t n, const void* w, size_t w_stride,
                           int64_t nr, const void* a, size_t a_stride,
                           int64_t nt, float* out, size_t out_stride);

}  // namespace flashd::kernels::internal

#endif  // FLASHD_COMMON_KERNELS_KERNELS_AVX512_Q0_H_
