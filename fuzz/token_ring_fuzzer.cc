// Feeds arbitrary bytes to the client's token-ring attach: the bytes become
// a file ("ring", mode 0600) in a directory of the harness's own that
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
#include "fuzz/fuzz_shm_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd::shm;
  static const std::string kName = "ring";
  flashd::fuzz::WriteFile(kName, data, size);
  uint64_t session_id = 0;
  if (size >= offsetof(TokenRingHeader, session_id) + 8) {
    std::memcpy(&session_id, data + offsetof(TokenRingHeader, session_id), 8);
  }
  const std::string path = flashd::fuzz::FuzzDir()->PathOf(kName);
  if (auto reader = TokenRingReader::Attach(path, session_id); reader.ok()) {
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
  ::unlinkat(flashd::fuzz::FuzzDir()->fd(), kName.c_str(), 0);
  return 0;
}
