// The shared-memory harnesses' own directory (removed at exit) and files
// in it holding the fuzz bytes, mode 0600, as the daemon would make them.
#ifndef FLASHD_FUZZ_FUZZ_SHM_DIR_H_
#define FLASHD_FUZZ_FUZZ_SHM_DIR_H_

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>

#include "common/base/check.h"
#include "common/shm/shm_dir.h"

namespace flashd::fuzz {

inline std::shared_ptr<const shm::ShmDir> FuzzDir() {
  static std::shared_ptr<const shm::ShmDir> dir = [] {
    static const std::string path =
        "/dev/shm/flashd-fuzz-" + std::to_string(::getpid());
    auto d = shm::ShmDir::Open(path);
    FLASHD_CHECK(d.ok());
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    });
    return *d;
  }();
  return dir;
}

// Replaces file `name` of FuzzDir() with exactly `data`.
inline void WriteFile(const std::string& name, const uint8_t* data,
                      size_t size) {
  const int fd = ::openat(FuzzDir()->fd(), name.c_str(),
                          O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  FLASHD_CHECK(fd >= 0);
  FLASHD_CHECK(::fchmod(fd, 0600) == 0);
  FLASHD_CHECK(::write(fd, data, size) == static_cast<ssize_t>(size));
  ::close(fd);
}

}  // namespace flashd::fuzz

#endif  // FLASHD_FUZZ_FUZZ_SHM_DIR_H_
