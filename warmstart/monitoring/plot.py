"""An SVG of latency and replicas over time, from the samples `metrics --watch` collects.

Hand-rolled on purpose: two small line charts do not justify matplotlib (and its 40 MB) in every
install, and SVG text opens in any browser and diffs cleanly in a PR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from warmstart.monitoring.parse import Summary

__all__ = ["render_svg", "write_svg"]

WIDTH = 820
PANEL_H = 240
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 150, 34, 34

Series = tuple[str, str, Callable[[Summary], float | None]]  # label, colour, value

LATENCY: tuple[Series, ...] = (
    ("latency p50", "#2f6fed", lambda s: s.latency_p50_s),
    ("latency p99", "#c62828", lambda s: s.latency_p99_s),
    ("first token p50", "#1b7f3b", lambda s: s.ttft_p50_s),
)
REPLICAS: tuple[Series, ...] = (
    ("ready", "#2f6fed", lambda s: s.replicas_ready),
    ("starting", "#b26a00", lambda s: s.replicas_starting),
    ("in flight", "#7b1fa2", lambda s: s.in_flight),
)


def _nice_max(v: float) -> float:
    """A round axis top at or above v (1, 2, 5 x 10^n)."""
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if v <= m * exp:
            return float(m * exp)
    return float(10 * exp)


def _fmt(v: float) -> str:
    return f"{v:g}" if v >= 0.01 or v == 0 else f"{v:.1e}"


def _panel(samples: Sequence[Summary], series: Sequence[Series], title: str, unit: str, top: float,
           step: bool) -> list[str]:
    t0 = samples[0].at
    span = max(samples[-1].at - t0, 1e-9)
    values = [v for _, _, get in series for s in samples if (v := get(s)) is not None]
    y_max = _nice_max(max(values, default=0.0))
    plot_w = WIDTH - MARGIN_L - MARGIN_R
    plot_h = PANEL_H - MARGIN_T - MARGIN_B
    x0, y0 = MARGIN_L, top + MARGIN_T

    def x(at: float) -> float:
        return x0 + (at - t0) / span * plot_w

    def y(v: float) -> float:
        return y0 + plot_h - v / y_max * plot_h

    out = [
        f'<text x="{x0}" y="{top + 20}" class="title">{escape(title)}</text>',
        f'<rect x="{x0}" y="{y0}" width="{plot_w}" height="{plot_h}" class="frame"/>',
    ]
    for i in range(5):
        v = y_max * i / 4
        yy = y(v)
        out.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x0 + plot_w}" y2="{yy:.1f}" class="grid"/>')
        out.append(f'<text x="{x0 - 6}" y="{yy + 4:.1f}" class="axis" text-anchor="end">{_fmt(v)}{unit}</text>')
    for frac in (0.0, 0.5, 1.0):
        xx = x0 + frac * plot_w
        out.append(
            f'<text x="{xx:.1f}" y="{y0 + plot_h + 18}" class="axis" text-anchor="middle">'
            f"{_fmt(round(span * frac, 1))} s</text>"
        )
    for i, (label, colour, get) in enumerate(series):
        # A missing value (no requests in that window) breaks the line instead of drawing zero.
        runs: list[list[str]] = [[]]
        prev_y: float | None = None
        for s in samples:
            v = get(s)
            if v is None:
                if runs[-1]:
                    runs.append([])
                prev_y = None
                continue
            if step and prev_y is not None:
                runs[-1].append(f"{x(s.at):.1f},{prev_y:.1f}")
            prev_y = y(v)
            runs[-1].append(f"{x(s.at):.1f},{prev_y:.1f}")
        for pts in runs:
            if len(pts) == 1:
                cx, cy = pts[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}" class="point" data-series="{escape(label)}"/>')
            elif pts:
                out.append(
                    f'<polyline points="{" ".join(pts)}" stroke="{colour}" class="series" '
                    f'data-series="{escape(label)}"/>'
                )
        ly = y0 + 10 + i * 20
        lx = x0 + plot_w + 14
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 18}" y2="{ly}" stroke="{colour}" stroke-width="3"/>')
        out.append(f'<text x="{lx + 24}" y="{ly + 4}" class="legend">{escape(label)}</text>')
    return out


def render_svg(samples: Sequence[Summary], title: str = "warmstart endpoint") -> str:
    """Two panels (latency in seconds; replicas and in-flight) over the samples' time span."""
    if not samples:
        raise ValueError("no samples to plot; run with --watch for at least one interval")
    height = 2 * PANEL_H + 30
    body = [
        f'<text x="{MARGIN_L}" y="20" class="heading">{escape(title)}</text>',
        *_panel(samples, LATENCY, "latency and time to first token", " s", 24, step=False),
        *_panel(samples, REPLICAS, "replicas and in-flight requests", "", 24 + PANEL_H, step=True),
    ]
    style = (
        "text{font-family:system-ui,'DejaVu Sans',sans-serif;fill:#1d2330}"
        ".heading{font-size:15px;font-weight:600}.title{font-size:13px;font-weight:600}"
        ".axis{font-size:11px;fill:#6b7385}.legend{font-size:12px}"
        ".frame{fill:#fff;stroke:#dde1e8}.grid{stroke:#eef0f4}"
        ".series{fill:none;stroke-width:2}"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img">'
        f"<title>{escape(title)}</title><style>{style}</style>"
        f'<rect width="{WIDTH}" height="{height}" fill="#f6f7f9"/>' + "".join(body) + "</svg>\n"
    )


def write_svg(path: str | Path, samples: Sequence[Summary], title: str = "warmstart endpoint") -> Path:
    p = Path(path)
    p.write_text(render_svg(samples, title))
    return p
