"""Talking to the replicas: pooled HTTP/1.1 connections (urllib3), streamed bodies, and a
watch on the client's socket so a caller that goes away closes the upstream connection at once
(vLLM aborts a request whose connection closes, freeing its KV cache and its batch slot).

Under gunicorn's gevent worker urllib3's sockets are gevent sockets (the worker monkey-patches
before the app is imported), so a blocked read parks one greenlet, not the worker.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import urllib3
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError
from urllib3.response import HTTPResponse

from runtime.gate import errors

log = logging.getLogger("warmstart.gate.proxy")
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # "pool is full" noise under load


class Upstreams:
    """One keep-alive connection pool per replica URL, looked up by the URL string itself.

    (urllib3's PoolManager would parse the URL and build a pool key on every request: a
    measurable share of the gate's CPU per request under load.)
    """

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float, per_replica: int) -> None:
        self.read_timeout_s = read_timeout_s
        self._timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)
        self._maxsize = max(16, per_replica)
        self._pools: dict[str, HTTPConnectionPool] = {}

    def _pool(self, base_url: str) -> HTTPConnectionPool:
        pool = self._pools.get(base_url)
        if pool is None:
            pool = urllib3.connection_from_url(base_url, maxsize=self._maxsize, block=False, retries=False,
                                               timeout=self._timeout)
            pool = self._pools.setdefault(base_url, pool)
        return pool

    def open(self, base_url: str, path: str, body: bytes, request_id: str) -> urllib3.BaseHTTPResponse:
        try:
            return self._pool(base_url).urlopen(
                "POST", path, body=body, preload_content=False, redirect=False, retries=False,
                assert_same_host=False,
                headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                         "X-Request-Id": request_id},
            )
        except ReadTimeoutError:
            raise errors.upstream_timeout(self.read_timeout_s) from None
        except HTTPError as e:
            raise errors.upstream_failed(_describe(e)) from None

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


def _describe(e: BaseException) -> str:
    for name in ("NewConnectionError", "ConnectTimeoutError"):
        if type(e).__name__ == name:
            return "connection refused or unreachable"
    if isinstance(e, ProtocolError):
        return "connection closed mid-response"
    return type(e).__name__


def _peek_now(fp: Any) -> bytes:
    """What `fp` (a buffered socket reader) can return without waiting: its buffer, or one
    non-blocking read of the socket when the buffer is empty; b"" if nothing is there."""
    sock = getattr(getattr(fp, "raw", None), "_sock", None)
    if sock is None:
        return b""
    prev = sock.gettimeout()
    sock.settimeout(0.0)  # EAGAIN instead of a wait: SocketIO turns it into "no data" (None)
    try:
        return bytes(fp.peek())
    except (OSError, ValueError):
        return b""
    finally:
        sock.settimeout(prev)


def _next_chunk_ready(fp: Any) -> bool:
    """True if the next whole HTTP chunk (size line, data, CRLF) is already here."""
    buf = _peek_now(fp)
    nl = buf.find(b"\r\n")
    if nl < 0:
        return False
    try:
        size = int(buf[:nl].split(b";", 1)[0], 16)
    except ValueError:
        return False
    return len(buf) >= nl + 2 + size + 2


def chunks(resp: urllib3.BaseHTTPResponse, timeout_s: float) -> Iterator[bytes]:
    """The upstream body as it arrives, never waiting to fill a buffer: each piece is one HTTP
    chunk plus whichever following chunks are already complete in the socket buffer (a loaded
    gate that fell behind sends several SSE events in one client write instead of one write
    each; an idle one still forwards every event the moment it arrives).

    Raises GateError (502/504) if the upstream fails before the end.
    """
    try:
        if resp.chunked and isinstance(resp, HTTPResponse) and resp.supports_chunked_reads():
            it = resp.read_chunked(None, decode_content=True)
            fp = getattr(getattr(resp, "_fp", None), "fp", None)  # http.client's buffered socket reader
            for chunk in it:
                if fp is not None and _next_chunk_ready(fp):
                    parts = [chunk]
                    while len(parts) < 64:
                        nxt = next(it, None)
                        if nxt is None:
                            break
                        parts.append(nxt)
                        if not _next_chunk_ready(fp):
                            break
                    chunk = b"".join(parts)
                yield chunk
        else:
            while True:
                data = resp.read1(65536)
                if not data:
                    return
                yield data
    except ReadTimeoutError:
        raise errors.upstream_timeout(timeout_s) from None
    except (HTTPError, OSError, ValueError, AttributeError) as e:
        # AttributeError/ValueError: http.client after the watcher closed the socket underneath it.
        raise errors.upstream_failed(_describe(e)) from None


def abort(resp: urllib3.BaseHTTPResponse) -> None:
    """Close the upstream connection now, from any greenlet (never reused: the reply is unfinished)."""
    try:
        resp.shutdown()
    except Exception:
        pass
    try:
        resp.close()
    except Exception:
        pass


class ClientGone(Exception):
    """The caller closed its connection while the gate was waiting for the upstream's answer."""


class DisconnectWatch:
    """Notices a client that closes its connection while the gate waits on the upstream.

    A WSGI app only learns of a disconnect when a write fails; while it is blocked reading the
    upstream (before the first token, between slow tokens, or on a non-streamed request) nothing
    is written. Under gunicorn's gevent worker the client socket is in environ['gunicorn.socket']:
    one greenlet peeks at it and calls `on_close` when it reads EOF.
    """

    def __init__(self, environ: dict[str, Any]) -> None:
        self.closed = False
        self._callbacks: list[Callable[[], None]] = []
        self._greenlet: Any = None
        self._target: Any = None  # the request's greenlet while it waits in `interruptible()`
        sock = environ.get("gunicorn.socket")
        if sock is None:
            return
        try:
            from gevent import monkey, spawn
        except ImportError:
            return
        if not monkey.is_module_patched("socket"):
            return
        self._greenlet = spawn(self._watch, sock)

    def on_close(self, cb: Callable[[], None]) -> None:
        self._callbacks.append(cb)
        if self.closed:
            cb()

    def clear(self) -> None:
        self._callbacks.clear()

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A blocking section (waiting for the upstream's response headers) that a disconnect
        interrupts with ClientGone. Outside it a disconnect only sets `closed` and runs the
        callbacks, so no exception can land inside a Redis call or a lease release."""
        if self.closed:
            raise ClientGone()
        if self._greenlet is None:
            yield
            return
        from gevent import getcurrent

        self._target = getcurrent()
        try:
            yield
        finally:
            self._target = None

    def _watch(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""
        if data:
            return  # the client sent more (pipelining): not a disconnect; stop watching
        self.closed = True
        target = self._target
        if target is not None:
            from gevent import get_hub

            def interrupt() -> None:
                # Delivered from the hub: the target is parked; check it is still in the section.
                if self._target is target:
                    target.throw(ClientGone())

            get_hub().loop.run_callback(interrupt)
        for cb in list(self._callbacks):
            try:
                cb()
            except Exception:
                log.exception("disconnect callback failed")

    def stop(self) -> None:
        if self._greenlet is not None:
            # block=True, not False (tried for speed): the watcher is parked in recv() on the client
            # socket, and on a keep-alive connection gunicorn reads the next request from that same
            # socket right after this one; a kill still in flight makes that read fail with
            # ConcurrentObjectUseError (a 500 for the next request).
            self._greenlet.kill(block=True)
            self._greenlet = None
