#!/bin/bash
# The Python example client (client/python/flashd_client.py), out of
# process, with Debian's /usr/bin/python3 and python3-grpcio:
#  1. always, against a fake flashd written in Python from the same .proto
#     (echoes the prompt one byte per token): streaming, stop strings,
#     timings, errors and exit codes;
#  2. when FLASHD_BIN has a `serve` command, against the real daemon on a
#     temporary socket with a tiny random model (`flashd make-model`).
#     Otherwise part 2 is skipped, saying so.
# Usage: python_client_test.sh SOURCE_DIR [FLASHD_BIN]
set -u
src=${1:?usage: python_client_test.sh SOURCE_DIR [FLASHD_BIN]}
flashd=${2:-}
py=/usr/bin/python3
client=$src/client/python/flashd_client.py
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }

if ! $py -c 'import grpc' 2>/dev/null; then
  echo "SKIP: $py has no grpc module (install python3-grpcio)"
  exit 0
fi
tmp=$(mktemp -d /tmp/flashd_pyclient_XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Waits up to $2 seconds for the socket $1 to appear.
wait_socket() {
  for _ in $(seq $(($2 * 10))); do
    [ -S "$1" ] && return 0
    sleep 0.1
  done
  return 1
}

# --- 1. fake server -------------------------------------------------------
cat > "$tmp/fake_server.py" <<'EOF'
import os, sys, tempfile, time
from concurrent import futures
import grpc
sys.path.insert(0, os.path.join(sys.argv[1], "client", "python"))
import flashd_client
stubs = tempfile.mkdtemp(prefix="fake_stubs_")
pb2, pb2_grpc = flashd_client.load_stubs(os.path.join(sys.argv[1], "proto"), stubs)

class Fake(pb2_grpc.FlashdServicer):
    def Generate(self, request, context):
        if request.max_tokens < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "max_tokens: %d is negative" % request.max_tokens)
        prompt = request.prompt.encode()
        yield pb2.GenerateEvent(started=pb2.Started(
            session_id="s1", prompt_tokens=len(prompt) + 1))
        limit = request.max_tokens or 256
        out, reason, n = b"", pb2.EOS, 0
        for n in range(len(prompt) + 1):
            if n == len(prompt):
                break
            if n == limit:
                reason = pb2.MAX_TOKENS
                break
            out += prompt[n:n + 1]
            if any(out.endswith(s.encode()) for s in request.stop):
                reason = pb2.STOP_STRING
                break
            yield pb2.GenerateEvent(token=pb2.TokenEvent(
                id=prompt[n] + 3, text=prompt[n:n + 1], index=n))
        timings = pb2.Timings(prompt_tokens=len(prompt) + 1, generated_tokens=n,
                              prefill_ms=1.5, time_to_first_token_ms=2.0,
                              decode_ms=10.0)
        yield pb2.GenerateEvent(done=pb2.Done(reason=reason, timings=timings))

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
pb2_grpc.add_FlashdServicer_to_server(Fake(), server)
server.add_insecure_port("unix:" + sys.argv[2])
server.start()
server.wait_for_termination()
EOF
sock=$tmp/fake.sock
$py "$tmp/fake_server.py" "$src" "$sock" 2> "$tmp/fake.err" &
pids+=($!)
if ! wait_socket "$sock" 20; then
  cat "$tmp/fake.err"
  fail "the fake server did not start"
  exit 1
fi

out=$($py "$client" --socket "$sock" --prompt "hello" --max-tokens 3 \
        --temperature 0 --seed 1 2> "$tmp/err")
rc=$?
[ $rc -eq 0 ] && [ "$out" = "hel" ] && pass "streams a Generate" ||
  fail "generate: rc=$rc out='$out' err=$(cat "$tmp/err")"
grep -q "prompt 6 tokens, prefill 1.5 ms, first token 2.0 ms, 3 tokens in 10.0 ms (200.0 tok/s), finish: max_tokens" "$tmp/err" &&
  pass "timings on stderr" || fail "timings: $(cat "$tmp/err")"

out=$($py "$client" --target "unix:$sock" --prompt "abc|def" --stop "|" 2> "$tmp/err")
[ "$out" = "abc" ] && grep -q "finish: stop_string" "$tmp/err" &&
  pass "stop strings reach the server" || fail "stop: out='$out' $(cat "$tmp/err")"

$py "$client" --socket "$sock" --prompt x --max-tokens -1 > /dev/null 2> "$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "Generate on unix:$sock: INVALID_ARGUMENT: max_tokens: -1 is negative" "$tmp/err" &&
  pass "server errors: exit 1 naming code and field" || fail "error: rc=$rc $(cat "$tmp/err")"

$py "$client" --socket "$tmp/none.sock" --prompt x --connect-timeout 0.5 \
  > /dev/null 2> "$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "cannot connect to unix:$tmp/none.sock within 0.5s: is flashd serve running?" "$tmp/err" &&
  pass "unreachable daemon: exit 1 with a clear message" || fail "connect: rc=$rc $(cat "$tmp/err")"

$py "$client" --prompt x --proto-dir "$tmp" > /dev/null 2> "$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "cannot find flashd/v1/flashd.proto under $tmp" "$tmp/err" &&
  pass "missing .proto named" || fail "proto-dir: rc=$rc $(cat "$tmp/err")"

# --- 2. the real daemon -----------------------------------------------------
if [ -z "$flashd" ] || [ ! -x "$flashd" ]; then
  echo "SKIP: real daemon part: no flashd binary at '${flashd}' (build the flashd target)"
elif ! "$flashd" serve --help > /dev/null 2>&1; then
  echo "SKIP: real daemon part: $flashd has no 'serve' command yet"
else
  "$flashd" make-model --preset tiny --type q8_0 --out "$tmp/tiny.gguf" > /dev/null ||
    fail "make-model"
  rsock=$tmp/flashd.sock
  "$flashd" serve --model "$tmp/tiny.gguf" --socket "$rsock" --shm-dir "$tmp/shm" > "$tmp/serve.log" 2>&1 &
  pids+=($!)
  if ! wait_socket "$rsock" 30; then
    fail "flashd serve did not create $rsock: $(tail -5 "$tmp/serve.log")"
  else
    out=$($py "$client" --socket "$rsock" --prompt "Once upon a time" \
            --max-tokens 8 --temperature 0 2> "$tmp/err")
    rc=$?
    [ $rc -eq 0 ] && [ -n "$out" ] && grep -q "8 tokens.*finish: max_tokens" "$tmp/err" &&
      pass "real daemon: 8 tokens streamed" || fail "real daemon: rc=$rc out='$out' $(cat "$tmp/err")"
  fi
  # TLS and the API key on a TCP port (a throwaway CA made here).
  if ! command -v openssl > /dev/null; then
    echo "SKIP: TLS part: no openssl (scripts/setup installs it)"
  else
    pki=$tmp/pki
    mkdir -p "$pki"
    printf 'subjectAltName=IP:127.0.0.1\n' > "$pki/san.ext"
    { openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=test CA" \
        -keyout "$pki/ca.key" -out "$pki/ca.pem" &&
      openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$pki/server.key" -out "$pki/server.csr" &&
      openssl x509 -req -days 1 -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
        -CAcreateserial -extfile "$pki/san.ext" -in "$pki/server.csr" \
        -out "$pki/server.pem"; } > /dev/null 2>&1 || fail "openssl: test certificates"
    (umask 077; openssl rand -hex 32 > "$pki/key")
    tsock=$tmp/tls.sock
    "$flashd" serve --model "$tmp/tiny.gguf" --socket "$tsock" --listen 127.0.0.1:0 --shm-dir "$tmp/shm" \
      --tls-cert "$pki/server.pem" --tls-key "$pki/server.key" \
      --api-key-file "$pki/key" > "$tmp/tls.log" 2>&1 &
    pids+=($!)
    if ! wait_socket "$tsock" 30; then
      fail "flashd serve --listen did not start: $(tail -5 "$tmp/tls.log")"
    else
      sleep 0.2
      port=$(sed -n 's/.* and 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/tls.log" | head -1)
      out=$($py "$client" --target "127.0.0.1:$port" --tls-ca "$pki/ca.pem" \
              --api-key-file "$pki/key" --prompt "Once" --max-tokens 4 \
              --temperature 0 2> "$tmp/err")
      rc=$?
      [ $rc -eq 0 ] && grep -q "4 tokens" "$tmp/err" &&
        pass "TLS + API key: 4 tokens" || fail "TLS + API key: rc=$rc $(cat "$tmp/err")"
      $py "$client" --target "127.0.0.1:$port" --tls-ca "$pki/ca.pem" \
        --prompt "Once" --max-tokens 4 > /dev/null 2> "$tmp/err"
      rc=$?
      [ $rc -eq 1 ] && grep -q UNAUTHENTICATED "$tmp/err" &&
        pass "TLS without the key: UNAUTHENTICATED" ||
        fail "TLS without the key: rc=$rc $(cat "$tmp/err")"
    fi
  fi
fi

[ $fails -eq 0 ] && echo "PASS" || echo "$fails check(s) failed"
[ $fails -eq 0 ]
