// Linked into every test binary: gives the process its own temporary
// directory (TEST_TMPDIR, which ::testing::TempDir() returns), removed at
// exit. ctest runs each test case as its own process, in parallel, so
// fixed file names under a shared /tmp would race between test cases.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>

namespace {

struct PerProcessTmpdir {
  PerProcessTmpdir() {
    // A death test's child re-runs the binary and leaves through _exit,
    // which skips the cleanup: let it use the parent's directory.
    std::ifstream cmdline("/proc/self/cmdline", std::ios::binary);
    const std::string args((std::istreambuf_iterator<char>(cmdline)), {});
    if (args.find("gtest_internal_run_death_test") != std::string::npos) return;
    std::string base = "/tmp";
    if (const char* t = std::getenv("TMPDIR"); t != nullptr && *t) base = t;
    std::string pattern = base + "/flashd_test_XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) return;  // keep gtest's default
    dir = pattern;
    ::setenv("TEST_TMPDIR", dir.c_str(), 1);
  }
  ~PerProcessTmpdir() {
    if (dir.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::string dir;
};

PerProcessTmpdir tmpdir;

}  // namespace
