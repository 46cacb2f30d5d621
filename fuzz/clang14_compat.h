// Fuzz builds only: force-included into the kernel sources that use what
// GCC accepts and clang 14 does not (the fuzz build needs clang for
// libFuzzer; the kernels themselves are built with GCC everywhere else).
//  - __builtin_cpu_supports("f16c") (kernels.cc): answered here from CPUID
//    and XGETBV (the OS must save the AVX / AVX-512 registers, as GCC
//    checks).
//  - _mm512_inserti32x4 with a lane index that is constant only after GCC
//    unrolls the loop (kernels_avx512_q0.cc): dispatched here on the index.
#ifndef FLASHD_FUZZ_CLANG14_COMPAT_H_
#define FLASHD_FUZZ_CLANG14_COMPAT_H_

#include <cpuid.h>

#include <cstdint>
#include <cstring>

inline bool FlashdFuzzCpuSupports(const char* f) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  __get_cpuid_count(1, 0, &a, &b, &c, &d);
  const unsigned ecx1 = c;
  uint64_t xcr0 = 0;
  if (ecx1 & (1u << 27)) {  // OSXSAVE
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (uint64_t{hi} << 32) | lo;
  }
  const bool avx_os = (xcr0 & 0x6) == 0x6;
  const bool avx512_os = (xcr0 & 0xe6) == 0xe6;
  __get_cpuid_count(7, 0, &a, &b, &c, &d);
  const unsigned ebx7 = b, ecx7 = c;
  __get_cpuid_count(7, 1, &a, &b, &c, &d);
  const unsigned eax71 = a;
  const auto On = [](unsigned reg, int bit) { return ((reg >> bit) & 1u) != 0; };
  struct Bit {
    const char* name;
    bool on;
  };
  const Bit bits[] = {
      {"sse4.2", On(ecx1, 20)},
      {"fma", avx_os && (On(ecx1, 12))},
      {"f16c", avx_os && (On(ecx1, 29))},
      {"avx2", avx_os && (On(ebx7, 5))},
      {"avx512f", avx512_os && (On(ebx7, 16))},
      {"avx512dq", avx512_os && (On(ebx7, 17))},
      {"avx512bw", avx512_os && (On(ebx7, 30))},
      {"avx512vl", avx512_os && (On(ebx7, 31))},
      {"avx512vnni", avx512_os && (On(ecx7, 11))},
      {"avx512bf16", avx512_os && (On(eax71, 5))},
  };
  for (const Bit& bit : bits) {
    if (std::strcmp(bit.name, f) == 0) return bit.on;
  }
  return false;
}
#define __builtin_cpu_supports(feature) FlashdFuzzCpuSupports(feature)

#ifdef __AVX512F__
#include <immintrin.h>
inline __m512i FlashdFuzzInserti32x4(__m512i a, __m128i b, int lane) {
  switch (lane & 3) {
    case 0:
      return _mm512_inserti32x4(a, b, 0);
    case 1:
      return _mm512_inserti32x4(a, b, 1);
    case 2:
      return _mm512_inserti32x4(a, b, 2);
    default:
      return _mm512_inserti32x4(a, b, 3);
  }
}
#undef _mm512_inserti32x4
#define _mm512_inserti32x4(a, b, lane) FlashdFuzzInserti32x4(a, b, lane)
#endif  // __AVX512F__

#endif  // FLASHD_FUZZ_CLANG14_COMPAT_H_
