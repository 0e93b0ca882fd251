"""The campaign report as one self-contained HTML page (inline SVG, no scripts).

Rendered from the JSON summary alone (it carries each phase's encoded
histogram), so a report can be re-rendered from ``summary.json`` later.
"""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import Any

from loadtest.hist import Quantiles
from loadtest.svg import PALETTE, Band, Series, line_chart
from loadtest.tally import decode_histogram

# Percentile-distribution x positions: log10(1 / (1 - q)), the HdrHistogram plot.
_DIST_TICKS = [(0.0, "0%"), (1.0, "90%"), (2.0, "99%"), (3.0, "99.9%"), (4.0, "99.99%"), (5.0, "99.999%")]
_DASHES = (None, "7 4", "2 3")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1140px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0 12px;font-variant-numeric:tabular-nums;font-size:12px}
th,td{border:1px solid #ddd;padding:2px 5px;text-align:right}th{background:#f5f5f5}
td.l,th.l{text-align:left}.pass{color:#137333;font-weight:600}.fail{color:#c5221f;font-weight:600}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.bp{background:#137333}.bf{background:#c5221f}.bn{background:#777}.muted{color:#666}
.chart{display:block;margin:6px 0 14px}
.ct{font-weight:600;font-size:13px}.xt{font-size:11px;text-anchor:middle;fill:#444}
.yt{font-size:11px;text-anchor:end;fill:#444}.xl,.yl{font-size:12px;text-anchor:middle;fill:#444}
.lg{font-size:11px;fill:#333}.band{font-size:10px;fill:#777}
"""


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def _bands(summary: dict[str, Any]) -> list[Band]:
    return [Band(p["start_s"], p["start_s"] + p["duration_s"], p["name"]) for p in summary["phases"]]


def _latency_chart(run: dict[str, Any], bands: list[Band]) -> str:
    rows = run["seconds"]
    series = [
        Series(name, [(r["t"] + 0.5, r[key]) for r in rows if r[key] is not None], PALETTE[i])
        for i, (name, key) in enumerate(
            (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"), ("max", "max_ms"))
        )
    ]
    return line_chart(
        series, title=f"Latency percentiles over time: {run['label']} (each second's answers, from intended send time)",
        x_label="seconds since start", y_label="latency (ms, log)", log_y=True, y_floor=0.01, bands=bands,
    )


def _throughput_chart(run: dict[str, Any], bands: list[Band]) -> str:
    rows = run["seconds"]
    series = [
        Series("offered/s", [(r["t"] + 0.5, r["offered"]) for r in rows], PALETTE[7], dash="6 3"),
        Series("sent/s", [(r["t"] + 0.5, r["sent"]) for r in rows], PALETTE[4], dash="2 2"),
        Series("answered/s", [(r["t"] + 0.5, r["answered"]) for r in rows], PALETTE[0], width=2.0),
    ]
    return line_chart(
        series, title=f"Throughput over time: {run['label']} (decisions per second)",
        x_label="seconds since start", y_label="decisions / s", bands=bands,
    )


def _errors_chart(run: dict[str, Any], bands: list[Band]) -> str:
    rows = run["seconds"]
    series = [
        Series("errors/s", [(r["t"] + 0.5, r["errors"]) for r in rows], PALETTE[1], width=2.0),
        Series("in flight", [(r["t"] + 0.5, r["inflight"]) for r in rows], PALETTE[5], dash="4 3"),
    ]
    return line_chart(
        series, title=f"Errors and requests in flight over time: {run['label']}",
        x_label="seconds since start", y_label="count", height=240, bands=bands,
    )


def distribution_points(encoded: str) -> list[tuple[float, float]]:
    """(log10(1/(1-q)), latency ms) along the percentile axis, up to the maximum."""
    h = decode_histogram(encoded)
    q = Quantiles(h)
    total = q.total
    pts: list[tuple[float, float]] = []
    if not total:
        return pts
    # Stop where fewer than ~2 requests lie beyond: past that the curve is just the max.
    x_max = min(5.0, max(1.0, math.log10(max(total, 10) / 2.0)))
    steps = 120
    for k in range(steps + 1):
        x = x_max * k / steps
        pts.append((x, q.value_at(100.0 * (1.0 - 10.0 ** (-x))) / 1000.0))
    pts.append((x_max, h.get_max_value() / 1000.0))
    return pts


def _distribution_chart(summary: dict[str, Any]) -> str:
    series = []
    for ri, run in enumerate(summary["runs"]):
        phases = [p for p in run["phases"] if p["histogram"]]
        chosen = [p for p in phases if p["gated"]] or phases
        for pi, p in enumerate(chosen):
            name = f"{run['label']}/{p['name']}" if len(summary["runs"]) > 1 else p["name"]
            series.append(Series(name, distribution_points(p["histogram"]), PALETTE[pi % len(PALETTE)],
                                 dash=_DASHES[ri % len(_DASHES)]))
    return line_chart(
        series, title="Latency by percentile (whole phase, all generator processes merged)",
        x_label="percentile", y_label="latency (ms, log)", log_y=True, y_floor=0.01, x_ticks=_DIST_TICKS,
        height=360,
    )


def _phase_table(run: dict[str, Any]) -> str:
    head = (
        "<tr><th class=l>phase</th><th>mode</th><th>planned/s</th><th>offered</th><th>answered</th>"
        "<th>throughput/s</th><th>errors</th><th>error rate</th><th>p50</th><th>p90</th><th>p99</th>"
        "<th>p99.9</th><th>max</th><th>service p99</th><th>send lag p99</th></tr>"
    )
    rows = []
    for p in run["phases"]:
        lat, svc, lag = p["latency_ms"], p["service_ms"], p["send_lag_ms"]
        mode = p["rpc"] + (f"×{p['batch_size']}" if p["batch_size"] else "") + f"&nbsp;{p['mode']}"
        rows.append(
            f"<tr><td class=l>{escape(p['name'])}</td><td>{mode}</td><td>{_fmt(p['planned_rate'], 0)}</td>"
            f"<td>{_fmt(p['offered'])}</td><td>{_fmt(p['answered'])}</td><td>{_fmt(p['throughput'], 0)}</td>"
            f"<td>{_fmt(p['error_count'])}</td><td>{p['error_rate']:.3%}</td>"
            + "".join(f"<td>{_fmt(lat.get(k), 2)}</td>" for k in ("p50", "p90", "p99", "p99.9", "max"))
            + f"<td>{_fmt(svc.get('p99'), 2)}</td><td>{_fmt(lag.get('p99'), 2)}</td></tr>"
        )
        details = [f"{escape(k)} {v:,}" for k, v in p["outcomes"].items()]
        if p["rejected_as_expected"]:
            details.append(f"invalid, rejected as expected {p['rejected_as_expected']:,}")
        if p["errors"]:
            details.append("<b>errors</b>: " + ", ".join(f"{escape(k)} {v:,}" for k, v in p["errors"].items()))
        if details:
            rows.append(f"<tr><td></td><td class='l muted' colspan=14>{'; '.join(details)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _gate_value(measure: str, v: float | None) -> str:
    if v is None:
        return "-"
    if measure == "max_error_rate":
        return f"{v:.3%}"
    return f"{v:,.0f}/s" if measure == "min_throughput" else f"{v:,.4g} ms"


def _gates_table(summary: dict[str, Any]) -> str:
    rows = []
    for run in summary["runs"]:
        for g in run["gates"]:
            cls = "pass" if g["passed"] else "fail"
            op = "≥" if g["measure"] == "min_throughput" else "≤"
            rows.append(
                f"<tr><td class=l>{escape(g['target'])}</td><td class=l>{escape(g['phase'])}</td>"
                f"<td class=l>{escape(g['measure'])}</td><td>{_gate_value(g['measure'], g['actual'])}</td>"
                f"<td>{op} {_gate_value(g['measure'], g['limit'])}</td>"
                f"<td class={cls}>{'PASS' if g['passed'] else 'FAIL'}</td></tr>"
            )
    if not rows:
        return "<p class=muted>No SLO gates in this campaign.</p>"
    return (
        "<table><tr><th class=l>target</th><th class=l>phase</th><th class=l>gate</th><th>measured</th>"
        f"<th>limit</th><th>result</th></tr>{''.join(rows)}</table>"
    )


def _comparison_table(summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    if len(runs) < 2:
        return ""
    a, b = runs[0], runs[1]
    head = (
        f"<tr><th class=l>phase</th><th>{escape(a['label'])} throughput/s</th>"
        f"<th>{escape(b['label'])} throughput/s</th>"
        f"<th>ratio</th><th>{escape(a['label'])} p99 ms</th><th>{escape(b['label'])} p99 ms</th>"
        f"<th>{escape(a['label'])} errors</th><th>{escape(b['label'])} errors</th></tr>"
    )
    rows = []
    for pa, pb in zip(a["phases"], b["phases"], strict=False):
        ratio = pa["throughput"] / pb["throughput"] if pb["throughput"] else None
        rows.append(
            f"<tr><td class=l>{escape(pa['name'])}</td><td>{_fmt(pa['throughput'], 0)}</td>"
            f"<td>{_fmt(pb['throughput'], 0)}</td><td>{'-' if ratio is None else f'{ratio:.2f}×'}</td>"
            f"<td>{_fmt(pa['latency_ms'].get('p99'), 2)}</td><td>{_fmt(pb['latency_ms'].get('p99'), 2)}</td>"
            f"<td>{_fmt(pa['error_count'])}</td><td>{_fmt(pb['error_count'])}</td></tr>"
        )
    return f"<h2>Side by side</h2><table>{head}{''.join(rows)}</table>"


def _badge(summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    if runs and runs[0]["status"] != "complete":
        return f"<span class='badge bf'>{escape(runs[0]['status'].upper())}</span>"
    if runs and not runs[0].get("gated", True):
        return "<span class='badge bn'>NO GATES</span>"
    return "<span class='badge bp'>PASSED</span>" if summary["passed"] else "<span class='badge bf'>FAILED</span>"


def render(summary: dict[str, Any]) -> str:
    bands = _bands(summary)
    started = min((r["started_at"] for r in summary["runs"] if r["started_at"]), default=0.0)
    when = dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if started else "-"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>loadtest: {escape(summary['campaign'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Load-test campaign “{escape(summary['campaign'])}” "
        f"{_badge(summary)}</h1>",
        f"<p class=muted>{escape(summary.get('description') or '')}<br>file {escape(summary.get('file') or '-')}"
        f" · started {when} · targets: "
        + ", ".join(f"{escape(r['label'])} = {escape(r['target'])} ({escape(r['status'])})" for r in summary["runs"])
        + "</p>",
        "<p class=muted>Latency is measured from each request's <em>intended</em> send time (its place in the "
        "rate schedule), so time spent queued behind a slow server or a late generator counts. Percentiles "
        "come from HdrHistograms merged across all generator processes, never averaged. “Answered” counts "
        "decisions plus deliberately invalid requests correctly rejected with INVALID_ARGUMENT.</p>",
        "<h2>SLO gates</h2>",
        _gates_table(summary),
        _comparison_table(summary),
        "<h2>Percentile distribution</h2>",
        _distribution_chart(summary),
    ]
    for run in summary["runs"]:
        fail = f" — {escape(run['failure'])}" if run.get("failure") else ""
        parts += [
            f"<h2>{escape(run['label'])} ({escape(run['target'])}): {escape(run['status'])}{fail}</h2>",
            _phase_table(run),
            _latency_chart(run, bands),
            _throughput_chart(run, bands),
            _errors_chart(run, bands),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
