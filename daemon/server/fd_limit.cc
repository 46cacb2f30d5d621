#include "daemon/server/fd_limit.h"

#include <sys/resource.h>

#include <algorithm>

namespace flashd::server {

FdLimit RaiseFdLimit(uint64_t wanted) {
  FdLimit out;
  out.wanted = wanted;
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return out;
  out.soft = rl.rlim_cur;
  out.hard = rl.rlim_max;
  const rlim_t target = rl.rlim_max == RLIM_INFINITY
                            ? wanted
                            : std::min<rlim_t>(wanted, rl.rlim_max);
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < target) {
    rl.rlim_cur = target;
    if (::setrlimit(RLIMIT_NOFILE, &rl) == 0) out.soft = target;
  }
  return out;
}

}  // namespace flashd::server
