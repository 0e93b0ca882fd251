"""SLO gates: what they compare, and the exit codes they set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.campaign import parse_campaign
from loadtest.cli import main
from loadtest.results import TargetRun, evaluate_gates
from loadtest.tally import OK, Interval, record_us
from tests.loadtest.conftest import EchoFactory, campaign_yaml

TWO_PHASES = """\
name: g
slo: {p99_ms: 50, p999_ms: 100, max_error_rate: 0.01, min_throughput: 90}
phases:
  - {name: warm-up, rate: 10, duration: 1s, gate: false}
  - {name: steady, rate: 100, duration: 10s}
"""


def _run_with(latencies_s: list[float], *, errors: int = 0, offered: int | None = None) -> TargetRun:
    run = TargetRun("t", "127.0.0.1:1", parse_campaign(TWO_PHASES, "g.yaml"), status="complete")
    iv = Interval(offered=offered if offered is not None else len(latencies_s) + errors)
    for v in latencies_s:
        record_us(iv.latency, v)
        iv.count((OK, "APPROVE"))
    if errors:
        iv.errors["UNAVAILABLE"] = errors
    run.phases[1].add(iv)
    run.phases[0].add(Interval(offered=10, errors={"UNAVAILABLE": 10}))  # ungated: must not matter
    return run


def _failed(run: TargetRun) -> set[str]:
    return {g.measure for g in evaluate_gates(run) if not g.passed}


def test_all_gates_pass_and_ungated_phases_are_not_judged() -> None:
    run = _run_with([0.010] * 1000)
    checks = evaluate_gates(run)
    assert {g.phase for g in checks} == {"steady"}
    assert {g.measure for g in checks} == {"p99_ms", "p999_ms", "max_error_rate", "min_throughput"}
    assert all(g.passed for g in checks)


def test_tail_latency_fails_p99_and_p999() -> None:
    assert _failed(_run_with([0.010] * 980 + [0.200] * 20)) == {"p99_ms", "p999_ms"}
    assert _failed(_run_with([0.010] * 997 + [0.200] * 3)) == {"p999_ms"}


def test_error_rate_and_throughput_gates() -> None:
    assert _failed(_run_with([0.010] * 1000, errors=20)) == {"max_error_rate"}
    # 800 answers in a 10 s phase is 80/s, below the 90/s floor.
    assert _failed(_run_with([0.010] * 800)) == {"min_throughput"}


def test_a_phase_with_no_answers_fails_its_latency_gates() -> None:
    failed = _failed(_run_with([], errors=1000))
    assert {"p99_ms", "p999_ms", "max_error_rate", "min_throughput"} <= failed


def _cli(tmp_path: Path, population: Path, target: str, slo: str, *extra: str) -> tuple[int, dict[str, Any]]:
    f = tmp_path / "c.yaml"
    f.write_text(campaign_yaml(population, target, f"slo: {slo}\nphases:\n  - {{name: s, rate: 100, duration: 1s}}\n",
                               connect_timeout="2s"))
    out = tmp_path / "report"
    code = main(["campaign", str(f), "--report-dir", str(out), "--quiet", "--inline", *extra])
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return code, summary


@pytest.mark.parametrize(
    ("slo", "code"),
    [
        ("{p99_ms: 5000, max_error_rate: 0.01, min_throughput: 50}", 0),
        ("{p99_ms: 0.001}", 1),  # one microsecond: impossible
        ("{min_throughput: 1000000}", 1),
    ],
)
def test_gates_set_the_exit_code(tmp_path: Path, population: Path, echo_server: EchoFactory,
                                 slo: str, code: int) -> None:
    got, summary = _cli(tmp_path, population, echo_server(), slo)
    assert got == code
    assert summary["passed"] is (code == 0)


def test_unreachable_target_is_a_run_failure_exit_3(tmp_path: Path, population: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got, summary = _cli(tmp_path, population, f"127.0.0.1:{port}", "{p99_ms: 100}")
    assert got == 3
    run = summary["runs"][0]
    assert run["status"] == "failed" and "could not connect" in run["failure"]
