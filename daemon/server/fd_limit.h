// The process's descriptor limit (RLIMIT_NOFILE): raised at start to what
// the connection and session limits need.
#ifndef FLASHD_DAEMON_SERVER_FD_LIMIT_H_
#define FLASHD_DAEMON_SERVER_FD_LIMIT_H_

#include <cstdint>

namespace flashd::server {

struct FdLimit {
  uint64_t wanted = 0;
  uint64_t soft = 0;  // after the call
  uint64_t hard = 0;
};

// Raises the soft limit to `wanted`, or to the hard limit when that is
// lower; never lowers it. Returns what it got.
FdLimit RaiseFdLimit(uint64_t wanted);

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_FD_LIMIT_H_
