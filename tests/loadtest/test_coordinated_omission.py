"""A server that stalls once for 200 ms must show up in the percentiles.

A closed-loop generator stops sending while the server is stalled, so only
the few requests in flight see the stall: the classic coordinated omission.
Open loop keeps the schedule; every request due during the stall waits, and
latency measured from the intended send time shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.campaign import parse_campaign
from loadtest.results import phase_summary
from loadtest.runner import run_target
from tests.loadtest.conftest import EchoFactory, campaign_yaml

# The stall comes 300 requests into the measured phase, after a warm-up of 100.
STALL = ("--stall-after", "400", "--stall-ms", "200")
WARM = "phases:\n  - {name: warm-up, rate: 100, duration: 1s}\n"


def _run(population: Path, target: str, body: str, **top: object) -> dict[str, Any]:
    c = parse_campaign(campaign_yaml(population, target, body, **top), "co.yaml")
    run = run_target(c, target, "t", inline=True)
    assert run.status == "complete", run.failure
    return phase_summary(run, len(c.phases) - 1)


def test_open_loop_shows_a_200ms_stall_that_closed_loop_hides(population: Path, echo_server: EchoFactory) -> None:
    open_loop = _run(population, echo_server(*STALL), WARM + "  - {name: steady, rate: 400, duration: 3s}\n")
    closed = _run(population, echo_server(*STALL), WARM + "  - {name: closed, concurrency: 2, duration: 3s}\n")

    # ~80 requests were due during the stall; their waits fill the top percentiles.
    assert open_loop["latency_ms"]["p99"] >= 150.0, open_loop["latency_ms"]
    assert open_loop["latency_ms"]["p50"] < 50.0  # only the top: the bulk was fast
    assert open_loop["answered"] == open_loop["offered"] == 1200

    # The closed loop saw the very same stall (its max) but its p99 does not show it.
    assert closed["latency_ms"]["max"] >= 180.0, closed["latency_ms"]
    assert closed["latency_ms"]["p99"] < 100.0, closed["latency_ms"]


def test_backpressure_in_the_generator_does_not_hide_queueing(population: Path, echo_server: EchoFactory) -> None:
    # One request in flight at most: during the stall the generator itself cannot
    # send. The requests due meanwhile go out late but are served fast; their
    # latency must still count from when they were due.
    s = _run(population, echo_server(*STALL), WARM + "  - {name: steady, rate: 200, duration: 3s}\n",
             max_in_flight=1)
    assert s["latency_ms"]["p99"] >= 100.0, s["latency_ms"]
    assert s["service_ms"]["p99"] < 50.0, s["service_ms"]  # what a naive tool would report
    assert s["in_flight_capped"] > 10
    assert s["late_sends"] == "in_flight_cap"
    assert s["answered"] == s["offered"] == 600
