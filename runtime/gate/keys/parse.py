"""Parsing what people type for key lifetimes and limits (the CLI's flags, config files).

Pure functions; each rejects bad input with a one-line ConfigError naming the value and the fix.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime

from warmstart.errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION_RE = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)([smhdw])")
_RATE_UNITS = {
    "s": 60.0, "sec": 60.0, "second": 60.0,
    "m": 1.0, "min": 1.0, "minute": 1.0,
    "h": 1 / 60, "hr": 1 / 60, "hour": 1 / 60,
    "d": 1 / 1440, "day": 1 / 1440,
}
_RATE_RE = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)/([a-z]+)")
MAX_DURATION_S = 100 * 365 * 86400.0


def parse_duration(text: str, *, what: str = "duration") -> float:
    """``90s``, ``15m``, ``24h``, ``30d``, ``2w`` (or ``0``) → seconds."""
    value = text.strip().lower() if isinstance(text, str) else ""
    if value == "0":
        return 0.0
    match = _DURATION_RE.fullmatch(value)
    if not match:
        raise ConfigError(f"{what}={text!r} is not a duration; use a number and a unit: 90s, 15m, 24h, 30d, 2w")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION_S:
        raise ConfigError(f"{what}={text!r} is longer than 100 years; use 'never' or a shorter duration")
    return seconds


def parse_expires(text: str, *, now: float) -> float | None:
    """``never`` → None; a duration (``30d``) → now + it; a date (``2026-12-31``, the start of that day
    in UTC) or an ISO-8601 time with a zone (``2026-12-31T18:00:00Z``) → that instant."""
    value = text.strip() if isinstance(text, str) else ""
    if value.lower() == "never":
        return None
    if _DURATION_RE.fullmatch(value.lower()):
        seconds = parse_duration(value, what="--expires")
        if seconds <= 0:
            raise ConfigError(f"--expires={text!r} is not in the future; use e.g. 30d or never")
        return now + seconds
    when = _parse_instant(value)
    if when is None:
        raise ConfigError(
            f"--expires={text!r} is not a time; use a duration (30d), a date (2026-12-31), "
            "an ISO time with a zone (2026-12-31T18:00:00Z) or never"
        )
    if when <= now:
        raise ConfigError(f"--expires={text!r} is in the past; give a future date or a duration like 30d")
    return when


def _parse_instant(value: str) -> float | None:
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})", value):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed.timestamp()
    except ValueError:
        return None
    return None


def parse_rate(text: str) -> float:
    """``60/min``, ``2/s``, ``1000/hour``, ``5000/day`` → requests per minute."""
    value = text.strip().lower().replace(" ", "") if isinstance(text, str) else ""
    match = _RATE_RE.fullmatch(value)
    if not match or match.group(2) not in _RATE_UNITS:
        raise ConfigError(f"--rate={text!r} is not a rate; use requests per unit: 60/min, 2/s, 1000/hour")
    per_min = float(match.group(1)) * _RATE_UNITS[match.group(2)]
    if not (math.isfinite(per_min) and per_min > 0):
        raise ConfigError(f"--rate={text!r} must be above zero; e.g. 60/min")
    if per_min > 1e9:
        raise ConfigError(f"--rate={text!r} is absurdly high; omit --rate for no per-key limit")
    return per_min


def parse_daily_cap(text: str) -> int:
    value = text.strip() if isinstance(text, str) else ""
    if not re.fullmatch(r"[0-9]{1,13}", value) or not 1 <= int(value) <= 10**12:
        raise ConfigError(f"--daily-cap={text!r} must be a whole number of requests per day, 1 to 10^12")
    return int(value)
