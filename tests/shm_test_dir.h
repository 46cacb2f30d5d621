// A shared-memory directory of this test process's own (a fresh
// /dev/shm/flashd-test-XXXXXX, verified by shm::ShmDir), made on first use
// and removed with everything in it when the process exits. A test that
// forks calls it before forking, so the children use the same directory.
#ifndef FLASHD_TESTS_SHM_TEST_DIR_H_
#define FLASHD_TESTS_SHM_TEST_DIR_H_

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>

#include "common/shm/shm_dir.h"

namespace flashd::shm {

inline std::shared_ptr<const ShmDir> TestShmDir() {
  static std::shared_ptr<const ShmDir> dir = [] {
    std::string pattern = "/dev/shm/flashd-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    static std::string to_remove = pattern;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(to_remove, ec);
    });
    auto d = ShmDir::Open(pattern);
    if (!d.ok() || !(*d)->note().empty()) std::abort();
    return *d;
  }();
  return dir;
}

}  // namespace flashd::shm

#endif  // FLASHD_TESTS_SHM_TEST_DIR_H_
