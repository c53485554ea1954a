"""From raw samples to the benchmark table: percentiles, added latency over the direct baseline
measured in the same run, events per CPU-second, CPU per request, gate vs LiteLLM.

Added latency is a difference of percentiles (p50 through the proxy minus p50 direct, same for
p99), the usual way to compare proxies without pairing individual requests.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

DIRECT = "direct"
LITELLM = "litellm"
NGINX = "nginx"


def pct(values: Sequence[float], q: int) -> float:
    """The q-th percentile (linear interpolation between closest ranks)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Window:
    """What one (target, concurrency) cell collected over its rounds."""

    target: str
    concurrency: int
    samples: list[list[float]] = field(default_factory=list)  # [latency_s, ttft_s, events, status]
    wall_s: float = 0.0
    cpu_s: float | None = None  # the proxy's own CPU (its process tree, plus its store); None: direct
    upstream_cpu_s: float = 0.0

    def add(self, samples: list[list[float]], wall_s: float, cpu_s: float | None, upstream_cpu_s: float) -> None:
        self.samples += samples
        self.wall_s += wall_s
        if cpu_s is not None:
            self.cpu_s = (self.cpu_s or 0.0) + cpu_s
        self.upstream_cpu_s += upstream_cpu_s


@dataclass
class Row:
    target: str
    concurrency: int
    requests: int
    ok: int
    errors: dict[str, int]
    events: int
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    added_ttft_p50_ms: float | None = None
    added_ttft_p99_ms: float | None = None
    x_direct_p50: float | None = None
    x_direct_p99: float | None = None
    cpu_s: float | None = None
    cpu_ms_per_request: float | None = None
    events_per_core_s: float | None = None
    upstream_cpu_ms_per_request: float | None = None
    litellm_over_gate_p50: float | None = None  # LiteLLM's added p50 ÷ this gate's added p50
    litellm_over_gate_p99: float | None = None
    of_nginx_events: float | None = None  # events/s per core as a share of nginx's (the floor)


def summarize(w: Window) -> Row:
    ok = [s for s in w.samples if int(s[3]) == 200]
    errors: dict[str, int] = {}
    for s in w.samples:
        if int(s[3]) != 200:
            errors[str(int(s[3]))] = errors.get(str(int(s[3])), 0) + 1
    lat = [s[0] * 1000 for s in ok]
    ttft = [s[1] * 1000 for s in ok]
    events = int(sum(s[2] for s in ok))
    row = Row(w.target, w.concurrency, len(w.samples), len(ok), errors, events,
              pct(lat, 50), pct(lat, 99), pct(ttft, 50), pct(ttft, 99))
    if w.cpu_s is not None and w.samples:
        row.cpu_s = w.cpu_s
        row.cpu_ms_per_request = w.cpu_s * 1000 / len(w.samples)
        row.events_per_core_s = events / w.cpu_s if w.cpu_s > 0 else None
    if w.samples:
        row.upstream_cpu_ms_per_request = w.upstream_cpu_s * 1000 / len(w.samples)
    return row


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def compare(rows: list[Row]) -> list[Row]:
    """Fill in the columns that need the direct baseline and LiteLLM of the same level."""
    by = {(r.target, r.concurrency): r for r in rows}
    for r in rows:
        base = by.get((DIRECT, r.concurrency))
        if base is None or r.target == DIRECT:
            continue
        r.added_p50_ms = r.p50_ms - base.p50_ms
        r.added_p99_ms = r.p99_ms - base.p99_ms
        r.added_ttft_p50_ms = r.ttft_p50_ms - base.ttft_p50_ms
        r.added_ttft_p99_ms = r.ttft_p99_ms - base.ttft_p99_ms
        r.x_direct_p50 = _ratio(r.p50_ms, base.p50_ms)
        r.x_direct_p99 = _ratio(r.p99_ms, base.p99_ms)
    for r in rows:
        peer = by.get((LITELLM, r.concurrency))
        if peer is None or r.target in (DIRECT, LITELLM):
            continue
        r.litellm_over_gate_p50 = _ratio(peer.added_p50_ms, r.added_p50_ms)
        r.litellm_over_gate_p99 = _ratio(peer.added_p99_ms, r.added_p99_ms)
    for r in rows:
        floor = by.get((NGINX, r.concurrency))
        if floor is not None and r.target != DIRECT:
            r.of_nginx_events = _ratio(r.events_per_core_s, floor.events_per_core_s)
    return rows


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if v is None or v != v else fmt.format(v)


def _pair(a: float | None, b: float | None, fmt: str = "{:.1f}") -> str:
    return f"{_f(a, fmt)} / {_f(b, fmt)}"


HEADER = ("| streams | path | requests | errors | p50 / p99 ms | added p50 / p99 ms | × direct p50 / p99 "
          "| TTFT p50 ms | added TTFT p50 / p99 ms | events/s per core | ÷ nginx | CPU ms/req "
          "| LiteLLM ÷ gate added p50 / p99 |")


def table(rows: list[Row]) -> str:
    """The markdown table (one row per concurrency × path)."""
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for r in rows:
        errs = sum(r.errors.values())
        err = str(errs) if not errs else f"{errs} ({', '.join(f'{k}×{v}' for k, v in sorted(r.errors.items()))})"
        lines.append(
            f"| {r.concurrency} | {r.target} | {r.requests} | {err} | {_pair(r.p50_ms, r.p99_ms)} "
            f"| {_pair(r.added_p50_ms, r.added_p99_ms)} | {_pair(r.x_direct_p50, r.x_direct_p99, '{:.2f}')} "
            f"| {_f(r.ttft_p50_ms)} | {_pair(r.added_ttft_p50_ms, r.added_ttft_p99_ms)} "
            f"| {_f(r.events_per_core_s, '{:,.0f}')} | {_f(r.of_nginx_events, '{:.2f}')} "
            f"| {_f(r.cpu_ms_per_request, '{:.2f}')} "
            f"| {_pair(r.litellm_over_gate_p50, r.litellm_over_gate_p99)} |")
    return "\n".join(lines)


def verdicts(rows: list[Row], top: int) -> list[str]:
    """The issue's targets, checked against this run: one line each, MET or MISSED."""
    by = {(r.target, r.concurrency): r for r in rows}
    out = []
    for r in rows:
        if r.target in (DIRECT, LITELLM, NGINX) or r.added_p50_ms is None or r.added_p99_ms is None:
            continue
        if r.concurrency == top:
            out.append(f"{r.target} @ {top} streams: added p50 {r.added_p50_ms:.1f} ms (target ≤ 2) "
                       f"{_met(r.added_p50_ms <= 2)}; added p99 {r.added_p99_ms:.1f} ms (target ≤ 10) "
                       f"{_met(r.added_p99_ms <= 10)}")
        peer = by.get((LITELLM, r.concurrency))
        if peer is not None and peer.added_p50_ms is not None and peer.added_p99_ms is not None:
            results = (_three_x(peer.added_p50_ms, r.added_p50_ms), _three_x(peer.added_p99_ms, r.added_p99_ms))
            verdict = ("MISSED" if False in results else
                       "INCONCLUSIVE (both within noise of direct)" if None in results else "MET")
            out.append(f"{r.target} @ {r.concurrency} streams vs LiteLLM: added p50 {r.added_p50_ms:.1f} vs "
                       f"{peer.added_p50_ms:.1f} ms, p99 {r.added_p99_ms:.1f} vs {peer.added_p99_ms:.1f} ms "
                       f"(target: ≥ 3× less) {verdict}")
    return out


def _met(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def _three_x(peer_added: float, gate_added: float) -> bool | None:
    """≥ 3× less added latency than the peer? None when neither added anything measurable."""
    if gate_added <= 0:
        # The gate added nothing measurable (within noise of direct): met if LiteLLM added anything.
        return True if peer_added > 0 else None
    return peer_added >= 3 * gate_added


def to_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
