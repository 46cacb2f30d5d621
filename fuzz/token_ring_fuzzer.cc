// Feeds arbitrary bytes to the client's token-ring attach: the bytes become
// a shared-memory segment (/dev/shm/flashd-fuzz-<pid>-ring) that
// TokenRingReader::Attach validates and Poll then drains, as a client of a
// hostile or corrupted producer would. The session id expected is the one
// in the bytes, so mutations get past that check. Checks that attach and
// reading never crash and that every event read is a token or the end.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "common/base/check.h"
#include "common/shm/token_ring_layout.h"
#include "common/shm/token_ring_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd::shm;
  static const std::string kName =
      "flashd-fuzz-" + std::to_string(::getpid()) + "-ring";
  const int fd = ::shm_open(("/" + kName).c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  FLASHD_CHECK(fd >= 0);
  FLASHD_CHECK(::write(fd, data, size) == static_cast<ssize_t>(size));
  ::close(fd);
  uint64_t session_id = 0;
  if (size >= offsetof(TokenRingHeader, session_id) + 8) {
    std::memcpy(&session_id, data + offsetof(TokenRingHeader, session_id), 8);
  }
  if (auto reader = TokenRingReader::Attach(kName, session_id); reader.ok()) {
    size_t events = 0;
    for (int round = 0; round < 4; ++round) {
      auto n = (*reader)->Poll([&](const RingEvent& e) {
        FLASHD_CHECK(e.kind == RingEvent::Kind::kToken ||
                     e.kind == RingEvent::Kind::kFinished);
        ++events;
      });
      if (!n.ok() || *n == 0) break;
    }
  }
  ::shm_unlink(("/" + kName).c_str());
  return 0;
}
