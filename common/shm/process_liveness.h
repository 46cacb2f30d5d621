// Who a process is, and whether it still runs: how a ring's consumer tells
// a producer that died (a crashed or killed daemon) from one that is slow,
// without any lock shared with it.
#ifndef FLASHD_COMMON_SHM_PROCESS_LIVENESS_H_
#define FLASHD_COMMON_SHM_PROCESS_LIVENESS_H_

#include <sys/types.h>

#include <cstdint>

namespace flashd::shm {

// A process as recorded in a segment header. The pid alone is ambiguous:
// pids are reused, and a pid means something else in another pid namespace.
struct ProcessIdentity {
  pid_t pid = 0;
  uint64_t start_ticks = 0;  // /proc/<pid>/stat field 22; 0 if unknown
  uint64_t pid_ns = 0;       // inode of /proc/self/ns/pid; 0 if unknown
};

// The calling process.
ProcessIdentity SelfIdentity();

// The start time of `pid` in clock ticks since boot (field 22 of
// /proc/<pid>/stat); 0 if it cannot be read (no such process, hidepid).
uint64_t ProcessStartTicks(pid_t pid);

enum class Liveness {
  kAlive,    // the process exists and is the one recorded
  kDead,     // it exited (or is a zombie), or its pid was reused
  kUnknown,  // another pid namespace: its pid cannot be checked from here
};

// Checks `who` from the calling process: kill(pid, 0) (ESRCH: dead; EPERM
// still means it exists), then /proc/<pid>/stat for a zombie state or a
// different start time (pid reuse).
Liveness CheckLiveness(const ProcessIdentity& who);

}  // namespace flashd::shm

#endif  // FLASHD_COMMON_SHM_PROCESS_LIVENESS_H_
