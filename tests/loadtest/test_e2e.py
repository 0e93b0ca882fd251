"""End to end over real gRPC: generator processes -> in-test echo servers -> merged report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.cli import main
from loadtest.tally import decode_histogram
from tests.loadtest.conftest import ROOT, EchoFactory, campaign_yaml

PHASES = """\
mix: {invalid_share: 0.05, unknown_merchant_share: 0.05, batch_size: 50, streams: 2}
slo: {p99_ms: 2000, max_error_rate: 0.0}
phases:
  - {name: unary, rate: 200, duration: 1500ms}
  - {name: batch, rpc: batch, rate: 2000, duration: 1500ms}
  - {name: stream, rpc: stream, rate: 300, duration: 1500ms, arrivals: poisson}
  - {name: closed, concurrency: 4, duration: 1s, max_requests: 400}
"""


@pytest.mark.slow
def test_campaign_with_two_processes_and_a_comparison_target(
    tmp_path: Path, population: Path, echo_server: EchoFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    primary, other = echo_server(), echo_server("--delay-ms", "2")
    f = tmp_path / "e2e.yaml"
    f.write_text(campaign_yaml(population, primary, PHASES, name="e2e", processes=2))
    report = tmp_path / "report"
    code = main(["campaign", str(f), "--compare", other, "--compare-label", "slower", "--report-dir", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err

    # Live progress was printed: a header, phase markers and per-second lines.
    assert "== e2e -> target" in err and "== e2e -> slower" in err and "  -- batch" in err
    assert "e2e: PASSED. Report:" in err

    summary = json.loads((report / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["target", "slower"]
    for run in summary["runs"]:
        assert run["status"] == "complete" and run["processes_reporting"] == 2
        for p in run["phases"]:
            # Every request due is accounted for: answered, or an error. None were errors.
            assert p["offered"] == p["answered"] + p["error_count"], p
            assert p["error_count"] == 0, p["errors"]
            # Deliberately invalid requests came back INVALID_ARGUMENT and count as answered.
            assert p["rejected_as_expected"] > 0, p["name"]
            # The phase histogram is the merge of both processes' histograms: one entry per decision.
            assert decode_histogram(p["histogram"]).get_total_count() == p["offered"]
        by_name = {p["name"]: p for p in run["phases"]}
        assert by_name["unary"]["offered"] == 300
        assert by_name["batch"]["offered"] == 3000 and by_name["batch"]["rpcs"] == 60
        assert by_name["closed"]["offered"] <= 400
    # The slower target shows its 2 ms of service time in the same percentiles.
    assert summary["runs"][1]["phases"][0]["latency_ms"]["p50"] > summary["runs"][0]["phases"][0]["latency_ms"]["p50"]

    html = (report / "report.html").read_text()
    assert "Side by side" in html and html.count("<svg") == 7
    assert (report / "slower-batch.hgrm").exists()


def test_quick_keeps_the_json_shape_the_demo_parses(population: Path, echo_server: EchoFactory) -> None:
    target = echo_server()
    out = subprocess.run(
        [sys.executable, "-m", "loadtest", "quick", "--target", target, "--data-dir", str(population),
         "--requests", "300", "--concurrency", "8", "--batch-calls", "10", "--stream-requests", "400"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["target"] == target and isinstance(doc["samples"], list)
    assert [r["mode"] for r in doc["runs"]] == ["unary", "batch100", "stream"]
    for r in doc["runs"]:
        assert set(r) == {"mode", "rpcs", "decisions", "seconds", "decisions_per_s", "rpcs_per_s", "latency_ms",
                          "errors", "outcomes"}
        assert set(r["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
        assert r["decisions"] > 0


def test_quick_refuses_a_non_loopback_target(population: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loadtest", "quick", "--target", "192.0.2.1:50051", "--data-dir", str(population)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 2 and "refusing target '192.0.2.1:50051'" in out.stderr
