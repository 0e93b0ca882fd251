"""A campaign report as one standalone SVG: the picture a README or a slide can show.

The latency-over-time and throughput-over-time charts of a report's first target, stacked,
with the report's chart styles embedded (an SVG outside the page has no stylesheet) and a
title line naming the campaign and its verdict. Drawn from ``summary.json`` by the same
chart code as ``report.html``, so the picture and the page cannot disagree.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from loadtest import html

_WIDTH = 1100
_HEAD = 34
_SVG = re.compile(r"<svg\b[^>]*\bheight=\"(\d+)\"[^>]*>(.*)</svg>", re.S)


def picture(summary: dict[str, Any]) -> str:
    """The SVG text of ``summary``'s first run: latency and throughput over time."""
    if not summary.get("runs"):
        raise ValueError("the summary has no runs to draw")
    run = summary["runs"][0]
    bands = html._bands(summary)
    charts = [html._latency_chart(run, bands), html._throughput_chart(run, bands)]
    verdict = "PASSED" if summary.get("passed") else "FAILED"
    phases = ", ".join(f"{p['name']} {p.get('planned_rate', 0):g}/s" for p in summary.get("phases", []))
    body, y = [], _HEAD
    for chart in charts:
        m = _SVG.search(chart)
        if m is None:
            raise ValueError("a chart is not an SVG")
        body.append(f"<g transform='translate(0,{y})'>{m.group(2)}</g>")
        y += int(m.group(1))
    styles = "".join(line for line in html._CSS.splitlines() if line.startswith("."))
    title = f"Load-test campaign “{summary['campaign']}”: {verdict} against {run['target']} ({phases})"
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{_WIDTH}' height='{y}' viewBox='0 0 {_WIDTH} {y}' "
            f"role='img' aria-label='{escape(title)}'><style>text{{font-family:system-ui,sans-serif}}"
            f"{styles}</style><rect width='100%' height='100%' fill='#fff'/>"
            f"<text x='70' y='22' class='ct'>{escape(title)}</text>{''.join(body)}</svg>\n")
