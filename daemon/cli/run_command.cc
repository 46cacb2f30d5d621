// flashd run: generate text from a prompt, streaming it to stdout.
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/generator.h"
#include "daemon/cli/commands.h"

namespace flashd::cli {
namespace {

// Adds the sampling flags shared by run and (later) the daemon's clients.
void AddSamplingFlags(Args& args) {
  args.Flag("temperature", "0.8", "sampling temperature; 0 = greedy")
      .Flag("top-k", "40", "keep the k most likely tokens (0 = off)")
      .Flag("top-p", "0.95", "nucleus sampling mass (1 = off)")
      .Flag("min-p", "0.05", "drop tokens below min-p x the top probability")
      .Flag("repeat-penalty", "1.0", "penalty for recent tokens (1 = off)")
      .Flag("repeat-last-n", "64", "how many recent tokens are penalized")
      .Flag("seed", "", "random seed (default: from the clock)");
}

absl::StatusOr<SamplingParams> SamplingFromArgs(const Args& args) {
  SamplingParams p;
  absl::StatusOr<double> d = args.GetDouble("temperature");
  if (!d.ok()) return d.status();
  p.temperature = static_cast<float>(*d);
  absl::StatusOr<int64_t> k = args.GetInt("top-k", 0, 1 << 30);
  if (!k.ok()) return k.status();
  p.top_k = static_cast<int32_t>(*k);
  if (d = args.GetDouble("top-p"); !d.ok()) return d.status();
  p.top_p = static_cast<float>(*d);
  if (d = args.GetDouble("min-p"); !d.ok()) return d.status();
  p.min_p = static_cast<float>(*d);
  if (d = args.GetDouble("repeat-penalty"); !d.ok()) return d.status();
  p.repeat_penalty = static_cast<float>(*d);
  if (k = args.GetInt("repeat-last-n", 0, 1 << 20); !k.ok()) return k.status();
  p.repeat_last_n = static_cast<int32_t>(*k);
  if (args.Get("seed").empty()) {
    p.seed = static_cast<uint64_t>(
        std::chrono::system_clock::now().time_since_epoch().count());
  } else {
    absl::StatusOr<int64_t> s = args.GetInt("seed", 0, INT64_MAX);
    if (!s.ok()) return s.status();
    p.seed = static_cast<uint64_t>(*s);
  }
  if (absl::Status s = p.Validate(); !s.ok()) return s;
  return p;
}

}  // namespace

int RunCommand(int argc, char** argv) {
  Args args;
  AddEngineFlags(args);
  args.Flag("prompt", "", "prompt text (default: empty, start from BOS)")
      .Flag("max-tokens", "256", "tokens to generate after the prompt")
      .Switch("ids", "print token ids (prompt after BOS, then generated) "
                     "instead of text")
      .Switch("quiet", "do not print timings to stderr");
  AddSamplingFlags(args);
  int code = 0;
  if (!ParseOrExit(args, "run", "Generates text from a prompt.", argc, argv,
                   &code)) {
    return code;
  }
  absl::StatusOr<SamplingParams> sampling = SamplingFromArgs(args);
  if (!sampling.ok()) return Fail("run", sampling.status());
  absl::StatusOr<int64_t> max_tokens = args.GetInt("max-tokens", 1, 1 << 20);
  if (!max_tokens.ok()) return Fail("run", max_tokens.status());
  absl::StatusOr<Engine> engine = OpenEngine(args);
  if (!engine.ok()) return Fail("run", engine.status());
  const Tokenizer& tok = *engine->loaded.tokenizer;

  const std::string prompt_text = args.Get("prompt");
  std::vector<int32_t> prompt = tok.Encode(prompt_text, tok.vocab().add_bos);
  if (prompt.empty()) prompt.push_back(tok.bos_id());
  const bool ids = args.GetSwitch("ids");

  // Echo the prompt, as llama.cpp and llama2.c do.
  Utf8Streamer out;
  int32_t prev = prompt.front();
  std::string line;
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (ids) {
      if (prompt[i] != tok.bos_id() || i > 0) {
        absl::StrAppend(&line, line.empty() ? "" : " ", prompt[i]);
      }
    } else if (i > 0 || prompt[i] != tok.bos_id()) {
      std::fputs(out.Push(tok.TokenBytes(prev, prompt[i])).c_str(), stdout);
    }
    prev = prompt[i];
  }
  std::fflush(stdout);

  GenerateOptions options;
  options.max_tokens = static_cast<int32_t>(*max_tokens);
  options.sampling = *sampling;
  options.stop_at_bos = tok.vocab().llama2c_style;
  absl::StatusOr<GenerateResult> result = Generate(
      *engine->forward, *engine->kv, tok, prompt, options,
      [&](int32_t id, bool is_stop) {
        if (ids) {
          absl::StrAppend(&line, line.empty() ? "" : " ", id);
        } else if (!is_stop) {
          std::fputs(out.Push(tok.TokenBytes(prev, id)).c_str(), stdout);
          std::fflush(stdout);
        }
        prev = id;
        return true;
      });
  if (ids) {
    std::printf("%s\n", line.c_str());
  } else {
    std::printf("%s\n", out.Flush().c_str());
  }
  if (!result.ok()) return Fail("run", result.status());
  if (!args.GetSwitch("quiet")) {
    const GenerateResult& r = *result;
    const int32_t decoded = static_cast<int32_t>(r.tokens.size()) - 1;
    std::fprintf(
        stderr,
        "\n[flashd] prompt %d tokens in %.3f s (%.1f tok/s); generated %zu "
        "tokens, decode %.2f tok/s; first token %.3f s\n",
        r.n_prompt, r.prefill_seconds, r.n_prompt / r.prefill_seconds,
        r.tokens.size(),
        decoded > 0 && r.decode_seconds > 0 ? decoded / r.decode_seconds : 0.0,
        r.first_token_seconds);
  }
  return 0;
}

}  // namespace flashd::cli
