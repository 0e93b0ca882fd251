"""Runs are bounded: a target that stops answering cannot keep a campaign running."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loadtest.campaign import parse_campaign
from loadtest.results import phase_summary
from loadtest.runner import run_target
from tests.loadtest.conftest import EchoFactory, campaign_yaml

# The echo server freezes for 5 s at its first request.
FROZEN = ("--stall-after", "1", "--stall-ms", "5000")


def _run(population: Path, target: str, phase: str, drain: str = "300ms") -> tuple[dict[str, Any], float]:
    text = campaign_yaml(population, target, f"phases:\n  - {phase}\n", timeout="300ms", drain=drain)
    c = parse_campaign(text, "b.yaml")
    t0 = time.monotonic()
    run = run_target(c, target, "t", inline=True)
    assert run.status == "complete", run.failure
    return phase_summary(run, 0), time.monotonic() - t0


def test_stream_to_a_frozen_server_ends_at_the_hard_stop(population: Path, echo_server: EchoFactory) -> None:
    # A drain shorter than the per-request timeout: what was sent in the phase's last 0.2 s is
    # still within its deadline at the hard stop, however late the machine runs the timers.
    s, took = _run(population, echo_server(*FROZEN), "{name: s, rpc: stream, rate: 200, duration: 1s}",
                   drain="100ms")
    # 1 s of load + 0.1 s drain (+ start-up): far less than the 5 s freeze.
    assert took < 3.5
    assert s["offered"] == 200
    assert s["offered"] == s["answered"] + s["error_count"]
    assert s["errors"].get("ABANDONED", 0) > 0  # in flight at the hard stop


def test_unary_to_a_frozen_server_times_out_per_request(population: Path, echo_server: EchoFactory) -> None:
    s, took = _run(population, echo_server(*FROZEN), "{name: u, rate: 200, duration: 1s}")
    assert took < 3.5
    assert s["offered"] == 200 == s["answered"] + s["error_count"]
    assert s["errors"].get("DEADLINE_EXCEEDED", 0) > 100
    # Timed-out requests still count in latency, at no less than the deadline.
    assert s["latency_ms"]["p50"] >= 300.0
