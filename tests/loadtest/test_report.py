"""The report directory: JSON summary, .hgrm distributions, CSV, and an HTML page with plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from loadtest.campaign import parse_campaign
from loadtest.cli import main
from loadtest.report import write_report
from loadtest.results import TargetRun, campaign_summary
from loadtest.tally import OK, Interval, record_us

CAMPAIGN = """\
name: rep
slo: {p99_ms: 30}
phases:
  - {name: warm-up, rate: 100, duration: 2s, gate: false}
  - {name: steady, rate: 300, duration: 3s}
"""


def fake_run(label: str, scale_s: float, seed: int) -> TargetRun:
    """A run as the runner would leave it, with made-up but plausible slices."""
    c = parse_campaign(CAMPAIGN, "rep.yaml")
    run = TargetRun(label, "127.0.0.1:1", c, started_at=1_700_000_000.0, status="complete")
    rng = np.random.default_rng(seed)
    for sec in range(5):
        phase = 0 if sec < 2 else 1
        rate = 100 if phase == 0 else 300
        iv = Interval(offered=rate, sent=rate, rpcs=rate)
        for v in rng.exponential(scale_s, rate - 1):
            record_us(iv.latency, float(v))
            record_us(iv.service, float(v) * 0.8)
            record_us(iv.lag, 0.0005)
            iv.count((OK, "APPROVE"))
        iv.count(("error", "UNAVAILABLE"), 1)
        run.absorb(0, {"buckets": [(phase, sec, iv.to_wire())], "inflight": 3, "at": sec + 1.05})
    return run


def test_report_has_summary_hgrm_csv_and_an_html_page_with_plots(tmp_path: Path) -> None:
    runs = [fake_run("creditauth", 0.010, 1), fake_run("echo", 0.001, 2)]
    summary = campaign_summary(runs[0].campaign, runs)
    page = write_report(tmp_path, summary, runs)

    names = {p.name for p in tmp_path.iterdir()}
    assert {"summary.json", "report.html", "timeseries.csv", "creditauth-steady.hgrm", "creditauth-warm-up.hgrm",
            "creditauth-all.hgrm", "echo-steady.hgrm"} <= names

    saved = json.loads((tmp_path / "summary.json").read_text())
    steady = saved["runs"][0]["phases"][1]
    assert steady["offered"] == 900 and steady["answered"] == 900 - 3 and steady["errors"] == {"UNAVAILABLE": 3}
    assert steady["throughput"] == round(897 / 3, 1)
    assert len(saved["runs"][0]["seconds"]) == 5 and saved["runs"][0]["seconds"][2]["phase"] == "steady"

    hgrm = (tmp_path / "creditauth-steady.hgrm").read_text()
    assert hgrm.splitlines()[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    assert "#[Max     =" in hgrm and "Total count    =          897" in hgrm
    rows = [ln.split() for ln in hgrm.splitlines()[2:] if ln and not ln.startswith("#")]
    values = [float(r[0]) for r in rows]
    assert values == sorted(values) and 10.0 < values[-1] < 200.0  # milliseconds, exponential tail

    html = page.read_text()
    svgs = re.findall(r"<svg\b.*?</svg>", html, flags=re.S)
    # One percentile-distribution chart, then three time-series charts per target.
    assert len(svgs) == 1 + 3 * 2
    for title in ("Latency by percentile", "Latency percentiles over time: creditauth",
                  "Throughput over time: echo", "Errors and requests in flight over time"):
        assert title in html
    # Each time-series chart has real lines, and phases are shaded and labelled.
    assert all(svg.count("<path") >= 2 for svg in svgs)
    assert ">steady</text>" in html and ">warm-up</text>" in html
    assert "Side by side" in html and "SLO gates" in html
    # p99 of a 10 ms-mean exponential is ~46 ms, over the 30 ms gate; the 1 ms "echo" passes.
    gates = {(g["target"], g["passed"]) for r in saved["runs"] for g in r["gates"]}
    assert gates == {("creditauth", False), ("echo", True)}
    assert saved["passed"] is False and ">FAILED<" in html and "<td class=fail>FAIL</td>" in html
    csv = (tmp_path / "timeseries.csv").read_text().splitlines()
    assert csv[0].startswith("target,t,phase,offered") and len(csv) == 1 + 10


def test_report_can_be_rerendered_from_summary_json(tmp_path: Path) -> None:
    runs = [fake_run("a", 0.005, 3)]
    write_report(tmp_path, campaign_summary(runs[0].campaign, runs), runs)
    first = (tmp_path / "report.html").read_text()
    (tmp_path / "report.html").unlink()
    assert main(["report", str(tmp_path / "summary.json")]) == 0
    assert (tmp_path / "report.html").read_text() == first


def test_a_report_as_one_standalone_svg(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    runs = [fake_run("a", 0.005, 3)]
    write_report(tmp_path, campaign_summary(runs[0].campaign, runs), runs)
    out = tmp_path / "picture.svg"
    assert main(["picture", str(tmp_path / "summary.json"), "--out", str(out)]) == 0
    root = ET.fromstring(out.read_text())  # well-formed, one document
    ns = "{http://www.w3.org/2000/svg}"
    texts = " ".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "rep" in texts and "Latency percentiles over time" in texts and "Throughput over time" in texts
    assert root.find(f"{ns}style") is not None and ".ct{" in (root.find(f"{ns}style").text or "")  # type: ignore[union-attr]
    lines = [p for p in root.iter(f"{ns}polyline")] + [p for p in root.iter(f"{ns}path")]
    assert len(lines) >= 5  # the percentile lines and the throughput lines were drawn
    assert int(root.get("height", "0")) > 600  # two charts stacked under a title
    assert main(["picture", str(tmp_path / "nope.json"), "--out", str(out)]) != 0
