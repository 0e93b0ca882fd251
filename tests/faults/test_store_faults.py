"""Store faults with the real Redis behind a fault proxy: down, slow, flapping, back again.

Each test builds the engine a replica builds (reader, velocity and idempotency sharing one
Redis client, so one breaker) against ``FaultProxy``, then breaks the link. What must hold
whatever the fault: every item of every batch is answered (a decision or a status) before
its deadline; once the breaker is open a batch pays no store timeout (at most one probe
per interval does); the engine recovers when Redis does, without a restart.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from features.stores.redis import RedisBackend
from features.stores.redis.client import RedisClient
from services.policy.decide import APPROVE, REVIEW
from services.schema.codes import Code
from services.schema.records import RECORD_SCHEMA, DecisionBatch
from services.scoring import ScoringEngine
from services.scoring.replays import Plan, Replays
from tests.faults.logcheck import Recorded, closed_log_is_exact
from tests.faults.proxy import FaultProxy, wait_until
from tests.faults.support import TIMEOUT_S, RedisWorld, batch, engine_through

Engine = ScoringEngine | Recorded
DEADLINE_S = 2.0
# A batch that paid no store timeout: well under one (the scoring itself takes milliseconds).
FAST_S = TIMEOUT_S / 2


def _engine(rw: RedisWorld, port: int, log_dir: Path, **kw: object) -> tuple[Recorded, RedisBackend]:
    """``engine_through`` with its decision log under ``log_dir``, every answer noted."""
    engine, backend = engine_through(rw, port, log_dir=log_dir, **kw)  # type: ignore[arg-type]
    return Recorded(engine), backend


def _timed(engine: Engine, n: int = 20) -> tuple[DecisionBatch, float, float]:
    """One batch: its answer, how long it took, and how long before its deadline it came back."""
    b = batch(n, deadline_s=DEADLINE_S)
    t0 = time.monotonic()
    out = engine.score(b)
    elapsed = time.monotonic() - t0
    return out, elapsed, float(b.deadline.min()) - time.time()


def _answered(out: DecisionBatch, allowed: set[int]) -> None:
    """Every item has a decision or one of the ``allowed`` statuses; decisions carry ids."""
    status = out.status
    assert set(status.tolist()) <= allowed, set(status.tolist())
    ok = status == Code.OK
    assert all(out.decision_ids()[i] for i in np.flatnonzero(ok))


def _paid_no_timeout_once_open(probes: int, dialled: int, times: list[float]) -> None:
    """Once open, only probes reach the store (each call that times out drops its socket, so
    every attempt dials the proxy anew), and the batches together cost no more than their
    probes' timeouts: without the breaker each would pay two or three."""
    assert dialled <= probes, (dialled, probes)
    assert sum(times) < len(times) * FAST_S + probes * (TIMEOUT_S + 0.1), (times, probes)


def _healthy(out: DecisionBatch) -> bool:
    return bool((out.status == Code.OK).all() and not out["degraded"].any())


def _recovers(engine: Engine, what: str) -> None:
    """Batches keep coming; within a few probe intervals one is decided normally again."""
    wait_until(lambda: _healthy(engine.score(batch(5))), f"normal decisions after {what}", timeout_s=10)


def _log_exact(engine: Recorded, log_dir: Path) -> None:
    """After the fault and the recovery, a graceful stop: the log holds every decided item
    once (repeats as replays), every refused one as a refusal, nothing the caller did not get."""
    result = closed_log_is_exact(engine, log_dir)
    assert result.decisions == len(engine.answers.by_app) > 0, result.summary()
    print(f"\n{result.summary()}")


def test_redis_down_opens_the_breaker_and_batches_are_refused_fast(
    redis_world: RedisWorld, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Default policy: without idempotency nothing is decided afresh, so items are UNAVAILABLE."""
    engine, backend = _engine(redis_world, proxy.port, tmp_path)
    assert _healthy(engine.score(batch(10)))
    proxy.black_hole()  # the worst case: every call that reaches the store waits its timeout
    first, elapsed, margin = _timed(engine)
    _answered(first, {Code.UNAVAILABLE})
    assert margin > 0 and elapsed < 4 * TIMEOUT_S + 0.5  # at most the calls before the breaker opened
    assert backend.client.breaker.state != "closed"
    dialled = proxy.accepted
    times = []
    for _ in range(30):
        out, elapsed, margin = _timed(engine)
        _answered(out, {Code.UNAVAILABLE})
        assert (out.status == Code.UNAVAILABLE).all() and margin > 0
        times.append(elapsed)
    _paid_no_timeout_once_open(backend.client.breaker.stats().probes, proxy.accepted - dialled, times)
    proxy.pass_through()
    _recovers(engine, "Redis came back")
    _log_exact(engine, tmp_path)


def test_redis_down_with_idempotency_off_decides_degraded_within_deadline(
    redis_world: RedisWorld, proxy: FaultProxy, tmp_path: Path
) -> None:
    """With idempotency off (window 0) the features mode applies: referred, flagged, fast."""
    engine, backend = _engine(redis_world, proxy.port, tmp_path, window_s=0)
    proxy.reset()  # Redis gone: connections reset
    for _ in range(20):
        out, _, margin = _timed(engine)
        _answered(out, {Code.OK})
        assert out["degraded"].all() and set(out["decision"].tolist()) == {REVIEW}
        assert all("D_FEATURES_UNAVAILABLE" in out.reason_codes(i) for i in range(len(out)))
        assert margin > 0
    assert backend.client.breaker.state != "closed"
    proxy.pass_through()
    _recovers(engine, "the reset stopped")
    _log_exact(engine, tmp_path)


def test_slow_redis_beyond_the_timeout_is_treated_as_down(
    redis_world: RedisWorld, proxy: FaultProxy, tmp_path: Path
) -> None:
    engine, backend = _engine(redis_world, proxy.port, tmp_path, window_s=0)
    assert _healthy(engine.score(batch(5)))
    proxy.slow(TIMEOUT_S * 3)  # answers, but after every call's deadline
    for _ in range(2):  # two store calls per batch here (velocity, features): 3 failures open it
        out, _, margin = _timed(engine)
        assert margin > 0 and out["degraded"].all()
    assert backend.client.breaker.state != "closed"
    dialled = proxy.accepted
    times = [_timed(engine)[1] for _ in range(20)]
    _paid_no_timeout_once_open(backend.client.breaker.stats().probes, proxy.accepted - dialled, times)
    proxy.pass_through()
    _recovers(engine, "latency went away")
    _log_exact(engine, tmp_path)


def test_flapping_redis_every_item_answered_before_its_deadline(
    redis_world: RedisWorld, proxy: FaultProxy, tmp_path: Path
) -> None:
    engine, _ = _engine(redis_world, proxy.port, tmp_path)
    proxy.flap(up_s=0.15, down_s=0.15)
    t_end = time.monotonic() + 3.0
    batches = 0
    while time.monotonic() < t_end:
        out, _, margin = _timed(engine, 10)
        assert margin > 0
        _answered(out, {Code.OK, Code.UNAVAILABLE})
        ok = out.status == Code.OK
        # Decided items are either whole or flagged: never silently partial.
        for i in np.flatnonzero(ok & ~out["degraded"]):
            assert not any(c.startswith("D_") for c in out.reason_codes(int(i)))
        batches += 1
    assert batches >= 10
    proxy.pass_through()
    _recovers(engine, "flapping stopped")
    _log_exact(engine, tmp_path)


def test_a_replica_starts_while_redis_is_down_and_recovers_without_restart(
    redis_world: RedisWorld, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.reset()
    engine, _ = _engine(redis_world, proxy.port, tmp_path)  # must not raise
    out, _, margin = _timed(engine)
    _answered(out, {Code.UNAVAILABLE})
    assert margin > 0
    direct = RedisClient(redis_world.settings(redis_world.redis_port))
    key = f"{redis_world.project}:idem:{RECORD_SCHEMA}:reasons:{engine.policy_version}".encode()
    direct.command(b"DEL", key)  # another test's engine may have written it
    assert direct.command(b"GET", key) is None
    proxy.pass_through()
    _recovers(engine, "Redis came up after the replica")
    # The reason table was written once the store answered, before any record was saved.
    assert direct.command(b"GET", key)
    replay = batch(5)
    a, b = engine.score(replay), engine.score(replay)
    assert a.decision_ids() == b.decision_ids() and all(a.decision_ids())
    assert APPROVE in a["decision"].tolist() or REVIEW in a["decision"].tolist()
    direct.close()
    _log_exact(engine, tmp_path)



def test_a_failed_lookup_still_answers_an_earlier_decision_once_the_save_gets_through(
    redis_world: RedisWorld, proxy: FaultProxy
) -> None:
    """The lookup fails, the batch is decided anyway, and the save's insert-if-absent finds
    the decision made before: the caller gets that one, not a second decision."""
    store = RedisBackend(redis_world.settings(proxy.port, breaker_failures=100)).idempotency(900, RECORD_SCHEMA)
    replays = Replays(store, "p-test", (("A", "a"),))
    keys = [f"anon|{uuid.uuid4().hex}" for _ in range(3)]
    fps = np.array([11, 12, 13], dtype=np.uint64)

    def decide(ids: bytes) -> tuple[Plan, bool]:
        plan = replays.plan(keys, fps, np.zeros(3, dtype=bool))
        looked_up = replays.ready
        proxy.pass_through()  # the store is back for the save
        fresh = np.flatnonzero(plan.fresh)
        plan.rows["decision_id"][fresh] = ids
        plan.rows["fingerprint"][fresh] = fps[fresh]
        replays.save(plan, fresh, keys)
        plan.finish()
        return plan, looked_up

    first, _ = decide(b"first")
    assert first.rows["decision_id"].tolist() == [b"first"] * 3 and not first.replayed.any()
    proxy.reset()  # the lookup of the caller's retry fails
    again, looked_up = decide(b"second")
    assert not looked_up  # the lookup did fail ...
    assert again.rows["decision_id"].tolist() == [b"first"] * 3  # ... and the first decision is the answer
    assert again.replayed.all() and (again.rows["status"] == Code.OK).all()
    assert replays.ready
    store.close()
