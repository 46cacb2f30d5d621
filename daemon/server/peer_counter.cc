#include "daemon/server/peer_counter.h"

#include "absl/strings/str_cat.h"
#include "daemon/server/unix_listener.h"

namespace flashd::server {

std::string CallerOf(const std::string& peer) {
  absl::StatusOr<PeerCredentials> cred = PeerOf(peer);
  if (!cred.ok()) return "tcp";
  return absl::StrCat("uid ", cred->uid);
}

absl::Status PeerCounter::Acquire(const std::string& caller) {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t& n = held_[caller];
  if (n >= limit_) {
    return absl::ResourceExhaustedError(
        absl::StrCat(caller, " has ", n, " ", what_, " open; at most ", limit_,
                     " (", flag_, " ", limit_, "): wait for one to end"));
  }
  ++n;
  return absl::OkStatus();
}

void PeerCounter::Release(const std::string& caller) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = held_.find(caller);
  if (it == held_.end()) return;
  if (--it->second <= 0) held_.erase(it);
}

int64_t PeerCounter::held(const std::string& caller) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = held_.find(caller);
  return it == held_.end() ? 0 : it->second;
}

}  // namespace flashd::server
