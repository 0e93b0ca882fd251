"""Small, dependency-free SVG line charts for the campaign report.

A report must open anywhere, offline, years later: inline SVG in one HTML
file, no JavaScript, no plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: str = PALETTE[0]
    dash: str | None = None  # an SVG stroke-dasharray, e.g. "6 3"
    width: float = 1.6


@dataclass(frozen=True)
class Band:
    """A shaded stretch of the x axis (a campaign phase), labelled at the top."""

    x0: float
    x1: float
    label: str


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks per decade between ``lo`` and ``hi`` (both > 0)."""
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo <= v <= hi:
                out.append(v)
    return out


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    if a >= 1:
        return f"{v:g}"
    return f"{v:.3g}"


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 1100,
    height: int = 320,
    log_y: bool = False,
    y_floor: float | None = None,
    x_ticks: Sequence[tuple[float, str]] | None = None,
    bands: Sequence[Band] = (),
) -> str:
    left, right, top, bottom = 70, 170, 34, 44
    pw, ph = width - left - right, height - top - bottom
    pts = [p for s in series for p in s.points if p[1] is not None and math.isfinite(p[1])]
    if log_y:
        pts = [p for p in pts if p[1] > 0]
    xs = [p[0] for p in pts] + [b.x0 for b in bands] + [b.x1 for b in bands]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_ticks:
        x_lo, x_hi = min(x_lo, x_ticks[0][0]), max(x_hi, x_ticks[-1][0])
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    ys = [p[1] for p in pts]
    if log_y:
        y_lo = min(ys, default=1.0)
        y_lo = max(y_floor or 0.0, 10 ** math.floor(math.log10(y_lo))) if y_lo > 0 else 1.0
        y_hi = 10 ** math.ceil(math.log10(max(max(ys, default=10.0), y_lo * 10)))
        y_ticks = log_ticks(y_lo, y_hi)
    else:
        y_lo, y_hi = 0.0, max(ys, default=1.0) * 1.08 or 1.0
        y_ticks = nice_ticks(y_lo, y_hi)
        y_hi = max(y_hi, y_ticks[-1])

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float) -> float:
        if log_y:
            y = max(y, y_lo)
            f = (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        else:
            f = (y - y_lo) / (y_hi - y_lo)
        return top + ph - f * ph

    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<title>{escape(title)}</title>',
        f'<text x="{left}" y="20" class="ct">{escape(title)}</text>',
    ]
    for i, b in enumerate(bands):
        x0, x1 = sx(b.x0), sx(b.x1)
        fill = "#f2f4f8" if i % 2 == 0 else "#ffffff"
        o.append(f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 0):.1f}" height="{ph}" fill="{fill}"/>')
        o.append(
            f'<text x="{x0 + 3:.1f}" y="{top + 11}" class="band">{escape(b.label[: max(1, int((x1 - x0) / 6))])}</text>'
        )
    o.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for y in y_ticks:
        yy = sy(y)
        o.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e3e3e3"/>')
        o.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" class="yt">{fmt(y)}</text>')
    for x, label in x_ticks or [(x, fmt(x)) for x in nice_ticks(x_lo, x_hi, 10)]:
        xx = sx(x)
        o.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#999"/>')
        o.append(f'<text x="{xx:.1f}" y="{top + ph + 17}" class="xt">{escape(label)}</text>')
    o.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" class="xl">{escape(x_label)}</text>')
    o.append(
        f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" class="yl">{escape(y_label)}</text>'
    )
    for i, s in enumerate(series):
        good = [(x, y) for x, y in s.points if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
        if good:
            path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(good))
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            o.append(f'<path d="{path}" fill="none" stroke="{s.color}" stroke-width="{s.width}"{dash}/>')
        ly = top + 8 + i * 16
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        o.append(
            f'<line x1="{left + pw + 10}" x2="{left + pw + 34}" y1="{ly}" y2="{ly}" stroke="{s.color}" '
            f'stroke-width="2"{dash}/>'
        )
        o.append(f'<text x="{left + pw + 38}" y="{ly + 4}" class="lg">{escape(s.name[:22])}</text>')
    o.append("</svg>")
    return "\n".join(o)
