// Location of ../shared test data for tests.
#ifndef FLASHD_TESTS_TEST_DATA_H_
#define FLASHD_TESTS_TEST_DATA_H_

#include <cstdlib>
#include <cstdint>
#include <string>
#include <vector>

namespace flashd::testing {

// $FLASHD_TEST_DATA, else <source dir>/../shared.
std::string SharedDir();
// SharedDir() + "/" + relative.
std::string SharedPath(const std::string& relative);
// True when the file exists.
bool Exists(const std::string& path);
// The file's bytes ("" when it cannot be read).
std::string ReadFileBytes(const std::string& path);
// Whitespace-separated integers of a file (token id goldens).
std::vector<int32_t> ReadIds(const std::string& path);

}  // namespace flashd::testing

// Skips the test (with the missing path) when shared data is absent. In CI
// (CI=true) a missing file fails the test instead: CI always has ../shared.
#define FLASHD_REQUIRE_SHARED(path)                                       \
  do {                                                                    \
    if (!::flashd::testing::Exists(path)) {                               \
      if (std::getenv("CI") != nullptr) FAIL() << "missing test data " << (path); \
      GTEST_SKIP() << "missing test data " << (path)                      \
                   << " (set FLASHD_TEST_DATA to the shared/ folder)";    \
    }                                                                     \
  } while (0)

#endif  // FLASHD_TESTS_TEST_DATA_H_
