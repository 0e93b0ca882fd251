"""Write a campaign's report directory.

::

    summary.json            everything measured (phase summaries with encoded histograms,
                            per-second series, gates, verdict): the machine-readable record
    report.html             the page a person opens (plots and tables, self-contained)
    <target>-<phase>.hgrm   HdrHistogram percentile distributions, in milliseconds
    <target>-all.hgrm       the whole run (all phases)
    timeseries.csv          one row per target and second
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest.hist import Quantiles
from loadtest.html import render
from loadtest.results import TargetRun
from loadtest.tally import Interval


def default_report_dir(campaign_name: str, root: Path = Path("loadtest-reports")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{campaign_name}-{stamp}"


def hgrm_text(h: HdrHistogram, ticks_per_half_distance: int = 5) -> str:
    """The classic ``.hgrm`` percentile distribution, values in milliseconds.

    Written here rather than with hdrh's ``output_percentile_distribution``,
    which is slow and leaves the standard deviation unscaled (microseconds
    labelled as milliseconds).
    """
    lines = [f"{'Value':>12} {'Percentile':>14} {'TotalCount':>10} {'1/(1-Percentile)':>14}", ""]
    q = Quantiles(h)
    if not q.total:
        return "\n".join(lines) + "\n"
    for value, level, count in q.levels(ticks_per_half_distance):
        inv = f"{1.0 / (1.0 - level):14.2f}" if level < 1.0 else ""
        lines.append(f"{value / 1000.0:12.3f} {level:14.12f} {count:10d} {inv}".rstrip())
    lines.append(f"#[Mean    = {q.mean() / 1000.0:12.3f}, StdDeviation   = {q.stddev() / 1000.0:12.3f}]")
    lines.append(f"#[Max     = {q.max / 1000.0:12.3f}, Total count    = {q.total:12d}]")
    lines.append(f"#[Buckets = {h.bucket_count:12d}, SubBuckets     = {h.sub_bucket_count:12d}]")
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_report(report_dir: Path, summary: dict[str, Any], runs: list[TargetRun]) -> Path:
    """Write every file of the report; returns the HTML page's path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for run in runs:
        total = Interval()
        for ph, iv in zip(run.campaign.phases, run.phases, strict=True):
            (report_dir / f"{_safe(run.label)}-{_safe(ph.name)}.hgrm").write_text(hgrm_text(iv.latency))
            total.add(iv)
        (report_dir / f"{_safe(run.label)}-all.hgrm").write_text(hgrm_text(total.latency))
    with (report_dir / "timeseries.csv").open("w", newline="") as f:
        rows = [{"target": r["label"], **s} for r in summary["runs"] for s in r["seconds"]]
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    page = report_dir / "report.html"
    page.write_text(render(summary))
    return page
