// ApiKey: the format of a key, the rules for its file, and the check of
// "Authorization: Bearer KEY".
#include "daemon/server/api_key.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace flashd::server {
namespace {

constexpr char kKey[] = "0123456789abcdef0123456789abcdef";

std::string WriteKeyFile(const std::string& name, const std::string& text,
                         mode_t mode) {
  const std::string path = ::testing::TempDir() + "/" + name;
  ::unlink(path.c_str());
  std::ofstream(path) << text;
  EXPECT_EQ(::chmod(path.c_str(), mode), 0);
  return path;
}

TEST(ApiKey, MatchesOnlyTheBearerOfTheKey) {
  absl::StatusOr<ApiKey> key = ApiKey::FromString(kKey);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(key->Matches(std::string("Bearer ") + kKey));
  EXPECT_TRUE(key->Matches(std::string("bearer  ") +
                           kKey));   // RFC 6750: scheme case-insensitive
  EXPECT_FALSE(key->Matches(kKey));  // no scheme
  EXPECT_FALSE(key->Matches(std::string("Basic ") + kKey));
  EXPECT_FALSE(key->Matches(std::string("Bearer ") + kKey + "0"));
  EXPECT_FALSE(
      key->Matches(std::string("Bearer ") + std::string(kKey).substr(1)));
  EXPECT_FALSE(key->Matches("Bearer "));
  EXPECT_FALSE(key->Matches(""));
}

TEST(ApiKey, RefusesShortOrMalformedKeys) {
  EXPECT_EQ(ApiKey::FromString("short").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApiKey::FromString("0123456789abcdef 0123456789").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApiKey::FromString("").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ApiKey::FromString(std::string("  ") + kKey + "\n").ok());
}

TEST(ApiKey, LoadsAPrivateRegularFile) {
  const std::string path = WriteKeyFile("key", std::string(kKey) + "\n", 0600);
  absl::StatusOr<ApiKey> key = ApiKey::Load(path);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(key->Matches(std::string("Bearer ") + kKey));
  EXPECT_TRUE(ApiKey::Load(WriteKeyFile("key400", kKey, 0400)).ok());
}

TEST(ApiKey, RefusesAFileOthersCanReadOrWrite) {
  for (mode_t mode : {0640, 0604, 0620, 0602, 0666}) {
    const absl::Status s =
        ApiKey::Load(WriteKeyFile("open", kKey, mode)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << mode;
    EXPECT_NE(s.message().find("chmod 600"), std::string::npos) << s;
  }
}

TEST(ApiKey, RefusesWhatIsNotARegularFile) {
  const std::string target = WriteKeyFile("target", kKey, 0600);
  const std::string link = ::testing::TempDir() + "/link";
  ::unlink(link.c_str());
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  absl::Status s = ApiKey::Load(link).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s;

  const std::string dir = ::testing::TempDir() + "/keydir";
  ::mkdir(dir.c_str(), 0700);
  s = ApiKey::Load(dir).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("not a regular file"), std::string::npos) << s;

  EXPECT_EQ(ApiKey::Load(::testing::TempDir() + "/missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ApiKey::Load(WriteKeyFile("empty", "\n", 0600)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flashd::server
