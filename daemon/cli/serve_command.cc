// flashd serve: the daemon. Opens the engine once, serves it over gRPC on
// a Unix socket (and TCP when --listen is given) until SIGTERM/SIGINT, then
// drains. Settings come from flags and an optional --config file of
// "key = value" lines with the flags' names (flags override the file).
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/cli/commands.h"
#include "daemon/server/fd_limit.h"
#include "daemon/server/server.h"
#include "daemon/server/systemd_notify.h"

namespace flashd::cli {
namespace {

constexpr char kSummary[] =
    "Serves the model over gRPC (flashd.v1.Flashd, health, reflection) until\n"
    "SIGTERM or SIGINT, then lets running generations finish for\n"
    "--drain-timeout seconds. One inference thread decodes all sessions\n"
    "together: one batched forward pass per round for every decoding session.";

void AddServeFlags(Args& args) {
  args.Flag("config", "",
            "file of 'key = value' lines named like these flags (# comments); "
            "flags given here override it")
      .Flag("socket", "/run/flashd/flashd.sock",
            "Unix socket to listen on (mode 0660); '' for none")
      .Flag("listen", "",
            "also listen on TCP HOST:PORT (default: no TCP); needs TLS "
            "(--tls-cert, --tls-key) and/or --api-key-file, or --insecure-tcp")
      .Flag("tls-cert", "", "PEM certificate chain of the TCP port (TLS)")
      .Flag("tls-key", "", "PEM private key of --tls-cert")
      .Flag("tls-client-ca", "",
            "PEM CA bundle: TCP clients must present a certificate it signed "
            "(mutual TLS)")
      .Flag("api-key-file", "",
            "file holding the key TCP callers send as 'authorization: Bearer "
            "KEY' on every call; must be a regular file with no group/other "
            "access")
      .Switch("insecure-tcp",
              "serve --listen as plain TCP, unauthenticated: anyone who can "
              "reach the port may use the daemon")
      .Flag("max-prompt-bytes", "262144",
            "bytes of a Generate prompt, checked before tokenizing")
      .Flag("max-prompt-tokens", "0",
            "tokens of a Generate prompt; 0: --ctx - 1")
      .Flag("max-tokenize-bytes", "262144", "bytes of a Tokenize text")
      .Flag("max-detokenize-ids", "65536", "token ids of a Detokenize call")
      .Flag("max-stop-strings", "16", "stop strings of a Generate request")
      .Flag("max-stop-bytes", "256", "bytes of each stop string")
      .Flag("max-tokenize-jobs", "4",
            "prompts and Tokenize texts being tokenized or waiting for the "
            "tokenizer thread; one caller may hold half")
      .Flag("max-streams-per-uid", "16",
            "Generate streams open at once per uid (TCP callers: together)")
      .Flag("max-connections-per-uid", "64",
            "connections open at once per uid on the Unix socket")
      .Flag("max-connections", "1024",
            "connections open at once on the Unix socket, all uids")
      .Flag("handshake-timeout-ms", "10000",
            "a TCP connection that has not finished its TLS handshake and "
            "sent its HTTP/2 settings by then is closed")
      .Flag("idle-connection-timeout-ms", "300000",
            "a connection with no call for this long is closed (clients "
            "reconnect when they need to)")
      .Flag("max-sessions", "4", "sessions generating at once")
      .Flag("max-queue", "16",
            "requests waiting for a session; beyond: RESOURCE_EXHAUSTED")
      .Flag("kv-budget", "auto",
            "bytes for all sessions' KV caches (KiB/MiB/GiB); auto: 4 "
            "sessions of --ctx positions")
      .Flag("drain-timeout", "10",
            "seconds running generations may take to finish after SIGTERM "
            "before they are cancelled");
}

// "key = value" lines of `path` as "--key=value" arguments, each checked
// against the declared flags (errors name the file and line).
absl::StatusOr<std::vector<std::string>> ReadConfig(const std::string& path,
                                                    const Args& declared) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open --config ", path));
  std::vector<std::string> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const std::string where = absl::StrCat(path, ":", n, ": ");
    std::string text = std::string(absl::StripAsciiWhitespace(line));
    if (text.empty() || text[0] == '#') continue;
    const size_t eq = text.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "expected 'key = value', got '", text, "'"));
    }
    const std::string key(absl::StripAsciiWhitespace(text.substr(0, eq)));
    std::string value(absl::StripAsciiWhitespace(text.substr(eq + 1)));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (key == "config" || key == "help") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "'", key, "' cannot be set in a config file"));
    }
    std::string arg = absl::StrCat("--", key, "=", value);
    Args probe = declared;
    char* argv[] = {arg.data()};
    if (absl::Status s = probe.Parse(1, argv, 0); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, s.message()));
    }
    out.push_back(std::move(arg));
  }
  return out;
}

// The --config value in argv, if any.
std::string FindConfigPath(int argc, char** argv) {
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) return argv[i + 1];
    if (a.rfind("--config=", 0) == 0) return a.substr(9);
  }
  return "";
}

absl::StatusOr<server::ServerOptions> ServerOptionsFromArgs(
    const Args& args, const Engine& engine) {
  server::ServerOptions o;
  o.socket_path = args.Get("socket");
  o.listen = args.Get("listen");
  o.tcp.tls_cert = args.Get("tls-cert");
  o.tcp.tls_key = args.Get("tls-key");
  o.tcp.tls_client_ca = args.Get("tls-client-ca");
  o.tcp.api_key_file = args.Get("api-key-file");
  o.tcp.insecure = args.GetSwitch("insecure-tcp");
  if (o.listen.empty() && (!o.tcp.tls_cert.empty() || !o.tcp.tls_key.empty() ||
                           !o.tcp.tls_client_ca.empty() ||
                           !o.tcp.api_key_file.empty() || o.tcp.insecure)) {
    return absl::InvalidArgumentError(
        "--tls-cert, --tls-key, --tls-client-ca, --api-key-file and "
        "--insecure-tcp apply to --listen HOST:PORT, which is not given");
  }
  const int32_t n_ctx = engine.forward->n_ctx();
  struct IntFlag {
    const char* name;
    int64_t min, max;
    int64_t* out;
  };
  int64_t prompt_bytes, prompt_tokens, tokenize_bytes, detokenize_ids,
      stop_strings, stop_bytes, tokenize_jobs, streams, conns_uid, conns,
      handshake_ms, idle_ms;
  const IntFlag ints[] = {
      {"max-prompt-bytes", 1, int64_t{1} << 30, &prompt_bytes},
      {"max-prompt-tokens", 0, n_ctx, &prompt_tokens},
      {"max-tokenize-bytes", 1, int64_t{1} << 30, &tokenize_bytes},
      {"max-detokenize-ids", 1, int64_t{1} << 26, &detokenize_ids},
      {"max-stop-strings", 0, 1024, &stop_strings},
      {"max-stop-bytes", 1, 65536, &stop_bytes},
      {"max-tokenize-jobs", 1, 1024, &tokenize_jobs},
      {"max-streams-per-uid", 1, 1 << 20, &streams},
      {"max-connections-per-uid", 1, 1 << 20, &conns_uid},
      {"max-connections", 1, 1 << 20, &conns},
      {"handshake-timeout-ms", 100, 600000, &handshake_ms},
      {"idle-connection-timeout-ms", 1000, int64_t{1} << 30, &idle_ms},
  };
  for (const IntFlag& f : ints) {
    absl::StatusOr<int64_t> got = args.GetInt(f.name, f.min, f.max);
    if (!got.ok()) return got.status();
    *f.out = *got;
  }
  server::RequestLimits& r = o.limits.request;
  r.max_prompt_bytes = prompt_bytes;
  r.max_prompt_tokens = static_cast<int32_t>(prompt_tokens);
  r.max_tokenize_bytes = tokenize_bytes;
  r.max_detokenize_ids = static_cast<int32_t>(detokenize_ids);
  r.max_stop_strings = static_cast<int32_t>(stop_strings);
  r.max_stop_bytes = static_cast<int32_t>(stop_bytes);
  o.limits.max_tokenize_jobs = static_cast<int32_t>(tokenize_jobs);
  o.limits.max_streams_per_uid = static_cast<int32_t>(streams);
  o.connections.per_uid = static_cast<int32_t>(conns_uid);
  o.connections.total = static_cast<int32_t>(conns);
  o.handshake_timeout_ms = static_cast<int32_t>(handshake_ms);
  o.idle_connection_timeout_ms = static_cast<int32_t>(idle_ms);
  absl::StatusOr<int64_t> v = args.GetInt("max-sessions", 1, 1024);
  if (!v.ok()) return v.status();
  o.scheduler.max_sessions = static_cast<int32_t>(*v);
  if (v = args.GetInt("max-queue", 0, 1 << 20); !v.ok()) return v.status();
  o.scheduler.max_queue = static_cast<int32_t>(*v);
  const uint64_t per_session = KvCache::BytesFor(
      engine.forward->config(), engine.forward->n_ctx(), engine.kv->type());
  const std::string kv = args.Get("kv-budget");
  if (kv == "auto") {
    o.scheduler.kv_budget = 4 * per_session;
  } else {
    absl::StatusOr<uint64_t> b = flash::ParseBudget(kv, 0);
    if (!b.ok() || kv.back() == '%') {
      return absl::InvalidArgumentError(absl::StrCat(
          "--kv-budget '", kv, "' is not a size: use bytes, KiB/MiB/GiB or auto"));
    }
    o.scheduler.kv_budget = *b;
  }
  return o;
}

}  // namespace

int ServeCommand(int argc, char** argv) {
  // Signals are taken by sigtimedwait below: block them before any thread
  // (engine pool, gRPC) starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  const auto t0 = std::chrono::steady_clock::now();

  Args args;
  AddEngineFlags(args, /*daemon=*/true);
  AddServeFlags(args);
  std::vector<std::string> merged = {argv[0], argv[1]};
  if (const std::string config = FindConfigPath(argc, argv); !config.empty()) {
    absl::StatusOr<std::vector<std::string>> lines = ReadConfig(config, args);
    if (!lines.ok()) return Fail("serve", lines.status());
    merged.insert(merged.end(), lines->begin(), lines->end());
  }
  for (int i = 2; i < argc; ++i) merged.push_back(argv[i]);
  std::vector<char*> merged_argv;
  for (std::string& a : merged) merged_argv.push_back(a.data());
  int code = 0;
  if (!ParseOrExit(args, "serve", kSummary, static_cast<int>(merged_argv.size()),
                   merged_argv.data(), &code)) {
    return code;
  }
  absl::StatusOr<double> drain = args.GetDouble("drain-timeout");
  if (!drain.ok()) return Fail("serve", drain.status());
  if (*drain < 0) {
    return Fail("serve", absl::InvalidArgumentError("--drain-timeout must be >= 0"));
  }

  absl::StatusOr<Engine> engine = OpenEngine(args);
  if (!engine.ok()) return Fail("serve", engine.status());
  absl::StatusOr<server::ServerOptions> options =
      ServerOptionsFromArgs(args, *engine);
  if (!options.ok()) return Fail("serve", options.status());

  const std::string model_path = args.Get("model");
  server::ServedModel model;
  model.forward = engine->forward.get();
  model.tokenizer = engine->loaded.tokenizer.get();
  model.source = engine->source.get();
  model.kv_type = engine->kv->type();
  model.n_ctx = engine->forward->n_ctx();
  model.name = engine->loaded.model->name;
  if (model.name.empty()) {  // llama2.c checkpoints have none: the file stem
    model.name = model_path.substr(model_path.rfind('/') + 1);
    model.name = model.name.substr(0, model.name.find('.'));
  }
  model.path = model_path;
  model.type = engine->loaded.model->type_name;
  model.mode = flash::ModeName(engine->mode);
  model.sparsity = engine->sparsity_desc;
  model.dram_budget = engine->dram_budget;
  if (engine->shm_dir == nullptr) {  // no cache segment: the rings need one
    absl::StatusOr<std::shared_ptr<const shm::ShmDir>> dir = OpenShmDir(args);
    if (!dir.ok()) return Fail("serve", dir.status());
    engine->shm_dir = *dir;
  }
  model.shm_dir = engine->shm_dir;
  engine->kv.reset();  // the server gives every session its own

  // Flash mode: where the neuron cache lives and whether it started warm
  // (read before the server's inference thread starts using the source).
  std::string cache;
  if (engine->mode == flash::Mode::kFlash && engine->source != nullptr) {
    const flash::FlashSource& src = *engine->source;
    if (!src.cache_segment().empty()) {
      cache = absl::StrFormat("; neuron cache %s (%s, %d neurons)",
                              model.shm_dir->PathOf(src.cache_segment()),
                              src.cache_segment_state(),
                              src.stats().warm_neurons);
    } else {
      cache = src.cache_segment_state().empty()
                  ? "; neuron cache in private memory"
                  : absl::StrCat("; neuron cache in ",
                                 src.cache_segment_state());
    }
  }
  const server::FdLimit fds = server::RaiseFdLimit(server::FdsNeeded(*options));
  absl::StatusOr<std::unique_ptr<server::Server>> srv =
      server::Server::Start(model, *options);
  if (!srv.ok()) return Fail("serve", srv.status());
  server::SystemdNotifier notifier;
  // --listen with the port it got (port 0 picks a free one).
  std::string tcp = options->listen;
  if (const size_t colon = tcp.rfind(':');
      colon != std::string::npos && (*srv)->tcp_port() > 0) {
    tcp = absl::StrCat(tcp.substr(0, colon + 1), (*srv)->tcp_port(),
                       options->tcp.insecure ? " (plain TCP, unauthenticated)"
                       : options->tcp.tls_cert.empty() ? " (API key)"
                       : options->tcp.tls_client_ca.empty()
                           ? (options->tcp.api_key_file.empty() ? " (TLS)"
                                                                : " (TLS, API key)")
                           : (options->tcp.api_key_file.empty()
                                  ? " (mutual TLS)"
                                  : " (mutual TLS, API key)"));
  }
  const double ready_ms = std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - t0)
                              .count();
  const std::string status = absl::StrFormat(
      "listening on %s%s; model %s (%s, mode %s), ctx %d, up to %d sessions, "
      "KV budget %.1f MiB%s; ready in %.0f ms",
      options->socket_path.empty() ? tcp : (*srv)->address(),
      options->listen.empty() || options->socket_path.empty()
          ? ""
          : absl::StrCat(" and ", tcp),
      model.path, model.type, model.mode, model.n_ctx,
      options->scheduler.max_sessions,
      options->scheduler.kv_budget / 1048576.0, cache, ready_ms);
  std::fprintf(stderr,
               "flashd serve: descriptor limit %llu (the limits need %llu; "
               "hard limit %llu)%s\n",
               static_cast<unsigned long long>(fds.soft),
               static_cast<unsigned long long>(fds.wanted),
               static_cast<unsigned long long>(fds.hard),
               fds.soft < fds.wanted
                   ? ": lower --max-connections or raise LimitNOFILE"
                   : "");
  std::fprintf(stderr, "flashd serve: %s\n", status.c_str());
  notifier.Ready(status);

  // Wait for a signal; ping the watchdog while the inference thread makes
  // progress (a thread stuck in one step longer than the timeout is not
  // pinged for, so systemd restarts the service).
  const auto tick = notifier.watchdog_enabled()
                        ? std::chrono::duration_cast<std::chrono::milliseconds>(
                              notifier.ping_interval())
                        : std::chrono::milliseconds(1000);
  int sig = 0;
  while (sig <= 0) {
    timespec ts{static_cast<time_t>(tick.count() / 1000),
                static_cast<long>((tick.count() % 1000) * 1000000)};
    sig = sigtimedwait(&signals, nullptr, &ts);
    const double timeout_s =
        std::chrono::duration<double>(notifier.watchdog_timeout()).count();
    if (notifier.watchdog_enabled() &&
        (*srv)->scheduler().SecondsSinceProgress() < timeout_s) {
      notifier.Watchdog();
    }
  }
  const std::string stopping = absl::StrFormat(
      "%s: draining (up to %g s)", sig == SIGTERM ? "SIGTERM" : "SIGINT", *drain);
  std::fprintf(stderr, "flashd serve: %s\n", stopping.c_str());
  notifier.Stopping(stopping);
  // Drain on another thread so the watchdog keeps being fed meanwhile.
  std::atomic<bool> drained{false};
  std::thread drainer([&] {
    (*srv)->Shutdown(
        std::chrono::milliseconds(static_cast<int64_t>(*drain * 1000)));
    drained = true;
  });
  auto last_ping = std::chrono::steady_clock::now();
  while (!drained) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (notifier.watchdog_enabled() &&
        std::chrono::steady_clock::now() - last_ping >= tick) {
      notifier.Watchdog();
      last_ping = std::chrono::steady_clock::now();
    }
  }
  drainer.join();
  std::fprintf(stderr, "flashd serve: stopped\n");
  return 0;
}

}  // namespace flashd::cli
