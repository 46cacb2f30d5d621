// Runs the real `flashd serve` binary for out-of-process tests: starts it
// on a socket, waits until the standard health check answers SERVING, and
// always kills it in the destructor. Header-only (inline) so any test can
// include it.
#ifndef FLASHD_TESTS_DAEMON_PROCESS_H_
#define FLASHD_TESTS_DAEMON_PROCESS_H_

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "flashd/v1/flashd.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/shm_test_dir.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace flashd::testing {

// The --shm-dir every `flashd serve` a test spawns uses unless the test
// names one: under this test process's own shared-memory directory, so
// parallel tests keep apart and nothing outlives the test.
inline std::string DaemonShmDir() {
  return shm::TestShmDir()->PathOf("daemon");
}

// grpc.health.v1.Health/Check through the generic stub (Debian ships no
// health.proto): returns the ServingStatus (1 = SERVING, 2 = NOT_SERVING),
// or -1 with the RPC failed.
inline int HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                       const std::string& service,
                       std::chrono::milliseconds timeout =
                           std::chrono::milliseconds(2000)) {
  std::string request;
  if (!service.empty()) {  // field 1 (string): tag 0x0a, length, bytes
    request.push_back('\x0a');
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1);
  grpc::ByteBuffer resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::GenericStub stub(channel);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &req, &resp, [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = std::move(s);
                   done = true;
                   cv.notify_all();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!resp.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  if (bytes.empty()) return 0;  // UNKNOWN (the default value)
  if (bytes.size() == 2 && bytes[0] == '\x08') return bytes[1];
  return -1;
}

class DaemonProcess {
 public:
  DaemonProcess() = default;
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;
  ~DaemonProcess() { Kill(); }

  // Runs the next Spawn as user (and group) `uid` instead of ours (we must
  // be root).
  void set_user(uid_t uid) { user_ = uid; }

  // Starts `binary args...` with stdout and stderr in `log_path` and
  // "NAME=value" entries of `env` added to this process's environment.
  void Spawn(const std::string& binary, const std::vector<std::string>& args,
             const std::string& log_path,
             const std::vector<std::string>& env = {}) {
    log_path_ = log_path;
    std::vector<std::string> argv_s = {binary};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    if (!args.empty() && args[0] == "serve" &&
        std::find(args.begin(), args.end(), "--shm-dir") == args.end()) {
      argv_s.push_back("--shm-dir");
      argv_s.push_back(DaemonShmDir());
    }
    std::vector<char*> argv;
    for (std::string& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_s = env;
    std::vector<char*> envp;
    for (std::string& e : env_s) envp.push_back(e.data());
    for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
    envp.push_back(nullptr);
    // Between fork and exec only async-signal-safe calls.
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      if (user_.has_value() &&
          (::setgroups(0, nullptr) != 0 || ::setgid(*user_) != 0 ||
           ::setuid(*user_) != 0)) {
        ::_exit(126);
      }
      ::execve(binary.c_str(), argv.data(), envp.data());
      ::_exit(127);
    }
  }

  // Spawns and waits until `address` answers SERVING; false (see log())
  // when the process exits first or `timeout` passes.
  bool Start(const std::string& binary, const std::vector<std::string>& args,
             const std::string& log_path, const std::string& address,
             const std::vector<std::string>& env = {},
             std::chrono::seconds timeout = std::chrono::seconds(60)) {
    Spawn(binary, args, log_path, env);
    // Retry connecting every 50 ms (gRPC's default backoff starts at 1 s).
    grpc::ChannelArguments channel_args;
    channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
    channel_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
    channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
    channel_ = grpc::CreateCustomChannel(
        address, grpc::InsecureChannelCredentials(), channel_args);
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (WaitExit(std::chrono::milliseconds(0)).has_value()) return false;
      if (HealthCheck(channel_, "", std::chrono::milliseconds(500)) == 1) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // Sends `sig` to the daemon (if it still runs).
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // The exit code (128 + signal when killed) once the process has exited
  // within `timeout`; nullopt while it runs.
  std::optional<int> WaitExit(std::chrono::milliseconds timeout) {
    if (exit_code_.has_value() || pid_ <= 0) return exit_code_;
    const auto end = std::chrono::steady_clock::now() + timeout;
    do {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status)
                                       : 128 + WTERMSIG(status);
        pid_ = -1;
        return exit_code_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } while (std::chrono::steady_clock::now() < end);
    return std::nullopt;
  }

  // SIGKILL and reap, if it still runs.
  void Kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      WaitExit(std::chrono::milliseconds(10000));
    }
  }

  std::string log() const {
    std::ifstream in(log_path_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // The process id while it runs (-1 once reaped).
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::optional<uid_t> user_;
  std::optional<int> exit_code_;
  std::string log_path_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Sets a deadline `seconds` from now on `ctx`.
// `name` in the test's temporary directory.
inline std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + name;
}

inline void SetDeadline(grpc::ClientContext* ctx, int seconds = 120) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(seconds));
}

// GetStats with a 10 s deadline (a failed call fails the test).
inline flashd::v1::Stats GetStats(flashd::v1::Flashd::Stub& stub) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 10);
  flashd::v1::Stats stats;
  EXPECT_TRUE(stub.GetStats(&ctx, flashd::v1::GetStatsRequest(), &stats).ok());
  return stats;
}

// grpc.reflection.v1alpha ServerReflectionInfo with list_services (field
// 7, empty): the raw response, which names every service.
// With `authorization`, sends it as that metadata. "" when the call fails.
inline std::string ListServices(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& authorization = "") {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 10);
  if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
  auto call = stub.PrepareCall(
      &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok = false;
  const auto step = [&] { return cq.Next(&tag, &ok) && ok; };
  call->StartCall(reinterpret_cast<void*>(1));
  if (!step()) return "";
  const std::string request("\x3a\x00", 2);
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1);
  call->Write(req, reinterpret_cast<void*>(2));
  if (!step()) return "";
  grpc::ByteBuffer resp;
  call->Read(&resp, reinterpret_cast<void*>(3));
  std::string out;
  if (step()) {
    std::vector<grpc::Slice> slices;
    (void)resp.Dump(&slices);
    for (const grpc::Slice& sl : slices) {
      out.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    }
  }
  ctx.TryCancel();
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return out;
}

// Polls GetStats until `pred` holds (up to 20 s); returns the last stats.
template <typename Pred>
flashd::v1::Stats WaitForStats(flashd::v1::Flashd::Stub& stub, Pred pred) {
  flashd::v1::Stats s = GetStats(stub);
  for (int i = 0; i < 2000 && !pred(s); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    s = GetStats(stub);
  }
  return s;
}

}  // namespace flashd::testing

#endif  // FLASHD_TESTS_DAEMON_PROCESS_H_
