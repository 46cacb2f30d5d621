// <immintrin.h> for the AVX-512 kernel files. GCC 12's AVX-512 intrinsics
// start from self-initialised "undefined" vectors, which
// -Wmaybe-uninitialized flags once they are inlined; the warning is muted
// for the header only.
#ifndef FLASHD_COMMON_KERNELS_IMMINTRIN_QUIET_H_
#define FLASHD_COMMON_KERNELS_IMMINTRIN_QUIET_H_

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#endif  // FLASHD_COMMON_KERNELS_IMMINTRIN_QUIET_H_
