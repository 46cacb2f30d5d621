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

echo "cli: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
