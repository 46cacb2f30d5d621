#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time (the CTest fuzz tests and
# scripts/fuzz). Usage:
#   run_fuzzer.sh FUZZER SECONDS RSS_MB CORPUS_DIR [SEED_DIR...]
# New inputs go to CORPUS_DIR (kept between runs); seed dirs that do not
# exist are skipped. Crash inputs are saved beside CORPUS_DIR as
# crash-<target>-*. Prints one summary line: executions, exec/s, coverage,
# and adds the executions to CORPUS_DIR.executions (one line per run).
# Exits non-zero when the target crashed, leaked, hung or ran out of memory.
set -uo pipefail
fuzzer="$1" seconds="$2" rss_mb="$3" corpus="$4"
shift 4
name="$(basename "$fuzzer")"
mkdir -p "$corpus"
dirs=("$corpus")
for d in "$@"; do [[ -d "$d" ]] && dirs+=("$d"); done
log="$corpus.log"
# Model-sized inputs make every execution slow (copies, page faults, input
# hashing): the model targets mutate inputs of at most 64 KiB (128 KiB for
# .flash files, whose sections are 4 KiB-aligned). Larger seeds (the shared
# models) are then read truncated; the small seeds make_seeds.sh writes fit.
case "$name" in
  gguf_fuzzer|gguf_model_fuzzer|llama2c_model_fuzzer|sparsity_file_fuzzer)
    max_len=65536 ;;
  flash_file_fuzzer) max_len=131072 ;;
  *) max_len=0 ;;  # libFuzzer's default: the largest seed
esac
"$fuzzer" -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -max_len="$max_len" \
  -malloc_limit_mb="$rss_mb" -timeout=30 -print_final_stats=1 \
  -artifact_prefix="$(dirname "$corpus")/crash-${name}-" "${dirs[@]}" \
  >"$log" 2>&1 &
pid=$!
wait "$pid"
rc=$?
# Harnesses that use shared memory keep it in a directory named by pid
# (removed at exit; not when killed).
rm -rf /dev/shm/flashd-fuzz-"$pid"
execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$')
cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
# Executions add up over runs (scripts/fuzz --until reads the sum).
[[ -n "$execs" ]] && echo "$execs" >>"$corpus.executions"
echo "$name: ${execs:-?} executions, ${rate:-?} exec/s, ${cov:-cov: ?}," \
     "corpus $(ls "$corpus" | wc -l) files, exit $rc (log: $log)"
if ((rc != 0)); then
  grep -m1 -A30 -E '^==[0-9]+==|runtime error|Timeout|out-of-memory|deadly signal' "$log"
fi
exit "$rc"
