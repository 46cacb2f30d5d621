#!/usr/bin/env node
// Benchmarks the llama.cpp peer (as shipped prebuilt in the npm package
// node-llama-cpp v3) on one GGUF model: prefill throughput, decode
// throughput, time to first token and peak RSS. See docs/llamacpp_peer.md.
//
//   node bench/llamacpp_bench.mjs --model PATH [--prompt-tokens 128]
//        [--gen-tokens 64] [--threads 2] [--repeats 5] [--no-mmap] [--json]
//
// Other flags: --warmup W (1), --ctx-size C (auto), --batch-size B (= prompt
// tokens: the prompt is one llama_decode call), --flash-attn auto|on|off
// (auto), --seed S (42), --api lowlevel|public (lowlevel), --driver
// auto|node|llama-bench (auto), --llama-bench PATH, --verbose.
//
// Drivers:
//  node        node-llama-cpp in this process. "lowlevel" (default) calls the
//              addon directly per step (initBatch/addToBatch/decodeBatch +
//              greedy sampleToken), "public" uses LlamaContextSequence.evaluate.
//              llama.cpp's own perf counters (llama_perf_context) are read
//              after every run, so JS/N-API overhead is reported separately.
//  llama-bench upstream llama-bench driver built by `bench/install-peers
//              --with-llama-bench` from the llama.cpp sources shipped inside
//              the npm package, linked against the same prebuilt .so files.
//  auto        llama-bench if that binary exists, else node.
//
// stdout: one JSON object (with --json) or a short summary; logs go to stderr.
import fs from "node:fs";
import path from "node:path";
import os from "node:os";
import { spawn } from "node:child_process";
import { parseArgs } from "node:util";
import {
  PeerError, LogCollector, importNodeLlamaCpp, loadLlama, describePeer, modelInfoFromLog,
  procStatusKb, median, round, log, findPeersDir, hostMeterStart, hostMeterStop, procCpuJiffies,
} from "./llamacpp_common.mjs";

const now = () => performance.now();
const loadavg = () => os.loadavg().map((x) => round(x, 2));

function parseCli() {
  const { values } = parseArgs({
    options: {
      model: { type: "string" },
      "prompt-tokens": { type: "string", default: "128" },
      "gen-tokens": { type: "string", default: "64" },
      threads: { type: "string", default: "2" },
      repeats: { type: "string", default: "5" },
      warmup: { type: "string", default: "1" },
      "no-mmap": { type: "boolean", default: false },
      "ctx-size": { type: "string" },
      "batch-size": { type: "string" },
      "flash-attn": { type: "string", default: "auto" },
      seed: { type: "string", default: "42" },
      api: { type: "string", default: "lowlevel" },
      driver: { type: "string", default: "auto" },
      "llama-bench": { type: "string" },
      json: { type: "boolean", default: false },
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) {
    const lines = fs.readFileSync(new URL(import.meta.url), "utf8").split("\n").slice(1);
    const end = lines.findIndex((l) => !l.startsWith("//"));
    process.stdout.write(lines.slice(0, end).map((l) => l.slice(3)).join("\n") + "\n");
    process.exit(0);
  }
  const int = (k, min) => {
    const v = Number(values[k]);
    if (!Number.isInteger(v) || v < min) throw new PeerError(`--${k} must be an integer >= ${min} (got ${values[k]})`);
    return v;
  };
  if (!values.model) throw new PeerError("--model PATH is required");
  if (!fs.existsSync(values.model)) throw new PeerError(`model not found: ${values.model}`);
  const o = {
    model: path.resolve(values.model),
    N: int("prompt-tokens", 1),
    M: int("gen-tokens", 0),
    T: int("threads", 1),
    R: int("repeats", 1),
    W: int("warmup", 0),
    mmap: !values["no-mmap"],
    seed: int("seed", 0),
    api: values.api,
    driver: values.driver,
    flashAttn: values["flash-attn"],
    json: values.json,
    verbose: values.verbose,
    llamaBench: values["llama-bench"],
  };
  if (!["auto", "on", "off"].includes(o.flashAttn)) throw new PeerError("--flash-attn must be auto|on|off");
  if (!["lowlevel", "public"].includes(o.api)) throw new PeerError("--api must be lowlevel|public");
  if (!["auto", "node", "llama-bench"].includes(o.driver)) throw new PeerError("--driver must be auto|node|llama-bench");
  o.B = values["batch-size"] != null ? int("batch-size", 1) : o.N;
  const need = o.N + o.M + 1;
  o.C = values["ctx-size"] != null ? int("ctx-size", need) : Math.max(256, Math.ceil(need / 256) * 256);
  return o;
}

// Deterministic prompt of random token ids (like llama-bench), avoiding the
// first few ids (unk/bos/eos) so every run sees the same ordinary tokens.
function makePrompt(n, nVocab, seed) {
  let x = (seed ^ 0x9e3779b9) >>> 0 || 1;
  const lo = Math.min(3, nVocab - 1);
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out[i] = lo + (x % (nVocab - lo));
  }
  return out;
}

// ---------------------------------------------------------------- node driver

async function runNode(o) {
  const nlc = await importNodeLlamaCpp();
  const collector = new LogCollector(o.verbose);
  const llama = await loadLlama(nlc, collector, { maxThreads: o.T });
  const rssBaselineKb = procStatusKb("VmRSS");

  const tLoad = now();
  const model = await llama.loadModel({ modelPath: o.model, gpuLayers: 0, useMmap: o.mmap });
  const loadMs = now() - tLoad;
  const rssAfterLoadKb = procStatusKb("VmRSS");
  const ctx = await model.createContext({
    contextSize: o.C,
    batchSize: o.B,
    threads: { ideal: o.T, min: o.T },
    sequences: 1,
    flashAttention: o.flashAttn === "auto" ? "auto" : o.flashAttn === "on",
    performanceTracking: true,
  });
  await collector.settle();
  const peer = describePeer(nlc, llama, collector);
  const minfo = modelInfoFromLog(collector);
  const fa = collector.findLast(/Flash Attention (?:was \S+, set to )?(enabled|disabled)/i) ??
    collector.findLast(/llama_context: flash_attn\s*=\s*(\S+)/);
  const nVocab = minfo.n_vocab ?? 32000;
  const prompt = makePrompt(o.N, nVocab, o.seed);

  const c = ctx._ctx; // addon context (internal, stable across v3)
  const lowlevelOk = o.api === "lowlevel" && c && typeof c.decodeBatch === "function" &&
    typeof c.addToBatch === "function" && typeof c.sampleToken === "function" && llama._bindings?.AddonSampler;
  if (o.api === "lowlevel" && !lowlevelOk) log("[llamacpp_bench] low-level addon API not available; falling back to --api public");
  const api = lowlevelOk ? "lowlevel" : "public";
  const actualThreads = typeof c?.getThreads === "function" ? c.getThreads() : null;
  if (actualThreads != null && actualThreads !== o.T) log(`[llamacpp_bench] warning: context uses ${actualThreads} threads, requested ${o.T}`);

  let sampler = null;
  if (api === "lowlevel") {
    sampler = new llama._bindings.AddonSampler(model._model);
    sampler.applyConfig({ temperature: 0 }); // greedy (argmax) sampler only
  }
  const seq = api === "public" ? ctx.getSequence() : null;

  // llama_perf_context counters: printTimings() prints and resets them. The
  // lines arrive through an async thread-safe callback, so wait for them.
  async function readPerf() {
    const mark = collector.mark();
    c.printTimings();
    let lines = [];
    for (let i = 0; i < 200; i++) {
      await new Promise((r) => setImmediate(r));
      lines = collector.since(mark);
      if (lines.some((l) => /total time =/.test(l))) break;
      if (i > 20) await new Promise((r) => setTimeout(r, 2));
    }
    const pp = lines.map((l) => l.match(/prompt eval time =\s*([0-9.]+) ms \/\s*(\d+) tokens/)).find(Boolean);
    const tg = lines.map((l) => l.match(/(?<!prompt )eval time =\s*([0-9.]+) ms \/\s*(\d+) runs/)).find(Boolean);
    return {
      prefill_ms: pp ? Number(pp[1]) : null, prefill_tokens: pp ? Number(pp[2]) : null,
      decode_ms: tg ? Number(tg[1]) : null, decode_tokens: tg ? Number(tg[2]) : null,
    };
  }

  async function oneRunLowlevel(M) {
    c.removeTokenCellsFromSequence(0, 0, -1);
    await readPerf(); // reset counters
    const t0 = now();
    c.initBatch(o.N);
    const li = c.addToBatch(0, 0, prompt, Uint32Array.of(o.N - 1));
    await c.decodeBatch();
    const t1 = now();
    let tok = await c.sampleToken(li[0], sampler);
    const t2 = now();
    if (tok === -1) throw new Error("sampling failed after prefill");
    const steps = [], decodeOnly = [], sampleOnly = [];
    for (let i = 0; i < M; i++) {
      const s = now();
      c.initBatch(1);
      const l = c.addToBatch(0, o.N + i, Uint32Array.of(tok), Uint32Array.of(0));
      await c.decodeBatch();
      const d = now();
      tok = await c.sampleToken(l[0], sampler);
      const e = now();
      if (tok === -1) throw new Error(`sampling failed at step ${i}`);
      steps.push(e - s); decodeOnly.push(d - s); sampleOnly.push(e - d);
    }
    return { prefillMs: t1 - t0, ttftMs: t2 - t0, steps, decodeOnly, sampleOnly, perf: await readPerf() };
  }

  async function oneRunPublic(M) {
    await seq.clearHistory();
    await readPerf();
    const it = seq.evaluate(Array.from(prompt), { temperature: 0 });
    const t0 = now();
    const first = await it.next();
    const t1 = now();
    if (first.done) throw new Error("no token generated after prefill");
    const steps = [];
    for (let i = 0; i < M; i++) {
      const s = now();
      const r = await it.next();
      steps.push(now() - s);
      if (r.done) throw new Error(`generation stopped at step ${i}`);
    }
    await it.return();
    const perf = await readPerf();
    return { prefillMs: null, ttftMs: t1 - t0, steps, decodeOnly: null, sampleOnly: null, perf };
  }

  const oneRun = api === "lowlevel" ? oneRunLowlevel : oneRunPublic;
  const la0 = loadavg();
  const hm = hostMeterStart();
  for (let w = 0; w < o.W; w++) {
    log(`[llamacpp_bench] warmup ${w + 1}/${o.W}`);
    await oneRun(o.M);
  }
  const runs = [];
  for (let r = 0; r < o.R; r++) {
    const x = await oneRun(o.M);
    const decMs = x.steps.reduce((a, b) => a + b, 0);
    const p = x.perf;
    const run = {
      prefill_ms: round(x.prefillMs ?? x.ttftMs),
      prefill_tok_s: round(o.N / ((x.prefillMs ?? x.ttftMs) / 1000), 1),
      ttft_ms: round(x.ttftMs),
      decode_ms: round(decMs),
      decode_tok_s: o.M ? round(o.M / (decMs / 1000), 1) : null,
      decode_step_ms_median: round(median(x.steps)),
      decode_only_ms_median: x.decodeOnly ? round(median(x.decodeOnly)) : null,
      sample_ms_median: x.sampleOnly ? round(median(x.sampleOnly)) : null,
      native_prefill_ms: p.prefill_ms,
      native_prefill_tok_s: p.prefill_ms ? round(o.N / (p.prefill_ms / 1000), 1) : null,
      native_decode_ms: p.decode_ms,
      native_decode_tok_s: p.decode_ms && p.decode_tokens ? round(p.decode_tokens / (p.decode_ms / 1000), 1) : null,
    };
    run.js_overhead_prefill_ms = p.prefill_ms != null ? round(run.prefill_ms - p.prefill_ms) : null;
    run.js_overhead_ms_per_token = p.decode_ms != null && o.M ? round((decMs - p.decode_ms) / o.M) : null;
    runs.push(run);
    log(`[llamacpp_bench] run ${r + 1}/${o.R}: prefill ${run.prefill_tok_s} tok/s, ttft ${run.ttft_ms} ms, ` +
      `decode ${run.decode_tok_s} tok/s (native ${run.native_prefill_tok_s} / ${run.native_decode_tok_s} tok/s)`);
  }
  const la1 = loadavg();
  const other = hostMeterStop(hm);
  const peakKb = procStatusKb("VmHWM");
  const med = (k) => median(runs.map((r) => r[k]));
  sampler?.dispose?.();
  await ctx.dispose();
  await model.dispose();

  return {
    engine: "llama.cpp",
    version: peer.version,
    driver: "node-llama-cpp",
    api,
    model: o.model,
    prefill_tok_s: round(med("prefill_tok_s"), 1),
    decode_tok_s: round(med("decode_tok_s"), 1),
    ttft_ms: round(med("ttft_ms")),
    peak_rss_mb: round(peakKb / 1024, 1),
    rss_baseline_mb: round(rssBaselineKb / 1024, 1),
    peak_rss_minus_baseline_mb: round((peakKb - rssBaselineKb) / 1024, 1),
    rss_after_load_mb: round(rssAfterLoadKb / 1024, 1),
    load_ms: round(loadMs, 1),
    native_prefill_tok_s: round(med("native_prefill_tok_s"), 1),
    native_decode_tok_s: round(med("native_decode_tok_s"), 1),
    js_overhead_prefill_ms: round(med("js_overhead_prefill_ms")),
    js_overhead_ms_per_token: round(med("js_overhead_ms_per_token")),
    params: {
      prompt_tokens: o.N, gen_tokens: o.M, threads: o.T, threads_actual: actualThreads, repeats: o.R, warmup: o.W,
      mmap: o.mmap, load_mode: minfo.load_mode, ctx_size: ctx.contextSize, batch_size: o.B,
      flash_attn: o.flashAttn, flash_attn_resolved: fa ? fa[1] : null, sampling: "greedy", seed: o.seed,
      prompt: "random token ids",
    },
    peer,
    model_info: minfo,
    host: { cpus: os.cpus().length, loadavg_start: la0, loadavg_end: la1, ...other },
    runs,
  };
}

// --------------------------------------------------------- llama-bench driver

function llamaBenchPath(o) {
  if (o.llamaBench) return o.llamaBench;
  const peers = findPeersDir();
  if (!peers) return null;
  const p = path.join(peers, "llama-bench", "llama-bench");
  return fs.existsSync(p) ? p : null;
}

async function runLlamaBench(o, bin) {
  const args = [
    "-m", o.model, "-p", String(o.N), "-n", String(o.M), "-t", String(o.T), "-r", String(o.R),
    "-b", String(o.B), "-ub", String(o.B), "-fa", o.flashAttn, "-lm", o.mmap ? "mmap" : "none",
    "-ngl", "0", "-lzm", "off", "-o", "json",
  ];
  // Decode is measured after the N-token prompt (KV depth N), as in the node
  // driver: llama-bench's tg test at depth N (-d). Prefill is pp at depth 0.
  if (o.M > 0) args.push("-d", `0,${o.N}`);
  if (o.W === 0) args.push("--no-warmup");
  log(`[llamacpp_bench] ${bin} ${args.join(" ")}`);
  const la0 = loadavg();
  const hm = hostMeterStart();
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "", err = "", peakKb = 0, childJiffies = 0;
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => { err += d; if (o.verbose) process.stderr.write(d); });
  const poll = () => {
    try {
      const s = fs.readFileSync(`/proc/${child.pid}/status`, "utf8");
      const m = s.match(/^VmHWM:\s+(\d+) kB/m);
      if (m) peakKb = Math.max(peakKb, Number(m[1]));
      const j = procCpuJiffies(child.pid);
      if (j != null) childJiffies = Math.max(childJiffies, j);
    } catch {}
  };
  const timer = setInterval(poll, 10);
  const code = await new Promise((res) => child.on("exit", (c) => { poll(); res(c); }));
  clearInterval(timer);
  const other = hostMeterStop(hm, childJiffies + (procCpuJiffies() - hm.self));
  if (code !== 0) throw new PeerError(`llama-bench exited with ${code}:\n${err.trim().split("\n").slice(-10).join("\n")}`);
  const tests = JSON.parse(out);
  const pp = tests.find((t) => t.n_prompt > 0 && t.n_gen === 0 && (t.n_depth ?? 0) === 0);
  const tg = tests.find((t) => t.n_gen > 0 && t.n_prompt === 0 && (t.n_depth ?? 0) === o.N) ??
    tests.find((t) => t.n_gen > 0 && t.n_prompt === 0);
  const variant = err.match(/loaded CPU backend from (\S+)/);
  const n = Math.max(pp?.samples_ts?.length ?? 0, tg?.samples_ts?.length ?? 0);
  const runs = [];
  for (let i = 0; i < n; i++) {
    const ppNs = pp?.samples_ns?.[i];
    runs.push({
      prefill_ms: ppNs != null ? round(ppNs / 1e6) : null,
      prefill_tok_s: round(pp?.samples_ts?.[i], 1),
      ttft_ms: ppNs != null ? round(ppNs / 1e6) : null,
      decode_ms: tg?.samples_ns?.[i] != null ? round(tg.samples_ns[i] / 1e6) : null,
      decode_tok_s: round(tg?.samples_ts?.[i], 1),
    });
  }
  const commit = pp?.build_commit ?? tg?.build_commit ?? null;
  const peers = findPeersDir();
  let release = null;
  try {
    release = JSON.parse(fs.readFileSync(path.join(peers, "node_modules/node-llama-cpp/llama/binariesGithubRelease.json"), "utf8")).release;
  } catch {}
  const variantFile = variant ? path.basename(variant[1]) : null;
  return {
    engine: "llama.cpp",
    version: `${release ?? "unknown"}${commit ? ` (commit ${commit})` : ""}`,
    driver: "llama-bench",
    api: null,
    model: o.model,
    prefill_tok_s: round(median(runs.map((r) => r.prefill_tok_s)), 1),
    decode_tok_s: round(median(runs.map((r) => r.decode_tok_s)), 1),
    ttft_ms: round(median(runs.map((r) => r.ttft_ms))),
    ttft_note: "llama-bench: prompt-processing time of the pp test (no sampling step)",
    peak_rss_mb: round(peakKb / 1024, 1),
    peak_rss_note: "VmHWM of the llama-bench process, polled every 10 ms",
    params: {
      prompt_tokens: o.N, gen_tokens: o.M, threads: o.T, repeats: o.R, warmup: o.W, mmap: o.mmap,
      load_mode: pp?.load_mode ?? (o.mmap ? "mmap" : "none"), batch_size: o.B, flash_attn: o.flashAttn,
      decode_kv_depth: tg?.n_depth ?? null, lazy_mode: "off", poll: pp?.poll ?? null,
      sampling: "none (llama-bench decodes without sampling)", prompt: "random token ids",
    },
    peer: {
      llama_cpp_release: release, llama_cpp_commit: commit, build_number: pp?.build_number ?? null,
      cpu_variant: variantFile ? variantFile.replace(/^libggml-cpu-?/, "").replace(/\.so$/, "") : null,
      cpu_backend_lib: variantFile, cpu_info: pp?.cpu_info ?? null, binary: bin,
    },
    model_info: { model_type: pp?.model_type ?? null, model_size: pp?.model_size ?? null, model_n_params: pp?.model_n_params ?? null },
    host: { cpus: os.cpus().length, loadavg_start: la0, loadavg_end: loadavg(), ...other },
    runs,
    raw: tests,
  };
}

// ----------------------------------------------------------------------- main

function summary(r) {
  return [
    `engine      ${r.engine} ${r.version} via ${r.driver}${r.api ? ` (${r.api})` : ""}, cpu variant ${r.peer?.cpu_variant}`,
    `model       ${r.model}`,
    `params      N=${r.params.prompt_tokens} M=${r.params.gen_tokens} threads=${r.params.threads} repeats=${r.params.repeats} mmap=${r.params.mmap} (${r.params.load_mode})`,
    `prefill     ${r.prefill_tok_s} tok/s${r.native_prefill_tok_s != null ? `  (llama.cpp perf counters: ${r.native_prefill_tok_s})` : ""}`,
    `decode      ${r.decode_tok_s} tok/s${r.native_decode_tok_s != null ? `  (llama.cpp perf counters: ${r.native_decode_tok_s}; JS overhead ${r.js_overhead_ms_per_token} ms/token)` : ""}`,
    `ttft        ${r.ttft_ms} ms`,
    `peak rss    ${r.peak_rss_mb} MB${r.rss_baseline_mb != null ? ` (node baseline ${r.rss_baseline_mb} MB)` : ""}`,
    `host        other processes used ${r.host.other_cpu_pct}% of a core during the runs (loadavg ${r.host.loadavg_start[0]} -> ${r.host.loadavg_end[0]})`,
  ].join("\n") + "\n";
}

async function main() {
  let o;
  try {
    o = parseCli();
  } catch (e) {
    log(`llamacpp_bench: ${e.message}`);
    process.exit(2);
  }
  try {
    let result;
    const lb = o.driver === "node" ? null : llamaBenchPath(o);
    if (o.driver === "llama-bench" && !lb)
      throw new PeerError("llama-bench driver requested but no binary found: run bench/install-peers --with-llama-bench (or pass --llama-bench PATH)");
    if (lb) {
      if (o.api !== "lowlevel") log("[llamacpp_bench] --api is ignored by the llama-bench driver");
      result = await runLlamaBench(o, lb);
    } else {
      result = await runNode(o);
    }
    const oc = result.host.other_cpu_pct;
    if (oc != null && oc > 10) log(`[llamacpp_bench] warning: other processes used ${oc}% of a core during the measurement: numbers are likely disturbed`);
    process.stdout.write(o.json ? JSON.stringify(result) + "\n" : summary(result));
    process.exit(0);
  } catch (e) {
    const msg = e instanceof PeerError ? e.message : (e?.stack ?? String(e));
    log(`llamacpp_bench: ${msg}`);
    if (o.json) process.stdout.write(JSON.stringify({ engine: "llama.cpp", ok: false, error: e?.message ?? String(e) }) + "\n");
    process.exit(1);
  }
}

main();
