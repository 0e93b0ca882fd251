"""2x overload for a bounded time against a real front end (``creditauth serve --channel local``).

A short closed-loop probe measures the stack's unary capacity C on this machine; then the
load generator (``python -m loadtest campaign``, open loop: latency from each request's
intended send time) offers 2C for 15 s and, right after, a closed loop like the probe's.
What must hold: every call ends with a decision or an overload status, the front end keeps
deciding meanwhile, its resident memory stays bounded (the queue is bounded), full throughput
is back within 10 s of the overload's end, and the excess is shed at once with
``RESOURCE_EXHAUSTED``, not left to time out or be cancelled (not yet: the test xfails on
that last one, after checking the rest; see its end).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import World
from tests.support import serving_process

pytestmark = [pytest.mark.slow]
MiB = 1 << 20
OVERLOAD_S = 15
RECOVERY_S = 10  # full throughput must be back within this of the overload's end


@pytest.fixture(scope="module")
def frontend(world: World) -> Iterator[tuple[psutil.Process, int]]:
    with serving_process(world.data_dir) as served:
        yield served


def _campaign(tmp: Path, name: str, port: int, data_dir: Path, phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Run one campaign with the real load generator; its summary (with per-second rows)."""
    doc = {
        "name": name, "target": f"127.0.0.1:{port}", "data_dir": str(data_dir), "processes": 1,
        "timeout": "2s", "max_in_flight": 10_000,  # never the limit: 2x capacity x 2 s
        "mix": {"rpc": "unary", "invalid_share": 0.0, "unknown_merchant_share": 0.01},
        "phases": phases,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    out = tmp / f"{name}-report"
    run = subprocess.run(
        [sys.executable, "-m", "loadtest", "campaign", str(path), "--report-dir", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())["runs"][0]
    assert summary["status"] == "complete", summary["failure"]
    return summary


class _Rss(threading.Thread):
    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.proc, self.stop, self.peak = proc, threading.Event(), proc.memory_info().rss

    def run(self) -> None:
        while not self.stop.wait(0.02):  # the sampling period of the measurement, not a wait for state
            self.peak = max(self.peak, self.proc.memory_info().rss)


def test_twice_capacity_is_shed_fast_memory_bounded_and_throughput_recovers(
    frontend: tuple[psutil.Process, int], world: World, tmp_path: Path
) -> None:
    proc, port = frontend
    probe = _campaign(tmp_path, "probe", port, world.data_dir, [
        {"name": "warm", "mode": "closed", "concurrency": 64, "duration": "2s", "gate": False},
        {"name": "max", "mode": "closed", "concurrency": 64, "duration": "4s", "gate": False},
    ])
    capacity = probe["phases"][1]["throughput"]
    assert capacity > 100, probe["phases"][1]
    assert probe["phases"][1]["error_count"] == 0, probe["phases"][1]["errors"]
    base = proc.memory_info().rss
    rss = _Rss(proc)
    rss.start()
    try:
        run = _campaign(tmp_path, "overload", port, world.data_dir, [
            {"name": "overload", "rate": round(2 * capacity), "duration": f"{OVERLOAD_S}s", "gate": False},
            {"name": "after", "mode": "closed", "concurrency": 64, "duration": f"{RECOVERY_S + 2}s", "gate": False},
        ])
    finally:
        rss.stop.set()
        rss.join(10)
    over, after = run["phases"]
    errors: dict[str, int] = over["errors"]
    shed = errors.get("RESOURCE_EXHAUSTED", 0)
    # Not shed: the client's DEADLINE_EXCEEDED, and CANCELLED (from below the product code,
    # which never answers it: see the xfail below).
    timed_out = errors.get("DEADLINE_EXCEEDED", 0) + errors.get("CANCELLED", 0)
    growth = (rss.peak - base) / MiB
    seconds = [s for s in run["seconds"] if s["phase"] == "after"]
    # Past the backlog's last deadline (2 s), up to RECOVERY_S after the overload's end: the
    # closed loop's decisions per second, against the probe's.
    window = [s["answered"] for s in seconds if after["start_s"] + 2 <= s["t"] < after["start_s"] + RECOVERY_S]
    back = sum(window) / max(len(window), 1) / capacity
    print(f"\noverload: capacity {capacity:,.0f}/s (closed loop, 64 in flight); offered "
          f"{over['offered'] / OVERLOAD_S:,.0f}/s (sent {over['sent'] / OVERLOAD_S:,.0f}/s) for {OVERLOAD_S} s: "
          f"decided {over['throughput']:,.0f}/s, errors {errors}, latency p50/p99/max "
          f"{over['latency_ms'].get('p50')}/{over['latency_ms'].get('p99')}/{over['latency_ms'].get('max')} ms, "
          f"service max {over['service_ms'].get('max')} ms; RSS +{growth:.0f} MiB; "
          f"after: {[s['answered'] for s in seconds]}/s, {back:.0%} of capacity from +2 s to +{RECOVERY_S} s")
    # The generator really offered about twice the capacity (else this tested nothing).
    assert over["sent"] >= 1.6 * capacity * OVERLOAD_S, over
    # Every request ended with a decision or a status (how late is the generator's to say:
    # on a loaded box its own event loop sees deadlines late, so it is printed, not gated).
    assert over["answered"] + over["error_count"] == over["offered"], over
    assert set(errors) <= {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"}, errors
    # It kept deciding meanwhile: goodput not collapsed.
    assert over["throughput"] >= 0.3 * capacity, over
    # Memory bounded: the queues are bounded, nothing piles up (measured +54 to +187 MiB for
    # 1,800-4,000 calls/s offered: gRPC's buffers for the calls it holds).
    assert growth < 400, f"front end grew by {growth:.0f} MiB under 2x overload"
    # Full throughput back within RECOVERY_S of the overload's end; errors only while the
    # backlog's last calls run out their deadline (2 s), none after.
    late = [s for s in seconds if s["t"] >= after["start_s"] + 3 and s["errors"]]
    assert late == [], late
    # (Measured 83-120% of the probe's; 70% leaves room for a box shared with other work.)
    assert len(window) >= RECOVERY_S - 3 and back >= 0.7, ([s["answered"] for s in seconds], capacity)
    # Shed, not timed out: the excess should be refused RESOURCE_EXHAUSTED at once.
    if shed < 0.2 * over["offered"] or timed_out > 0.01 * over["offered"]:
        # Measured on this 2-core VM: no RESOURCE_EXHAUSTED at all; 27-39% of the offered calls
        # failed CANCELLED (status details "CANCELLED", 0.5-2 s after they were sent; no product
        # code answers CANCELLED), on a loaded box DEADLINE_EXCEEDED too. The batcher sheds on the
        # work queued in *it* (services/frontend/batcher.py, _enqueue: queued decisions / drain
        # rate, max_queue), but with unary calls on a CPU-bound front end the backlog is upstream
        # of it: calls gRPC accepted (max_concurrent_rpcs 4096) whose handlers wait for the event
        # loop, a wait nothing measures. Issue 16, item 3: reported, not fixed here.
        pytest.xfail(f"2x unary overload is not shed: RESOURCE_EXHAUSTED {shed}, CANCELLED/DEADLINE {timed_out} "
                     f"of {over['offered']} offered")
