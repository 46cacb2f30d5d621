#include "common/shm/process_liveness.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace flashd::shm {
namespace {

// Fields of /proc/<pid>/stat after the ")" that closes the command name
// (which may itself contain spaces and parentheses): [0] is the state,
// field N of proc(5) is [N - 3]. Empty if unreadable.
std::vector<std::string> StatFieldsAfterComm(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  if (!in) return {};
  const std::string stat((std::istreambuf_iterator<char>(in)), {});
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return {};
  return absl::StrSplit(stat.substr(close + 1), ' ', absl::SkipEmpty());
}

uint64_t PidNamespaceId() {
  struct stat st;
  if (::stat("/proc/self/ns/pid", &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_ino);
}

}  // namespace

uint64_t ProcessStartTicks(pid_t pid) {
  const std::vector<std::string> f = StatFieldsAfterComm(pid);
  if (f.size() < 20) return 0;
  return std::strtoull(f[19].c_str(), nullptr, 10);
}

ProcessIdentity SelfIdentity() {
  ProcessIdentity id;
  id.pid = ::getpid();
  id.start_ticks = ProcessStartTicks(id.pid);
  id.pid_ns = PidNamespaceId();
  return id;
}

Liveness CheckLiveness(const ProcessIdentity& who) {
  if (who.pid <= 0) return Liveness::kUnknown;
  if (who.pid_ns != 0 && who.pid_ns != PidNamespaceId()) {
    return Liveness::kUnknown;
  }
  if (::kill(who.pid, 0) != 0 && errno == ESRCH) return Liveness::kDead;
  const std::vector<std::string> f = StatFieldsAfterComm(who.pid);
  if (f.empty()) return Liveness::kAlive;  // exists, /proc hidden from us
  if (f[0] == "Z" || f[0] == "X") return Liveness::kDead;
  if (who.start_ticks != 0 && f.size() >= 20 &&
      std::strtoull(f[19].c_str(), nullptr, 10) != who.start_ticks) {
    return Liveness::kDead;  // the pid now belongs to another process
  }
  return Liveness::kAlive;
}

}  // namespace flashd::shm
