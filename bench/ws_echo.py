#!/usr/bin/env python3
"""WebSocket echo through Tether vs direct: latency and throughput.

    bench/ws_echo.py serve
        an echo server (the `websockets` package) on 127.0.0.1:0; prints its
        port on the first line, then serves until killed
    bench/ws_echo.py measure --direct ws://127.0.0.1:PORT/ \\
                             --tether ws://PUBLIC/v1/routes/ws/ --key KEY \\
                             [--pings 2000] [--size 65536] [--megabytes 256]
        prints one line: round-trip p50/p99 of a 32-byte message (one at a
        time) and echo throughput (messages of --size bytes, 16 in flight),
        for each path, and the Tether/direct ratios

How bench/run.sh uses it: start `serve` before `stack_start`, add a route
for it in `stack_agent_extra`

    [routes.ws]
    url = "http://127.0.0.1:$WS_PORT"
    paths = ["/**"]
    upgrades = ["websocket"]

then run `measure` with `--direct ws://127.0.0.1:$WS_PORT/ --tether
ws://$PUBLIC/v1/routes/ws/ --key $KEY` and print its line as a row.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def run_server():
    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, max_size=None, compression=None) as srv:
        print(srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().create_future()


async def one_path(url, headers, pings, size, megabytes):
    async with connect(url, additional_headers=headers, max_size=None,
                       compression=None, open_timeout=20) as ws:
        small = b"x" * 32
        for _ in range(50):  # warm-up
            await ws.send(small)
            await ws.recv()
        rtts = []
        for _ in range(pings):
            t = time.perf_counter()
            await ws.send(small)
            await ws.recv()
            rtts.append((time.perf_counter() - t) * 1000)
        rtts.sort()
        p50 = statistics.median(rtts)
        p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]

        blob = os.urandom(size)
        total = max(1, megabytes * 1024 * 1024 // size)
        window = asyncio.Semaphore(16)

        async def sender():
            for _ in range(total):
                await window.acquire()
                await ws.send(blob)

        t = time.perf_counter()
        task = asyncio.create_task(sender())
        for _ in range(total):
            back = await ws.recv()
            if len(back) != size:
                sys.exit(f"echo of {len(back)} bytes, sent {size}")
            window.release()
        await task
        elapsed = time.perf_counter() - t
        mib_s = total * size / elapsed / 1048576
    return p50, p99, mib_s


async def measure(args):
    direct = await one_path(args.direct, {}, args.pings, args.size, args.megabytes)
    tether = await one_path(args.tether, {"Proxy-Authorization": f"Bearer {args.key}"},
                            args.pings, args.size, args.megabytes)
    print(
        f"ws echo ({args.size // 1024} KiB msgs, {args.megabytes} MiB; RTT of 32 B): "
        f"direct p50 {direct[0]:.3f} ms p99 {direct[1]:.3f} ms {direct[2]:.0f} MiB/s | "
        f"tether p50 {tether[0]:.3f} ms p99 {tether[1]:.3f} ms {tether[2]:.0f} MiB/s | "
        f"tether/direct p50 {tether[0] / direct[0]:.2f}x, throughput {tether[2] / direct[2]:.2f}x"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("serve")
    m = sub.add_parser("measure")
    m.add_argument("--direct", required=True)
    m.add_argument("--tether", required=True)
    m.add_argument("--key", required=True)
    m.add_argument("--pings", type=int, default=2000)
    m.add_argument("--size", type=int, default=65536)
    m.add_argument("--megabytes", type=int, default=256)
    args = parser.parse_args()
    asyncio.run(run_server() if args.mode == "serve" else measure(args))


if __name__ == "__main__":
    main()
