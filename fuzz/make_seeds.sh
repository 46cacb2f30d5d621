#!/usr/bin/env bash
# Makes the fuzz targets' seed corpora in OUT/<target>/ (outside the repo):
# the shared test models and tokenizers (linked, never copied), inputs
# made by the project's own tools (flashd convert, calibrate, calibrate-io
# in a temp dir) when a normally built flashd is given, and the small
# hand-written seeds in fuzz/corpus/. Usage:
#   make_seeds.sh FLASHD_BINARY|"" SHARED_DIR OUT
set -euo pipefail
flashd="$1" shared="$2" out="$3"
[[ -n "$flashd" ]] && flashd="$(realpath "$flashd")"
mkdir -p "$out" && out="$(realpath "$out")"
src="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$src")"
mkdir -p "$out"
cd "$out"
for t in gguf gguf_model llama2c_model llama2c_tokenizer tokenizer flash_file \
         sparsity_file io_profile generate_request token_ring cache_segment; do
  mkdir -p "$t"
done
link() { [[ -f "$1" ]] && ln -sf "$1" "$2/" || echo "make_seeds: $1 missing, skipped"; }

# Shared files as they are.
for t in gguf gguf_model; do
  link "$shared/models/llama-2-tiny-random.gguf" "$t"
  link "$shared/tokenizer/ggml-vocab-llama-spm.gguf" "$t"
done
link "$shared/models/stories260K.bin" llama2c_model
# A small llama2.c checkpoint (dim 16, hidden 32, 2 layers, 2 heads, 1 KV
# head, vocab -16 (own classifier), seq_len 8), random weights.
python3 - llama2c_model/small.bin <<'PY'
import struct, sys, random
random.seed(2)
dim, hid, L, H, KVH, V, T = 16, 32, 2, 2, 1, 16, 8
hd = dim // H; kv = KVH * hd
n = V*dim + L*dim + L*dim*dim + 2*L*dim*kv + L*dim*dim + L*dim + 3*L*dim*hid + dim + T*hd + V*dim
w = struct.pack('<%df' % n, *(random.uniform(-1, 1) for _ in range(n)))
open(sys.argv[1], 'wb').write(struct.pack('<7i', dim, hid, L, H, KVH, -V, T) + w)
PY
# A small GGUF model (n_embd 32, 1 layer, 16 tokens) with F32, F16, Q8_0
# and Q4_0 tensors, so the model fuzzers start from a model that loads in
# microseconds rather than from the 32000-token shared ones.
python3 - gguf_model/small-mixed.gguf <<'PY'
import struct, sys, random
random.seed(1)
def s(x): b = x.encode(); return struct.pack('<Q', len(b)) + b
kv = [('general.architecture', 8, s('llama')),
      ('llama.embedding_length', 4, struct.pack('<I', 32)),
      ('llama.block_count', 4, struct.pack('<I', 1)),
      ('llama.feed_forward_length', 4, struct.pack('<I', 64)),
      ('llama.attention.head_count', 4, struct.pack('<I', 4)),
      ('llama.attention.head_count_kv', 4, struct.pack('<I', 2)),
      ('llama.context_length', 4, struct.pack('<I', 64)),
      ('llama.attention.layer_norm_rms_epsilon', 6, struct.pack('<f', 1e-5)),
      ('tokenizer.ggml.model', 8, s('llama'))]
pieces = ['<unk>', '<s>', '</s>'] + ['<0x%02X>' % b for b in (0x20, 0x41, 0xE2)] + \
         ['\u2581', 'a', 'b', '\u2581a', 'ab', '\u2581ab', 'x', 'y', 'xy', '\u2581\u2581']
arr = struct.pack('<IQ', 8, len(pieces)) + b''.join(s(p) for p in pieces)
kv.append(('tokenizer.ggml.tokens', 9, arr))
kv.append(('tokenizer.ggml.scores', 9, struct.pack('<IQ', 6, len(pieces)) +
           b''.join(struct.pack('<f', -i) for i in range(len(pieces)))))
types = [2, 3, 3] + [6] * 3 + [1] * 10
kv.append(('tokenizer.ggml.token_type', 9, struct.pack('<IQ', 5, len(pieces)) +
           b''.join(struct.pack('<i', t) for t in types)))
# ggml types: 0 F32, 1 F16, 2 Q4_0 (18 B / 32), 8 Q8_0 (34 B / 32).
size = {0: lambda n: 4 * n, 1: lambda n: 2 * n, 2: lambda n: n // 32 * 18, 8: lambda n: n // 32 * 34}
E, F, V, KV = 32, 64, len(pieces), 16
tensors = [('token_embd.weight', [E, V], 1), ('output_norm.weight', [E], 0),
           ('output.weight', [E, V], 8), ('blk.0.attn_norm.weight', [E], 0),
           ('blk.0.ffn_norm.weight', [E], 0), ('blk.0.attn_q.weight', [E, E], 8),
           ('blk.0.attn_k.weight', [E, KV], 2), ('blk.0.attn_v.weight', [E, KV], 1),
           ('blk.0.attn_output.weight', [E, E], 0), ('blk.0.ffn_gate.weight', [E, F], 2),
           ('blk.0.ffn_up.weight', [E, F], 8), ('blk.0.ffn_down.weight', [F, E], 1)]
out = b'GGUF' + struct.pack('<IQQ', 3, len(tensors), len(kv))
for k, t, v in kv: out += s(k) + struct.pack('<I', t) + v
off, data = 0, b''
for name, dims, t in tensors:
    n = 1
    for d in dims: n *= d
    out += s(name) + struct.pack('<I', len(dims)) + b''.join(struct.pack('<Q', d) for d in dims)
    out += struct.pack('<IQ', t, off)
    blob = bytes(random.randrange(256) for _ in range(size[t](n)))
    if t == 0: blob = b''.join(struct.pack('<f', random.uniform(-1, 1)) for _ in range(n))
    if t == 1: blob = b''.join(struct.pack('<e', random.uniform(-1, 1)) for _ in range(n))
    pad = (-len(blob)) % 32
    data += blob + bytes(pad); off += len(blob) + pad
out += bytes((-len(out)) % 32)
open(sys.argv[1], 'wb').write(out + data)
PY
ln -sf "$out/gguf_model/small-mixed.gguf" gguf/
# llama2c_tokenizer: int32 vocabulary size, then tokenizer.bin.
if [[ -f "$shared/models/tok512.bin" ]]; then
  python3 -c 'import struct,sys; sys.stdout.buffer.write(struct.pack("<i", 512))' \
    | cat - "$shared/models/tok512.bin" > llama2c_tokenizer/tok512
fi
# tokenizer: the llama.cpp tokenizer test inputs, for both vocabularies
# (first byte 0: SentencePiece, 1: llama2.c; +2: add BOS).
if [[ -f "$shared/tokenizer/ggml-vocab-llama-spm.gguf.inp" ]]; then
  python3 - "$shared/tokenizer/ggml-vocab-llama-spm.gguf.inp" tokenizer <<'PY'
import sys
text = open(sys.argv[1], 'rb').read().split(b'\n__ggml_vocab_test__\n')
for i, t in enumerate(text):
    for sel in (0, 3):
        open(f'{sys.argv[2]}/inp{i:02d}_{sel}', 'wb').write(bytes([sel]) + t)
PY
fi

# Hand-written seeds: JSON as is, GenerateRequest text protos encoded.
cp "$src"/corpus/io_profile/* io_profile/
for f in "$src"/corpus/generate_request/*.textproto; do
  protoc --encode=flashd.v1.GenerateRequest -I "$repo/proto" \
    "$repo/proto/flashd/v1/flashd.proto" < "$f" \
    > "generate_request/$(basename "$f" .textproto)"
done
# A token ring (capacity 4, three tokens, finished) and a neuron-cache
# segment (2 layers of 2 slots, 64-byte bundles, one slot used), in the
# layouts of common/shm/token_ring_layout.h and common/flash/cache_segment.cc.
python3 - <<'PY'
import struct
hdr = struct.pack('<QIIIIQiIQQII', 0x474e495254444c46, 1, 192, 4, 64, 7, 1, 0, 0, 0, 2, 1)
hdr = hdr.ljust(64, b'\0') + struct.pack('<QI', 3, 3).ljust(64, b'\0')
hdr += struct.pack('<QIi', 0, 0, 0).ljust(64, b'\0')
recs = b''
for i, (tid, text) in enumerate([(400, b' Once'), (261, b' upon'), (378, b'\xe2\x82')]):
    recs += struct.pack('<iIHHI', tid, i, len(text), 1 if i == 2 else 0, 0) + text.ljust(48, b'\0')
recs += bytes(64)
open('token_ring/finished', 'wb').write(hdr + recs)
def up(x): return (x + 4095) // 4096 * 4096
layers, cap, bb = 2, 2, 64
at = up(40 + 32 * layers)
recs, offs = b'', []
for l in range(layers):
    slots = at; at = up(at + cap * bb); ids = at; at = up(at + cap * 4)
    offs.append((slots, ids))
    recs += struct.pack('<iiQQQ', cap, 1, bb, slots, ids)
seg = bytearray(at)
seg[0:40] = b'FLSHDNC\0' + struct.pack('<IIQQii', 1, 40, 0x1234, at, layers, 8)
seg[40:40 + len(recs)] = recs
for slots, ids in offs:
    seg[ids:ids + 8] = struct.pack('<ii', 5, 0)
open('cache_segment/two_layers', 'wb').write(bytes(seg))
PY

# Made by flashd itself: .flash files, a .sparsity profile, an I/O profile.
if [[ -z "$flashd" || ! -x "$flashd" ]]; then
  echo "make_seeds: no flashd binary (FLASHD_SEED_TOOL): .flash, .sparsity" \
       "and I/O-profile seeds skipped"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [[ -f "$shared/models/stories260K.bin" ]]; then
  [[ -f flash_file/stories260K.flash ]] || {
    "$flashd" convert "$shared/models/stories260K.bin" \
      --tokenizer "$shared/models/tok512.bin" --out "$tmp/s.flash" >/dev/null 2>&1 &&
      cp "$tmp/s.flash" flash_file/stories260K.flash
  }
  [[ -f sparsity_file/stories260K.sparsity ]] || {
    "$flashd" calibrate "$shared/models/stories260K.bin" \
      --tokenizer "$shared/models/tok512.bin" --calib-tokens 256 \
      --eval-tokens 0 --keep 0.5 --out "$tmp/s.sparsity" >/dev/null 2>&1 &&
      cp "$tmp/s.sparsity" sparsity_file/stories260K.sparsity &&
      ln -sf "$out/sparsity_file/stories260K.sparsity" gguf/
  }
  [[ -f io_profile/calibrated.json ]] || {
    "$flashd" calibrate-io --file "$shared/models/stories260K.bin" \
      --seconds-per-cell 0.01 --out "$tmp/p.json" >/dev/null 2>&1 &&
      cp "$tmp/p.json" io_profile/calibrated.json
  }
fi
# The small GGUF above as a .flash file and a .sparsity profile.
[[ -f flash_file/small-mixed.flash ]] || {
  "$flashd" convert gguf_model/small-mixed.gguf --out "$tmp/m.flash" \
    >/dev/null 2>&1 && cp "$tmp/m.flash" flash_file/small-mixed.flash
}
[[ -f sparsity_file/small-mixed.sparsity ]] || {
  "$flashd" calibrate gguf_model/small-mixed.gguf --calib-tokens 64 \
    --eval-tokens 0 --seq-len 32 --keep 0.5 --predictor gate \
    --out "$tmp/m.sparsity" >/dev/null 2>&1 &&
    cp "$tmp/m.sparsity" sparsity_file/small-mixed.sparsity
}
for t in flash_file sparsity_file io_profile; do
  [[ -n "$(ls "$t")" ]] || echo "make_seeds: flashd made no $t seed"
done
echo "make_seeds: $(find . -type f -o -type l | wc -l) seeds in $out"
