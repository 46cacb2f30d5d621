#include "daemon/server/connection_table.h"

#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace flashd::server {

bool ConnectionTable::Identify(int fd, Entry* out) {
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  out->dev = st.st_dev;
  out->ino = st.st_ino;
  return true;
}

bool ConnectionTable::StillIs(int fd, const Entry& e) {
  Entry now;
  return Identify(fd, &now) && now.dev == e.dev && now.ino == e.ino;
}

void ConnectionTable::PruneLocked() {
  for (auto it = live_.begin(); it != live_.end();) {
    it = StillIs(it->first, it->second) ? std::next(it) : live_.erase(it);
  }
  for (auto it = refused_.begin(); it != refused_.end();) {
    it = StillIs(it->first, it->second.id) ? std::next(it) : refused_.erase(it);
  }
}

ConnectionTable::Verdict ConnectionTable::Admit(int fd, uid_t uid,
                                                absl::Status* why) {
  std::lock_guard<std::mutex> lock(mu_);
  PruneLocked();
  // A number just returned by accept() is no longer the old connection.
  live_.erase(fd);
  refused_.erase(fd);
  Entry entry;
  if (!Identify(fd, &entry)) {
    *why = absl::InternalError("fstat of an accepted connection failed");
    return Verdict::kClose;
  }
  entry.uid = uid;
  const int32_t mine = static_cast<int32_t>(
      std::count_if(live_.begin(), live_.end(),
                    [&](const auto& kv) { return kv.second.uid == uid; }));
  if (mine >= limits_.per_uid) {
    *why = absl::ResourceExhaustedError(
        absl::StrCat("uid ", uid, " has ", mine, " connections open; at most ",
                     limits_.per_uid, " (--max-connections-per-uid ",
                     limits_.per_uid, "): close some and reconnect"));
  } else if (static_cast<int32_t>(live_.size()) >= limits_.total) {
    *why = absl::ResourceExhaustedError(
        absl::StrCat("the daemon has ", live_.size(),
                     " connections open; at most ", limits_.total,
                     " (--max-connections ", limits_.total, "): retry later"));
  } else {
    live_[fd] = entry;
    *why = absl::OkStatus();
    return Verdict::kAdmitted;
  }
  if (static_cast<int>(refused_.size()) >= kMaxRefused) return Verdict::kClose;
  refused_[fd] = RefusedEntry{
      entry, std::chrono::steady_clock::now() + kRefusedLinger, *why};
  return Verdict::kRefused;
}

absl::Status ConnectionTable::Refusal(int fd) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = refused_.find(fd);
  if (it == refused_.end() || !StillIs(fd, it->second.id)) {
    return absl::OkStatus();
  }
  return it->second.why;
}

int ConnectionTable::ShutDownRefused(
    std::chrono::steady_clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  int next_ms = -1;
  for (auto it = refused_.begin(); it != refused_.end();) {
    if (!StillIs(it->first, it->second.id)) {
      it = refused_.erase(it);
      continue;
    }
    if (it->second.close_at <= now) {
      ::shutdown(it->first, SHUT_RDWR);
      it = refused_.erase(it);
      continue;
    }
    const int ms =
        static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                             it->second.close_at - now)
                             .count()) +
        1;
    next_ms = next_ms < 0 ? ms : std::min(next_ms, ms);
    ++it;
  }
  return next_ms;
}

std::vector<int> ConnectionTable::Live() {
  std::lock_guard<std::mutex> lock(mu_);
  PruneLocked();
  std::vector<int> out;
  for (const auto& kv : live_) out.push_back(kv.first);
  return out;
}

int32_t ConnectionTable::CountOf(uid_t uid) {
  std::lock_guard<std::mutex> lock(mu_);
  PruneLocked();
  return static_cast<int32_t>(
      std::count_if(live_.begin(), live_.end(),
                    [&](const auto& kv) { return kv.second.uid == uid; }));
}

}  // namespace flashd::server
