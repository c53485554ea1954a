"""gunicorn's gevent worker, answering gunicorn's own refusals in OpenAI's error shape.

A malformed request line, oversized headers or broken chunked framing are refused by gunicorn's
HTTP parser before Flask ever sees the request; gunicorn then writes a small HTML page. This
worker lets gunicorn decide exactly as before (status, reason, log line: its mapping is not
copied here) but captures that page and sends the same status as an OpenAI-shaped JSON body, so
an SDK caller gets a parseable error for these too.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from typing import Any

from gunicorn import util  # type: ignore[import-untyped]
from gunicorn.workers.ggevent import GeventWorker  # type: ignore[import-untyped]

from runtime.gate.errors import GateError

_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3}) ([^\r\n]*)")
_MESG = re.compile(r"</h1>\s*(.*?)\s*</body>", re.S)
_CODES = {400: "invalid_request", 403: "forbidden", 414: "request_line_too_long",
          417: "expectation_failed", 431: "request_headers_too_large", 501: "unsupported_transfer_coding"}


class _Capture:
    """Stands in for the client socket while gunicorn writes its error page (write_nonblock uses
    exactly these three methods)."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data


def openai_error_response(page: bytes) -> bytes:
    """gunicorn's HTML error response → the same status with an OpenAI error body."""
    m = _STATUS.match(page)
    status, reason = (int(m.group(1)), m.group(2).decode("latin-1")) if m else (500, "Internal Server Error")
    _, _, body = page.partition(b"\r\n\r\n")
    found = _MESG.search(body.decode("latin-1"))
    detail = " ".join(html.unescape(found.group(1)).split())[:300] if found else ""
    if status >= 500 and status != 501:
        err = GateError(status, "Internal gate error while reading the request.", "server_error", "internal_error")
    else:
        err = GateError(status, f"{reason}: {detail}." if detail else f"{reason}.", "invalid_request_error",
                        _CODES.get(status, "invalid_request"))
    payload = json.dumps(err.body()).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nX-Request-Id: {uuid.uuid4().hex}\r\n\r\n")
    return head.encode("latin-1") + payload


class GateWorker(GeventWorker):
    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        capture = _Capture()
        super().handle_error(req, capture, addr, exc)  # gunicorn's decision and its log line
        if not capture.data:
            return
        try:
            util.write_nonblock(client, openai_error_response(capture.data))
        except Exception:
            self.log.debug("Failed to send error message.")
