#!/usr/bin/env bash
# Out-of-process tests of the flashd binary: output formats, files written,
# error messages and exit codes. Usage: cli_test.sh FLASHD SHARED_DIR
set -u
flashd="$1"
shared="${FLASHD_TEST_DATA:-$2}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
check() {  # check NAME CONDITION-EXIT-CODE
  if [[ "$2" == 0 ]]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $1"; fi
}

if [[ ! -f "$shared/models/stories260K.bin" ]]; then
  if [[ -n "${CI:-}" ]]; then echo "missing $shared/models/stories260K.bin"; exit 1; fi
  echo "skipping: missing $shared (set FLASHD_TEST_DATA)"; exit 0
fi

# run --ids reproduces the llama2.c golden ids (prompt after BOS, generated,
# ending with the BOS that stops a story).
prompt="Once upon a time, there was a little dog"
want="$(tr -s ' \n' ' ' < "$shared/golden/stories260K_greedy_dog.ids" | sed 's/ $//')"
got="$("$flashd" run --model "$shared/models/stories260K.bin" --tokenizer "$shared/models/tok512.bin" \
  --prompt "$prompt" --temperature 0 --max-tokens 300 --ids --quiet --threads 2)"
[[ "$got" == "$want" ]]; check "run --ids equals stories260K_greedy_dog.ids" $?

# run prints text that starts with the prompt.
text="$("$flashd" run --model "$shared/models/stories260K.bin" --prompt "$prompt" \
  --temperature 0 --max-tokens 20 --quiet)"
[[ "$text" == "$prompt"* ]]; check "run echoes the prompt then continues" $?

# Same seed, same text; sampling flags accepted.
a="$("$flashd" run --model "$shared/models/stories260K.bin" --seed 7 --temperature 0.9 --top-k 20 --top-p 0.9 --min-p 0.02 --repeat-penalty 1.1 --max-tokens 30 --quiet)"
b="$("$flashd" run --model "$shared/models/stories260K.bin" --seed 7 --temperature 0.9 --top-k 20 --top-p 0.9 --min-p 0.02 --repeat-penalty 1.1 --max-tokens 30 --quiet)"
[[ "$a" == "$b" && -n "$a" ]]; check "same seed gives the same text" $?

# logits writes PREFIX.ids and n_positions x n_vocab floats.
"$flashd" logits --model "$shared/models/tl-small-Q8_0.gguf" --prompt "$(cat "$shared/golden/p1.txt")" \
  --out "$tmp/p1" 2>/dev/null
check "logits exits 0" $?
cmp -s <(tr -s ' \n' ' ' < "$tmp/p1.ids") <(tr -s ' \n' ' ' < "$shared/golden/tl-small-Q8_0.p1.ids"); check "logits ids equal llama.cpp's" $?
n_ids=$(wc -w < "$tmp/p1.ids")
[[ $(stat -c %s "$tmp/p1.logits.f32") -eq $((n_ids * 32000 * 4)) ]]; check "logits file has n x 32000 floats" $?

# bench --json prints one JSON object with the medians.
"$flashd" bench --model "$shared/models/tl-small-Q4_0.gguf" --prompt-tokens 16 --gen-tokens 8 --repeats 2 --json \
  | python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["prefill_tok_s"]>0 and j["decode_tok_s"]>0 and j["ttft_ms"]>0 and j["peak_rss_mb"]>0 and len(j["runs"])==2'
check "bench --json fields" $?

# make-model writes a loadable model.
"$flashd" make-model --preset tiny --type q4_k_m --out "$tmp/tiny.gguf" 2>/dev/null
check "make-model exits 0" $?
"$flashd" run --model "$tmp/tiny.gguf" --prompt "hello" --max-tokens 4 --quiet >/dev/null
check "run on a made model" $?

# Errors: message and exit code.
err="$("$flashd" run --model "$tmp/missing.gguf" 2>&1)"; code=$?
[[ $code -eq 1 && "$err" == *"cannot open"*"missing.gguf"* ]]; check "missing model: exit 1, names the file" $?
err="$("$flashd" run --model "$shared/models/stories260K.bin" --bogus 1 2>&1)"; code=$?
[[ $code -eq 2 && "$err" == *"unknown flag --bogus"* ]]; check "unknown flag: exit 2, named" $?
err="$("$flashd" run --model "$shared/models/stories260K.bin" --top-p 2 2>&1)"; code=$?
[[ $code -eq 1 && "$err" == *"top_p"* ]]; check "bad sampling value: named" $?
err="$("$flashd" make-model --preset huge --out "$tmp/x.gguf" 2>&1)"; code=$?
[[ $code -eq 1 && "$err" == *"'huge'"* ]]; check "bad preset: named" $?
head -c 1000 "$shared/models/tl-small-Q8_0.gguf" > "$tmp/trunc.gguf"
err="$("$flashd" run --model "$tmp/trunc.gguf" 2>&1)"; code=$?
[[ $code -eq 1 && "$err" == *"trunc.gguf"* && "$err" == *"gguf"* ]]; check "truncated GGUF: error names the file" $?
"$flashd" 2>/dev/null; [[ $? -eq 2 ]]; check "no command: exit 2" $?
"$flashd" run --help >/dev/null; check "run --help: exit 0" $?

# Flash engine: convert, then every streaming mode reproduces the golden
# (1.2 MiB: above flash mode's minimum for this 1.1 MB file, so its neuron
# caches hold only part of the FFN).
cp "$shared/models/stories260K.bin" "$tmp/stories.bin"
"$flashd" convert "$tmp/stories.bin" --tokenizer "$shared/models/tok512.bin" > "$tmp/convert.txt" 2>&1
check "convert exits 0 and writes stories.flash" $?
[[ -f "$tmp/stories.flash" && "$(cat "$tmp/convert.txt")" == *"bundle"* ]]; check "convert: default output name, summary" $?
for mode in naive layer flash; do
  got="$("$flashd" run --model "$tmp/stories.flash" --mode $mode --dram-budget 1.2MiB \
    --prompt "$prompt" --temperature 0 --max-tokens 300 --ids --quiet --threads 2 --kv-type f32)"
  [[ "$got" == "$want" ]]; check "run --mode $mode --ids equals the golden" $?
done
got="$("$flashd" run --model "$tmp/stories.bin" --tokenizer "$shared/models/tok512.bin" --mode flash \
  --prompt "$prompt" --temperature 0 --max-tokens 300 --ids --quiet --threads 2)"
[[ "$got" == "$want" ]]; check "run --model SRC --mode flash finds SRC.flash" $?
err="$("$flashd" run --model "$tmp/stories.flash" --mode layer --dram-budget 1KiB --prompt x 2>&1)"; code=$?
[[ $code -eq 1 && "$err" == *"below the minimum of mode layer"* ]]; check "budget below the minimum: refused, named" $?
err="$("$flashd" run --model "$tmp/stories.flash" --mode resident --prompt x 2>&1)"; code=$?
[[ $code -eq 1 && "$err" == *"needs the source model"* ]]; check "resident on a .flash: refused" $?
"$flashd" bench --model "$tmp/stories.flash" --mode flash --dram-budget 1.2MiB --prompt-tokens 8 --gen-tokens 8 --repeats 1 --json \
  | python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["mode"]=="flash" and j["dram_budget_bytes"]>0 and j["flash_bytes_per_token"]>=0 and 0<=j["cache_hit_rate"]<=1 and j["peak_rss_bytes"]>0 and "read_mb_s" in j'
check "bench --mode flash --json: flash fields" $?
# --sparsity auto: only in flash mode, and only when the estimate says the
# predictor saves reads (here it does not: 4 KiB-aligned reads of <1 KiB
# bundles read through every gap).
"$flashd" calibrate --model "$tmp/stories.bin" --tokenizer "$shared/models/tok512.bin" \
  --calib-tokens 256 --eval-tokens 0 >/dev/null 2>&1
check "calibrate writes stories.sparsity" $?
out="$("$flashd" bench --model "$tmp/stories.flash" --dram-budget 1.2MiB --prompt-tokens 4 --gen-tokens 4 --repeats 1 2>&1)"
[[ "$out" == *"sparsity off (dense-exact; auto: estimated reads per token: keep 0.80 with its predictor "*" KiB, dense "*" KiB;"* ]]
check "sparsity auto: dense when the predictor would cost reads, estimates shown" $?
out="$("$flashd" bench --model "$tmp/stories.flash" --dram-budget 1.2MiB --sparsity default --prompt-tokens 4 --gen-tokens 4 --repeats 1 2>&1)"
[[ "$out" == *"sparsity keep 0.80 of FFN neurons"* ]]; check "sparsity default: forced" $?
out="$("$flashd" bench --model "$tmp/stories.bin" --tokenizer "$shared/models/tok512.bin" --prompt-tokens 4 --gen-tokens 4 --repeats 1 2>&1)"
[[ "$out" == *"sparsity off (dense-exact; auto uses "*"only in mode flash"* ]]; check "sparsity auto: off in resident mode" $?
cp "$tmp/stories.flash" "$tmp/bad.flash"
printf '\x07' | dd of="$tmp/bad.flash" bs=1 seek=20 conv=notrunc 2>/dev/null
err="$("$flashd" run --model "$tmp/bad.flash" --prompt x 2>&1)"; code=$?
[[ $code -eq 1 && "$err" == *"bad.flash"* ]]; check "corrupt .flash header: refused" $?
cp "$shared/models/stories260K.bin" "$tmp/other.bin"
printf '\x01' | dd of="$tmp/other.bin" bs=1 seek=100000 conv=notrunc 2>/dev/null
err="$("$flashd" run --model "$tmp/other.bin" --tokenizer "$shared/models/tok512.bin" --mode flash --flash "$tmp/stories.flash" --prompt x 2>&1)"; code=$?
[[ $code -eq 1 && "$err" == *"different model"* ]]; check ".flash of another model: refused" $?

# The neuron cache is in shared memory by default only for the daemon.
"$flashd" serve --help 2>&1 | grep -q -- "--cache-shm .*'': private memory.*(default auto)$"
check "serve --help: --cache-shm defaults to auto" $?
! "$flashd" run --help 2>&1 | grep -q -- "--cache-shm .*(default auto)"
check "run --help: --cache-shm defaults to private" $?

echo "cli: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
