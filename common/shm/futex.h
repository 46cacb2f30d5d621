// Cross-process futex wait/wake on a 32-bit word in shared memory (Linux).
// Not FUTEX_PRIVATE: the kernel keys the futex on the backing file page, so
// processes mapping the segment at different addresses meet on it.
#ifndef FLASHD_COMMON_SHM_FUTEX_H_
#define FLASHD_COMMON_SHM_FUTEX_H_

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>

#include "absl/time/time.h"

namespace flashd::shm {

// Sleeps while *word == expected, at most `timeout` (relative, monotonic).
// Returns at once if the word already differs; spurious wake-ups happen,
// so callers re-check their condition.
inline void FutexWait(uint32_t* word, uint32_t expected,
                      absl::Duration timeout) {
  const timespec ts = absl::ToTimespec(timeout);
  ::syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, nullptr, 0);
}

// Wakes every waiter on `word`.
inline void FutexWakeAll(uint32_t* word) {
  ::syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

}  // namespace flashd::shm

#endif  // FLASHD_COMMON_SHM_FUTEX_H_
