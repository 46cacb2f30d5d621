#!/usr/bin/python3
"""Example Python client of flashd: streams one Generate to stdout.

Needs only Debian's python3-grpcio and python3-protobuf, plus a way to
compile the .proto: python3-grpc-tools (`python3 -m grpc_tools.protoc`) or
protoc with grpc_python_plugin (protobuf-compiler, protobuf-compiler-grpc).
The stubs are generated at run time into a temporary directory from
proto/flashd/v1/flashd.proto, so nothing generated is checked in.

Debian 12's python3-grpc-tools (1.14) predates proto3 `optional` fields and
rejects flashd.proto; the protoc + grpc_python_plugin fallback handles it.

  /usr/bin/python3 client/python/flashd_client.py --prompt "Once upon a time"
  /usr/bin/python3 client/python/flashd_client.py --target localhost:5005 \
      --prompt Hello --max-tokens 32 --temperature 0

Exit codes: 0 done, 1 error (daemon unreachable, RPC failed), 2 usage,
130 interrupted.
"""

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

DEFAULT_TARGET = "unix:/run/flashd/flashd.sock"
PROTO_FILE = os.path.join("flashd", "v1", "flashd.proto")


def find_proto_dir(explicit=None):
    """The directory holding flashd/v1/flashd.proto: the given one, else
    ../proto (installed: share/flashd/python) or ../../proto (source)."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [explicit] if explicit else [
        os.path.join(here, "..", "proto"),
        os.path.join(here, "..", "..", "proto"),
    ]
    for d in candidates:
        if os.path.isfile(os.path.join(d, PROTO_FILE)):
            return os.path.normpath(d)
    raise FileNotFoundError(
        "cannot find %s under %s (give --proto-dir)"
        % (PROTO_FILE, " or ".join(os.path.normpath(c) for c in candidates)))


def load_stubs(proto_dir, out_dir, verbose=False):
    """Compiles flashd.proto into out_dir and imports it.

    Returns (flashd_pb2, flashd_pb2_grpc). Tries `python3 -m
    grpc_tools.protoc`, then protoc + grpc_python_plugin; raises
    RuntimeError naming what each one said."""
    proto = os.path.join(proto_dir, PROTO_FILE)
    common = ["-I" + proto_dir, "--python_out=" + out_dir]
    errors = []
    attempts = [("grpc_tools.protoc",
                 [sys.executable, "-m", "grpc_tools.protoc"] + common +
                 ["--grpc_python_out=" + out_dir, proto])]
    protoc_bin = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    if protoc_bin and plugin:
        attempts.append(("protoc + grpc_python_plugin",
                         [protoc_bin] + common +
                         ["--grpc_out=" + out_dir,
                          "--plugin=protoc-gen-grpc=" + plugin, proto]))
    else:
        errors.append("protoc or grpc_python_plugin: not on PATH")
    for name, cmd in attempts:
        result = subprocess.run(cmd, capture_output=True, text=True,
                                check=False)
        if result.returncode == 0:
            if verbose and errors:
                print("flashd_client: stubs by %s (%s)" % (name, "; ".join(errors)),
                      file=sys.stderr)
            return _import_stubs(out_dir)
        lines = (result.stderr or result.stdout).strip().splitlines()
        errors.append("%s: %s" % (name, lines[0] if lines else
                                  "exit code %d" % result.returncode))
    raise RuntimeError("cannot compile %s: %s" % (proto, "; ".join(errors)))


def _import_stubs(out_dir):
    sys.path.insert(0, out_dir)
    importlib.invalidate_caches()
    pb2 = importlib.import_module("flashd.v1.flashd_pb2")
    pb2_grpc = importlib.import_module("flashd.v1.flashd_pb2_grpc")
    return pb2, pb2_grpc


def build_request(pb2, args):
    """A GenerateRequest from the parsed flags (stream delivery)."""
    request = pb2.GenerateRequest(prompt=args.prompt, max_tokens=args.max_tokens,
                                  stop=args.stop or [])
    if args.temperature is not None:
        request.sampling.temperature = args.temperature
    if args.seed is not None:
        request.sampling.seed = args.seed
    return request


def format_timings(pb2, done):
    """One line of timings from a Done event."""
    t = done.timings
    line = ("prompt %d tokens, prefill %.1f ms, first token %.1f ms, %d tokens"
            % (t.prompt_tokens, t.prefill_ms, t.time_to_first_token_ms,
               t.generated_tokens))
    if t.generated_tokens > 1 and t.decode_ms > 0:
        line += " in %.1f ms (%.1f tok/s)" % (
            t.decode_ms, (t.generated_tokens - 1) * 1000.0 / t.decode_ms)
    return line + ", finish: " + pb2.FinishReason.Name(done.reason).lower()


def open_channel(grpc, args):
    """A channel to args.target: TLS when --tls-ca or a client certificate
    is given (mutual TLS with --tls-cert/--tls-key), else plain."""
    if not (args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(args.target)

    def read(path):
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()
    creds = grpc.ssl_channel_credentials(root_certificates=read(args.tls_ca),
                                         private_key=read(args.tls_key),
                                         certificate_chain=read(args.tls_cert))
    return grpc.secure_channel(args.target, creds)


def call_metadata(args):
    """The API key of --api-key-file as 'authorization: Bearer KEY', or None."""
    if not args.api_key_file:
        return None
    with open(args.api_key_file) as f:
        key = f.read().strip()
    return [("authorization", "Bearer " + key)]


def generate(grpc, pb2, pb2_grpc, args, out=sys.stdout.buffer):
    """Streams one Generate; returns the process exit code."""
    channel = open_channel(grpc, args)
    try:
        grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
    except grpc.FutureTimeoutError:
        print("flashd_client: cannot connect to %s within %gs: is flashd serve "
              "running?" % (args.target, args.connect_timeout), file=sys.stderr)
        return 1
    stub = pb2_grpc.FlashdStub(channel)
    call = stub.Generate(build_request(pb2, args), metadata=call_metadata(args))
    done = None
    try:
        for event in call:
            kind = event.WhichOneof("event")
            if kind == "token":
                out.write(event.token.text)
                out.flush()
            elif kind == "done":
                done = event.done
    except grpc.RpcError as e:
        print("\nflashd_client: Generate on %s: %s: %s"
              % (args.target, e.code().name, e.details()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        call.cancel()
        print("\nflashd_client: interrupted", file=sys.stderr)
        return 130
    finally:
        channel.close()
    out.write(b"\n")
    out.flush()
    if done is None:
        print("flashd_client: Generate on %s: the stream ended without a Done "
              "event" % args.target, file=sys.stderr)
        return 1
    print(format_timings(pb2, done), file=sys.stderr)
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", default=DEFAULT_TARGET,
                       help="gRPC target: unix:PATH or host:port "
                            "(default %(default)s)")
    where.add_argument("--socket", help="the daemon's Unix socket path")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-tokens", type=int, default=0,
                   help="0: the server's default")
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--proto-dir", help="directory holding flashd/v1/flashd.proto")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--tls-ca", help="PEM CA of the daemon's certificate (TLS)")
    p.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    p.add_argument("--api-key-file",
                   help="file holding the daemon's API key (TCP ports)")
    p.add_argument("--verbose", action="store_true",
                   help="say how the stubs were generated")
    args = p.parse_args(argv)
    if args.socket:
        args.target = "unix:" + args.socket
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    return args


def main(argv):
    args = parse_args(argv)
    try:
        import grpc  # noqa: PLC0415 (report a missing package clearly)
    except ImportError as e:
        print("flashd_client: %s (install python3-grpcio; on Debian run "
              "/usr/bin/python3)" % e, file=sys.stderr)
        return 1
    try:
        proto_dir = find_proto_dir(args.proto_dir)
        with tempfile.TemporaryDirectory(prefix="flashd_stubs_") as out_dir:
            pb2, pb2_grpc = load_stubs(proto_dir, out_dir, args.verbose)
            return generate(grpc, pb2, pb2_grpc, args)
    except (FileNotFoundError, RuntimeError) as e:
        print("flashd_client: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
