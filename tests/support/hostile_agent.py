#!/usr/bin/env python3
"""A hostile agent stand-in: the real agent handshake, then answers a relay
would never get from tether-agent.

It dials the relay's /v1/agent/connect (WebSocket, subprotocol tether.v1,
bearer token, Tether-Agent-Name), runs the HTTP/2 server side of the
session over the WebSocket's binary messages (the `h2` package; the
WebSocket framing is done here by hand), answers the relay's info request
on the control authority, and then answers relayed requests by path:

  /headers/N  200 with a response header `x-big` of N bytes, sent without
              Huffman coding so the header block really is that large
  /tether     200 "served" whose head and trailers carry Tether-* fields
              (Tether-Peer-Miss, Tether-Peer-Outcome, Tether-Foo, a forged
              Tether-Agent and Tether-Request-Id) beside X-Ok and X-Checksum
  anything    200 JSON: method, path, headers and trailers as received
  CONNECT     403 at once, with a Tether-Foo field (it serves forward mode)

It prints one line per event on stdout, flushed, for the test to read:
`connected`, `registered`, `request METHOD PATH` (the path the relay sent), `goaway CODE`, `closed`.
Only ever connects to the address it is given (the test's relay on
127.0.0.1).
"""

import argparse
import base64
import json
import os
import socket
import struct
import sys

import h2.config
import h2.connection
import h2.events

CONTROL_AUTHORITY = "control.tether.invalid"


def say(*words):
    print(*words, flush=True)


class WebSocket:
    """The client side of RFC 6455 framing over a connected socket."""

    def __init__(self, sock, leftover):
        self.sock = sock
        self.buf = leftover

    def _exactly(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_message(self):
        """(opcode, payload) of the next whole message."""
        payload, opcode = b"", None
        while True:
            b0, b1 = self._exactly(2)
            fin, op = b0 & 0x80, b0 & 0x0F
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._exactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._exactly(8))
            mask = self._exactly(4) if b1 & 0x80 else None
            data = self._exactly(length)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if op >= 0x8:  # control frames may come between fragments
                return op, data
            if opcode is None:
                opcode = op
            payload += data
            if fin:
                return opcode, payload

    def send(self, opcode, payload):
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)


def handshake(relay, token, name, instance):
    host, port = relay.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /v1/agent/connect HTTP/1.1\r\n"
        f"Host: {relay}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: tether.v1\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Tether-Agent-Name: {name}\r\n"
        f"Tether-Agent-Instance: {instance}\r\n"
        "Tether-Agent-Version: hostile\r\n"
        "\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("relay closed the handshake")
        head += chunk
    head, leftover = head.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise SystemExit(f"handshake refused: {status!r}")
    return WebSocket(sock, leftover)


class Session:
    def __init__(self, ws, info):
        self.ws = ws
        self.info = info
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.streams = {}

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.ws.send(0x2, data)

    def run(self):
        self.conn.initiate_connection()
        self.flush()
        while True:
            try:
                opcode, payload = self.ws.read_message()
            except (EOFError, ConnectionError):
                say("closed")
                return
            if opcode == 0x8:
                say("closed")
                return
            if opcode == 0x9:
                self.ws.send(0xA, payload)
                continue
            if opcode != 0x2:
                continue
            for event in self.conn.receive_data(payload):
                if not self.handle(event):
                    self.flush()
                    say("closed")
                    return
            self.flush()

    def handle(self, event):
        if isinstance(event, h2.events.RequestReceived):
            pseudo = dict(h for h in event.headers if h[0].startswith(":"))
            if pseudo.get(":method") == "CONNECT":
                # A tunnel request: refused at once, with Tether-* fields.
                say("request CONNECT", pseudo.get(":authority"))
                self.conn.send_headers(
                    event.stream_id,
                    [(":status", "403"), ("tether-foo", "x"),
                     ("content-type", "application/problem+json")],
                )
                self.conn.send_data(event.stream_id, b'{"code":"denied"}', end_stream=True)
                return True
            self.streams[event.stream_id] = {
                "headers": event.headers,
                "trailers": [],
                "body": b"",
            }
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(
                event.flow_controlled_length, event.stream_id
            )
            if event.stream_id in self.streams:
                self.streams[event.stream_id]["body"] += event.data
        elif isinstance(event, h2.events.TrailersReceived):
            self.streams[event.stream_id]["trailers"] = event.headers
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id in self.streams:
                self.answer(event.stream_id, self.streams.pop(event.stream_id))
        elif isinstance(event, h2.events.ConnectionTerminated):
            say("goaway", int(event.error_code))
            return False
        return True

    def answer(self, stream_id, request):
        pseudo = dict(h for h in request["headers"] if h[0].startswith(":"))
        method, path = pseudo.get(":method"), pseudo.get(":path", "/")
        if pseudo.get(":authority") == CONTROL_AUTHORITY:
            if path == "/v1/info":
                self.respond(stream_id, [], json.dumps(self.info).encode())
                self.flush()
                say("registered")
            else:
                self.conn.send_headers(stream_id, [(":status", "204")], end_stream=True)
            return
        say("request", method, path)
        # The relay sends the caller's whole path; the part after
        # /v1/routes/{route} is what an agent serves.
        parts = path.split("/", 4)
        if path.startswith("/v1/routes/") and len(parts) >= 4:
            path = "/" + (parts[4] if len(parts) == 5 else "")
        if path.startswith("/headers/"):
            size = int(path.split("/")[2])
            self.respond(stream_id, [("x-big", "a" * size)], b"ok", huffman=False)
        elif path == "/tether":
            head = [
                ("tether-peer-miss", "1"),
                ("tether-peer-outcome", "no-agent"),
                ("tether-foo", "x"),
                ("tether-agent", "forged"),
                ("tether-request-id", "forged"),
                ("x-ok", "1"),
                ("trailer", "x-checksum, tether-trailer"),
            ]
            trailers = [("tether-trailer", "x"), ("x-checksum", "done")]
            self.respond(stream_id, head, b"served", trailers=trailers)
        else:
            doc = {
                "method": method,
                "path": path,
                "headers": [list(h) for h in request["headers"]],
                "trailers": [list(h) for h in request["trailers"]],
                "body": request["body"].decode("utf-8", "replace"),
            }
            self.respond(stream_id, [], json.dumps(doc).encode())

    def respond(self, stream_id, headers, body, trailers=None, huffman=True):
        encoder = self.conn.encoder
        plain = encoder.encode
        if not huffman:
            encoder.encode = lambda hs, huffman=True: plain(hs, huffman=False)
        try:
            self.conn.send_headers(stream_id, [(":status", "200")] + headers)
        finally:
            encoder.encode = plain
        self.conn.send_data(stream_id, body, end_stream=not trailers)
        if trailers:
            self.conn.send_headers(stream_id, trailers, end_stream=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay", required=True, help="host:port of the relay")
    parser.add_argument("--token", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--route", required=True)
    parser.add_argument("--instance", help="the instance its info names")
    args = parser.parse_args()
    instance = args.instance or f"hostile-{os.getpid()}"
    ws = handshake(args.relay, args.token, args.name, f"hostile-{os.getpid()}")
    say("connected")
    info = {
        "name": args.name,
        "instance": instance,
        "version": "hostile",
        "tags": [],
        "routes": [args.route],
        "forward": True,
    }
    Session(ws, info).run()


if __name__ == "__main__":
    sys.exit(main())
