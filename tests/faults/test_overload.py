"""2x overload for a bounded time against a real front end (``creditauth serve --channel local``).

A short closed-loop probe measures the stack's unary capacity C on this machine; then an
open-loop generator (``tests/faults/overload.py``: latency from each call's intended send
time, each status apart) offers 2C for 15 s and, right after, a closed loop like the probe's.
What must hold: the excess is refused at once, by the front end (``RESOURCE_EXHAUSTED`` with a
``RetryInfo``) or, for what never reaches its event loop, by gRPC's bounded backlog
(``CANCELLED``, within milliseconds), never left to time out; the admitted calls finish well
inside their deadline; the front end keeps deciding meanwhile, its memory stays bounded, and
full throughput is back within 10 s of the overload's end.

Only properties and ratios are asserted, not times measured against a quiet box: the box is
shared, so the generator itself falls behind now and then (its lag is measured, and allowed for).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import psutil
import pytest

from creditauth.v1 import authorization_pb2 as pb
from tests.conftest import World
from tests.faults import logcheck
from tests.faults.overload import Tally, capacity, front_end, overload_then_recovery
from tests.faults.proxy import wait_until

pytestmark = [pytest.mark.slow]
MiB = 1 << 20
OVERLOAD_S = 15  # the default suite's run; the soak-marked one holds 2x for 60 s
RECOVERY_S = 10  # full throughput must be back within this of the overload's end
TIMEOUT_S = 2.0  # each call's deadline (the generator's default)


def _server_cores() -> set[int] | None:
    """One core for a Ray-backed server where there are two or more: spread over both, the
    front end and the replica leave the load generator too little CPU to offer 2x on time."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[0]} if len(cpus) >= 2 else None


# The direct channel's run is marked soak: 1 of 4 runs here took 11 s, not 10, to recover
# full throughput (docs/reliability.md), too close to its bound for the default suite.
@pytest.fixture(scope="module", params=["local", pytest.param("direct", marks=pytest.mark.soak)])
def frontend(world: World, request: pytest.FixtureRequest) -> Iterator[tuple[psutil.Process, int]]:
    """``local``: the front end's own loop saturates; ``direct``: the front end and the Serve
    replica (in Ray) share one core, and the front end's queue in front of the replica sheds."""
    cpus = _server_cores() if request.param == "direct" else None
    with front_end(world.data_dir, channel=request.param, cpus=cpus) as served:  # `creditauth serve`, as shipped
        yield served


def _rss(proc: psutil.Process) -> int:
    """Resident memory of the server and every process it started (Ray's, the replica)."""
    total = 0
    for p in (proc, *proc.children(recursive=True)):
        try:
            total += p.memory_info().rss
        except psutil.Error:  # a process gone between the listing and the read
            continue
    return total


class _Rss(threading.Thread):
    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.proc, self.stop, self.peak = proc, threading.Event(), _rss(proc)

    def run(self) -> None:
        while not self.stop.wait(0.05):  # the sampling period of the measurement, not a wait for state
            self.peak = max(self.peak, _rss(self.proc))


def test_twice_capacity_is_shed_fast_admitted_calls_bounded_and_throughput_recovers(
    frontend: tuple[psutil.Process, int], world: World,
) -> None:
    _twice_capacity_holds(frontend, world, OVERLOAD_S)


@pytest.mark.soak
def test_twice_capacity_for_a_minute_on_the_replicas(world: World) -> None:
    """The full minute of 2x (the default suite runs 15 s; ``-m soak`` selects this), on the
    direct channel: the replicas saturated, the front end shedding in front of them."""
    with front_end(world.data_dir, channel="direct", cpus=_server_cores()) as served:
        _twice_capacity_holds(served, world, 60)


def _twice_capacity_holds(served: tuple[psutil.Process, int], world: World, seconds: int) -> None:
    proc, port = served
    c = capacity(port)
    assert c > 100, c
    rss = _Rss(proc)
    base = rss.peak
    rss.start()
    try:
        over, after = overload_then_recovery(port, 2 * c, seconds, RECOVERY_S + 2)
    finally:
        rss.stop.set()
        rss.join(10)
    codes = over.codes
    growth = (rss.peak - base) / MiB
    back = [after.ok_per_s[i] for i in range(RECOVERY_S + 2)]
    # Past the backlog's last deadline (2 s), up to RECOVERY_S: decisions per second against the probe's.
    recovered = sum(back[2:RECOVERY_S]) / (RECOVERY_S - 2) / c
    lag_s = over.row(seconds)["send_lag_p99_ms"] / 1000
    print(f"\noverload: capacity {c:,.0f}/s; offered {2 * c:,.0f}/s for {seconds} s: {over.row(seconds)}; "
          f"RSS +{growth:.0f} MiB; after: {back}/s, {recovered:.0%} of capacity from +2 s to +{RECOVERY_S} s")
    # Every call ended with a decision or an overload status.
    assert sum(codes.values()) == over.offered, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "CANCELLED", "DEADLINE_EXCEEDED"}, codes
    # Shed, not queued: at 2x about half must be refused, and they were, at once. The front end's
    # refusals say when to retry (every one of them); gRPC's (for calls its bounded backlog
    # could not hold) come back as fast.
    assert over.share("RESOURCE_EXHAUSTED", "CANCELLED") >= 0.2, codes
    # (How many reach the loop to be refused there varies with the box: 0.2-4% measured. That
    # the front end refuses them with a RetryInfo is tests/services/test_admission.py's to show.)
    assert over.retry_info == codes["RESOURCE_EXHAUSTED"], (over.retry_info, codes)
    for code in ("RESOURCE_EXHAUSTED", "CANCELLED"):
        if codes[code]:
            assert over.pct(code, 50, service=True) < 0.25 * TIMEOUT_S * 1000, over.row(seconds)
    # Not timed out: measured 16-24% DEADLINE_EXCEEDED (and 1-2.5 s median OK) before shedding.
    assert over.share("DEADLINE_EXCEEDED") <= 0.05, codes
    # The admitted calls finished well inside their deadline, allowing at the tail for how late
    # the generator's own loop ran (it shares the box; its lag is measured).
    assert over.pct("OK", 50, service=True) < 0.5 * TIMEOUT_S * 1000, over.row(seconds)
    assert over.pct("OK", 99, service=True) < (TIMEOUT_S + lag_s) * 1000, over.row(seconds)
    # It kept deciding meanwhile: goodput not collapsed.
    assert codes["OK"] / seconds >= 0.3 * c, over.row(seconds)
    # Memory bounded: every queue is bounded (measured +54 to +187 MiB before; the test's bound 400).
    assert growth < 400, f"front end grew by {growth:.0f} MiB under 2x overload"
    # Full throughput back within RECOVERY_S of the overload's end.
    assert recovered >= 0.7, (back, c)
    # Refusals only while the backlog's last calls run out (2 s), none after.
    assert not [s for s, n in after.errors_per_s.items() if s >= 3 and n], (after.errors_per_s, after.codes)
    print(_log_holds_each_answer_once(world, over, after).summary())


def _log_holds_each_answer_once(world: World, *tallies: Tally) -> logcheck.LogCheck:
    """The front end's log (``--channel local``: written in its process, under the data dir's
    ``decisions``) holds every decision answered during and after the overload once, with
    the id the caller got, and no decision of a call refused (shed calls are not decided).
    A call that ran out of time may have been decided (its answer lost): logged once or not
    at all. Read once the log has flushed every answered one (observed, while it runs)."""
    got = logcheck.Answers()
    for t in tallies:
        for app, raw in t.answers:
            got.add(app, pb.AuthorizeResponse.FromString(raw).decision_id)
        for app in t.timed_out:
            got.add_unanswered(app)
    root, data = world.data_dir / "decisions", world.data_dir
    wait_until(lambda: logcheck.holds(root, data, got.by_app), "every answered decision flushed", 60)
    # Refused calls are not in ``got``: a decision logged for one is "not got", a failure.
    result = logcheck.check(logcheck.logged(root, data, got.sent), got)
    logcheck.assert_sound(result)
    assert not result.missing and result.decisions >= len(got.by_app), result.summary()
    return result
