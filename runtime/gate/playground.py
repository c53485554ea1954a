"""The playground: one static page served by the gate at /playground.

The page is plain HTML/JS/CSS (no build step) that calls the gate's own public API with a
playground-kind key, so every playground request is authenticated, admitted and counted against
the daily cap exactly like any other client's. The blueprint serves files only: it never sees a key
(the page reads it from the URL fragment, which browsers do not send, and keeps it in
sessionStorage).

Every response from this blueprint carries a strict Content-Security-Policy: scripts and styles
only from this origin, no inline code, fetches only to this origin. A page that holds an API key
must not be able to run injected script or send the key elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC_DIR = Path(__file__).with_name("playground_static")

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

bp = Blueprint("playground", __name__, url_prefix="/playground")


@bp.after_request
def _security_headers(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    # The URL may carry #key=... only client-side, but keep the path out of other sites' logs too.
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    # The page is tiny; always revalidate so an upgrade of the gate never serves a stale script.
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("", strict_slashes=False)
def page() -> Response:
    return send_from_directory(STATIC_DIR, "index.html", mimetype="text/html")


@bp.get("/static/<path:name>")
def asset(name: str) -> Response:
    # send_from_directory refuses paths that escape STATIC_DIR (404), so '../' cannot reach the gate's files.
    return send_from_directory(STATIC_DIR, name)
