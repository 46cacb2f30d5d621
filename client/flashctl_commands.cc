#include "client/flashctl_commands.h"

#include <istream>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "client/flashctl_flags.h"
#include "client/flashctl_print.h"

namespace flashd::client {
namespace {

constexpr char kUsage[] =
    "usage: flashctl [--socket PATH | --target T] [--connect-timeout SEC]\n"
    "                [--tls-ca PEM [--tls-cert PEM --tls-key PEM]]\n"
    "                [--api-key-file FILE] COMMAND [flags]\n"
    "  generate --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K]\n"
    "           [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S] "
    "[--stop S]...\n"
    "  chat [--system TEXT] [--max-tokens N] [--temperature T] [--seed S]\n"
    "  (generate, chat: --delivery auto|stream|shm; auto is shm on a Unix\n"
    "   socket, falling back to the stream when the daemon cannot give\n"
    "   this user a ring)\n"
    "  tokenize TEXT [--bos]     detokenize ID...\n"
    "  info | stats | health [--service NAME]\n"
    "The default target is unix:/run/flashd/flashd.sock; --target takes\n"
    "host:port or unix:PATH. A TCP port may need TLS (--tls-ca: the CA of\n"
    "the daemon's certificate; --tls-cert/--tls-key: ours, for mutual TLS)\n"
    "and/or the daemon's API key (--api-key-file). Exit codes: 0 ok, 1 error, 2 usage, 130 "
    "interrupted.\n";

// Sampling and length flags shared by generate and chat.
const FlagSpec kSamplingFlags = {
    {"max-tokens", true}, {"temperature", true},   {"top-k", true},
    {"top-p", true},      {"min-p", true},         {"repeat-penalty", true},
    {"seed", true},       {"repeat-last-n", true}, {"delivery", true},
};

int Usage(const FlashctlIo& io, const std::string& message) {
  *io.err << "flashctl: " << message
          << " (flashctl --help lists the commands and flags)\n";
  return kExitUsage;
}

int Fail(const FlashctlIo& io, const absl::Status& status) {
  *io.err << "flashctl: " << status.message() << "\n";
  return kExitRuntime;
}

// Fills the request's max_tokens and sampling from flags.
absl::Status ApplySampling(const ParsedFlags& f, v1::GenerateRequest* r) {
  if (f.Has("max-tokens")) {
    absl::StatusOr<int64_t> v = f.Int("max-tokens", 1, 1 << 30);
    if (!v.ok()) return v.status();
    r->set_max_tokens(static_cast<int32_t>(*v));
  }
  v1::SamplingParams* s = r->mutable_sampling();
  struct FloatFlag {
    const char* name;
    void (v1::SamplingParams::*set)(float);
  };
  for (const FloatFlag& ff :
       {FloatFlag{"temperature", &v1::SamplingParams::set_temperature},
        FloatFlag{"top-p", &v1::SamplingParams::set_top_p},
        FloatFlag{"min-p", &v1::SamplingParams::set_min_p},
        FloatFlag{"repeat-penalty", &v1::SamplingParams::set_repeat_penalty}}) {
    if (!f.Has(ff.name)) continue;
    absl::StatusOr<double> v = f.Double(ff.name);
    if (!v.ok()) return v.status();
    (s->*ff.set)(static_cast<float>(*v));
  }
  if (f.Has("top-k")) {
    absl::StatusOr<int64_t> v = f.Int("top-k", 0, 1 << 30);
    if (!v.ok()) return v.status();
    s->set_top_k(static_cast<int32_t>(*v));
  }
  if (f.Has("repeat-last-n")) {
    absl::StatusOr<int64_t> v = f.Int("repeat-last-n", 0, 1 << 30);
    if (!v.ok()) return v.status();
    s->set_repeat_last_n(static_cast<int32_t>(*v));
  }
  if (f.Has("seed")) {
    uint64_t seed = 0;
    if (!absl::SimpleAtoi(f.Value("seed"), &seed)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--seed: expected an unsigned integer, got \"",
                       f.Value("seed"), "\""));
    }
    s->set_seed(seed);
  }
  return absl::OkStatus();
}

absl::Status GenerateOnce(Client& client, const v1::GenerateRequest& request,
                          const FlashctlIo& io, bool strip_leading_space,
                          std::string* text, v1::Done* done);

// Streams one Generate: token text to io.out as it arrives. *done gets the
// Done event. A shared-memory request that `auto` chose and the daemon
// refuses before any token (no ring for this user) is retried in the stream.
absl::Status StreamGenerate(Client& client, const v1::GenerateRequest& request,
                            const FlashctlIo& io, bool strip_leading_space,
                            std::string* text, v1::Done* done) {
  absl::Status s =
      GenerateOnce(client, request, io, strip_leading_space, text, done);
  const bool refused = s.code() == absl::StatusCode::kPermissionDenied ||
                       s.code() == absl::StatusCode::kFailedPrecondition;
  if (refused && text->empty() && io.auto_delivery &&
      request.delivery() == v1::SHARED_MEMORY) {
    *io.err << "flashctl: no shared-memory ring (" << s.message()
            << "); tokens come in the stream\n";
    v1::GenerateRequest retry = request;
    retry.set_delivery(v1::STREAM);
    s = GenerateOnce(client, retry, io, strip_leading_space, text, done);
  }
  return s;
}

absl::Status GenerateOnce(Client& client, const v1::GenerateRequest& request,
                          const FlashctlIo& io, bool strip_leading_space,
                          std::string* text, v1::Done* done) {
  bool at_start = strip_leading_space;
  return client.Generate(
      request,
      [&](const v1::GenerateEvent& event) {
        if (event.has_token()) {
          absl::string_view piece = event.token().text();
          if (at_start) {
            piece = absl::StripLeadingAsciiWhitespace(piece);
            at_start = piece.empty();
          }
          io.out->write(piece.data(),
                        static_cast<std::streamsize>(piece.size()));
          io.out->flush();
          text->append(piece.data(), piece.size());
        } else if (event.has_done()) {
          *done = event.done();
        }
        return true;
      },
      io.cancel);
}

bool Interrupted(const FlashctlIo& io, const absl::Status& status) {
  return status.code() == absl::StatusCode::kCancelled &&
         io.cancel != nullptr && io.cancel->cancelled();
}

int GenerateCommand(Client& client, const v1::GenerateRequest& request,
                    const FlashctlIo& io) {
  std::string text;
  v1::Done done;
  absl::Status status =
      StreamGenerate(client, request, io, false, &text, &done);
  if (status.ok() || !text.empty()) {
    *io.out << "\n";
    io.out->flush();
  }
  if (Interrupted(io, status)) {
    *io.err << "flashctl: interrupted\n";
    return kExitInterrupted;
  }
  if (!status.ok()) return Fail(io, status);
  *io.err << FormatTimings(done) << "\n";
  return kExitOk;
}

int ChatCommand(Client& client, const v1::GenerateRequest& base,
                const std::string& system, const FlashctlIo& io) {
  std::string transcript;
  std::string line;
  while (true) {
    if (io.interactive) *io.err << "> " << std::flush;
    if (!std::getline(*io.in, line)) break;
    line = std::string(absl::StripAsciiWhitespace(line));
    if (line.empty()) continue;
    v1::GenerateRequest request = base;
    const std::string prompt = ChatPrompt(system, transcript, line);
    request.set_prompt(prompt);
    std::string reply;
    v1::Done done;
    absl::Status status =
        StreamGenerate(client, request, io, true, &reply, &done);
    *io.out << "\n";
    io.out->flush();
    if (Interrupted(io, status)) {
      *io.err << "(interrupted)\n";
      io.cancel->Reset();
    } else if (!status.ok()) {
      return Fail(io, status);
    } else if (done.reason() == v1::CONTEXT_FULL) {
      *io.err << "(context full: starting a new conversation)\n";
      transcript.clear();
      continue;
    } else if (io.interactive) {
      *io.err << "[" << FormatTimings(done) << "]\n";
    }
    transcript = absl::StrCat(prompt, " ",
                              absl::StripTrailingAsciiWhitespace(reply), "\n");
  }
  return kExitOk;
}

}  // namespace

std::string ChatPrompt(const std::string& system, const std::string& transcript,
                       const std::string& user_line) {
  return absl::StrCat(system.empty() ? "" : system + "\n", transcript,
                      "User: ", user_line, "\nAssistant:");
}

int RunFlashctl(const std::vector<std::string>& args, const FlashctlIo& io) {
  absl::StatusOr<ParsedFlags> global = ParseFlags(args, 0,
                                                  {{"socket", true},
                                                   {"target", true},
                                                   {"connect-timeout", true},
                                                   {"tls-ca", true},
                                                   {"tls-cert", true},
                                                   {"tls-key", true},
                                                   {"api-key-file", true},
                                                   {"help", false}},
                                                  /*stop_at_positional=*/true);
  if (!global.ok()) return Usage(io, std::string(global.status().message()));
  if (global->Has("help")) {
    *io.out << kUsage;
    return kExitOk;
  }
  if (global->positional.empty()) {
    *io.err << "flashctl: no command given\n" << kUsage;
    return kExitUsage;
  }
  if (global->Has("socket") && global->Has("target")) {
    return Usage(io, "give --socket or --target, not both");
  }
  std::string target = kDefaultTarget;
  if (global->Has("socket")) target = "unix:" + global->Value("socket");
  if (global->Has("target")) target = NormalizeTarget(global->Value("target"));
  ClientOptions options;
  if (global->Has("connect-timeout")) {
    absl::StatusOr<double> sec = global->Double("connect-timeout");
    if (!sec.ok() || *sec <= 0) {
      return Usage(io, "--connect-timeout: expected seconds > 0");
    }
    options.connect_timeout = absl::Seconds(*sec);
  }
  options.security.tls_ca = global->Value("tls-ca");
  options.security.tls_cert = global->Value("tls-cert");
  options.security.tls_key = global->Value("tls-key");
  options.security.api_key_file = global->Value("api-key-file");

  const std::string command = global->positional[0];
  FlagSpec spec;
  if (command == "generate" || command == "chat") {
    spec = kSamplingFlags;
    spec.emplace(command == "generate" ? "prompt" : "system", true);
    if (command == "generate") spec.emplace("stop", true);
  } else if (command == "tokenize") {
    spec = {{"bos", false}};
  } else if (command == "health") {
    spec = {{"service", true}};
  } else if (command != "info" && command != "stats" &&
             command != "detokenize") {
    return Usage(io, absl::StrCat("unknown command \"", command, "\""));
  }
  spec.emplace("help", false);
  absl::StatusOr<ParsedFlags> f = ParseFlags(args, global->consumed + 1, spec,
                                             /*stop_at_positional=*/false);
  if (!f.ok())
    return Usage(io, absl::StrCat(command, ": ", f.status().message()));
  if (f->Has("help")) {
    *io.out << kUsage;
    return kExitOk;
  }

  // Everything a command needs from its flags is checked before connecting.
  v1::GenerateRequest request;
  std::vector<int32_t> ids;
  if (command == "generate" || command == "chat") {
    if (absl::Status s = ApplySampling(*f, &request); !s.ok()) {
      return Usage(io, absl::StrCat(command, ": ", s.message()));
    }
  }
  if (command == "generate") {
    if (!f->Has("prompt"))
      return Usage(io, "generate: --prompt TEXT is required");
    request.set_prompt(f->Value("prompt"));
    for (const std::string& s : f->Values("stop")) request.add_stop(s);
  }
  if (command == "chat") request.add_stop("\nUser:");
  FlashctlIo run_io = io;
  if (command == "generate" || command == "chat") {
    const std::string d = f->Has("delivery") ? f->Value("delivery") : "auto";
    if (d == "shm" || (d == "auto" && absl::StartsWith(target, "unix:"))) {
      request.set_delivery(v1::SHARED_MEMORY);
      run_io.auto_delivery = d == "auto";
    } else if (d == "stream" || d == "auto") {
      request.set_delivery(v1::STREAM);
    } else {
      return Usage(io, absl::StrCat(command, ": --delivery \"", d,
                                    "\" is not auto, stream or shm"));
    }
  }
  const size_t want_positional = command == "tokenize"     ? 1
                                 : command == "detokenize" ? SIZE_MAX
                                                           : 0;
  if (want_positional == 1 && f->positional.size() != 1) {
    return Usage(io, "tokenize: give the text as one argument (quote it)");
  }
  if (want_positional == 0 && !f->positional.empty()) {
    return Usage(io, absl::StrCat(command, ": unexpected argument \"",
                                  f->positional[0], "\""));
  }
  if (command == "detokenize") {
    if (f->positional.empty()) return Usage(io, "detokenize: give token ids");
    for (const std::string& p : f->positional) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(p, &id)) {
        return Usage(io,
                     absl::StrCat("detokenize: \"", p, "\" is not a token id"));
      }
      ids.push_back(id);
    }
  }

  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(target, options);
  if (!client.ok()) return Fail(io, client.status());
  Client& c = **client;

  if (command == "generate") return GenerateCommand(c, request, run_io);
  if (command == "chat") {
    return ChatCommand(c, request, f->Value("system"), run_io);
  }
  if (command == "tokenize") {
    absl::StatusOr<std::vector<int32_t>> t =
        c.Tokenize(f->positional[0], f->Has("bos"));
    if (!t.ok()) return Fail(io, t.status());
    *io.out << absl::StrJoin(*t, " ") << "\n";
    return kExitOk;
  }
  if (command == "detokenize") {
    absl::StatusOr<std::string> text = c.Detokenize(ids);
    if (!text.ok()) return Fail(io, text.status());
    *io.out << *text << "\n";
    return kExitOk;
  }
  if (command == "info" || command == "stats") {
    absl::Status status =
        command == "info" ? PrintModelInfo(c, *io.out) : PrintStats(c, *io.out);
    return status.ok() ? kExitOk : Fail(io, status);
  }
  // health
  absl::StatusOr<HealthStatus> h = c.Health(f->Value("service"));
  if (!h.ok()) return Fail(io, h.status());
  *io.out << HealthStatusName(*h) << "\n";
  return *h == HealthStatus::kServing ? kExitOk : kExitRuntime;
}

}  // namespace flashd::client
