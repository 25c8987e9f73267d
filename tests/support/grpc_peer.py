#!/usr/bin/env python3
"""A real gRPC server and client (PyPI `grpcio`) for the tests.

No protoc: generic handlers with raw-bytes messages, service `tether.test.Echo`.

  grpc_peer.py server [--cert FILE --key FILE]
      Serves on 127.0.0.1 (a port the kernel picks; h2c, or TLS with the
      certificate). Prints `listening PORT`, then one line per event:
      `cancelled Hang` when a call's context became inactive before it
      finished (deadline or RST_STREAM from the client side).
      Methods:
        Echo   unary: answers `echo:` + the request, trailing metadata
               `x-seen-route-header` (the `x-route` metadata it got, which
               the agent's route sets).
        Fail   unary: aborts with PERMISSION_DENIED and the request as the
               message (grpc-status / grpc-message trailers).
        Chat   bidirectional: `re:` + each request, as each arrives.
        Hang   server streaming: sends its response head, then waits until
               the call is cancelled (bounded, 60 s).

  grpc_peer.py call --target HOST:PORT --method M [--authority A]
               [--key K] [--proxy URL] [--ca FILE] [--timeout S]
               [--cancel] [--message TEXT ...]
      Calls M and prints one JSON line: {"code", "details", "responses",
      "trailers"}. `--key` goes in `proxy-authorization: Bearer` metadata,
      `--authority` sets `grpc.default_authority` (the HTTP/2 :authority),
      `--proxy` sends the call through an HTTP CONNECT proxy
      (`grpc.http_proxy`; credentials as URL user info). Without `--proxy`
      no proxy from the environment is used. `Chat` sends each message only
      after the answer to the previous one arrived (lock step: a relay that
      buffered either way would stall it). `--cancel` (with `Hang`) waits
      for the response head, then cancels the call (RST_STREAM).
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "tether.test.Echo"


def ident(b):
    return b


def log(line):
    print(line, flush=True)


def serve(args):
    def echo(request, context):
        meta = dict(context.invocation_metadata())
        context.set_trailing_metadata((("x-seen-route-header", meta.get("x-route", "")),))
        return b"echo:" + request

    def fail(request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, request.decode())

    def chat(requests, context):
        for request in requests:
            yield b"re:" + request

    def hang(request, context):
        # The head goes out at once, so the client knows the call started.
        context.send_initial_metadata((("x-started", "1"),))
        done = threading.Event()
        context.add_callback(done.set)
        deadline = time.monotonic() + 60
        while context.is_active() and time.monotonic() < deadline:
            done.wait(0.05)
        if not context.is_active():
            log("cancelled Hang")
        yield b"late"

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, ident, ident),
        "Hang": grpc.unary_stream_rpc_method_handler(hang, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),)
    )
    if args.cert:
        with open(args.cert, "rb") as f:
            cert = f.read()
        with open(args.key, "rb") as f:
            key = f.read()
        creds = grpc.ssl_server_credentials(((key, cert),))
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    log(f"listening {port}")
    # Until the test kills it (or its stdin closes).
    try:
        sys.stdin.read()
    finally:
        server.stop(0)


def call(args):
    options = [("grpc.enable_retries", 0)]
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    if args.proxy:
        options.append(("grpc.http_proxy", args.proxy))
    else:
        options.append(("grpc.enable_http_proxy", 0))
    if args.ca:
        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        if args.authority:
            options.append(("grpc.ssl_target_name_override", args.authority.split(":")[0]))
        channel = grpc.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.target, options=options)
    metadata = []
    if args.key:
        metadata.append(("proxy-authorization", f"Bearer {args.key}"))
    messages = [m.encode() for m in (args.message or ["hello"])]
    path = f"/{SERVICE}/{args.method}"
    out = {"code": "OK", "details": "", "responses": [], "trailers": {}}
    try:
        if args.method == "Chat":
            answered = threading.Semaphore(0)

            def lock_step():
                for i, m in enumerate(messages):
                    if i > 0 and not answered.acquire(timeout=args.timeout):
                        return
                    yield m

            stub = channel.stream_stream(path, ident, ident)
            responses = stub(lock_step(), metadata=metadata, timeout=args.timeout)
            for r in responses:
                out["responses"].append(r.decode())
                answered.release()
            out["trailers"] = dict(responses.trailing_metadata() or ())
        elif args.method == "Hang":
            stub = channel.unary_stream(path, ident, ident)
            call = stub(messages[0], metadata=metadata, timeout=args.timeout)
            out["initial"] = dict(call.initial_metadata() or ())
            if args.cancel:
                call.cancel()
            for r in call:
                out["responses"].append(r.decode())
        else:
            stub = channel.unary_unary(path, ident, ident)
            response, c = stub.with_call(messages[0], metadata=metadata, timeout=args.timeout)
            out["responses"].append(response.decode())
            out["trailers"] = dict(c.trailing_metadata() or ())
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details() or ""
        out["trailers"] = dict(e.trailing_metadata() or ())
    channel.close()
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--cert")
    s.add_argument("--key")
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--method", required=True)
    c.add_argument("--authority")
    c.add_argument("--key")
    c.add_argument("--proxy")
    c.add_argument("--ca")
    c.add_argument("--timeout", type=float, default=20.0)
    c.add_argument("--cancel", action="store_true")
    c.add_argument("--message", action="append")
    args = p.parse_args()
    if args.cmd == "server":
        serve(args)
    else:
        call(args)


if __name__ == "__main__":
    main()
