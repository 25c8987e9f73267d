"""The real kubectl's peers for tests/kubectl.rs.

    kube_peers.py apiserver LOG     a Kubernetes API-server stand-in on
                                    127.0.0.1:0; prints "listening PORT";
                                    one JSON line per request in LOG
    kube_peers.py keyproxy RELAY KEY LOG
                                    what an operator runs beside kubectl:
                                    a local HTTP/1.1 proxy on 127.0.0.1:0
                                    that sets `Proxy-Authorization: Bearer
                                    KEY` on every request and forwards it
                                    to the relay's public listener RELAY
                                    (host:port); prints "listening PORT";
                                    every byte it passed back to kubectl
                                    goes to LOG

The API server knows one pod, `default/web-0` with one container `app`,
answers the discovery kubectl asks for and 404 to anything else. Its exec
endpoint is a WebSocket speaking `v5.channel.k8s.io` (first byte of each
binary message: 0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize, 255
close). `cat` echoes stdin to stdout until the client closes stdin
(255, 0), then reports Success; `sh -c "exit N"` writes a line to stderr
and reports exit code N, as the kubelet does.
"""

import asyncio
import json
import sys
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

POD = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {"name": "web-0", "namespace": "default", "uid": "5e1f-web-0"},
    "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    "status": {"phase": "Running"},
}

# Discovery: the core group with pods and pods/exec.
API_VERSIONS = {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
API_GROUPS = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
CORE_RESOURCES = {
    "kind": "APIResourceList", "groupVersion": "v1",
    "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ["get", "list"], "shortNames": ["po"]},
        {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
         "verbs": ["create", "get"]},
    ],
}

DOCS = {
    "/api": API_VERSIONS,
    "/apis": API_GROUPS,
    "/api/v1": CORE_RESOURCES,
    "/api/v1/namespaces/default/pods/web-0": POD,
}


def json_response(status, doc):
    body = json.dumps(doc).encode()
    headers = Headers([("Content-Type", "application/json"),
                       ("Content-Length", str(len(body))),
                       ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body)


def not_found(path):
    return json_response(HTTPStatus.NOT_FOUND, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"{path} not found", "reason": "NotFound", "code": 404})


def exit_status(code):
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


async def apiserver(log_path):
    log = open(log_path, "a", buffering=1)

    def record(request, **more):
        url = urlsplit(request.path)
        entry = {"path": url.path, "query": parse_qs(url.query),
                 "headers": {k.lower(): v for k, v in request.headers.raw_items()}}
        entry.update(more)
        log.write(json.dumps(entry) + "\n")

    def route(connection, request):
        path = urlsplit(request.path).path
        if path.endswith("/exec") and request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # the handshake goes on; `handler` records it
        record(request)
        if path in DOCS:
            return json_response(HTTPStatus.OK, DOCS[path])
        return not_found(path)

    async def handler(ws):
        query = parse_qs(urlsplit(ws.request.path).query)
        command = query.get("command", [])
        record(ws.request, subprotocol=ws.subprotocol, exec=True)
        if ws.subprotocol != "v5.channel.k8s.io":
            await ws.close(1002, "v5.channel.k8s.io only")
            return
        try:
            if command == ["cat"]:
                async for message in ws:
                    if not isinstance(message, bytes) or not message:
                        continue
                    channel, data = message[0], message[1:]
                    if channel == STDIN:
                        await ws.send(bytes([STDOUT]) + data)
                    elif channel == CLOSE and data == bytes([STDIN]):
                        break
                code = 0
            elif len(command) == 3 and command[:2] == ["sh", "-c"] and command[2].startswith("exit "):
                code = int(command[2].split()[1])
                await ws.send(bytes([STDERR]) + f"exiting with {code}\n".encode())
            else:
                code = 127
                await ws.send(bytes([STDERR]) + b"command not found\n")
            await ws.send(bytes([STATUS]) + json.dumps(exit_status(code)).encode())
            await ws.close()
        except ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", 0, subprotocols=["v5.channel.k8s.io"],
                     process_request=route, max_size=None, compression=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await asyncio.get_running_loop().create_future()


async def read_head(reader):
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None


async def pipe(reader, writer, sink=None):
    try:
        while data := await reader.read(65536):
            if sink is not None:
                sink.write(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def keyproxy(relay, key, log_path):
    host, port = relay.rsplit(":", 1)
    sink = open(log_path, "ab", buffering=0)

    async def serve_client(client_r, client_w):
        relay_r, relay_w = await asyncio.open_connection(host, int(port))
        back = asyncio.create_task(pipe(relay_r, client_w, sink))
        try:
            while head := await read_head(client_r):
                lines = head.decode("latin-1").split("\r\n")[:-2]
                kept = [l for l in lines[1:] if not l.lower().startswith("proxy-authorization:")]
                fields = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in kept}
                if "transfer-encoding" in fields:
                    client_w.write(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                    break
                out = "\r\n".join([lines[0], f"Proxy-Authorization: Bearer {key}", *kept, "", ""])
                relay_w.write(out.encode("latin-1"))
                length = int(fields.get("content-length", "0"))
                if length:
                    relay_w.write(await client_r.readexactly(length))
                await relay_w.drain()
                if "upgrade" in fields:
                    # After an upgrade request the connection is the
                    # caller's byte stream.
                    await pipe(client_r, relay_w)
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        try:
            relay_w.write_eof()
        except (OSError, RuntimeError):
            pass
        await back
        client_w.close()
        relay_w.close()

    srv = await asyncio.start_server(serve_client, "127.0.0.1", 0)
    print(f"listening {srv.sockets[0].getsockname()[1]}", flush=True)
    async with srv:
        await srv.serve_forever()


def main():
    if sys.argv[1] == "apiserver":
        asyncio.run(apiserver(sys.argv[2]))
    elif sys.argv[1] == "keyproxy":
        asyncio.run(keyproxy(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")


if __name__ == "__main__":
    main()
