#include "tests/test_data.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

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

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<int32_t> ReadIds(const std::string& path) {
  std::ifstream in(path);
  std::vector<int32_t> ids;
  int32_t id;
  while (in >> id) ids.push_back(id);
  return ids;
}

}  // namespace flashd::testing
