// Shared-memory token delivery and the shared neuron cache with the real
// `flashd serve` and real client processes: 8 flashctl processes at once
// over both delivery paths, a ring only its caller's uid can map, a socket
// other users cannot reach, a client killed mid-stream, and the daemon
// SIGKILLed and restarted under load (UNAVAILABLE, then success, the
// neuron cache re-attached warm).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "common/shm/token_ring_reader.h"
#include "common/shm/token_ring_writer.h"
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
using ::flashd::testing::ReadIds;
using ::flashd::testing::SharedPath;

constexpr char kDog[] = "Once upon a time, there was a little dog";
constexpr uid_t kNobody = 65534;
constexpr uid_t kOther = 65533;

v1::GenerateRequest Request(const std::string& prompt, int32_t max_tokens,
                            v1::Delivery delivery, float temperature = 0) {
  v1::GenerateRequest r;
  r.set_prompt(prompt);
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(temperature);
  r.mutable_sampling()->set_seed(7);
  r.set_delivery(delivery);
  return r;
}

// Token rings of daemon `pid` still named in its shared-memory directory.
int RingsOf(pid_t pid) {
  int n = 0;
  const std::string prefix = shm::TokenRingPrefix(pid);
  for (const auto& e : std::filesystem::directory_iterator(testing::DaemonShmDir())) {
    n += e.path().filename().string().rfind(prefix, 0) == 0;
  }
  return n;
}

// Modes of this binary as a child process (before gtest starts):
//  FLASHD_TEST_RING_CLIENT=SOCKET,DIR  asks for a greedy kDog with
//    shared-memory delivery, prints "RING name id", waits for DIR/go, then
//    reads the ring and prints "IDS ..." and exits 0 after Done.
//  FLASHD_TEST_RING_PROBE=NAME,ID  tries to attach to a ring; prints the
//    status; exits 0 when refused with PERMISSION_DENIED.
//  FLASHD_TEST_LONG_CLIENT=SOCKET  one long shared-memory generation.
int RingClient(const std::string& arg) {
  const std::vector<std::string> parts = absl::StrSplit(arg, ',');
  auto stub = v1::Flashd::NewStub(grpc::CreateChannel(
      "unix:" + parts[0], grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 60);
  auto reader =
      stub->Generate(&ctx, Request(kDog, 300, v1::SHARED_MEMORY));
  v1::GenerateEvent e;
  if (!reader->Read(&e) || !e.has_started()) {
    std::printf("NO STARTED: %s\n", reader->Finish().error_message().c_str());
    return 1;
  }
  std::printf("RING %s %llu\n", e.started().shm_path().c_str(),
              static_cast<unsigned long long>(e.started().shm_session_id()));
  std::fflush(stdout);
  struct stat st;
  while (::stat((parts[1] + "/go").c_str(), &st) != 0) ::usleep(10000);
  auto ring = shm::TokenRingReader::Attach(e.started().shm_path(),
                                           e.started().shm_session_id());
  if (!ring.ok()) {
    std::printf("ATTACH: %s\n", ring.status().ToString().c_str());
    return 1;
  }
  std::string ids = "IDS";
  while (true) {
    absl::StatusOr<shm::RingEvent> r = (*ring)->Next(absl::Seconds(30));
    if (!r.ok() || r->kind == shm::RingEvent::Kind::kFinished) break;
    absl::StrAppend(&ids, " ", r->token_id);
  }
  int tokens_in_stream = 0;
  bool done = false;
  while (reader->Read(&e)) {
    tokens_in_stream += e.has_token();
    done |= e.has_done();
  }
  std::printf("%s\nSTREAM TOKENS %d DONE %d\n", ids.c_str(), tokens_in_stream,
              done);
  return reader->Finish().ok() ? 0 : 1;
}

int RingProbe(const std::string& arg) {
  const std::vector<std::string> parts = absl::StrSplit(arg, ',');
  auto ring = shm::TokenRingReader::Attach(parts[0], std::stoull(parts[1]));
  std::printf("%s\n", ring.status().ToString().c_str());
  return ring.status().code() == absl::StatusCode::kPermissionDenied ? 0 : 1;
}

int LongClient(const std::string& socket) {
  absl::StatusOr<std::unique_ptr<client::Client>> c =
      client::Client::Connect("unix:" + socket);
  if (!c.ok()) return 2;
  return (*c)->Generate(Request("Hello", 1500, v1::SHARED_MEMORY, 1),
                        [](const v1::GenerateEvent&) { return true; })
                 .ok()
             ? 0
             : 1;
}

// _Exit skips stdio's flush: do it first.
[[noreturn]] void ExitWith(int code) {
  std::fflush(stdout);
  std::_Exit(code);
}

const bool kIsChild = [] {
  if (const char* a = std::getenv("FLASHD_TEST_RING_CLIENT")) ExitWith(RingClient(a));
  if (const char* a = std::getenv("FLASHD_TEST_RING_PROBE")) ExitWith(RingProbe(a));
  if (const char* a = std::getenv("FLASHD_TEST_LONG_CLIENT")) ExitWith(LongClient(a));
  return false;
}();

// A directory every user can traverse (the test's own may be private),
// holding the socket and copies of the binaries other users run.
class PublicDir {
 public:
  PublicDir() {
    char tmpl[] = "/tmp/flashd-shm-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
    ::chmod(path_.c_str(), 0755);
  }
  ~PublicDir() { std::filesystem::remove_all(path_); }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  // A copy of `binary` others may run.
  std::string Install(const std::string& binary, const std::string& name) {
    const std::string to = *this / name;
    std::filesystem::copy_file(binary, to);
    ::chmod(to.c_str(), 0755);
    return to;
  }

 private:
  std::string path_;
};

class StoriesShm : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHD_REQUIRE_SHARED(SharedPath("models/stories260K.bin"));
    socket_ = dir_ / "flashd.sock";
    ASSERT_TRUE(daemon_.Start(
        FLASHD_BINARY,
        {"serve", "--model", SharedPath("models/stories260K.bin"), "--tokenizer",
         SharedPath("models/tok512.bin"), "--socket", socket_, "--threads", "1",
         "--max-sessions", "8"},
        TempPath("daemon.log"), "unix:" + socket_))
        << daemon_.log();
    stub_ = v1::Flashd::NewStub(daemon_.channel());
    std::string golden =
        testing::ReadFileBytes(SharedPath("golden/stories260K_greedy_dog.txt"));
    while (!golden.empty() && golden.back() == '\n') golden.pop_back();
    ASSERT_EQ(golden.rfind(kDog, 0), 0u);
    expected_text_ = golden.substr(std::strlen(kDog));
  }

  PublicDir dir_;
  std::string socket_;
  std::string expected_text_;
  DaemonProcess daemon_;
  std::unique_ptr<v1::Flashd::Stub> stub_;
};

TEST_F(StoriesShm, EightClientProcessesOverBothDeliveryPaths) {
  std::vector<std::unique_ptr<DaemonProcess>> clients;
  for (int i = 0; i < 8; ++i) {
    clients.push_back(std::make_unique<DaemonProcess>());
    clients.back()->Spawn(
        FLASHCTL_BINARY,
        {"--socket", socket_, "generate", "--prompt", kDog, "--temperature", "0",
         "--max-tokens", "300", "--delivery", i % 2 == 0 ? "shm" : "stream"},
        TempPath(absl::StrCat("client", i, ".log")));
  }
  for (int i = 0; i < 8; ++i) {
    SCOPED_TRACE(i);
    const std::optional<int> code = clients[i]->WaitExit(std::chrono::seconds(60));
    ASSERT_EQ(code, 0) << clients[i]->log();
    const std::string log = clients[i]->log();
    // stdout (the text, then a newline) comes before stderr's timings.
    EXPECT_EQ(log.rfind(expected_text_ + "\n", 0), 0u) << log;
    EXPECT_NE(log.find("finish: eos"), std::string::npos) << log;
  }
  const v1::Stats s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_active() == 0 && s.shm_segments() == 0;
  });
  EXPECT_EQ(s.sessions_total(), 8u);
  EXPECT_EQ(s.shm_segments(), 0u);
  EXPECT_EQ(RingsOf(daemon_.pid()), 0);
}

TEST_F(StoriesShm, TheClientLibraryReadsTheRing) {
  const std::vector<int32_t> golden =
      ReadIds(SharedPath("golden/stories260K_greedy_dog.ids"));
  absl::StatusOr<std::unique_ptr<client::Client>> c =
      client::Client::Connect("unix:" + socket_);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<int32_t> ids;
  std::string ring;
  v1::Done done;
  const absl::Status status = (*c)->Generate(
      Request(kDog, 300, v1::SHARED_MEMORY), [&](const v1::GenerateEvent& e) {
        if (e.has_started()) ring = e.started().shm_path();
        if (e.has_token()) ids.push_back(e.token().id());
        if (e.has_done()) done = e.done();
        return true;
      });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_FALSE(ring.empty());
  ASSERT_LE(ids.size(), golden.size());
  EXPECT_TRUE(std::equal(ids.begin(), ids.end(), golden.end() - ids.size()));
  EXPECT_EQ(done.reason(), v1::EOS);
  EXPECT_EQ(done.timings().generated_tokens(), static_cast<int32_t>(ids.size()));
  struct stat st;
  EXPECT_NE(::stat(ring.c_str(), &st), 0) << "ring left behind";
}

TEST_F(StoriesShm, OnlyTheCallersUidCanMapItsRing) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run clients as others";
  const std::string self = dir_.Install("/proc/self/exe", "client");
  const std::string flashctl = dir_.Install(FLASHCTL_BINARY, "flashctl");
  // The socket is 0660 root's: another user cannot even connect.
  struct stat st;
  ASSERT_EQ(::stat(socket_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  DaemonProcess outsider;
  outsider.set_user(kOther);
  outsider.Spawn(flashctl, {"--socket", socket_, "health"}, TempPath("outsider.log"));
  EXPECT_EQ(outsider.WaitExit(std::chrono::seconds(30)), 1);
  EXPECT_NE(outsider.log().find("permission denied"), std::string::npos)
      << outsider.log();

  ASSERT_EQ(::chmod(socket_.c_str(), 0666), 0);  // now let others in
  DaemonProcess owner;
  owner.set_user(kNobody);
  owner.Spawn(self, {}, TempPath("owner.log"),
              {"FLASHD_TEST_RING_CLIENT=" + socket_ + "," + (dir_ / ""),
               "TMPDIR=" + (dir_ / "")});
  std::string name, id;
  for (int i = 0; i < 3000 && name.empty(); ++i) {
    const std::string log = owner.log();
    const size_t at = log.find("RING ");
    if (at != std::string::npos && log.find('\n', at) != std::string::npos) {
      std::vector<std::string> f = absl::StrSplit(
          log.substr(at, log.find('\n', at) - at), ' ');
      name = f[1];
      id = f[2];
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_FALSE(name.empty()) << owner.log();
  ASSERT_EQ(::stat(name.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kNobody);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  DaemonProcess probe;  // another user: refused
  probe.set_user(kOther);
  probe.Spawn(self, {}, TempPath("probe.log"),
              {"FLASHD_TEST_RING_PROBE=" + name + "," + id,
               "TMPDIR=" + (dir_ / "")});
  EXPECT_EQ(probe.WaitExit(std::chrono::seconds(30)), 0) << probe.log();

  std::ofstream(dir_ / "go").put('\n');
  ASSERT_EQ(owner.WaitExit(std::chrono::seconds(60)), 0) << owner.log();
  const std::vector<int32_t> golden =
      ReadIds(SharedPath("golden/stories260K_greedy_dog.ids"));
  const std::string log = owner.log();
  ASSERT_NE(log.find("IDS"), std::string::npos) << log;
  const std::string ids_line = log.substr(log.find("IDS"));
  std::vector<std::string> got = absl::StrSplit(
      ids_line.substr(0, ids_line.find('\n')), ' ', absl::SkipEmpty());
  ASSERT_GT(got.size(), 10u) << log;
  for (size_t i = 1; i < got.size(); ++i) {
    EXPECT_EQ(std::stoi(got[i]), golden[golden.size() - (got.size() - 1) + i - 1]);
  }
  EXPECT_NE(log.find("STREAM TOKENS 0 DONE 1"), std::string::npos) << log;
  // Attached: the daemon unlinks the name at its next sweep (<= 1 s).
  const v1::Stats s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.shm_segments() == 0;
  });
  EXPECT_EQ(s.shm_segments(), 0u);
  EXPECT_NE(::stat(name.c_str(), &st), 0) << "ring left behind";
}

// tl-small converted to .flash, served in flash mode at 60% of the file
// with the neuron cache in a shared-memory segment of this test's own.
class FlashShm : public ::testing::Test {
 protected:
  void TearDown() override { ::unlink(CachePath().c_str()); }
  std::string CachePath() const { return testing::DaemonShmDir() + "/" + cache_; }
  void SetUp() override {
    cache_ = absl::StrCat("flashd-test-cache-", ::getpid());
    ::unlink(CachePath().c_str());
    FLASHD_REQUIRE_SHARED(SharedPath("models/tl-small-Q8_0.gguf"));
    flash_ = TempPath("tl-small.flash");
    DaemonProcess convert;
    convert.Spawn(FLASHD_BINARY,
                  {"convert", SharedPath("models/tl-small-Q8_0.gguf"), "--out", flash_},
                  TempPath("convert.log"));
    ASSERT_EQ(convert.WaitExit(std::chrono::seconds(60)), 0) << convert.log();
    socket_ = TempPath("flashd.sock");
  }

  void Start(DaemonProcess& d, const std::string& log,
             const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {
        "serve", "--model", flash_, "--mode", "flash", "--dram-budget", "60%",
        "--threads", "1", "--ctx", "2048", "--max-sessions", "8",
        "--cache-shm", cache_, "--socket", socket_};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_TRUE(d.Start(FLASHD_BINARY, args, TempPath(log), "unix:" + socket_))
        << d.log();
    stub_ = v1::Flashd::NewStub(d.channel());
  }

  std::string cache_;
  std::string flash_;
  std::string socket_;
  std::unique_ptr<v1::Flashd::Stub> stub_;
};

TEST_F(FlashShm, EightClientProcessesDecodeTogether) {
  DaemonProcess daemon;
  Start(daemon, "daemon.log");
  std::vector<std::unique_ptr<DaemonProcess>> clients;
  for (int i = 0; i < 8; ++i) {
    clients.push_back(std::make_unique<DaemonProcess>());
    clients.back()->Spawn(
        FLASHCTL_BINARY,
        {"--socket", socket_, "generate", "--prompt", "Hello", "--temperature",
         "1", "--seed", std::to_string(i), "--max-tokens", "200", "--delivery",
         i % 2 == 0 ? "shm" : "stream"},
        TempPath(absl::StrCat("client", i, ".log")));
  }
  // All eight in one batch at some point, four of them through rings.
  const v1::Stats busy = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_active() == 8 && s.shm_segments() == 4;
  });
  EXPECT_EQ(busy.sessions_active(), 8);
  EXPECT_EQ(busy.shm_segments(), 4u);
  for (int i = 0; i < 8; ++i) {
    SCOPED_TRACE(i);
    ASSERT_EQ(clients[i]->WaitExit(std::chrono::seconds(120)), 0)
        << clients[i]->log();
    EXPECT_NE(clients[i]->log().find("200 tokens"), std::string::npos)
        << clients[i]->log();
  }
  const v1::Stats s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_active() == 0 && s.shm_segments() == 0;
  });
  EXPECT_EQ(s.kv_bytes_in_use(), 0u);
  EXPECT_EQ(s.shm_segments(), 0u);
  EXPECT_EQ(s.tokens_generated(), 1600u);
  EXPECT_EQ(RingsOf(daemon.pid()), 0);
}

TEST_F(FlashShm, AKilledShmClientFreesSessionKvAndRing) {
  DaemonProcess daemon;
  Start(daemon, "daemon.log");
  DaemonProcess client;
  client.Spawn("/proc/self/exe", {}, TempPath("client.log"),
               {"FLASHD_TEST_LONG_CLIENT=" + socket_,
                "TMPDIR=" + ::testing::TempDir()});  // cleaned up with ours
  v1::Stats s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.shm_segments() == 1 && s.tokens_generated() > 0;
  });
  ASSERT_EQ(s.shm_segments(), 1u) << client.log();
  client.Kill();
  s = WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_active() == 0 && s.shm_segments() == 0;
  });
  EXPECT_EQ(s.sessions_active(), 0);
  EXPECT_EQ(s.kv_bytes_in_use(), 0u);
  EXPECT_EQ(s.shm_segments(), 0u);
  EXPECT_EQ(RingsOf(daemon.pid()), 0);
}

// Another user took the daemon's shared-memory directory first (world
// writable, holding a planted cache segment and an flock on it): the
// daemon still starts, never touches their files, serves shared-memory
// delivery from a fresh directory of its own and says why.
TEST_F(FlashShm, ASquattedShmDirIsNeverUsed) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to plant another user's files";
  const std::string squat = shm::TestShmDir()->PathOf("squatted");
  ASSERT_EQ(::mkdir(squat.c_str(), 0777), 0);
  ASSERT_EQ(::chmod(squat.c_str(), 0777), 0);
  ASSERT_EQ(::chown(squat.c_str(), kOther, kOther), 0);
  const std::string planted = squat + "/" + cache_;
  { std::ofstream(planted) << "their bytes"; }
  ASSERT_EQ(::chmod(planted.c_str(), 0666), 0);
  ASSERT_EQ(::chown(planted.c_str(), kOther, kOther), 0);
  const int holder = ::open(planted.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(holder, 0);
  ASSERT_EQ(::flock(holder, LOCK_EX | LOCK_NB), 0);

  DaemonProcess daemon;
  Start(daemon, "daemon.log", {"--shm-dir", squat});
  const v1::Stats s = GetStats(*stub_);
  EXPECT_EQ(s.shm_dir().rfind(squat + ".", 0), 0u) << s.shm_dir();
  EXPECT_NE(s.shm_dir_state().find("belongs to uid " + std::to_string(kOther)),
            std::string::npos)
      << s.shm_dir_state();
  EXPECT_EQ(s.cache_segment_state(), "created");
  EXPECT_NE(daemon.log().find("not used; using " + s.shm_dir()),
            std::string::npos)
      << daemon.log();
  absl::StatusOr<std::unique_ptr<client::Client>> c =
      client::Client::Connect("unix:" + socket_);
  ASSERT_TRUE(c.ok()) << c.status();
  std::string ring;
  int n = 0;
  EXPECT_TRUE((*c)->Generate(Request("Hello", 20, v1::SHARED_MEMORY, 1),
                             [&](const v1::GenerateEvent& e) {
                               if (e.has_started()) ring = e.started().shm_path();
                               n += e.has_token();
                               return true;
                             })
                  .ok());
  EXPECT_EQ(n, 20);
  EXPECT_EQ(ring.rfind(s.shm_dir() + "/", 0), 0u) << ring;
  std::ifstream f(planted);
  std::string after;
  std::getline(f, after);
  EXPECT_EQ(after, "their bytes");
  struct stat st;
  ASSERT_EQ(::stat(planted.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kOther);
  ::close(holder);
}

TEST_F(FlashShm, DaemonKilledUnderLoadThenRestartedWarm) {
  auto daemon = std::make_unique<DaemonProcess>();
  Start(*daemon, "daemon1.log");
  const v1::Stats first = GetStats(*stub_);
  EXPECT_EQ(first.cache_segment_state(), "created") << daemon->log();
  ASSERT_FALSE(first.cache_segment().empty());

  // Four clients (two per delivery path) generating when the daemon dies.
  std::vector<absl::Status> results(4);
  std::atomic<int> tokens{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<std::unique_ptr<client::Client>> c =
          client::Client::Connect("unix:" + socket_);
      if (!c.ok()) {
        results[i] = c.status();
        return;
      }
      results[i] = (*c)->Generate(
          Request("Hello", 1500, i % 2 ? v1::STREAM : v1::SHARED_MEMORY, 1),
          [&](const v1::GenerateEvent& e) {
            tokens += e.has_token();
            return true;
          });
    });
  }
  WaitForStats(*stub_, [](const v1::Stats& s) {
    return s.sessions_active() == 4 && s.tokens_generated() > 40;
  });
  ASSERT_GT(tokens.load(), 0);
  daemon->Kill();  // SIGKILL: no drain, no cleanup
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(results[i].code(), absl::StatusCode::kUnavailable) << results[i];
  }

  daemon = std::make_unique<DaemonProcess>();  // the same settings again
  Start(*daemon, "daemon2.log");
  const v1::Stats warm = GetStats(*stub_);
  EXPECT_EQ(warm.cache_segment(), first.cache_segment());
  EXPECT_EQ(warm.cache_segment_state(), "attached (warm)") << daemon->log();
  EXPECT_GT(warm.cache_warm_neurons(), 0u);
  for (v1::Delivery d : {v1::SHARED_MEMORY, v1::STREAM}) {
    absl::StatusOr<std::unique_ptr<client::Client>> c =
        client::Client::Connect("unix:" + socket_);
    ASSERT_TRUE(c.ok()) << c.status();
    int n = 0;
    EXPECT_TRUE((*c)->Generate(Request("Hello", 20, d, 1),
                               [&](const v1::GenerateEvent& e) {
                                 n += e.has_token();
                                 return true;
                               })
                    .ok());
    EXPECT_EQ(n, 20);
  }
  const v1::Stats after = GetStats(*stub_);
  EXPECT_GT(after.cache_hit_rate(), 0);
}

}  // namespace
}  // namespace flashd
