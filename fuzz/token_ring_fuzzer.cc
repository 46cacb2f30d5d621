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
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "common/base/check.h"
#include "common/shm/shm_dir.h"
#include "common/shm/token_ring_layout.h"
#include "common/shm/token_ring_reader.h"

namespace {

// The harness's own shared-memory directory (removed at exit) and a file
// `name` in it holding exactly `data`, mode 0600.
std::shared_ptr<const flashd::shm::ShmDir> FuzzDir() {
  static std::shared_ptr<const flashd::shm::ShmDir> dir = [] {
    static const std::string path =
        "/dev/shm/flashd-fuzz-" + std::to_string(::getpid());
    auto d = flashd::shm::ShmDir::Open(path);
    FLASHD_CHECK(d.ok());
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    });
    return *d;
  }();
  return dir;
}

void WriteFile(const std::string& name, const uint8_t* data, size_t size) {
  const int fd = ::openat(FuzzDir()->fd(), name.c_str(),
                          O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  FLASHD_CHECK(fd >= 0);
  FLASHD_CHECK(::fchmod(fd, 0600) == 0);
  FLASHD_CHECK(::write(fd, data, size) == static_cast<ssize_t>(size));
  ::close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd::shm;
  static const std::string kName = "ring";
  WriteFile(kName, data, size);
  uint64_t session_id = 0;
  if (size >= offsetof(TokenRingHeader, session_id) + 8) {
    std::memcpy(&session_id, data + offsetof(TokenRingHeader, session_id), 8);
  }
  if (auto reader = TokenRingReader::Attach(FuzzDir()->PathOf(kName), session_id); reader.ok()) {
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
  ::unlinkat(FuzzDir()->fd(), kName.c_str(), 0);
  return 0;
}
