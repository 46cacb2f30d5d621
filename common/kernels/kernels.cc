// Run-time dispatch of kernels.h onto the per-ISA tables.
//
// For each ISA the CPU supports, one merged table is built once: the scalar
// table, overlaid with the AVX2 table's non-empty slots, overlaid (for
// AVX-512) with the AVX-512 table's. The active ISA then selects a merged
// table through one atomic pointer, so a call costs a load and an indirect
// call.
#include "common/kernels/kernels.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "common/base/check.h"
#include "common/kernels/ggml_types.h"
#include "common/kernels/kernels_internal.h"

namespace flashd::kernels {
namespace {

using internal::IsaKernels;

constexpr int kNumIsas = 3;

int Id(GgmlType type) { return static_cast<int>(type); }

Isa DetectIsaUncached() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") &&
                    __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (!avx2) return Isa::kScalar;
  const bool avx512 = __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vnni");
  // AVX512_BF16 is optional: the AVX-512 table installs its BF16 GEMM only
  // when the CPU has it (Zen 4, Cooper Lake and later; not Ice Lake).
  return avx512 ? Isa::kAvx512 : Isa::kAvx2;
}

// Copies every non-empty slot of `over` onto `base`.
void Overlay(const IsaKernels& over, IsaKernels& base) {
  for (int i = 0; i < internal::kMaxTypeId; ++i) {
    if (over.gemm[i] != nullptr) base.gemm[i] = over.gemm[i];
    if (over.from_float[i] != nullptr) base.from_float[i] = over.from_float[i];
    if (over.axpy_row[i] != nullptr) base.axpy_row[i] = over.axpy_row[i];
  }
  if (over.axpy_i8_scaled != nullptr) {
    base.axpy_i8_scaled = over.axpy_i8_scaled;
  }
  if (over.axpy_block_f32 != nullptr) {
    base.axpy_block_f32 = over.axpy_block_f32;
  }
  if (over.dot_f16_f32 != nullptr) base.dot_f16_f32 = over.dot_f16_f32;
  if (over.axpy_f16 != nullptr) base.axpy_f16 = over.axpy_f16;
  if (over.f32_to_f16 != nullptr) base.f32_to_f16 = over.f32_to_f16;
  if (over.attend_f16 != nullptr) base.attend_f16 = over.attend_f16;
}

struct Dispatch {
  Isa detected = Isa::kScalar;
  IsaKernels merged[kNumIsas];  // valid up to `detected`
};

const Dispatch& GetDispatch() {
  static const Dispatch* const dispatch = [] {
    auto* d = new Dispatch;
    d->detected = DetectIsaUncached();
    d->merged[0] = internal::ScalarKernels();
    if (d->detected >= Isa::kAvx2) {
      d->merged[1] = d->merged[0];
      Overlay(internal::Avx2Kernels(), d->merged[1]);
    }
    if (d->detected >= Isa::kAvx512) {
      d->merged[2] = d->merged[1];
      Overlay(internal::Avx512Kernels(), d->merged[2]);
    }
    return d;
  }();
  return *dispatch;
}

// The ISA asked for by FLASHD_ISA, capped at what the CPU has.
Isa IsaFromEnvironment(Isa detected) {
  const char* env = std::getenv("FLASHD_ISA");
  if (env == nullptr || *env == '\0') return detected;
  const std::string_view want(env);
  Isa isa;
  if (want == "scalar") {
    isa = Isa::kScalar;
  } else if (want == "avx2") {
    isa = Isa::kAvx2;
  } else if (want == "avx512") {
    isa = Isa::kAvx512;
  } else {
    std::fprintf(stderr,
                 "flashd: ignoring FLASHD_ISA=%s (use scalar, avx2 or "
                 "avx512)\n",
                 env);
    return detected;
  }
  if (isa > detected) {
    std::fprintf(stderr,
                 "flashd: FLASHD_ISA=%s is not supported by this CPU; using "
                 "%.*s\n",
                 env, static_cast<int>(IsaName(detected).size()),
                 IsaName(detected).data());
    return detected;
  }
  return isa;
}

std::atomic<const IsaKernels*> g_active{nullptr};
std::atomic<Isa> g_active_isa{Isa::kScalar};

void Activate(Isa isa) {
  g_active_isa.store(isa, std::memory_order_relaxed);
  g_active.store(&GetDispatch().merged[static_cast<int>(isa)],
                 std::memory_order_release);
}

const IsaKernels& InitActive() {
  static const bool once = [] {
    // A SetIsaForTesting that ran first wins.
    if (g_active.load(std::memory_order_acquire) == nullptr) {
      Activate(IsaFromEnvironment(GetDispatch().detected));
    }
    return true;
  }();
  (void)once;
  return *g_active.load(std::memory_order_acquire);
}

inline const IsaKernels& Active() {
  const IsaKernels* table = g_active.load(std::memory_order_acquire);
  if (table == nullptr) [[unlikely]] {
    return InitActive();
  }
  return *table;
}

[[noreturn]] void Unsupported(const char* what, GgmlType type) {
  const std::string_view name = TypeName(static_cast<uint32_t>(type));
  std::fprintf(stderr, "flashd kernels: %s has no kernel for type %.*s\n", what,
               static_cast<int>(name.size()), name.data());
  std::abort();
}

}  // namespace

Isa DetectIsa() { return GetDispatch().detected; }

Isa ActiveIsa() {
  Active();
  return g_active_isa.load(std::memory_order_relaxed);
}

std::string_view IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

void SetIsaForTesting(Isa isa) {
  FLASHD_CHECK(isa <= DetectIsa());
  Activate(isa);
}

GgmlType VecDotType(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return weight_type;
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
      return GgmlType::kQ8_0;
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
      return GgmlType::kQ8_K;
    default:
      Unsupported("VecDotType", weight_type);
  }
}

void FromFloat(GgmlType type, const float* x, void* y, int64_t n) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
    case GgmlType::kQ8_K:
      internal::QuantizeRowRef(type, x, y, n);
      return;
    default:
      Unsupported("FromFloat", type);
  }
}

void QuantizeActivations(GgmlType type, const float* x, void* y, int64_t n) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ8_K: {
      const internal::ConvertFn fn = Active().from_float[Id(type)];
      FLASHD_DCHECK(fn != nullptr);  // the scalar table fills these
      fn(x, y, n);
      return;
    }
    default:
      Unsupported("QuantizeActivations", type);
  }
}

void ToFloat(GgmlType type, const void* x, float* y, int64_t n) {
  internal::DequantizeRowRef(type, x, y, n);
}

void Gemm(GgmlType wtype, int64_t n, const void* w, size_t w_stride, int64_t nr,
          const void* a, size_t a_stride, int64_t nt, float* out,
          size_t out_stride_floats) {
  const auto id = static_cast<uint32_t>(wtype);
  const internal::GemmFn fn =
      id < internal::kMaxTypeId ? Active().gemm[id] : nullptr;
  if (fn == nullptr) [[unlikely]] {
    Unsupported("Gemm", wtype);
  }
  fn(n, w, w_stride, nr, a, a_stride, nt, out, out_stride_floats);
}

void AxpyRow(GgmlType type, float a, const void* row, float* y, int64_t n) {
  const auto id = static_cast<uint32_t>(type);
  const internal::AxpyRowFn fn =
      id < internal::kMaxTypeId ? Active().axpy_row[id] : nullptr;
  if (fn == nullptr) [[unlikely]] {
    Unsupported("AxpyRow", type);
  }
  fn(a, row, y, n);
}

void AxpyI8Scaled(float a, const int8_t* q, const float* scale,
                  const float* min, float* y, int64_t n) {
  Active().axpy_i8_scaled(a, q, scale, min, y, n);
}

void AxpyBlockF32(int64_t k, const float* w, size_t w_stride, const float* a,
                  size_t a_stride, int64_t nt, float* y, size_t y_stride,
                  int64_t n) {
  Active().axpy_block_f32(k, w, w_stride, a, a_stride, nt, y, y_stride, n);
}

float DotF16F32(const uint16_t* k, const float* q, int64_t n) {
  return Active().dot_f16_f32(k, q, n);
}

void AxpyF16(float a, const uint16_t* v, float* y, int64_t n) {
  Active().axpy_f16(a, v, y, n);
}

void F32ToF16(const float* x, uint16_t* y, int64_t n) {
  Active().f32_to_f16(x, y, n);
}

void AttendF16(const float* q, int32_t n_q, int32_t hd, const uint16_t* k,
               const uint16_t* v, size_t kv_stride, int32_t n_keys,
               float scale, float* scores, float* out) {
  Active().attend_f16(q, n_q, hd, k, v, kv_stride, n_keys, scale, scores, out);
}

void AttendF32(const float* q, int32_t n_q, int32_t hd, const float* k,
               const float* v, size_t kv_stride, int32_t n_keys, float scale,
               float* scores, float* out) {
  internal::AttendF32Portable(q, n_q, hd, k, v, kv_stride, n_keys, scale,
                              scores, out);
}

}  // namespace flashd::kernels
