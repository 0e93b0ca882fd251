"""Admission on entry (services/frontend/admission.py): over a real gRPC channel into the real
front end and engine for the in-flight bound; on a real event loop for the lag signal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.errors import ConfigError, DeadlineExceeded, Overloaded
from services.frontend import FrontEnd
from services.frontend.admission import BEHIND, BUSY, Admission, Limits
from services.frontend.details import TRAILER
from services.runtime import LocalBackend
from services.scoring import DecisionBatch, RequestBatch
from services.scoring.factory import build_engine
from tests.conftest import World
from tests.e2e import api_checks as c
from tests.e2e.conftest import LoopThread, settings_for

MAX_CALLS = 4


class Held(LocalBackend):
    """Scores only once the test lets it (``release``), so calls stay in flight meanwhile."""

    gate: asyncio.Event

    async def score(self, batch: RequestBatch) -> DecisionBatch:
        await self.gate.wait()
        return await super().score(batch)


@pytest.fixture(scope="module")
def held(world: World) -> Iterator[tuple[LoopThread, FrontEnd, Held]]:
    settings = settings_for(world)
    backend = Held(build_engine(settings))
    lt = LoopThread()

    async def up() -> FrontEnd:
        backend.gate = asyncio.Event()
        fe = FrontEnd(backend, settings.serving, settings.security, limits=Limits(max_calls=MAX_CALLS, max_lag_s=10))
        await fe.start()
        return fe

    fe = lt.run(up())
    yield lt, fe, backend
    lt.loop.call_soon_threadsafe(backend.gate.set)
    lt.run(fe.stop())
    lt.close()


def _wait_for(cond: object, what: str, timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.005)  # polls observed state with a bounded deadline


def _details(err: grpc.RpcError) -> status_pb2.Status:
    md: Any = err.trailing_metadata() or ()
    trailers: dict[str, bytes] = dict(md)
    return status_pb2.Status.FromString(trailers[TRAILER])


def test_calls_past_the_bound_are_refused_at_once_with_retry_info(held: tuple[LoopThread, FrontEnd, Held]) -> None:
    lt, fe, backend = held
    with grpc.insecure_channel(f"127.0.0.1:{fe.port}") as ch:
        stub = pb_grpc.CreditAuthorizationStub(ch)
        waiting = [stub.Authorize.future(c.request(i), timeout=60) for i in range(MAX_CALLS)]
        _wait_for(lambda: fe.admission.calls == MAX_CALLS, "the held calls to be admitted")
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Authorize(c.request(99), timeout=30)
        refused_in = time.monotonic() - t0
        err = info.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert err.details() == BUSY
        status = _details(err)
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        info_ = error_details_pb2.RetryInfo()
        retry[0].Unpack(info_)
        assert info_.retry_delay.ToTimedelta().total_seconds() > 0
        # Refused without waiting for the held work (which waits as long as the test says).
        assert refused_in < 5 and not any(f.done() for f in waiting)
        assert fe.admission.stats.busy >= 1
        lt.loop.call_soon_threadsafe(backend.gate.set)
        for f in waiting:
            c.check_decision(f.result(timeout=60), f.result().application_id)
        _wait_for(lambda: fe.admission.calls == 0, "the admitted calls to leave")
        ok = stub.Authorize(c.request(100), timeout=30)  # room again: admitted
        assert ok.decision_id


def test_a_deadline_that_cannot_cover_the_queue_is_refused_deadline_exceeded() -> None:
    adm = Admission(Limits(max_calls=10, max_lag_s=10), queue_wait=lambda: 0.5)
    why = adm.refusal(0.2)
    assert isinstance(why, DeadlineExceeded)
    assert adm.refusal(5.0) is None and adm.calls == 1  # enough budget: admitted
    assert adm.refusal(None) is None  # no deadline: nothing to compare
    adm.leave()
    adm.leave()
    assert adm.calls == 0 and adm.stats.no_time == 1 and adm.stats.admitted == 2


def test_the_in_flight_bound_counts_admitted_calls_only() -> None:
    adm = Admission(Limits(max_calls=2, max_lag_s=10))
    assert adm.refusal(None) is None and adm.refusal(None) is None
    assert isinstance(adm.refusal(None), Overloaded)  # a refused call takes no slot ...
    adm.leave()
    assert adm.refusal(None) is None  # ... and a finished one gives its slot back
    assert adm.stats.busy == 1


def test_a_loop_that_stays_behind_refuses_new_calls_and_recovers() -> None:
    """A loop kept busy (work that never yields for longer than the target) is behind; once
    the work stops, the next probes say so and calls are admitted again."""

    async def run() -> tuple[bool, bool]:
        adm = Admission(Limits(max_calls=100, max_lag_s=0.01), probe_s=0.002)
        adm.start()
        try:
            behind = await _until(lambda: isinstance(adm.refusal(None), Overloaded), busy_ms=40)
            assert str(adm.refusal(None)) == BEHIND
            recovered = await _until(lambda: adm.refusal(None) is None, busy_ms=0)
            return behind, recovered
        finally:
            await adm.close()

    behind, recovered = asyncio.run(run())
    assert behind, "a loop blocked 40 ms at a time was never seen behind a 10 ms target"
    assert recovered, "the loop was idle again but calls stayed refused"


async def _until(cond: object, busy_ms: float, timeout_s: float = 20) -> bool:
    """Run the loop (hogging it ``busy_ms`` at a time: CPU work, as a saturated front end does)
    until ``cond`` holds; False if it never did within ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        spin = time.perf_counter() + busy_ms / 1000
        while time.perf_counter() < spin:  # work that does not yield: the lag the probe must see
            pass
        await asyncio.sleep(0.001)  # let the loop run the probe between slices of work
    return False


def test_limits_are_validated_and_bound_grpcs_backlog() -> None:
    with pytest.raises(ConfigError, match="max_pending_hard"):
        Limits(max_pending=600, max_pending_hard=500)
    with pytest.raises(ConfigError, match="positive"):
        Limits(max_calls=0)
    assert dict(Limits(max_pending=7, max_pending_hard=9).grpc_options()) == {
        "grpc.server.max_pending_requests": 7, "grpc.server.max_pending_requests_hard_limit": 9,
    }


def test_limits_come_from_serving_settings_where_they_have_the_fields() -> None:
    class Serving:  # the fields the serving settings are to get (services/settings.py)
        max_pending_rpcs, max_pending_rpcs_hard, max_calls_in_flight, max_loop_lag_ms = 10, 20, 30, 40.0

    assert Limits.of(Serving()) == Limits(max_pending=10, max_pending_hard=20, max_calls=30, max_lag_s=0.04)
    assert Limits.of(object()) == Limits()
