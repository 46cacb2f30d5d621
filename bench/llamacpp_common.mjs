// Shared helpers for driving the llama.cpp peer through node-llama-cpp (v3).
//
// node-llama-cpp is NOT a dependency of flashd: it lives in a separate "peers"
// directory (default: <repo>/../peers, override with FLASHD_PEERS_DIR) and is
// installed by bench/install-peers. Only its prebuilt binaries are used
// (@node-llama-cpp/linux-x64); it is never allowed to download or build
// llama.cpp.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoDir = path.resolve(here, "..");

export class PeerError extends Error {}

export function log(...args) {
  process.stderr.write(args.join(" ") + "\n");
}

// Candidate peers directories, in priority order. An explicit
// FLASHD_PEERS_DIR is the only candidate (so a wrong value fails loudly).
export function peersDirCandidates() {
  if (process.env.FLASHD_PEERS_DIR) return [path.resolve(process.env.FLASHD_PEERS_DIR)];
  const c = [];
  c.push(path.resolve(repoDir, "..", "peers"));
  c.push("/work/peers");
  return [...new Set(c)];
}

export function findPeersDir() {
  for (const dir of peersDirCandidates()) {
    if (fs.existsSync(path.join(dir, "node_modules", "node-llama-cpp", "package.json"))) return dir;
  }
  return null;
}

function readJson(p) {
  return JSON.parse(fs.readFileSync(p, "utf8"));
}

// Imports node-llama-cpp from the peers directory. Throws PeerError with an
// actionable message if it is absent.
export async function importNodeLlamaCpp() {
  const peersDir = findPeersDir();
  if (peersDir == null) {
    throw new PeerError(
      "node-llama-cpp not installed: run bench/install-peers " +
        `(looked in: ${peersDirCandidates().map((d) => path.join(d, "node_modules")).join(", ")}; ` +
        "set FLASHD_PEERS_DIR to use another directory)");
  }
  const pkgDir = path.join(peersDir, "node_modules", "node-llama-cpp");
  const pkg = readJson(path.join(pkgDir, "package.json"));
  if (!/^3\./.test(pkg.version)) {
    throw new PeerError(`node-llama-cpp ${pkg.version} found in ${pkgDir}, but v3 is required: run bench/install-peers`);
  }
  const prebuiltDir = path.join(peersDir, "node_modules", "@node-llama-cpp", `${process.platform}-${process.arch}`);
  if (!fs.existsSync(prebuiltDir)) {
    throw new PeerError(`node-llama-cpp is installed but its prebuilt binaries (${prebuiltDir}) are missing: run bench/install-peers`);
  }
  // Never download / build llama.cpp (these are read when the module loads).
  process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
  process.env.NODE_LLAMA_CPP_GPU = "false";
  const entry = path.join(pkgDir, pkg.exports?.["."]?.import ?? pkg.main ?? "dist/index.js");
  const mod = await import(pathToFileURL(entry).href);
  return { mod, peersDir, pkgDir, version: pkg.version, prebuiltDir };
}

// Collects llama.cpp log lines (node-llama-cpp delivers them one line at a time).
export class LogCollector {
  constructor(verbose) {
    this.verbose = verbose;
    this.lines = [];
  }
  logger = (level, message) => {
    for (const line of String(message).split("\n")) {
      if (line === "") continue;
      this.lines.push({ level, line });
      if (this.verbose || level === "error" || level === "fatal" || (level === "warn" && !/^\s*$/.test(line)))
        process.stderr.write(`[llama.cpp ${level}] ${line}\n`);
    }
  };
  // llama.cpp logs reach JS through an async thread-safe callback; give them
  // a moment to arrive.
  async settle(ms = 30) {
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, ms));
  }
  mark() {
    return this.lines.length;
  }
  since(mark) {
    return this.lines.slice(mark).map((l) => l.line);
  }
  errors() {
    return this.lines.filter((l) => l.level === "error" || l.level === "fatal").map((l) => l.line);
  }
  find(re) {
    for (const { line } of this.lines) {
      const m = line.match(re);
      if (m) return m;
    }
    return null;
  }
  findLast(re) {
    for (let i = this.lines.length - 1; i >= 0; i--) {
      const m = this.lines[i].line.match(re);
      if (m) return m;
    }
    return null;
  }
}

// getLlama with the CPU prebuilt only, never building/downloading.
export async function loadLlama(nlc, collector, { maxThreads } = {}) {
  const { getLlama, LlamaLogLevel } = nlc.mod;
  const llama = await getLlama({
    gpu: false,
    build: "never",
    usePrebuiltBinaries: true,
    skipDownload: true,
    progressLogs: false,
    existingPrebuiltBinaryMustMatchBuildOptions: false,
    logLevel: LlamaLogLevel.info, // needed for llama_perf / print_info lines; filtered by LogCollector
    logger: collector.logger,
    ...(maxThreads != null ? { maxThreads } : {}),
  });
  return llama;
}

// Best-effort extraction of the llama.cpp commit from the shipped
// libllama-common.so (build-info.cpp places LLAMA_COMMIT right before the
// "version: %s (build %d, commit %s)" format string).
export function readLlamaCommit(prebuiltDir) {
  try {
    const libDir = path.join(prebuiltDir, "bins", `${process.platform}-${process.arch}`);
    const lib = fs.readdirSync(libDir).find((f) => /^libllama-common.*\.so$/.test(f));
    if (!lib) return null;
    const s = fs.readFileSync(path.join(libDir, lib)).toString("latin1");
    const i = s.indexOf("version: %s (build %d, commit %s)");
    if (i < 0) return null;
    const m = s.slice(Math.max(0, i - 200), i).match(/\x00([0-9a-f]{7,40})\x00+$/);
    return m ? m[1] : null;
  } catch {
    return null;
  }
}

export function prebuiltLibDir(nlc) {
  return path.join(nlc.prebuiltDir, "bins", `${process.platform}-${process.arch}`);
}

// Static description of the peer: versions, selected CPU variant, system info.
export function describePeer(nlc, llama, collector) {
  // The CPU variant ggml picked at runtime (libggml-cpu-<variant>.so) is
  // whichever one is mapped into this process.
  let variantFile = null;
  try {
    const maps = fs.readFileSync("/proc/self/maps", "utf8");
    const m = maps.match(/\/(libggml-cpu[^/\s]*\.so)\s*$/m);
    if (m) variantFile = m[1];
  } catch {}
  if (variantFile == null) {
    const variantMatch = collector.findLast(/load_backend: loaded CPU backend from (.*)$/);
    variantFile = variantMatch ? path.basename(variantMatch[1]) : null;
  }
  const variant = variantFile ? variantFile.replace(/^libggml-cpu-?/, "").replace(/\.so$/, "") || "generic" : null;
  const release = llama.llamaCppRelease?.release ?? null;
  const commit = readLlamaCommit(nlc.prebuiltDir);
  let systemInfo = null;
  try {
    systemInfo = String(llama.systemInfo).trim();
  } catch {}
  let buildMeta = null;
  try {
    buildMeta = readJson(path.join(prebuiltLibDir(nlc), "_nlcBuildMetadata.json"));
  } catch {}
  return {
    version: `${release ?? "unknown"}${commit ? ` (commit ${commit})` : ""}`,
    llama_cpp_release: release,
    llama_cpp_commit: commit,
    node_llama_cpp_version: nlc.version,
    build_type: llama.buildType,
    prebuilt_package: `@node-llama-cpp/${process.platform}-${process.arch}`,
    prebuilt_built_on: buildMeta?.buildOptions?.platformInfo
      ? `${buildMeta.buildOptions.platformInfo.name} ${buildMeta.buildOptions.platformInfo.version}`
      : null,
    cpu_variant: variant,
    cpu_backend_lib: variantFile,
    system_info: systemInfo,
  };
}

// Model facts as printed by llama.cpp's own loader (print_info: ...).
export function modelInfoFromLog(collector) {
  const num = (key) => {
    const m = collector.findLast(new RegExp(`print_info: ${key}\\s*=\\s*(-?[0-9.]+)\\s*$`));
    return m ? Number(m[1]) : null;
  };
  const str = (key) => {
    const m = collector.findLast(new RegExp(`print_info: ${key}\\s*=\\s*(.*?)\\s*$`));
    return m ? m[1] : null;
  };
  const loadMode = collector.findLast(/load_tensors: .*\(load_mode = ([a-z_+]+)\)/);
  const buf = collector.findLast(/load_tensors:\s+(\S+) model buffer size =\s+([0-9.]+) MiB/);
  return {
    arch: str("arch"),
    file_type: str("file type"),
    n_vocab: num("n_vocab"),
    n_layer: num("n_layer"),
    n_embd: num("n_embd"),
    n_head: num("n_head"),
    n_head_kv: num("n_head_kv"),
    n_ff: num("n_ff"),
    n_ctx_train: num("n_ctx_train"),
    n_params: str("model params"),
    load_mode: loadMode ? loadMode[1] : null,
    model_buffer: buf ? `${buf[1]} ${buf[2]} MiB` : null,
  };
}

export function procStatusKb(field) {
  const s = fs.readFileSync("/proc/self/status", "utf8");
  const m = s.match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  return m ? Number(m[1]) : null;
}

export function median(xs) {
  const v = xs.filter((x) => x != null && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const h = v.length >> 1;
  return v.length % 2 ? v[h] : (v[h - 1] + v[h]) / 2;
}

export function round(x, d = 3) {
  if (x == null || !Number.isFinite(x)) return x ?? null;
  const f = 10 ** d;
  return Math.round(x * f) / f;
}

// CPU time used by everything else on the machine while we ran, to flag
// disturbed measurements: (all busy CPU time - our process' CPU time) / wall.
function readProcStatCpu() {
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + (f[4] || 0);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}
export function procCpuJiffies(pid = "self") {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const r = s.slice(s.lastIndexOf(")") + 2).split(" ").map(Number);
    return r[11] + r[12] + r[13] + r[14]; // utime stime cutime cstime
  } catch {
    return null;
  }
}
export function hostMeterStart() {
  return { cpu: readProcStatCpu(), self: procCpuJiffies(), t: performance.now() };
}
// ownJiffies: CPU time of the measured process(es) during the interval; by
// default this process.
export function hostMeterStop(start, ownJiffies = null) {
  const cpu = readProcStatCpu();
  const own = ownJiffies ?? procCpuJiffies() - start.self;
  const busy = cpu.busy - start.cpu.busy;
  const total = cpu.total - start.cpu.total;
  const ncpu = fs.readFileSync("/proc/stat", "utf8").split("\n").filter((l) => /^cpu\d/.test(l)).length || 1;
  return {
    other_cpu_pct: total > 0 ? round(Math.max(0, (busy - own) / total) * 100 * ncpu, 1) : null, // % of one core
    busy_cpu_pct: total > 0 ? round((busy / total) * 100 * ncpu, 1) : null,
  };
}
