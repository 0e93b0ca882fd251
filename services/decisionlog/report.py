"""The what-if as one self-contained HTML page: figures, then plots drawn as inline SVG.

No plotting library and nothing fetched: a risk committee opens the file anywhere. Every
plot is made of a few small primitives here (horizontal grouped bars, a histogram, a
transition grid), from the JSON document ``whatif.report`` returns.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

A, B = "#8c96a8", "#1f6fb2"  # champion, candidate
_UP, _DOWN = "#2e8b57", "#c0392b"
_TOP = 15  # segment values plotted (largest first); the tables hold them all
_ROW, _LABEL, _WIDTH = 18, 190, 460

Fmt = Callable[[float], str]


def _e(s: object) -> str:
    return html.escape(str(s))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def hbars(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None], str]], fmt: Fmt) -> str:
    """Horizontal bars, one group per label, one bar per series (None: no bar)."""
    top = max([abs(v) for _, vals, _ in series for v in vals if v is not None] + [1e-12])
    k = len(series)
    group = _ROW * k + 6
    height = group * len(labels) + 24
    out = [f'<svg width="{_LABEL + _WIDTH + 90}" height="{height}" role="img">']
    for i, label in enumerate(labels):
        y0 = 20 + i * group
        out.append(f'<text x="{_LABEL - 6}" y="{y0 + group / 2}" text-anchor="end" '
                   f'dominant-baseline="middle">{_e(label)}</text>')
        for j, (_, vals, color) in enumerate(series):
            v = vals[i]
            if v is None:
                continue
            w = _WIDTH * abs(v) / top
            y = y0 + j * _ROW
            out.append(f'<rect x="{_LABEL}" y="{y}" width="{w:.1f}" height="{_ROW - 3}" fill="{color}"/>'
                       f'<text x="{_LABEL + w + 4:.1f}" y="{y + _ROW / 2}" dominant-baseline="middle" '
                       f'font-size="11">{_e(fmt(v))}</text>')
    legend = "".join(f'<rect x="{_LABEL + 150 * j}" y="2" width="10" height="10" fill="{c}"/>'
                     f'<text x="{_LABEL + 150 * j + 14}" y="11" font-size="11">{_e(n)}</text>'
                     for j, (n, _, c) in enumerate(series))
    return "".join(out) + legend + "</svg>"


def histogram(counts: Sequence[int], edges: Sequence[float]) -> str:
    """Limit deltas: bars below zero red, above green; the axis at the ends."""
    if not counts:
        return "<p>No limit changed.</p>"
    w, h = 640, 180
    top = max(counts) or 1
    bw = w / len(counts)
    bars = []
    for i, n in enumerate(counts):
        bh = (h - 30) * n / top
        color = _DOWN if edges[i + 1] <= 0 else _UP
        bars.append(f'<rect x="{i * bw:.1f}" y="{h - 20 - bh:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" '
                    f'fill="{color}"><title>{edges[i]:,.0f} to {edges[i + 1]:,.0f}: {n:,}</title></rect>')
    axis = (f'<text x="0" y="{h - 4}" font-size="11">{edges[0]:,.0f}</text>'
            f'<text x="{w}" y="{h - 4}" font-size="11" text-anchor="end">{edges[-1]:,.0f}</text>')
    return f'<svg width="{w}" height="{h}" role="img">{"".join(bars)}{axis}</svg>'


def transitions(rows: Sequence[dict[str, Any]]) -> str:
    """Decisions before (rows) against after (columns), shaded by count."""
    names = sorted({r["from"] for r in rows} | {r["to"] for r in rows})
    count = {(r["from"], r["to"]): r["count"] for r in rows}
    top = max(count.values(), default=1)
    cell, pad = 90, 110
    out = [f'<svg width="{pad + cell * len(names)}" height="{30 + cell * len(names)}" role="img">']
    for j, n in enumerate(names):
        out.append(f'<text x="{pad + j * cell + cell / 2}" y="20" text-anchor="middle">{_e(n)}</text>')
    for i, f in enumerate(names):
        out.append(f'<text x="{pad - 6}" y="{30 + i * cell + cell / 2}" text-anchor="end">{_e(f)}</text>')
        for j, t in enumerate(names):
            n = count.get((f, t), 0)
            shade = 0.08 + 0.85 * n / top if n else 0.0
            color = B if f == t else _DOWN
            out.append(f'<rect x="{pad + j * cell}" y="{30 + i * cell}" width="{cell - 2}" height="{cell - 2}" '
                       f'fill="{color}" fill-opacity="{shade:.2f}" stroke="#ccc"/>'
                       f'<text x="{pad + j * cell + cell / 2}" y="{30 + i * cell + cell / 2}" '
                       f'text-anchor="middle">{n:,}</text>')
    return "".join(out) + "</svg>"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _segment(name: str, rows: Sequence[dict[str, Any]], cur: str) -> str:
    shown = rows[:_TOP]
    labels = [str(r[name]) for r in shown]
    rate = hbars(labels, [("champion", [r["approval_rate_a"] for r in shown], A),
                          ("candidate", [r["approval_rate_b"] for r in shown], B)], _pct)
    loss = hbars(labels, [("champion", [r["expected_loss_a"] for r in shown], A),
                          ("candidate", [r["expected_loss_b"] for r in shown], B)], _num)
    table = _table(
        [name, "decisions", "changed", "approval (champion)", "approval (candidate)",
         f"avg limit ({cur}, champion)", "avg limit (candidate)", "expected loss (champion)", "(candidate)"],
        [[str(r[name]), f"{r['n']:,}", f"{r['changed']:,}", _pct(r["approval_rate_a"]), _pct(r["approval_rate_b"]),
          _num(r["mean_limit_a"]), _num(r["mean_limit_b"]), _num(r["expected_loss_a"]), _num(r["expected_loss_b"])]
         for r in rows])
    return (f"<h3>By {_e(name)}</h3><div class=row><div><h4>Approval rate</h4>{rate}</div>"
            f"<div><h4>Expected loss ({_e(cur)})</h4>{loss}</div></div>{table}")


_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:2em}svg text{font-size:12px}"""


def render(doc: dict[str, Any]) -> str:
    """The page for one what-if document (``services.decisionlog.whatif.report``)."""
    t, ch, cur = doc["totals"], doc["changes"], doc["currency"]
    head = _table(["", "champion", "candidate"], [
        ["approval rate", _pct(t["approval_rate_a"]), _pct(t["approval_rate_b"])],
        [f"average limit ({cur})", _num(t["mean_limit_a"]), _num(t["mean_limit_b"])],
        [f"expected loss ({cur}, LGD {doc['lgd']})", _num(t["expected_loss_a"]), _num(t["expected_loss_b"])],
    ])
    d = ch["limit_delta"]
    reasons = sorted(set(ch["reasons_appeared"]) | set(ch["reasons_disappeared"]))
    rplot = hbars(reasons, [("appeared", [ch["reasons_appeared"].get(r, 0) for r in reasons], _DOWN),
                            ("disappeared", [ch["reasons_disappeared"].get(r, 0) for r in reasons], _UP)],
                  lambda v: f"{v:,.0f}") if reasons else "<p>No reason changed.</p>"
    parts = [
        f"<h1>What-if</h1><p>Champion: <b>{_e(doc['champion'])}</b><br>Candidate: <b>{_e(doc['candidate'])}</b><br>"
        f"{t['n']:,} decisions; {ch['changed']:,} change ({t['decision_changed']:,} change decision).</p>",
        head,
        f"<h2>Decisions: champion (rows) to candidate (columns)</h2>{transitions(ch['transitions'])}",
        f"<h2>Limit changes ({_e(cur)})</h2><p>{d['raised']:,} raised, {d['cut']:,} cut; total {_num(d['total'])}, "
        f"median {_num(d['p50'])}, 5-95% {_num(d['p05'])} to {_num(d['p95'])}.</p>"
        f"{histogram(d['histogram']['counts'], d['histogram']['edges'])}",
        f"<h2>Reasons that appeared or disappeared</h2>{rplot}",
        "<h2>By segment</h2>",
        *(_segment(name, rows, cur) for name, rows in doc["segments"].items()),
    ]
    return (f"<!doctype html><html><head><meta charset=utf-8><title>What-if</title><style>{_STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
