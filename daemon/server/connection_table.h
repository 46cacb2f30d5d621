// The connections the Unix listener handed to gRPC, by descriptor, with the
// uid the kernel gave for each (SO_PEERCRED): counted against
// --max-connections-per-uid and --max-connections when a new one arrives.
// gRPC closes connections without telling us, and descriptor numbers are
// reused, so an entry is live only while fstat of its number still shows
// the same socket (device and inode); dead entries are pruned on every
// admission. A connection over a limit is not closed at once: it is handed
// to gRPC marked refused, every call on it ends RESOURCE_EXHAUSTED with the
// reason (Refusal), and it is shut down after a second. At most
// kMaxRefused such connections are kept; beyond that a refused one is
// closed straight away.
#ifndef FLASHD_DAEMON_SERVER_CONNECTION_TABLE_H_
#define FLASHD_DAEMON_SERVER_CONNECTION_TABLE_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "absl/status/status.h"

namespace flashd::server {

struct ConnectionLimits {
  int32_t per_uid = 64;  // --max-connections-per-uid
  int32_t total = 1024;  // --max-connections (Unix socket)
};

class ConnectionTable {
 public:
  static constexpr int kMaxRefused = 64;
  static constexpr std::chrono::milliseconds kRefusedLinger{1000};

  enum class Verdict {
    kAdmitted,  // hand it to gRPC
    kRefused,   // hand it to gRPC: its calls get Refusal(fd)
    kClose,     // refused, and no room to say why: close it
  };

  explicit ConnectionTable(ConnectionLimits limits) : limits_(limits) {}

  // Decides about the accepted connection `fd` of `uid` and records it.
  // `why` receives the refusal (RESOURCE_EXHAUSTED naming the limit).
  Verdict Admit(int fd, uid_t uid, absl::Status* why);

  // RESOURCE_EXHAUSTED when `fd` is a refused connection still open; OK
  // otherwise.
  absl::Status Refusal(int fd) const;

  // Shuts down (shutdown(2); gRPC then closes it) each refused connection
  // admitted kRefusedLinger ago or more. Returns the milliseconds until
  // the next one is due, -1 when none is left.
  int ShutDownRefused(std::chrono::steady_clock::time_point now);

  // The live admitted connections (pruned now).
  std::vector<int> Live();
  // Live connections of `uid` (pruned now).
  int32_t CountOf(uid_t uid);

 private:
  struct Entry {
    dev_t dev = 0;
    ino_t ino = 0;
    uid_t uid = 0;
  };
  struct RefusedEntry {
    Entry id;
    std::chrono::steady_clock::time_point close_at;
    absl::Status why;
  };
  static bool Identify(int fd, Entry* out);
  static bool StillIs(int fd, const Entry& e);
  void PruneLocked();

  const ConnectionLimits limits_;
  mutable std::mutex mu_;
  std::map<int, Entry> live_;            // guarded by mu_
  std::map<int, RefusedEntry> refused_;  // guarded by mu_
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_CONNECTION_TABLE_H_
