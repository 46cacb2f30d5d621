// sd_notify for Type=notify services: READY=1 when listening, STOPPING=1
// on drain, WATCHDOG=1 pings when the unit sets WatchdogSec. Without
// NOTIFY_SOCKET (not under systemd) every call does nothing.
#ifndef FLASHD_DAEMON_SERVER_SYSTEMD_NOTIFY_H_
#define FLASHD_DAEMON_SERVER_SYSTEMD_NOTIFY_H_

#include <chrono>
#include <string>

namespace flashd::server {

class SystemdNotifier {
 public:
  // Reads WATCHDOG_USEC (sd_watchdog_enabled) once.
  SystemdNotifier();

  void Ready(const std::string& status);
  void Stopping(const std::string& status);
  void Watchdog();
  // Free-form STATUS= line shown by systemctl status.
  void Status(const std::string& status);

  // Whether systemd expects pings, and how often to send them (half the
  // watchdog timeout, as sd_watchdog_enabled(3) recommends).
  bool watchdog_enabled() const { return watchdog_usec_ > 0; }
  std::chrono::microseconds ping_interval() const {
    return std::chrono::microseconds(watchdog_usec_ / 2);
  }
  std::chrono::microseconds watchdog_timeout() const {
    return std::chrono::microseconds(watchdog_usec_);
  }

 private:
  uint64_t watchdog_usec_ = 0;
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_SYSTEMD_NOTIFY_H_
