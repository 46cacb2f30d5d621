// The real `flashd serve` binary under load and at its edges: the queue
// limit, cancellation and a killed client freeing sessions (seen through
// GetStats), SIGTERM draining (finish, or cancel at --drain-timeout) and
// exiting 0, the --config file, stale and foreign socket files, TCP with --listen, and
// the sd_notify messages (READY, WATCHDOG, STOPPING).
// Slow generations use tl-small in naive mode (every weight re-read from
// flash per token), so a session reliably outlives the RPCs around it.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include "flashd/v1/flashd.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/test_data.h"

namespace flashd {
namespace {

using testing::GetStats;
using testing::SetDeadline;
using testing::TempPath;
using testing::WaitForStats;

using ::flashd::testing::DaemonProcess;
using ::flashd::testing::HealthCheck;
using ::flashd::testing::SharedPath;

// A long sampled generation (random weights: EOS is unlikely).
v1::GenerateRequest Long(int32_t max_tokens) {
  v1::GenerateRequest r;
  r.set_prompt("Hello");
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(1);
  r.mutable_sampling()->set_seed(1);
  return r;
}

// Reads events until Started and `tokens` tokens arrived; false if the
// stream ended first.
bool ReadStarted(grpc::ClientReader<v1::GenerateEvent>& reader, int tokens) {
  v1::GenerateEvent e;
  bool started = false;
  int seen = 0;
  while ((!started || seen < tokens) && reader.Read(&e)) {
    started |= e.has_started();
    seen += e.has_token();
  }
  return started && seen >= tokens;
}

// Runs the binary to its exit; returns the exit code, output in *log.
int RunToExit(const std::vector<std::string>& args, std::string* log) {
  DaemonProcess p;
  p.Spawn(FLASHD_BINARY, args, TempPath("run.log"));
  const std::optional<int> code = p.WaitExit(std::chrono::seconds(60));
  *log = p.log();
  return code.value_or(-1);
}

// This binary doubles as a client process: with FLASHD_TEST_CLIENT_SOCKET
// set it runs one long generation and exits before gtest starts, so a test
// can SIGKILL a real client mid-stream.
const bool kIsClientChild = [] {
  const char* socket = std::getenv("FLASHD_TEST_CLIENT_SOCKET");
  if (socket == nullptr) return false;
  auto stub = v1::Flashd::NewStub(grpc::CreateChannel(
      std::string("unix:") + socket, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, Long(1500));
  v1::GenerateEvent e;
  while (reader->Read(&e)) {
  }
  std::_Exit(0);
}();

class NaiveDaemon : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHD_REQUIRE_SHARED(SharedPath("models/tl-small-Q8_0.gguf"));
    flash_ = TempPath("tl-small.flash");
    std::string log;
    ASSERT_EQ(RunToExit({"convert", SharedPath("models/tl-small-Q8_0.gguf"),
                         "--out", flash_},
                        &log),
              0)
        << log;
    socket_ = TempPath("flashd.sock");
  }

  void Start(const std::string& drain_timeout) {
    ASSERT_TRUE(daemon_.Start(
        FLASHD_BINARY,
        {"serve", "--model", flash_, "--mode", "naive", "--threads", "1",
         "--ctx", "2048", "--max-sessions", "1", "--max-queue", "1",
         "--drain-timeout", drain_timeout, "--socket", socket_},
        TempPath("daemon.log"), "unix:" + socket_))
        << daemon_.log();
    stub_ = v1::Flashd::NewStub(daemon_.channel());
  }

  std::string flash_;
  std::string socket_;
  DaemonProcess daemon_;
  std::unique_ptr<v1::Flashd::Stub> stub_;
};

TEST_F(NaiveDaemon, QueueLimitAndCancellationFreeSessions) {
  Start("10");
  grpc::ClientContext ctx_a;
  SetDeadline(&ctx_a);
  auto reader_a = stub_->Generate(&ctx_a, Long(1500));
  ASSERT_TRUE(ReadStarted(*reader_a, 1));  // A holds the only session

  grpc::ClientContext ctx_b;  // B waits in the queue
  SetDeadline(&ctx_b);
  bool b_started = false;
  grpc::Status b_status;
  std::thread b([&] {
    auto reader_b = stub_->Generate(&ctx_b, Long(1500));
    b_started = ReadStarted(*reader_b, 1);
    ctx_b.TryCancel();
    v1::GenerateEvent e;
    while (reader_b->Read(&e)) {
    }
    b_status = reader_b->Finish();
  });
  v1::Stats s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_queued() == 1;
  });
  EXPECT_EQ(s.sessions_active(), 1);
  EXPECT_EQ(s.sessions_queued(), 1);
  EXPECT_GT(s.kv_bytes_in_use(), 0u);

  {  // C: over the queue limit
    grpc::ClientContext ctx_c;
    SetDeadline(&ctx_c, 10);
    auto reader_c = stub_->Generate(&ctx_c, Long(10));
    v1::GenerateEvent e;
    EXPECT_FALSE(reader_c->Read(&e));
    const grpc::Status c = reader_c->Finish();
    EXPECT_EQ(c.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(c.error_message().find("--max-queue 1"), std::string::npos)
        << c.error_message();
  }

  ctx_a.TryCancel();  // A goes: B gets the session, then cancels too
  v1::GenerateEvent e;
  int32_t a_tokens = 0;
  while (reader_a->Read(&e)) a_tokens += e.has_token();
  EXPECT_EQ(reader_a->Finish().error_code(), grpc::StatusCode::CANCELLED);
  b.join();
  EXPECT_TRUE(b_started);
  EXPECT_EQ(b_status.error_code(), grpc::StatusCode::CANCELLED);

  s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_active() == 0 && s.sessions_queued() == 0;
  });
  EXPECT_EQ(s.sessions_active(), 0);
  EXPECT_EQ(s.kv_bytes_in_use(), 0u);
  EXPECT_EQ(s.sessions_total(), 2u);
  EXPECT_LT(s.tokens_generated(), 1500u);  // both stopped early
  EXPECT_GT(s.flash_bytes_per_token(), 1e6);  // naive re-reads the weights
  EXPECT_GT(s.read_mb_s(), 0);
  EXPECT_EQ(HealthCheck(daemon_.channel(), ""), 1);
}

TEST_F(NaiveDaemon, AKilledClientFreesItsSession) {
  Start("10");
  DaemonProcess client;
  client.Spawn("/proc/self/exe", {}, TempPath("client.log"),
               {"FLASHD_TEST_CLIENT_SOCKET=" + socket_,
                "TMPDIR=" + ::testing::TempDir()});  // cleaned up with ours
  v1::Stats s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_active() == 1 && s.tokens_generated() > 0;
  });
  ASSERT_EQ(s.sessions_active(), 1) << client.log();
  client.Kill();  // SIGKILL: the connection just goes away
  s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_active() == 0;
  });
  EXPECT_EQ(s.sessions_active(), 0);
  EXPECT_EQ(s.kv_bytes_in_use(), 0u);
  EXPECT_LT(s.tokens_generated(), 1500u);
  grpc::ClientContext ctx;  // others are unaffected
  SetDeadline(&ctx);
  auto reader = stub_->Generate(&ctx, Long(3));
  EXPECT_TRUE(ReadStarted(*reader, 3));
  v1::GenerateEvent e;
  while (reader->Read(&e)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(NaiveDaemon, SigtermLetsARunningGenerationFinish) {
  Start("30");
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto reader = stub_->Generate(&ctx, Long(100));
  ASSERT_TRUE(ReadStarted(*reader, 0));
  daemon_.Signal(SIGTERM);
  // Health turns NOT_SERVING once the drain began; from then on a new
  // generation on the open connection is refused while the old one runs.
  const auto t0 = std::chrono::steady_clock::now();
  while (HealthCheck(daemon_.channel(), "") == 1 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  {
    grpc::ClientContext late;
    SetDeadline(&late);
    auto refused = stub_->Generate(&late, Long(1));
    v1::GenerateEvent ignored;
    while (refused->Read(&ignored)) {
    }
    const grpc::Status status = refused->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(status.error_message().find("shutting down"), std::string::npos)
        << status.error_message();
  }
  v1::GenerateEvent e;
  int32_t tokens = 0;
  bool done = false;
  while (reader->Read(&e)) {
    tokens += e.has_token();
    if (e.has_done()) {
      done = true;
      EXPECT_EQ(e.done().reason(), v1::MAX_TOKENS);
    }
  }
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
  EXPECT_TRUE(done);
  EXPECT_EQ(tokens, 100);
  const std::optional<int> code = daemon_.WaitExit(std::chrono::seconds(30));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << daemon_.log();
  struct stat st;
  EXPECT_NE(::lstat(socket_.c_str(), &st), 0);
}

TEST_F(NaiveDaemon, DrainTimeoutCancelsWhatIsStillRunning) {
  Start("0.3");
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto reader = stub_->Generate(&ctx, Long(1500));
  ASSERT_TRUE(ReadStarted(*reader, 1));
  const auto t0 = std::chrono::steady_clock::now();
  daemon_.Signal(SIGTERM);
  v1::GenerateEvent e;
  int32_t tokens = 1;
  while (reader->Read(&e)) tokens += e.has_token();
  EXPECT_FALSE(reader->Finish().ok());
  EXPECT_LT(tokens, 1500);
  const std::optional<int> code = daemon_.WaitExit(std::chrono::seconds(30));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << daemon_.log();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_NE(daemon_.log().find("draining"), std::string::npos);
}

class StoriesConfig : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHD_REQUIRE_SHARED(SharedPath("models/stories260K.bin"));
    socket_ = TempPath("sub/dir/flashd.sock");  // directories made on start
    ::unlink(socket_.c_str());  // from an earlier test in this process
    config_ = TempPath("flashd.conf");
    std::ofstream(config_)
        << "# flashd test config\n"
        << "model = " << SharedPath("models/stories260K.bin") << "\n"
        << "tokenizer = \"" << SharedPath("models/tok512.bin") << "\"\n"
        << "socket = " << socket_ << "\n"
        << "kv-budget = 1MiB\n\n threads = 1\n";
  }
  std::string socket_;
  std::string config_;
};

TEST_F(StoriesConfig, ConfigFileFlagsOverrideItAndStaleSocketIsReplaced) {
  DaemonProcess first;  // creates sub/dir, then is killed: a stale socket
  ASSERT_TRUE(first.Start(FLASHD_BINARY, {"serve", "--config", config_},
                          TempPath("first.log"), "unix:" + socket_))
      << first.log();
  first.Kill();
  struct stat st;
  ASSERT_EQ(::lstat(socket_.c_str(), &st), 0);

  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start(FLASHD_BINARY,
                           {"serve", "--config", config_, "--kv-budget", "2MiB"},
                           TempPath("daemon.log"), "unix:" + socket_))
      << daemon.log();
  auto stub = v1::Flashd::NewStub(daemon.channel());
  EXPECT_EQ(GetStats(*stub).kv_bytes_limit(), 2u << 20);  // the flag won

  std::string log;  // a second daemon on a live socket is refused
  EXPECT_EQ(RunToExit({"serve", "--config", config_}, &log), 1);
  EXPECT_NE(log.find("another server is listening"), std::string::npos) << log;
  EXPECT_EQ(HealthCheck(daemon.channel(), ""), 1);  // and did no harm
}

TEST_F(StoriesConfig, RefusesForeignFilesAndBadConfig) {
  const std::string file = TempPath("not-a-socket");
  std::ofstream(file) << "data";
  std::string log;
  EXPECT_EQ(RunToExit({"serve", "--config", config_, "--socket", file}, &log), 1);
  EXPECT_NE(log.find("is not a socket"), std::string::npos) << log;
  std::ifstream still(file);
  EXPECT_TRUE(still.good());  // never deleted

  std::ofstream(TempPath("bad.conf")) << "# x\nbogus = 1\n";
  EXPECT_EQ(RunToExit({"serve", "--config", TempPath("bad.conf")}, &log), 1);
  EXPECT_NE(log.find("bad.conf:2: unknown flag --bogus"), std::string::npos) << log;
  EXPECT_EQ(RunToExit({"serve", "--config", TempPath("missing.conf")}, &log), 1);
  EXPECT_NE(log.find("missing.conf"), std::string::npos) << log;
}

TEST_F(StoriesConfig, TcpOnlyWhenListenIsGiven) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);  // find a free port
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string listen = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  ::close(fd);
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start(FLASHD_BINARY,
                           {"serve", "--config", config_, "--socket", "",
                            "--listen", listen, "--insecure-tcp"},
                           TempPath("daemon.log"), listen))
      << daemon.log();
  EXPECT_EQ(HealthCheck(daemon.channel(), "flashd.v1.Flashd"), 1);
  struct stat st;
  EXPECT_NE(::lstat(socket_.c_str(), &st), 0);  // no Unix socket
  // A TCP client is remote: no shared memory for it, and a clear answer.
  auto stub = v1::Flashd::NewStub(daemon.channel());
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 10);
  v1::GenerateRequest r = Long(3);
  r.set_delivery(v1::SHARED_MEMORY);
  auto reader = stub->Generate(&ctx, r);
  v1::GenerateEvent e;
  EXPECT_FALSE(reader->Read(&e));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("Unix socket"), std::string::npos)
      << status.error_message();
}

// sd_notify datagrams, as systemd would receive them (NOTIFY_SOCKET).
class NotifyListener {
 public:
  explicit NotifyListener(const std::string& path) : path_(path) {
    ::unlink(path.c_str());
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    ok_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    timeval tv{0, 100000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~NotifyListener() { ::close(fd_); }
  bool ok() const { return ok_; }
  // Every message received until one containing `want` (up to 20 s).
  std::string ReceiveUntil(const std::string& want) {
    std::string all;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < end) {
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) continue;
      const std::string msg(buf, n);
      all += msg + "\n";
      if (msg.find(want) != std::string::npos) break;
    }
    return all;
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool ok_ = false;
};

TEST_F(StoriesConfig, NotifiesSystemdReadyWatchdogAndStopping) {
  NotifyListener listener(TempPath("notify.sock"));
  ASSERT_TRUE(listener.ok());
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start(FLASHD_BINARY, {"serve", "--config", config_},
                           TempPath("daemon.log"), "unix:" + socket_,
                           {"NOTIFY_SOCKET=" + TempPath("notify.sock"),
                            "WATCHDOG_USEC=200000"}))
      << daemon.log();
  std::string got = listener.ReceiveUntil("WATCHDOG=1");  // every 100 ms
  EXPECT_NE(got.find("READY=1"), std::string::npos) << got;
  EXPECT_NE(got.find("STATUS=listening on unix:" + socket_), std::string::npos);
  EXPECT_NE(got.find("WATCHDOG=1"), std::string::npos) << got;
  daemon.Signal(SIGTERM);
  got = listener.ReceiveUntil("STOPPING=1");
  EXPECT_NE(got.find("STOPPING=1"), std::string::npos) << got;
  EXPECT_EQ(daemon.WaitExit(std::chrono::seconds(20)).value_or(-1), 0);
}

}  // namespace
}  // namespace flashd
