// Per-ISA kernel tables behind kernels.h. kernels.cc picks the table for
// ActiveIsa() and falls back entry by entry to the next lower ISA wherever a
// table leaves a slot empty (nullptr), ending at the scalar table, which is
// complete.
#ifndef FLASHD_COMMON_KERNELS_KERNELS_INTERNAL_H_
#define FLASHD_COMMON_KERNELS_KERNELS_INTERNAL_H_

#include <cstddef>
#include <cstdint>

#include "common/kernels/ggml_types.h"

namespace flashd::kernels::internal {

inline constexpr int kMaxTypeId = 31;  // type ids 0..30

using GemmFn = void (*)(int64_t n, const void* w, size_t w_stride, int64_t nr,
                        const void* a, size_t a_stride, int64_t nt, float* out,
                        size_t out_stride_floats);
using ConvertFn = void (*)(const float* x, void* y, int64_t n);
using AxpyRowFn = void (*)(float a, const void* row, float* y, int64_t n);
using AxpyI8ScaledFn = void (*)(float a, const int8_t* q, const float* scale,
                                const float* min, float* y, int64_t n);
using AxpyBlockF32Fn = void (*)(int64_t k, const float* w, size_t w_stride,
                                const float* a, size_t a_stride, int64_t nt,
                                float* y, size_t y_stride, int64_t n);
using DotF16F32Fn = float (*)(const uint16_t* k, const float* q, int64_t n);
using AxpyF16Fn = void (*)(float a, const uint16_t* v, float* y, int64_t n);
using F32ToF16Fn = void (*)(const float* x, uint16_t* y, int64_t n);
using AttendF16Fn = void (*)(const float* q, int32_t n_q, int32_t hd,
                             const uint16_t* k, const uint16_t* v,
                             size_t kv_stride, int32_t n_keys, float scale,
                             float* scores, float* out);

struct IsaKernels {
  GemmFn gemm[kMaxTypeId] = {};             // by weight type id
  ConvertFn from_float[kMaxTypeId] = {};    // activation quantizers, by type
  AxpyRowFn axpy_row[kMaxTypeId] = {};      // by row type id
  AxpyI8ScaledFn axpy_i8_scaled = nullptr;
  AxpyBlockF32Fn axpy_block_f32 = nullptr;
  DotF16F32Fn dot_f16_f32 = nullptr;
  AxpyF16Fn axpy_f16 = nullptr;
  F32ToF16Fn f32_to_f16 = nullptr;
  AttendF16Fn attend_f16 = nullptr;
};

// Complete portable table (kernels_scalar.cc).
const IsaKernels& ScalarKernels();
// Partial tables (kernels_avx2.cc, kernels_avx512.cc); only call when the CPU
// supports the ISA.
const IsaKernels& Avx2Kernels();
const IsaKernels& Avx512Kernels();

// Reference (ggml quantize_row_*_ref / dequantize_row_*) conversions in
// quantize.cc, used by the scalar table and by FromFloat/ToFloat for weights.
void QuantizeRowRef(GgmlType type, const float* x, void* y, int64_t n);
void DequantizeRowRef(GgmlType type, const void* x, float* y, int64_t n);

// kernels::AttendF32 (kernels_scalar.cc; one implementation on every ISA).
void AttendF32Portable(const float* q, int32_t n_q, int32_t hd,
                       const float* k, const float* v, size_t kv_stride,
                       int32_t n_keys, float scale, float* scores, float* out);

}  // namespace flashd::kernels::internal

#endif  // FLASHD_COMMON_KERNELS_KERNELS_INTERNAL_H_
