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


@dataclass(frozen=True)
class _Frame:
    """The plot area of a chart and the data ranges it maps onto it."""

    left: int
    top: int
    pw: int
    ph: int
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    log_y: bool

    def sx(self, x: float) -> float:
        return self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * self.pw

    def sy(self, y: float) -> float:
        if self.log_y:
            y = max(y, self.y_lo)
            f = (math.log10(y) - math.log10(self.y_lo)) / (math.log10(self.y_hi) - math.log10(self.y_lo))
        else:
            f = (y - self.y_lo) / (self.y_hi - self.y_lo)
        return self.top + self.ph - f * self.ph


def _x_range(
    pts: Sequence[tuple[float, float]], bands: Sequence[Band], x_ticks: Sequence[tuple[float, str]] | None
) -> tuple[float, float]:
    xs = [p[0] for p in pts] + [b.x0 for b in bands] + [b.x1 for b in bands]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_ticks:
        x_lo, x_hi = min(x_lo, x_ticks[0][0]), max(x_hi, x_ticks[-1][0])
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    return x_lo, x_hi


def _y_range(ys: Sequence[float], *, log_y: bool, y_floor: float | None) -> tuple[float, float, list[float]]:
    """``(y_lo, y_hi, y_ticks)``: decades on a log axis, 8% headroom and nice ticks on a linear one."""
    if log_y:
        y_lo = min(ys, default=1.0)
        y_lo = max(y_floor or 0.0, 10 ** math.floor(math.log10(y_lo))) if y_lo > 0 else 1.0
        y_hi = 10 ** math.ceil(math.log10(max(max(ys, default=10.0), y_lo * 10)))
        return y_lo, y_hi, log_ticks(y_lo, y_hi)
    y_lo, y_hi = 0.0, max(ys, default=1.0) * 1.08 or 1.0
    y_ticks = nice_ticks(y_lo, y_hi)
    return y_lo, max(y_hi, y_ticks[-1]), y_ticks


def _bands_svg(fr: _Frame, bands: Sequence[Band]) -> list[str]:
    o = []
    for i, b in enumerate(bands):
        x0, x1 = fr.sx(b.x0), fr.sx(b.x1)
        fill = "#f2f4f8" if i % 2 == 0 else "#ffffff"
        o.append(f'<rect x="{x0:.1f}" y="{fr.top}" width="{max(x1 - x0, 0):.1f}" height="{fr.ph}" fill="{fill}"/>')
        label = escape(b.label[: max(1, int((x1 - x0) / 6))])
        o.append(f'<text x="{x0 + 3:.1f}" y="{fr.top + 11}" class="band">{label}</text>')
    return o


def _axes_svg(
    fr: _Frame,
    y_ticks: Sequence[float],
    x_ticks: Sequence[tuple[float, str]] | None,
    *,
    x_label: str,
    y_label: str,
    height: int,
) -> list[str]:
    left, top, pw, ph = fr.left, fr.top, fr.pw, fr.ph
    o = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for y in y_ticks:
        yy = fr.sy(y)
        o.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e3e3e3"/>')
        o.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" class="yt">{fmt(y)}</text>')
    for x, label in x_ticks or [(x, fmt(x)) for x in nice_ticks(fr.x_lo, fr.x_hi, 10)]:
        xx = fr.sx(x)
        o.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#999"/>')
        o.append(f'<text x="{xx:.1f}" y="{top + ph + 17}" class="xt">{escape(label)}</text>')
    o.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" class="xl">{escape(x_label)}</text>')
    o.append(
        f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" class="yl">{escape(y_label)}</text>'
    )
    return o


def _series_svg(fr: _Frame, series: Sequence[Series]) -> list[str]:
    """Each series' line (its plottable points only) and its legend entry."""
    left, top, pw = fr.left, fr.top, fr.pw
    o = []
    for i, s in enumerate(series):
        good = [(x, y) for x, y in s.points if y is not None and math.isfinite(y) and (y > 0 or not fr.log_y)]
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        if good:
            path = " ".join(f"{'M' if j == 0 else 'L'}{fr.sx(x):.1f},{fr.sy(y):.1f}" for j, (x, y) in enumerate(good))
            o.append(f'<path d="{path}" fill="none" stroke="{s.color}" stroke-width="{s.width}"{dash}/>')
        ly = top + 8 + i * 16
        o.append(
            f'<line x1="{left + pw + 10}" x2="{left + pw + 34}" y1="{ly}" y2="{ly}" stroke="{s.color}" '
            f'stroke-width="2"{dash}/>'
        )
        o.append(f'<text x="{left + pw + 38}" y="{ly + 4}" class="lg">{escape(s.name[:22])}</text>')
    return o


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
    pts = [p for s in series for p in s.points if p[1] is not None and math.isfinite(p[1])]
    if log_y:
        pts = [p for p in pts if p[1] > 0]
    x_lo, x_hi = _x_range(pts, bands, x_ticks)
    y_lo, y_hi, y_ticks = _y_range([p[1] for p in pts], log_y=log_y, y_floor=y_floor)
    fr = _Frame(
        left=left, top=top, pw=width - left - right, ph=height - top - bottom,
        x_lo=x_lo, x_hi=x_hi, y_lo=y_lo, y_hi=y_hi, log_y=log_y,
    )
    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<title>{escape(title)}</title>',
        f'<text x="{left}" y="20" class="ct">{escape(title)}</text>',
        *_bands_svg(fr, bands),
        *_axes_svg(fr, y_ticks, x_ticks, x_label=x_label, y_label=y_label, height=height),
        *_series_svg(fr, series),
        "</svg>",
    ]
    return "\n".join(o)
