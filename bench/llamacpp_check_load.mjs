#!/usr/bin/env node
// Checks that llama.cpp (the prebuilt in node-llama-cpp v3) loads a GGUF file
// and computes logits for a short prompt. Used to verify that files written by
// `flashd make-model` are valid for llama.cpp, and to dump reference logits.
//
//   node bench/llamacpp_check_load.mjs --model PATH [--prompt TEXT | --tokens 1,2,3]
//        [--logits-out FILE] [--all-positions] [--top K] [--threads T] [--no-mmap]
//        [--no-bos] [--verbose]
//   node bench/llamacpp_check_load.mjs --peer-info
//
// stdout: one JSON object. {"ok":true, "n_vocab":..., "n_layer":..., ...} on
// success; {"ok":false, "error":..., "llama_cpp_errors":[...]} otherwise.
// --logits-out writes {"tokens":[...], "n_vocab":V, "positions":[p...],
// "logits":[[V floats]...]} (last position only unless --all-positions).
// Exit status: 0 ok, 1 model failed to load/evaluate, 2 usage, 3 peer missing.
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import {
  PeerError, LogCollector, importNodeLlamaCpp, loadLlama, describePeer, modelInfoFromLog, log, round,
} from "./llamacpp_common.mjs";

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        model: { type: "string" },
        prompt: { type: "string", default: "Hello world" },
        tokens: { type: "string" },
        "logits-out": { type: "string" },
        "all-positions": { type: "boolean", default: false },
        top: { type: "string", default: "5" },
        threads: { type: "string", default: "2" },
        "no-mmap": { type: "boolean", default: false },
        "no-bos": { type: "boolean", default: false },
        "peer-info": { type: "boolean", default: false },
        verbose: { type: "boolean", default: false },
      },
      strict: true,
    }));
    if (!values["peer-info"] && !values.model) throw new Error("--model PATH is required (or --peer-info)");
  } catch (e) {
    log(`llamacpp_check_load: ${e.message}`);
    out({ ok: false, error: e.message });
    process.exit(2);
  }

  let nlc;
  const collector = new LogCollector(values.verbose);
  let llama;
  try {
    nlc = await importNodeLlamaCpp();
    llama = await loadLlama(nlc, collector, { maxThreads: Number(values.threads) });
  } catch (e) {
    const msg = e instanceof PeerError ? e.message : `cannot load node-llama-cpp prebuilt binaries: ${e.message}`;
    log(`llamacpp_check_load: ${msg}`);
    out({ ok: false, error: msg });
    process.exit(3);
  }
  await collector.settle();
  const peer = describePeer(nlc, llama, collector);
  if (values["peer-info"]) {
    out({ ok: true, engine: "llama.cpp", ...peer, peers_dir: nlc.peersDir });
    await llama.dispose();
    return;
  }

  const modelPath = path.resolve(values.model);
  const fail = (stage, e) => {
    const errs = collector.errors();
    log(`llamacpp_check_load: ${stage} failed: ${e?.message ?? e}`);
    for (const l of errs) log(`  llama.cpp: ${l}`);
    out({ ok: false, stage, error: String(e?.message ?? e), llama_cpp_errors: errs, model: modelPath, version: peer.version });
    process.exit(1);
  };
  if (!fs.existsSync(modelPath)) fail("open", new Error(`no such file: ${modelPath}`));

  let model, ctx;
  const t0 = performance.now();
  try {
    model = await llama.loadModel({ modelPath, gpuLayers: 0, useMmap: !values["no-mmap"] });
  } catch (e) {
    await collector.settle();
    fail("load", e);
  }
  const loadMs = performance.now() - t0;

  let tokens;
  try {
    if (values.tokens) {
      tokens = values.tokens.split(",").map((s) => Number(s.trim()));
      if (tokens.some((t) => !Number.isInteger(t) || t < 0)) throw new Error(`bad --tokens: ${values.tokens}`);
    } else {
      tokens = Array.from(model.tokenize(values.prompt));
      const bos = model.tokens.bos;
      if (!values["no-bos"] && bos != null && model.tokens.shouldPrependBosToken && tokens[0] !== bos) tokens.unshift(bos);
    }
    if (tokens.length === 0) throw new Error("empty prompt");
    ctx = await model.createContext({
      contextSize: Math.max(256, Math.ceil((tokens.length + 1) / 256) * 256),
      batchSize: Math.max(tokens.length, 1),
      threads: Number(values.threads),
      sequences: 1,
    });
  } catch (e) {
    await collector.settle();
    fail("context", e);
  }
  await collector.settle();
  const info = modelInfoFromLog(collector);

  let results;
  const t1 = performance.now();
  try {
    const seq = ctx.getSequence();
    const want = (i) => values["all-positions"] || i === tokens.length - 1;
    const items = tokens.map((t, i) => (want(i) ? [t, { generateNext: { token: true, logits: true } }] : t));
    results = await seq.controlledEvaluate(items);
  } catch (e) {
    await collector.settle();
    fail("evaluate", e);
  }
  const evalMs = performance.now() - t1;

  const positions = [], rows = [];
  let nVocab = null, finite = true;
  for (let i = 0; i < tokens.length; i++) {
    const r = results[i];
    if (!r?.next?.logits) continue;
    const map = r.next.logits;
    nVocab = map.size;
    const row = new Float32Array(map.size);
    for (const [id, v] of map) {
      if (id >= 0 && id < row.length) row[id] = v;
      if (!Number.isFinite(v)) finite = false;
    }
    positions.push(i);
    rows.push({ row, map, token: r.next.token });
  }
  if (rows.length === 0) fail("evaluate", new Error("no logits returned"));
  const last = rows[rows.length - 1];
  const topK = Math.max(0, Number(values.top) || 0);
  const top = [...last.map.entries()].slice(0, topK).map(([id, v]) => [id, round(v, 5)]);

  if (values["logits-out"]) {
    fs.writeFileSync(values["logits-out"], JSON.stringify({
      model: modelPath, tokens, n_vocab: nVocab, positions, logits: rows.map((x) => Array.from(x.row)),
    }));
  }

  out({
    ok: finite,
    ...(finite ? {} : { error: "non-finite logits" }),
    engine: "llama.cpp",
    version: peer.version,
    cpu_variant: peer.cpu_variant,
    model: modelPath,
    arch: info.arch,
    file_type: info.file_type,
    n_vocab: nVocab,
    n_vocab_metadata: info.n_vocab,
    n_layer: info.n_layer,
    n_embd: info.n_embd,
    n_head: info.n_head,
    n_head_kv: info.n_head_kv,
    n_ff: info.n_ff,
    n_ctx_train: info.n_ctx_train,
    n_params: info.n_params,
    load_mode: info.load_mode,
    prompt: values.tokens ? null : values.prompt,
    tokens,
    argmax: last.token ?? (top[0]?.[0] ?? null),
    top_logits: top,
    logits_finite: finite,
    load_ms: round(loadMs, 1),
    eval_ms: round(evalMs, 1),
    ...(values["logits-out"] ? { logits_out: path.resolve(values["logits-out"]) } : {}),
  });
  await ctx.dispose();
  await model.dispose();
  await llama.dispose();
  process.exit(finite ? 0 : 1);
}

main().catch((e) => {
  log(`llamacpp_check_load: ${e?.stack ?? e}`);
  out({ ok: false, error: String(e?.message ?? e) });
  process.exit(1);
});
