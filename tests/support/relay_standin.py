#!/usr/bin/env python3
"""A hostile relay stand-in for the agent's end-to-end tests.

It speaks the relay's side of the real handshake (HTTP/1.1 WebSocket
upgrade, subprotocol tether.v1) and, over the WebSocket's binary messages,
the relay's side of HTTP/2 (the client, with the `h2` package): it can then
send the agent whatever a compromised relay could, e.g. rotation notices
carrying foreign or malformed tokens, or requests for routes the agent does
not have.

Only the first agent connection is held this way. Every later connection is
piped byte for byte to a real relay (argument: its host:port), so that the
agent's other sessions and reconnections meet the real thing.

Prints `listening PORT`, then `held` once the first session is up. Commands
on stdin, one per line, each answered by one line on stdout:
  notice JSON          POST the rotation notice JSON -> `status N`
  get AUTHORITY PATH   GET -> `status N`
  flood AUTHORITY PREFIX COUNT
                       COUNT GETs to PREFIX0 .. PREFIX{COUNT-1}, 100 at a
                       time -> `statuses {"404": COUNT, ...}`
Only 127.0.0.1 is ever used.
"""

import base64
import hashlib
import json
import socket
import struct
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTROL = "control.tether.invalid"


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class Session:
    """The relay's side of one agent session."""

    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.done = {}  # stream id -> threading.Event
        self.status = {}  # stream id -> status
        self.closed = threading.Event()

    def handshake(self):
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            request += chunk
        headers = {}
        for line in request.split(b"\r\n")[1:]:
            if b":" in line:
                name, value = line.split(b":", 1)
                headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(
            hashlib.sha1(headers[b"sec-websocket-key"] + GUID).digest()
        )
        self.sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
            b"Sec-WebSocket-Protocol: tether.v1\r\n\r\n"
        )
        with self.lock:
            self.conn.initiate_connection()
            self.flush()
        threading.Thread(target=self.read_loop, daemon=True).start()

    def send_ws(self, payload, opcode=0x2):
        # Server frames are not masked.
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([n])
        elif n < 65536:
            header += bytes([126]) + struct.pack(">H", n)
        else:
            header += bytes([127]) + struct.pack(">Q", n)
        self.sock.sendall(header + payload)

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.send_ws(data)

    def read_loop(self):
        try:
            while True:
                b0, b1 = recv_exact(self.sock, 2)
                opcode = b0 & 0x0F
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", recv_exact(self.sock, 2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", recv_exact(self.sock, 8))[0]
                mask = recv_exact(self.sock, 4) if b1 & 0x80 else b"\0\0\0\0"
                payload = bytes(
                    b ^ mask[i % 4] for i, b in enumerate(recv_exact(self.sock, n))
                )
                if opcode == 0x8:
                    break
                if opcode == 0x9:
                    with self.lock:
                        self.send_ws(payload, opcode=0xA)
                    continue
                if opcode not in (0x0, 0x2):
                    continue
                with self.lock:
                    for event in self.conn.receive_data(payload):
                        self.on_event(event)
                    self.flush()
        except (ConnectionError, OSError, h2.exceptions.ProtocolError):
            # Closed, or the agent sent GOAWAY (draining this session).
            pass
        finally:
            self.closed.set()
            for event in list(self.done.values()):
                event.set()

    def on_event(self, event):
        if isinstance(event, h2.events.ResponseReceived):
            self.status[event.stream_id] = dict(event.headers).get(":status")
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(
                event.flow_controlled_length, event.stream_id
            )
        elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
            done = self.done.get(event.stream_id)
            if done:
                done.set()

    def start(self, method, authority, path, body=None):
        with self.lock:
            sid = self.conn.get_next_available_stream_id()
            self.done[sid] = threading.Event()
            headers = [
                (":method", method),
                (":scheme", "http"),
                (":authority", authority),
                (":path", path),
                ("tether-request-id", "standin-%d" % sid),
                ("tether-caller-key-id", "standin"),
            ]
            if body is not None:
                headers.append(("content-type", "application/json"))
            self.conn.send_headers(sid, headers, end_stream=body is None)
            if body is not None:
                self.conn.send_data(sid, body, end_stream=True)
            self.flush()
        return sid

    def finish(self, sid):
        self.done[sid].wait(30)
        return self.status.pop(sid, "none")


def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listener, upstream, held, ready):
    first = True
    while True:
        sock, _ = listener.accept()
        if first:
            first = False
            session = Session(sock)
            session.handshake()
            held.append(session)
            ready.set()
        elif upstream:
            host, port = upstream.rsplit(":", 1)
            real = socket.create_connection((host, int(port)))
            threading.Thread(target=pipe, args=(sock, real), daemon=True).start()
            threading.Thread(target=pipe, args=(real, sock), daemon=True).start()
        else:
            sock.close()


def main():
    upstream = sys.argv[1] if len(sys.argv) > 1 else None
    if upstream and not upstream.startswith("127.0.0.1:"):
        sys.exit("only 127.0.0.1")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print("listening %d" % listener.getsockname()[1], flush=True)
    held, ready = [], threading.Event()
    threading.Thread(
        target=serve, args=(listener, upstream, held, ready), daemon=True
    ).start()
    ready.wait()
    print("held", flush=True)
    session = held[0]
    for line in sys.stdin:
        words = line.split(" ", 1)
        command, rest = words[0].strip(), (words[1] if len(words) > 1 else "")
        if command == "notice":
            sid = session.start("POST", CONTROL, "/v1/token/rotated", rest.strip().encode())
            print("status %s" % session.finish(sid), flush=True)
        elif command == "get":
            authority, path = rest.split()
            print("status %s" % session.finish(session.start("GET", authority, path)), flush=True)
        elif command == "flood":
            authority, prefix, count = rest.split()
            counts = {}
            count = int(count)
            for start in range(0, count, 100):
                sids = [
                    session.start("GET", authority, "%s%d" % (prefix, i))
                    for i in range(start, min(start + 100, count))
                ]
                for sid in sids:
                    status = session.finish(sid)
                    counts[status] = counts.get(status, 0) + 1
            print("statuses %s" % json.dumps(counts), flush=True)
        else:
            print("unknown command", flush=True)


if __name__ == "__main__":
    main()
