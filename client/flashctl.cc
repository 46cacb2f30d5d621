// flashctl: command-line client of the flashd daemon. Parsing and work live
// in client/flashctl_commands; this main only routes signals: the first
// SIGINT/SIGTERM cancels the generation in flight, a second one (or one
// with nothing in flight) exits with 128 + signal.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "client/flashctl_commands.h"

int main(int argc, char** argv) {
  // Blocked here before any thread exists, so every thread (gRPC's too)
  // inherits the mask and only the waiter below receives these signals.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  static flashd::client::CancelToken cancel;
  std::thread([signals] {
    while (true) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      if (cancel.active() && !cancel.cancelled()) {
        cancel.Cancel();
      } else {
        _exit(128 + sig);
      }
    }
  }).detach();

  std::ios::sync_with_stdio(false);
  flashd::client::FlashctlIo io;
  io.in = &std::cin;
  io.out = &std::cout;
  io.err = &std::cerr;
  io.cancel = &cancel;
  io.interactive = isatty(STDIN_FILENO) == 1;
  const int code = flashd::client::RunFlashctl(
      std::vector<std::string>(argv + 1, argv + argc), io);
  std::cout.flush();
  return code;
}
