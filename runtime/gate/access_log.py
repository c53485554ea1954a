"""The structured access log: one JSON object per request on the `warmstart.gate.access` logger.

Keys never appear in it: the caller is identified by the key's display form (prefix + last 4).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

logger = logging.getLogger("warmstart.gate.access")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            return json.dumps({"ts": round(record.created, 3), **fields}, separators=(",", ":"))
        return json.dumps({"ts": round(record.created, 3), "level": record.levelname.lower(),
                           "logger": record.name, "msg": record.getMessage()}, separators=(",", ":"))


def configure(stream: Any = None) -> None:
    """Send gate logs (access + errors) to stderr as JSON lines; idempotent."""
    root = logging.getLogger("warmstart.gate")
    if any(getattr(h, "_ws_gate", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines())
    handler._ws_gate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def emit(**fields: Any) -> None:
    fields = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items() if v is not None}
    logger.info("access", extra={"fields": fields})


def now() -> float:
    return time.monotonic()
