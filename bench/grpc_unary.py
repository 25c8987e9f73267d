#!/usr/bin/env python3
"""gRPC unary calls through a relay route vs direct (PyPI `grpcio`).

  grpc_unary.py serve
      An echo server (`/bench.Echo/Echo`, raw bytes) on 127.0.0.1, a port
      the kernel picks; prints `listening PORT`, runs until it is killed
      (stop it by PID). Give the agent a route to it with
      `upstream_http2 = true`, `methods = ["POST"]`, `paths = ["/**"]`.

  grpc_unary.py --relay HOST:PORT --authority ROUTE.ROUTE_DOMAIN --key KEY
                --direct HOST:PORT [--count N] [--seconds S] [--size B]
      Sequential unary calls on one channel each way (after 50 warm-up
      calls): at most N calls and at most S seconds per side. Prints one
      line: p50/p99 latency and calls per second, direct and through
      Tether, and the ratios (tether / direct).

Everything stays on the addresses given (the bench uses 127.0.0.1); no
proxy from the environment is used.
"""

import argparse
import statistics
import sys
import time
from concurrent import futures

import grpc

METHOD = "/bench.Echo/Echo"


def ident(b):
    return b


def serve():
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req, ident, ident)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


def measure(target, authority, metadata, count, seconds, payload):
    options = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    if authority:
        options.append(("grpc.default_authority", authority))
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(METHOD, ident, ident)
        for _ in range(50):
            call(payload, metadata=metadata, timeout=10)
        latencies = []
        start = time.perf_counter()
        deadline = start + seconds
        while len(latencies) < count and time.perf_counter() < deadline:
            t = time.perf_counter()
            call(payload, metadata=metadata, timeout=10)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return statistics.median(latencies) * 1000, p99 * 1000, len(latencies) / elapsed, len(latencies)


def main():
    if sys.argv[1:2] == ["serve"]:
        serve()
        return
    p = argparse.ArgumentParser()
    p.add_argument("--relay", required=True)
    p.add_argument("--authority", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--direct", required=True)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    payload = b"x" * a.size
    d50, d99, drate, dn = measure(a.direct, None, (), a.count, a.seconds, payload)
    t50, t99, trate, tn = measure(
        a.relay, a.authority, (("proxy-authorization", f"Bearer {a.key}"),), a.count, a.seconds, payload
    )
    print(
        f"grpc unary ({a.size} B, sequential): "
        f"direct p50 {d50:.2f} ms p99 {d99:.2f} ms {drate:.0f}/s ({dn} calls) | "
        f"tether p50 {t50:.2f} ms p99 {t99:.2f} ms {trate:.0f}/s ({tn} calls) | "
        f"ratio p50 {t50 / d50:.2f}x rate {trate / drate:.2f}x"
    )


if __name__ == "__main__":
    main()
