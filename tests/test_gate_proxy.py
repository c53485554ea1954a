"""The relay's reading of an upstream stream: whole HTTP chunks already in the socket buffer go
out as one piece, and nothing ever waits for data that has not arrived (latency first).

A raw socket server plays the upstream so the test controls exactly what is on the wire when.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from runtime.gate.proxy import Upstreams, chunks

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n")


def event(i: int) -> bytes:
    data = b'data: {"i": %d}\n\n' % i
    return b"%x\r\n%s\r\n" % (len(data), data)


class RawUpstream:
    """Accepts one connection, reads the request, then runs `script(conn)`."""

    def __init__(self, script: object) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.script = script
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            head, _, body = buf.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            self.script(conn)  # type: ignore[operator]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def ups() -> Iterator[Upstreams]:
    u = Upstreams(connect_timeout_s=5, read_timeout_s=20, per_replica=4)
    yield u
    u.close()


def test_chunks_already_buffered_go_out_together(ups: Upstreams) -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(HEAD + b"".join(event(i) for i in range(50)) + b"0\r\n\r\n")

    up = RawUpstream(script)
    try:
        resp = ups.open(up.url, "/v1/chat/completions", b"{}", "rid")
        pieces = list(chunks(resp, 20))
    finally:
        up.close()
    body = b"".join(pieces)
    assert body.count(b"data: ") == 50 and body.startswith(b'data: {"i": 0}') and body.endswith(b'{"i": 49}\n\n')
    assert len(pieces) <= 5  # one write per piece instead of one per event


def test_a_lone_chunk_is_forwarded_without_waiting_for_more(ups: Upstreams) -> None:
    got_first = threading.Event()

    def script(conn: socket.socket) -> None:
        conn.sendall(HEAD + event(0) + event(1)[:5])  # one whole event and the start of the next
        got_first.wait(15)  # the rest only once the reader has passed the first event on
        conn.sendall(event(1)[5:] + event(2) + b"0\r\n\r\n")

    up = RawUpstream(script)
    try:
        resp = ups.open(up.url, "/v1/chat/completions", b"{}", "rid")
        it = chunks(resp, 20)
        first = next(it)
        got_first.set()
        rest = list(it)
    finally:
        up.close()
    assert first == b'data: {"i": 0}\n\n'  # not held back for the partial second event
    assert b"".join(rest) == b'data: {"i": 1}\n\ndata: {"i": 2}\n\n'
