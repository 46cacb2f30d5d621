#include "tests/test_data.h"

#include <sys/stat.h>

#include <cstdlib>

namespace flashd::testing {

std::string SharedDir() {
  if (const char* env = std::getenv("FLASHD_TEST_DATA"); env && *env) return env;
  return std::string(FLASHD_SOURCE_DIR) + "/../shared";
}

std::string SharedPath(const std::string& relative) {
  return SharedDir() + "/" + relative;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace flashd::testing
