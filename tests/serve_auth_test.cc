// Authentication of `flashd serve --listen` on the real binary: a
// throwaway CA, server and client certificates made with the openssl CLI
// in the test's temporary directory; TLS, mutual TLS, the API key (wrong
// or missing: UNAUTHENTICATED, health included), refusal to start without
// authentication, and no server paths in GetModelInfo over TCP. The Unix
// socket keeps working without any of it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "client/client.h"
#include "flashd/v1/flashd.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

using ::flashd::testing::DaemonProcess;
using ::flashd::testing::SharedPath;
using ::flashd::testing::TempPath;

constexpr char kKey[] = "0123456789abcdef0123456789abcdef";

// Runs a shell command; true on exit 0.
bool Shell(const std::string& command) {
  return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
}

void WriteFile(const std::string& path, const std::string& text, mode_t mode) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
}

class AuthDaemon : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(TempPath("pki"));
    const std::string d = *dir_;
    const std::string req = "openssl req -newkey rsa:2048 -nodes -subj ";
    const std::string sign = "openssl x509 -req -days 1 -CA " + d +
                             "/ca.pem -CAkey " + d + "/ca.key -CAcreateserial";
    made_ = Shell("mkdir -p " + d);
    WriteFile(d + "/san.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
              0644);
    made_ = made_ &&
            Shell(
                "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "
                "'/CN=flashd test CA' -keyout " +
                d + "/ca.key -out " + d + "/ca.pem") &&
            Shell(req + "'/CN=localhost' -keyout " + d + "/server.key -out " +
                  d + "/server.csr") &&
            Shell(sign + " -extfile " + d + "/san.ext -in " + d +
                  "/server.csr -out " + d + "/server.pem") &&
            Shell(req + "'/CN=client' -keyout " + d + "/client.key -out " + d +
                  "/client.csr") &&
            Shell(sign + " -in " + d + "/client.csr -out " + d + "/client.pem");
    WriteFile(d + "/key", std::string(kKey) + "\n", 0600);
    WriteFile(d + "/wrong", "ffffffffffffffffffffffffffffffff\n", 0600);
  }
  static void TearDownTestSuite() { delete dir_; }

  void SetUp() override {
    FLASHD_REQUIRE_SHARED(SharedPath("models/stories260K.bin"));
    ASSERT_TRUE(made_) << "openssl could not make the test certificates "
                          "(scripts/setup installs openssl)";
  }

  static std::string Pki(const std::string& name) { return *dir_ + "/" + name; }

  std::vector<std::string> Args(const std::vector<std::string>& extra) {
    socket_ = TempPath("auth.sock");
    std::vector<std::string> args = {"serve",
                                     "--model",
                                     SharedPath("models/stories260K.bin"),
                                     "--tokenizer",
                                     SharedPath("models/tok512.bin"),
                                     "--socket",
                                     socket_,
                                     "--threads",
                                     "1",
                                     "--listen",
                                     "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  // Starts the daemon (ready once its Unix socket answers) and finds the
  // TCP port it chose in its log.
  void Start(const std::vector<std::string>& extra) {
    ASSERT_TRUE(daemon_.Start(FLASHD_BINARY, Args(extra), TempPath("auth.log"),
                              "unix:" + TempPath("auth.sock")))
        << daemon_.log();
    std::smatch m;
    const std::string log = daemon_.log();
    ASSERT_TRUE(
        std::regex_search(log, m, std::regex("and 127\\.0\\.0\\.1:(\\d+)")))
        << log;
    target_ = "127.0.0.1:" + m[1].str();
  }

  // Exit code and log of a daemon that must refuse to start.
  std::pair<int, std::string> StartFails(
      const std::vector<std::string>& extra) {
    DaemonProcess p;
    p.Spawn(FLASHD_BINARY, Args(extra), TempPath("fail.log"));
    const std::optional<int> code = p.WaitExit(std::chrono::seconds(30));
    return {code.value_or(-1), p.log()};
  }

  absl::StatusOr<std::unique_ptr<client::Client>> Connect(
      client::SecurityOptions security) {
    client::ClientOptions o;
    o.connect_timeout = absl::Seconds(3);
    o.security = std::move(security);
    return client::Client::Connect(target_, o);
  }

  static std::string* dir_;
  static bool made_;
  std::string socket_;
  std::string target_;
  DaemonProcess daemon_;
};

std::string* AuthDaemon::dir_ = nullptr;
bool AuthDaemon::made_ = false;

TEST_F(AuthDaemon, ListenWithoutAuthenticationDoesNotStart) {
  const auto [code, log] = StartFails({});
  EXPECT_NE(code, 0);
  for (const char* flag :
       {"--tls-cert", "--tls-key", "--api-key-file", "--insecure-tcp"}) {
    EXPECT_NE(log.find(flag), std::string::npos) << log;
  }
}

TEST_F(AuthDaemon, InsecureTcpWhenAskedFor) {
  Start({"--insecure-tcp"});
  auto c = Connect({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->GetModelInfo().ok());
}

TEST_F(AuthDaemon, TcpConnectionThatNeverHandshakesIsClosed) {
  Start({"--insecure-tcp", "--handshake-timeout-ms", "500"});
  const int port = std::stoi(target_.substr(target_.rfind(':') + 1));
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << std::strerror(errno);
  const timeval wait{.tv_sec = 15, .tv_usec = 0};
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait)), 0);
  // Send nothing: no HTTP/2 preface, no settings. The daemon closes it
  // (EOF, or a reset) after the handshake timeout, not after our 15 s.
  const auto t0 = std::chrono::steady_clock::now();
  char byte;
  ssize_t got;
  do {
    got = recv(fd, &byte, 1, 0);
  } while (got > 0);
  const auto waited = std::chrono::steady_clock::now() - t0;
  const int err = errno;
  close(fd);
  EXPECT_TRUE(got == 0 || err == ECONNRESET) << std::strerror(err);
  EXPECT_LT(waited, std::chrono::seconds(10));
  // Everyone else is still served.
  auto c = Connect({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->GetModelInfo().ok());
}

TEST_F(AuthDaemon, KeyFileMustBePrivate) {
  WriteFile(Pki("open-key"), std::string(kKey) + "\n", 0640);
  const auto [code, log] = StartFails({"--api-key-file", Pki("open-key")});
  EXPECT_NE(code, 0);
  EXPECT_NE(log.find("has mode 0640"), std::string::npos) << log;
  EXPECT_NE(log.find("chmod 600"), std::string::npos) << log;
}

TEST_F(AuthDaemon, KeyWithoutTlsOnlyOnLoopback) {
  DaemonProcess p;
  std::vector<std::string> args = Args({"--api-key-file", Pki("key")});
  args[args.size() - 3] = "0.0.0.0:0";  // the --listen value
  p.Spawn(FLASHD_BINARY, args, TempPath("fail.log"));
  EXPECT_NE(p.WaitExit(std::chrono::seconds(30)).value_or(-1), 0);
  EXPECT_NE(p.log().find("only loopback"), std::string::npos) << p.log();
}

TEST_F(AuthDaemon, ApiKeyOnEveryCallHealthIncluded) {
  Start({"--api-key-file", Pki("key")});
  auto none = Connect({});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ((*none)->GetModelInfo().status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*none)->Health().status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*none)->Tokenize("Once").status().code(),
            absl::StatusCode::kUnauthenticated);
  v1::GenerateRequest r;
  r.set_prompt("Once");
  r.set_max_tokens(2);
  EXPECT_EQ((*none)
                ->Generate(r, [](const v1::GenerateEvent&) { return true; })
                .code(),
            absl::StatusCode::kUnauthenticated);

  client::SecurityOptions wrong;
  wrong.api_key_file = Pki("wrong");
  auto bad = Connect(wrong);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ((*bad)->GetStats().status().code(),
            absl::StatusCode::kUnauthenticated);

  client::SecurityOptions right;
  right.api_key_file = Pki("key");
  auto good = Connect(right);
  ASSERT_TRUE(good.ok()) << good.status();
  absl::StatusOr<v1::ModelInfo> info = (*good)->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->path(), "");  // no server paths over TCP
  EXPECT_EQ(info->sparsity().find('/'), std::string::npos) << info->sparsity();
  EXPECT_EQ(info->name(), "stories260K");
  absl::StatusOr<client::HealthStatus> health = (*good)->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::HealthStatus::kServing);
  int tokens = 0;
  EXPECT_TRUE((*good)
                  ->Generate(r,
                             [&](const v1::GenerateEvent& e) {
                               tokens += e.has_token();
                               return true;
                             })
                  .ok());
  EXPECT_EQ(tokens, 2);

  // Reflection is behind the key too.
  auto channel = grpc::CreateChannel(target_, grpc::InsecureChannelCredentials());
  EXPECT_EQ(::flashd::testing::ListServices(channel), "");
  EXPECT_NE(::flashd::testing::ListServices(channel, std::string("Bearer ") + kKey)
                .find("flashd.v1.Flashd"),
            std::string::npos);

  // The Unix socket needs no key, and still shows the path.
  auto local = client::Client::Connect("unix:" + socket_);
  ASSERT_TRUE(local.ok()) << local.status();
  absl::StatusOr<v1::ModelInfo> local_info = (*local)->GetModelInfo();
  ASSERT_TRUE(local_info.ok()) << local_info.status();
  EXPECT_EQ(local_info->path(), SharedPath("models/stories260K.bin"));
}

TEST_F(AuthDaemon, Tls) {
  Start({"--tls-cert", Pki("server.pem"), "--tls-key", Pki("server.key")});
  client::SecurityOptions tls;
  tls.tls_ca = Pki("ca.pem");
  auto c = Connect(tls);
  ASSERT_TRUE(c.ok()) << c.status() << "\n" << daemon_.log();
  absl::StatusOr<v1::ModelInfo> info = (*c)->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->path(), "");
  // A plain-text client gets no answer from a TLS port.
  EXPECT_FALSE(Connect({}).ok());
}

TEST_F(AuthDaemon, MutualTlsRejectsAClientWithoutCertificate) {
  Start({"--tls-cert", Pki("server.pem"), "--tls-key", Pki("server.key"),
         "--tls-client-ca", Pki("ca.pem"), "--api-key-file", Pki("key")});
  client::SecurityOptions no_cert;
  no_cert.tls_ca = Pki("ca.pem");
  no_cert.api_key_file = Pki("key");
  EXPECT_FALSE(Connect(no_cert).ok());
  client::SecurityOptions with_cert = no_cert;
  with_cert.tls_cert = Pki("client.pem");
  with_cert.tls_key = Pki("client.key");
  auto c = Connect(with_cert);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->GetStats().ok());
  // The certificate alone is not enough when a key is configured too.
  client::SecurityOptions cert_only = with_cert;
  cert_only.api_key_file.clear();
  auto k = Connect(cert_only);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ((*k)->GetStats().status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthDaemon, FlashctlConnectsWithTlsAndKey) {
  Start({"--tls-cert", Pki("server.pem"), "--tls-key", Pki("server.key"),
         "--api-key-file", Pki("key")});
  const std::string flashctl = std::string(FLASHCTL_BINARY) + " --target " +
                               target_ + " --tls-ca " + Pki("ca.pem");
  EXPECT_TRUE(Shell(flashctl + " --api-key-file " + Pki("key") + " info"));
  EXPECT_FALSE(Shell(flashctl + " info"));
}

}  // namespace
}  // namespace flashd
