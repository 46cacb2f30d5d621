// flashctl: the command-line client of flashd, as a library so tests run
// it in process against a fake server. client/flashctl.cc is its main.
//
//   flashctl [--socket PATH | --target T] [--connect-timeout SEC] COMMAND …
//     generate --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K]
//              [--top-p P] [--seed S] [--stop S]…   stream text to stdout
//     chat [--system TEXT] [--max-tokens N] [--temperature T] [--seed S]
//     (generate, chat: --delivery auto|stream|shm)
//     tokenize TEXT [--bos] | detokenize ID… | info | stats | health
//
// Exit codes: 0 success, 1 a runtime error (daemon unreachable, an RPC
// failed, health not SERVING), 2 a usage error, 130 interrupted.
#ifndef FLASHD_CLIENT_FLASHCTL_COMMANDS_H_
#define FLASHD_CLIENT_FLASHCTL_COMMANDS_H_

#include <iosfwd>
#include <string>
#include <vector>

#include "client/client.h"

namespace flashd::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitInterrupted = 130;

// Where a flashctl run reads and writes. Not owned.
struct FlashctlIo {
  std::istream* in = nullptr;   // chat's user lines
  std::ostream* out = nullptr;  // generated text, command results
  std::ostream* err = nullptr;  // errors, timings, chat prompts
  // Cancelled (e.g. by SIGINT) to stop the generation in flight; may be
  // null. chat re-arms it after each reply.
  CancelToken* cancel = nullptr;
  bool interactive = false;  // stdin is a terminal: chat prints "> "
  // Set by RunFlashctl: shared-memory delivery was chosen by --delivery
  // auto, so a refusal falls back to the stream.
  bool auto_delivery = false;
};

// Runs flashctl with `args` (argv without the program name). Returns the
// exit code; messages go to io.err as "flashctl: …".
int RunFlashctl(const std::vector<std::string>& args, const FlashctlIo& io);

// The prompt chat sends for `user_line` after `transcript` (earlier turns
// in the same template): "[system\n]User: …\nAssistant:".
std::string ChatPrompt(const std::string& system, const std::string& transcript,
                       const std::string& user_line);

}  // namespace flashd::client

#endif  // FLASHD_CLIENT_FLASHCTL_COMMANDS_H_
