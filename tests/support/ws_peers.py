"""Real WebSocket peers for tests/upgrades.rs, with the `websockets` package.

    ws_peers.py server LOG          echo server on 127.0.0.1:0; prints
                                     "listening PORT"; one JSON line per
                                     connection in LOG (path, headers,
                                     subprotocol, the close it received)
    ws_peers.py client URL KEY SCENARIO   runs SCENARIO through the relay at
                                     URL with API key KEY; prints one JSON
                                     line with what it saw

Server behaviour: the first message on a connection is JSON
{"subprotocol", "offered"}; text "close:CODE:REASON" makes it close with
that code and reason; anything else is echoed. Paths /deny and /missing
are answered 401 and 404 without a switch.
"""

import asyncio
import hashlib
import json
import os
import sys
from http import HTTPStatus

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

SUBPROTOCOLS = ["tether.test.v1", "tether.test.v2"]


async def server(log_path):
    log = open(log_path, "a", buffering=1)

    def refuse(connection, request):
        if request.path.startswith("/deny"):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "who are you\n")
        if request.path.startswith("/missing"):
            return connection.respond(HTTPStatus.NOT_FOUND, "nothing here\n")
        return None

    async def handler(ws):
        entry = {
            "path": ws.request.path,
            "headers": {k.lower(): v for k, v in ws.request.headers.raw_items()},
            "subprotocol": ws.subprotocol,
        }
        try:
            await ws.send(json.dumps({
                "subprotocol": ws.subprotocol,
                "offered": ws.request.headers.get("Sec-WebSocket-Protocol"),
            }))
            async for message in ws:
                if isinstance(message, str) and message.startswith("close:"):
                    _, code, reason = message.split(":", 2)
                    await ws.close(int(code), reason)
                    break
                await ws.send(message)
        except ConnectionClosed:
            pass
        if ws.protocol.close_rcvd is not None:
            entry["close_code"] = ws.protocol.close_rcvd.code
            entry["close_reason"] = ws.protocol.close_rcvd.reason
        log.write(json.dumps(entry) + "\n")

    async with serve(handler, "127.0.0.1", 0, subprotocols=SUBPROTOCOLS,
                     process_request=refuse, max_size=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await asyncio.get_running_loop().create_future()


async def client(url, key, scenario):
    headers = {"Proxy-Authorization": f"Bearer {key}"}
    result = {}
    try:
        async with connect(url, additional_headers=headers, max_size=None,
                           subprotocols=["tether.test.v2", "tether.test.v1"],
                           open_timeout=10, close_timeout=5) as ws:
            result["subprotocol"] = ws.subprotocol
            result["response_headers"] = {k.lower(): v for k, v in ws.response.headers.raw_items()}
            result["hello"] = json.loads(await ws.recv())
            if scenario == "echo":
                await ws.send("hello through the tunnel")
                result["text"] = await ws.recv()
                blob = os.urandom(3 * 1024 * 1024 // 2)
                await ws.send(blob)
                back = await ws.recv()
                result["binary_sent"] = hashlib.sha256(blob).hexdigest()
                result["binary_back"] = hashlib.sha256(back).hexdigest()
                result["binary_len"] = len(back)
                await ws.close(4001, "client says bye")
            elif scenario == "server_close":
                await ws.send("close:4002:server says bye")
                try:
                    await ws.recv()
                except ConnectionClosed as e:
                    result["close_code"] = e.rcvd.code if e.rcvd else None
                    result["close_reason"] = e.rcvd.reason if e.rcvd else None
            elif scenario == "drain":
                # Echoes until the connection ends; counts those after the
                # test writes a line to stdin (it sent SIGTERM first).
                print(json.dumps(result), flush=True)
                result = {"echoes_after_term": 0}
                told = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                try:
                    while True:
                        await ws.send("tick")
                        await ws.recv()
                        if told.done():
                            result["echoes_after_term"] += 1
                        await asyncio.sleep(0.05)
                except ConnectionClosed as e:
                    result["closed"] = True
                    result["close_code"] = e.rcvd.code if e.rcvd else None
            elif scenario == "hold":
                print(json.dumps(result), flush=True)
                result = {}
                try:
                    await ws.recv()
                except ConnectionClosed as e:
                    result["closed"] = True
                    result["close_code"] = e.rcvd.code if e.rcvd else None
    except InvalidStatus as e:
        result["status"] = e.response.status_code
        result["body"] = e.response.body.decode("utf-8", "replace")
        result["response_headers"] = {k.lower(): v for k, v in e.response.headers.raw_items()}
    print(json.dumps(result), flush=True)


def main():
    if sys.argv[1] == "server":
        asyncio.run(server(sys.argv[2]))
    elif sys.argv[1] == "client":
        asyncio.run(client(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")


if __name__ == "__main__":
    main()
