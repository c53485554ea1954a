"""The SVG plot drawn from --watch readings."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from warmstart.monitoring.parse import Summary
from warmstart.monitoring.plot import render_svg, write_svg

NS = {"svg": "http://www.w3.org/2000/svg"}

BASE = Summary(
    source="local", at=0.0, window_s=5.0, requests=10, requests_per_s=2.0,
    latency_p50_s=0.5, latency_p99_s=1.5, ttft_p50_s=0.1, ttft_p99_s=0.3,
    queue_wait_p50_s=0.0, queue_wait_p99_s=0.0, tokens_in=100, tokens_out=400, tokens_per_s=80.0,
    in_flight=3, replicas_ready=1, replicas_starting=0, status_429=0, status_503=0, status_5xx=0,
    lease_leaks=0,
)


def _series(svg: str) -> dict[str, list[list[tuple[float, float]]]]:
    root = ET.fromstring(svg)
    out: dict[str, list[list[tuple[float, float]]]] = {}
    for el in root.iter():
        name = el.get("data-series")
        if name is None:
            continue
        if el.tag.endswith("polyline"):
            pts = [tuple(float(c) for c in p.split(",")) for p in el.get("points", "").split()]
        else:
            pts = [(float(el.get("cx", "0")), float(el.get("cy", "0")))]
        out.setdefault(name, []).append(pts)  # type: ignore[arg-type]
    return out


def test_latency_and_replica_series_follow_the_samples(tmp_path: Path) -> None:
    samples = [
        replace(BASE, at=10.0 + i * 5, latency_p50_s=0.2 * (i + 1), replicas_ready=float(min(i, 2)),
                replicas_starting=1.0 if i == 1 else 0.0)
        for i in range(6)
    ]
    path = write_svg(tmp_path / "m.svg", samples, "local endpoint")
    svg = path.read_text()
    series = _series(svg)
    assert set(series) == {"latency p50", "latency p99", "first token p50", "ready", "starting", "in flight"}
    (p50,) = series["latency p50"]
    assert len(p50) == 6
    xs = [x for x, _ in p50]
    ys = [y for _, y in p50]
    assert xs == sorted(xs) and len(set(xs)) == 6
    assert ys == sorted(ys, reverse=True)  # rising latency is drawn upwards (smaller y)
    (ready,) = series["ready"]
    assert len(ready) == 2 * 6 - 1  # a step line: one extra corner per change of reading
    assert "local endpoint" in svg


def test_windows_without_requests_break_the_latency_line() -> None:
    samples = [replace(BASE, at=float(i)) for i in range(5)]
    samples[2] = replace(samples[2], latency_p50_s=None)
    series = _series(render_svg(samples))
    assert [len(run) for run in series["latency p50"]] == [2, 2]


def test_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        render_svg([])
