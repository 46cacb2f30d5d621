// Stop strings over streamed text: finds the first stop string and holds
// back any tail that could be the start of one, so a stop string is never
// sent to the client, even when it spans several tokens.
#ifndef FLASHD_DAEMON_SERVER_STOP_MATCHER_H_
#define FLASHD_DAEMON_SERVER_STOP_MATCHER_H_

#include <string>
#include <string_view>
#include <vector>

namespace flashd::server {

class StopMatcher {
 public:
  // `stops` must be non-empty strings (the service rejects empty ones).
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends `text` and returns what may be sent now. When a stop string
  // has completed, sets *stopped, returns the text before it and drops the
  // rest: nothing more should be sent.
  std::string Push(std::string_view text, bool* stopped);
  // Everything held back (when the generation ends for another reason).
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_STOP_MATCHER_H_
