// Invariant checks for bugs (never for input errors, which return Status).
// Debian 12's Abseil predates absl/log, so flashd carries these two macros.
#ifndef FLASHD_COMMON_BASE_CHECK_H_
#define FLASHD_COMMON_BASE_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define FLASHD_CHECK(cond)                                                   \
  do {                                                                       \
    if (!(cond)) [[unlikely]] {                                              \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                   \
      std::abort();                                                          \
    }                                                                        \
  } while (0)

#ifdef NDEBUG
#define FLASHD_DCHECK(cond) \
  do {                      \
  } while (0)
#else
#define FLASHD_DCHECK(cond) FLASHD_CHECK(cond)
#endif

#endif  // FLASHD_COMMON_BASE_CHECK_H_
