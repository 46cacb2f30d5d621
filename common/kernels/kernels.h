// Compute kernels over ggml-typed rows: conversion, quantization, dot
// products (GEMM of weight rows against activation vectors), and the small
// vector helpers attention needs. Each entry point dispatches at run time to
// an AVX-512, AVX2 or portable implementation (see ActiveIsa()).
//
// Conventions: `n` is the row length in elements (a multiple of the type's
// block size); strides are in bytes; no function allocates.
#ifndef FLASHD_COMMON_KERNELS_KERNELS_H_
#define FLASHD_COMMON_KERNELS_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/kernels/ggml_types.h"

namespace flashd::kernels {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The ISA in use: the best the CPU supports, unless FLASHD_ISA=scalar|avx2|
// avx512 in the environment asks for a lower one.
Isa ActiveIsa();
std::string_view IsaName(Isa isa);
// Best ISA this CPU supports.
Isa DetectIsa();
// Forces an ISA (tests). Asking for one the CPU lacks is a bug (FLASHD_CHECK).
void SetIsaForTesting(Isa isa);

// The activation format a weight type's dot product consumes (as ggml's
// vec_dot_type): F32->F32, F16->F16, BF16->BF16, Q8_0/Q4_0->Q8_0,
// Q4_K/Q6_K->Q8_K.
GgmlType VecDotType(GgmlType weight_type);

// Converts n floats to a row of `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_K,
// Q6_K, Q8_K) with ggml's reference quantizers (quantize_row_*_ref), byte
// for byte on every machine: files we write quantize like llama.cpp's.
void FromFloat(GgmlType type, const float* x, void* y, int64_t n);

// Converts activations to a vec-dot format (F32, F16, BF16, Q8_0, Q8_K) with
// the fastest kernel (as ggml's SIMD quantizers: a value may land one level
// from the reference on a rounding tie). For the forward pass, not files.
void QuantizeActivations(GgmlType type, const float* x, void* y, int64_t n);

// Converts a row of `type` (any supported type, incl. Q8_K) to n floats.
void ToFloat(GgmlType type, const void* x, float* y, int64_t n);

// out[t * out_stride_floats + r] = dot(row r of w, activation t)
// for r in [0, nr), t in [0, nt). w rows are `w_stride` bytes apart and of
// type `wtype`; activations are `a_stride` bytes apart and of type
// VecDotType(wtype). Prefill passes nt > 1 so each weight block is loaded
// once for several tokens.
void Gemm(GgmlType wtype, int64_t n, const void* w, size_t w_stride,
          int64_t nr, const void* a, size_t a_stride, int64_t nt, float* out,
          size_t out_stride_floats);

// Portable reference of Gemm, in the simplest form (tests compare to it).
void GemmReference(GgmlType wtype, int64_t n, const void* w, size_t w_stride,
                   int64_t nr, const void* a, size_t a_stride, int64_t nt,
                   float* out, size_t out_stride_floats);

// y[i] += a * dequant(row)[i] for a row of `type` (a neuron's down column
// stored as a row, in the neuron-major FFN layout).
void AxpyRow(GgmlType type, float a, const void* row, float* y, int64_t n);

// y[i] += a * w[i] with w[i] = scale[i] * q[i] - min[i] (w[i] = scale[i] *
// q[i] when min is null): a neuron's kInt8Scaled down column in the flash
// layout (common/flash/flash_format.h). w is rounded as written -- the
// product, then the difference, never fused -- so it equals the value ggml
// dequantizes the source block to. The SIMD tables fuse the final a * w + y
// (one rounding fewer than the scalar table's a * w, then + y).
void AxpyI8Scaled(float a, const int8_t* q, const float* scale,
                  const float* min, float* y, int64_t n);

// y[t][r] += sum over j < k of a[t][j] * w[j][r], for t < nt and r < n:
// the down product of k neurons (w: k rows of n floats, w_stride floats
// apart; a: nt rows of k activations, a_stride floats apart; y: nt rows,
// y_stride floats apart). Adds in order j = 0, 1, ... with AxpyRow(kF32)'s
// rounding, so y[t] ends bit for bit as after k calls AxpyRow(kF32,
// a[t][j], w[j], y[t], n) in j order, with y and w loaded once per register
// block instead of once per call.
void AxpyBlockF32(int64_t k, const float* w, size_t w_stride, const float* a,
                  size_t a_stride, int64_t nt, float* y, size_t y_stride,
                  int64_t n);

// Attention helpers over an fp16 KV cache.
// dot(k, q) with k in fp16 and q in f32.
float DotF16F32(const uint16_t* k, const float* q, int64_t n);
// y += a * v with v in fp16.
void AxpyF16(float a, const uint16_t* v, float* y, int64_t n);
// Converts floats to fp16 (round to nearest even).
void F32ToF16(const float* x, uint16_t* y, int64_t n);

// Causal attention of `n_q` query heads that share one KV head (grouped-query
// attention) over positions [0, n_keys) of an fp16 cache:
//   out[g] = sum_p softmax_p(scale * q[g] . k_p) * v_p
// q[g] = q + g * hd, out[g] = out + g * hd; k_p = k + p * kv_stride and
// v_p = v + p * kv_stride (strides in elements). `scores` is scratch of
// n_q * n_keys floats. Each K and V row is read once for the whole group.
void AttendF16(const float* q, int32_t n_q, int32_t hd, const uint16_t* k,
               const uint16_t* v, size_t kv_stride, int32_t n_keys,
               float scale, float* scores, float* out);

// The same over an f32 cache, portable, summing in plain sequential order
// (as llama2.c's reference does, so fp32 models reproduce it exactly).
void AttendF32(const float* q, int32_t n_q, int32_t hd, const float* k,
               const float* v, size_t kv_stride, int32_t n_keys, float scale,
               float* scores, float* out);

}  // namespace flashd::kernels

#endif  // FLASHD_COMMON_KERNELS_KERNELS_H_
