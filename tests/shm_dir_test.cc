// The daemon's shared-memory directory: created 0711 and ours, never used
// when someone else made it, made it writable or put a link in its place;
// files in it trusted only when they are ours alone.
#include "common/shm/shm_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/shm_test_dir.h"

namespace flashd::shm {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// A path under this process's test directory.
std::string Under(const std::string& leaf) {
  return TestShmDir()->PathOf(leaf);
}

void ExpectFallback(const std::string& path, const std::string& why) {
  auto d = ShmDir::Open(path);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_THAT((*d)->path(), StartsWith(path + "."));
  EXPECT_THAT((*d)->note(), HasSubstr(why));
  EXPECT_THAT((*d)->note(), HasSubstr("using " + (*d)->path()));
  struct stat st;
  ASSERT_EQ(::lstat((*d)->path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0711u);
  EXPECT_EQ(st.st_uid, ::geteuid());
}

TEST(ShmDir, CreatesAMissingDirectory0711) {
  const std::string path = Under("fresh");
  auto d = ShmDir::Open(path);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->path(), path);
  EXPECT_EQ((*d)->note(), "");
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0711u);
  // A directory of ours with a narrower mode is put back to 0711 so that
  // clients can reach their rings.
  ASSERT_EQ(::chmod(path.c_str(), 0700), 0);
  d = ShmDir::Open(path);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->note(), "");
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0711u);
}

TEST(ShmDir, RefusesAWritableDirectory) {
  const std::string path = Under("loose");
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(path.c_str(), 0777), 0);
  ExpectFallback(path, "writable by group or others (mode 0777)");
}

TEST(ShmDir, RefusesASymlink) {
  const std::string target = Under("target");
  ASSERT_EQ(::mkdir(target.c_str(), 0711), 0);
  const std::string path = Under("link");
  ASSERT_EQ(::symlink(target.c_str(), path.c_str()), 0);
  ExpectFallback(path, "is not a directory");
}

TEST(ShmDir, RefusesAnotherUsersDirectory) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown";
  const std::string path = Under("theirs");
  ASSERT_EQ(::mkdir(path.c_str(), 0711), 0);
  ASSERT_EQ(::chown(path.c_str(), 41234, 41234), 0);
  ExpectFallback(path, "belongs to uid 41234");
}

TEST(ShmDir, RefusesBadPaths) {
  EXPECT_TRUE(absl::IsInvalidArgument(ShmDir::Open("").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ShmDir::Open("/dev/shm/x/").status()));
  EXPECT_FALSE(ShmDir::Open("/no/such/parent/dir").ok());
}

TEST(CheckOwnedFile, AcceptsOnlyOurRegularFileWithTheModeAndOneLink) {
  const std::string path = Under("file");
  const int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::fchmod(fd, 0600), 0);
  EXPECT_TRUE(CheckOwnedFile(fd, path, 0600).ok());
  ASSERT_EQ(::fchmod(fd, 0666), 0);
  absl::Status s = CheckOwnedFile(fd, path, 0600);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("has mode 0666, not 0600"));
  ASSERT_EQ(::fchmod(fd, 0600), 0);
  const std::string second = Under("file-link");
  ASSERT_EQ(::link(path.c_str(), second.c_str()), 0);
  s = CheckOwnedFile(fd, path, 0600);
  EXPECT_THAT(std::string(s.message()), HasSubstr("has 2 links"));
  ASSERT_EQ(::unlink(second.c_str()), 0);
  if (::geteuid() == 0) {
    ASSERT_EQ(::fchown(fd, 41234, static_cast<gid_t>(-1)), 0);
    s = CheckOwnedFile(fd, path, 0600);
    EXPECT_THAT(std::string(s.message()), HasSubstr("belongs to uid 41234"));
  }
  ::close(fd);
  const int dfd = ::open(TestShmDir()->path().c_str(), O_RDONLY | O_DIRECTORY);
  s = CheckOwnedFile(dfd, TestShmDir()->path(), 0600);
  EXPECT_THAT(std::string(s.message()), HasSubstr("not a regular file"));
  ::close(dfd);
}

}  // namespace
}  // namespace flashd::shm
