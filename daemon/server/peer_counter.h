// Counts what each caller holds (open Generate streams) against a per-caller
// limit. A caller is a uid on the Unix socket, or all TCP callers together
// as one pool ("tcp"): their addresses say nothing about who they are.
#ifndef FLASHD_DAEMON_SERVER_PEER_COUNTER_H_
#define FLASHD_DAEMON_SERVER_PEER_COUNTER_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "absl/status/status.h"

namespace flashd::server {

// The caller of a call whose context->peer() is `peer`: "uid N" for the
// Unix socket (SO_PEERCRED), "tcp" for everything else.
std::string CallerOf(const std::string& peer);

class PeerCounter {
 public:
  // `limit` >= 1 per caller; `flag` names the setting in errors.
  PeerCounter(int64_t limit, std::string flag, std::string what)
      : limit_(limit), flag_(std::move(flag)), what_(std::move(what)) {}

  // Takes one for `caller`; RESOURCE_EXHAUSTED naming the flag and the
  // value when `caller` holds `limit` already.
  absl::Status Acquire(const std::string& caller);
  // Gives back one taken by Acquire.
  void Release(const std::string& caller);
  int64_t held(const std::string& caller) const;

 private:
  const int64_t limit_;
  const std::string flag_;
  const std::string what_;
  mutable std::mutex mu_;
  std::map<std::string, int64_t> held_;  // guarded by mu_; no zero entries
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_PEER_COUNTER_H_
