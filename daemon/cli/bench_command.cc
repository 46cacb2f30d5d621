// flashd bench: prefill and decode speed, medians over repeated runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/engine/generator.h"
#include "common/engine/sampler.h"
#include "common/kernels/kernels.h"
#include "daemon/cli/commands.h"

namespace flashd::cli {
namespace {

struct Run {
  double prefill_tok_s = 0;
  double decode_tok_s = 0;
  double ttft_ms = 0;
  // Decode only (flash modes): bytes read per token, read throughput while
  // reading, neuron cache hit rate.
  double bytes_per_token = 0;
  double read_mb_s = 0;
  double hit_rate = 0;
  double wait_fraction = 0;  // of decode time spent waiting for reads
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t)
      .count();
}

absl::StatusOr<Run> OneRun(Engine& e, const std::vector<int32_t>& prompt,
                           int32_t gen_tokens) {
  Run r;
  Forward& f = *e.forward;
  e.kv->Clear();
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status s = EvalPrompt(f, *e.kv, prompt, false, [](int32_t, const float*) {});
  if (!s.ok()) return s;
  const double prefill = Since(t0);
  int32_t next = ArgMax(f.logits(0), f.config().n_vocab);
  r.ttft_ms = Since(t0) * 1e3;
  r.prefill_tok_s = prompt.size() / prefill;
  flash::SourceStats before;
  if (e.source != nullptr) before = e.source->stats();
  const auto t1 = std::chrono::steady_clock::now();
  for (int32_t i = 0; i < gen_tokens; ++i) {
    s = f.Eval(*e.kv, absl::MakeConstSpan(&next, 1), false);
    if (!s.ok()) return s;
    next = ArgMax(f.logits(0), f.config().n_vocab);
  }
  r.decode_tok_s = gen_tokens / Since(t1);
  if (e.source != nullptr) {
    const flash::SourceStats after = e.source->stats();
    const double bytes = static_cast<double>(after.bytes_read - before.bytes_read);
    r.bytes_per_token = bytes / gen_tokens;
    const double secs = after.read_seconds - before.read_seconds;
    r.read_mb_s = secs > 0 ? bytes / secs / 1e6 : 0;
    const double needed =
        static_cast<double>(after.neurons_needed - before.neurons_needed);
    r.hit_rate =
        needed > 0 ? (after.neurons_hit - before.neurons_hit) / needed : 0;
    r.wait_fraction = (after.wait_seconds - before.wait_seconds) *
                      r.decode_tok_s / gen_tokens;
  }
  return r;
}

}  // namespace

int BenchCommand(int argc, char** argv) {
  Args args;
  AddEngineFlags(args);
  args.Flag("prompt-tokens", "128", "prompt length for the prefill measurement")
      .Flag("gen-tokens", "64", "tokens decoded per run")
      .Flag("repeats", "5", "measured runs (after one warm-up run)")
      .Switch("json", "print one JSON object instead of a table");
  int code = 0;
  if (!ParseOrExit(args, "bench",
                   "Measures prefill and decode tok/s, time to first token and "
                   "peak RSS; prints medians over repeats.",
                   argc, argv, &code)) {
    return code;
  }
  absl::StatusOr<int64_t> n_prompt = args.GetInt("prompt-tokens", 1, 1 << 16);
  if (!n_prompt.ok()) return Fail("bench", n_prompt.status());
  absl::StatusOr<int64_t> n_gen = args.GetInt("gen-tokens", 1, 1 << 16);
  if (!n_gen.ok()) return Fail("bench", n_gen.status());
  absl::StatusOr<int64_t> repeats = args.GetInt("repeats", 1, 1000);
  if (!repeats.ok()) return Fail("bench", repeats.status());
  absl::StatusOr<Engine> engine = OpenEngine(args);
  if (!engine.ok()) return Fail("bench", engine.status());
  const ModelConfig& c = engine->loaded.model->config;
  if (*n_prompt + *n_gen + 1 > engine->forward->n_ctx()) {
    return Fail("bench", absl::InvalidArgumentError(absl::StrCat(
                             "--prompt-tokens + --gen-tokens = ",
                             *n_prompt + *n_gen, " exceed the context of ",
                             engine->forward->n_ctx(), " (raise --ctx)")));
  }
  // A fixed pseudo-random prompt of ordinary tokens (ids 3.. skip specials).
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(3, c.n_vocab - 1);
  std::vector<int32_t> prompt(*n_prompt);
  prompt[0] = engine->loaded.tokenizer->bos_id();
  for (size_t i = 1; i < prompt.size(); ++i) prompt[i] = pick(rng);

  std::vector<Run> runs;
  for (int64_t i = 0; i <= *repeats; ++i) {
    absl::StatusOr<Run> r = OneRun(*engine, prompt, static_cast<int32_t>(*n_gen));
    if (!r.ok()) return Fail("bench", r.status());
    if (i > 0) runs.push_back(*r);  // run 0 warms caches
  }
  std::vector<double> pre, dec, ttft, bpt, rmb, hit, wait;
  for (const Run& r : runs) {
    pre.push_back(r.prefill_tok_s);
    dec.push_back(r.decode_tok_s);
    ttft.push_back(r.ttft_ms);
    bpt.push_back(r.bytes_per_token);
    rmb.push_back(r.read_mb_s);
    hit.push_back(r.hit_rate);
    wait.push_back(r.wait_fraction);
  }
  const char* mode = flash::ModeName(engine->mode);
  const flash::MemoryPlan plan =
      engine->source ? engine->source->plan() : flash::MemoryPlan{};
  const bool direct = engine->source && engine->source->direct_io();
  const double rss_mb = PeakRssBytes() / 1048576.0;
  const std::string isa(kernels::IsaName(kernels::ActiveIsa()));
  const std::string model = args.Get("model");
  const std::string type = engine->loaded.model->type_name;
  const int threads = engine->pool->size();
  if (args.GetSwitch("json")) {
    std::vector<std::string> run_json;
    for (const Run& r : runs) {
      run_json.push_back(absl::StrFormat(
          "{\"prefill_tok_s\":%.3f,\"decode_tok_s\":%.3f,\"ttft_ms\":%.2f}",
          r.prefill_tok_s, r.decode_tok_s, r.ttft_ms));
    }
    std::printf(
        "{\"engine\":\"flashd\",\"model\":\"%s\",\"type\":\"%s\",\"isa\":\"%s\","
        "\"threads\":%d,\"prompt_tokens\":%lld,\"gen_tokens\":%lld,"
        "\"prefill_tok_s\":%.3f,\"decode_tok_s\":%.3f,\"ttft_ms\":%.2f,"
        "\"peak_rss_mb\":%.1f,\"peak_rss_bytes\":%zu,\"mode\":\"%s\","
        "\"dram_budget_bytes\":%llu,\"weight_memory_bytes\":%llu,"
        "\"kv_bytes\":%zu,\"direct_io\":%s,\"sparsity\":\"%s\","
        "\"flash_bytes_per_token\":%.0f,\"read_mb_s\":%.1f,"
        "\"cache_hit_rate\":%.4f,\"io_wait_fraction\":%.3f,\"runs\":[%s]}\n",
        model.c_str(), type.c_str(), isa.c_str(), threads, static_cast<long long>(*n_prompt),
        static_cast<long long>(*n_gen), Median(pre), Median(dec), Median(ttft),
        rss_mb, PeakRssBytes(), mode,
        static_cast<unsigned long long>(engine->dram_budget),
        static_cast<unsigned long long>(plan.total()), engine->kv->bytes(),
        direct ? "true" : "false", engine->sparsity_desc.c_str(),
        Median(bpt), Median(rmb), Median(hit), Median(wait),
        absl::StrJoin(run_json, ",").c_str());
  } else {
    std::printf("model     %s (%s)\n", model.c_str(), type.c_str());
    std::printf("mode      %s, sparsity %s\n", mode,
                engine->sparsity_desc.c_str());
    if (engine->source != nullptr) {
      std::printf("memory    %s\n", plan.Describe().c_str());
      std::printf("flash     %.1f MB read per token, %.0f MB/s while reading "
                  "(%s), neuron cache hit rate %.1f%%, %.0f%% of decode "
                  "waiting for reads\n",
                  Median(bpt) / 1e6, Median(rmb),
                  direct ? "O_DIRECT" : "buffered", Median(hit) * 100,
                  Median(wait) * 100);
    }
    std::printf("threads   %d, kernels %s, %zu runs after 1 warm-up\n", threads,
                isa.c_str(), runs.size());
    std::printf("prefill   %6.1f tok/s  (%lld-token prompt)\n", Median(pre),
                static_cast<long long>(*n_prompt));
    std::printf("decode    %6.2f tok/s  (%lld tokens)\n", Median(dec),
                static_cast<long long>(*n_gen));
    std::printf("ttft      %6.1f ms\n", Median(ttft));
    std::printf("peak RSS  %6.1f MiB (KV cache %.1f MiB)\n", rss_mb,
                engine->kv->bytes() / 1048576.0);
  }
  return 0;
}

}  // namespace flashd::cli
