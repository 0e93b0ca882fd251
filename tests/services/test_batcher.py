"""Adaptive coalescing: idle dispatches at once, load gathers, queues are bounded."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest

from services.errors import BackendUnavailable, DeadlineExceeded, Overloaded, ShuttingDown
from services.frontend.batcher import Answer, Batcher
from services.frontend.codec import Item, to_batch
from services.runtime import LocalBackend
from services.scoring import RequestBatch, ResponseBatch
from services.scoring.factory import build_engine
from services.settings import load_settings
from tests.conftest import World


class SlowBackend:
    """The real engine behind a delay, recording every batch it is given."""

    def __init__(self, inner: LocalBackend, delay_s: float, fail: bool = False) -> None:
        self.inner = inner
        self.delay = delay_s
        self.sizes: list[int] = []
        self.fail = fail

    async def score(self, batch: RequestBatch) -> ResponseBatch:
        self.sizes.append(len(batch))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise BackendUnavailable("replica died")
        return await self.inner.score(batch)

    async def close(self) -> None:
        return None


def _item(i: int, merchant: str = "M00000001") -> Item:
    # Unique application ids: the session's world keeps an idempotency store.
    return Item(f"b-{uuid.uuid4().hex[:12]}-{i}", merchant, 100_000, 0, 12, 1, 2, float("nan"), time.time() + 30)


@pytest.fixture(scope="module")
def local(world: World) -> LocalBackend:
    settings = load_settings(None, {"features": {"data_dir": world.data_dir, "max_feature_age_s": 1e9}})
    return LocalBackend(build_engine(settings))


def test_idle_dispatches_at_once_and_load_gathers(local: LocalBackend) -> None:
    async def run() -> SlowBackend:
        backend = SlowBackend(local, 0.05)
        b = Batcher(backend, max_batch=1000, max_wait_s=0.0, max_inflight=1, max_queue=10_000)
        b.start()
        t0 = time.perf_counter()
        first = (await b.submit_one(_item(0))).rows()
        assert time.perf_counter() - t0 < 0.5 and len(first) == 1
        # 200 concurrent arrivals while one call is out: they gather into few calls.
        results = await asyncio.gather(*(b.submit_one(_item(i)) for i in range(200)))
        assert all(len(r.rows()) == 1 for r in results)
        await b.close(5)
        return backend

    backend = asyncio.run(run())
    assert backend.sizes[0] == 1
    assert sum(backend.sizes) == 201
    assert len(backend.sizes) <= 4, backend.sizes


def test_batches_never_exceed_max_and_results_go_to_their_callers(local: LocalBackend) -> None:
    async def run() -> tuple[SlowBackend, list[ResponseBatch], list[ResponseBatch]]:
        backend = SlowBackend(local, 0.01)
        b = Batcher(backend, max_batch=64, max_wait_s=0.001, max_inflight=2, max_queue=10_000)
        b.start()
        known = [b.submit_one(_item(i, "M00000005")) for i in range(50)]
        unknown = [b.submit_one(_item(i, "NO-SUCH")) for i in range(50)]
        batch = b.submit_batch(to_batch([_item(i, "NO-SUCH") for i in range(30)]))
        out = [a.rows() for a in await asyncio.gather(*known, *unknown, batch)]
        await b.close(5)
        return backend, out[:50], out[50:]

    backend, known, rest = asyncio.run(run())
    assert max(backend.sizes) <= 64 and sum(backend.sizes) == 130
    # The unknown merchant's answers went to the unknown callers (NO_HISTORY -> pd NaN).
    assert all(not np.isnan(r.pd[0]) for r in known)
    assert all(np.isnan(r.pd).all() for r in rest)
    assert len(rest[-1]) == 30


def test_queue_bound_refuses_fast(local: LocalBackend) -> None:
    async def run() -> None:
        b = Batcher(SlowBackend(local, 0.2), max_batch=10, max_wait_s=0, max_inflight=1, max_queue=20)
        b.start()
        first = asyncio.ensure_future(b.submit_batch(to_batch([_item(i) for i in range(10)])))
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(b.submit_batch(to_batch([_item(i) for i in range(20)])))
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        with pytest.raises(Overloaded):
            await b.submit_one(_item(99))
        assert time.perf_counter() - t0 < 0.05
        await asyncio.gather(first, queued)
        await b.close(5)

    asyncio.run(run())


def test_backend_failure_fails_every_caller_never_hangs(local: LocalBackend) -> None:
    async def run() -> None:
        b = Batcher(SlowBackend(local, 0.01, fail=True), max_batch=100, max_wait_s=0, max_inflight=1, max_queue=1000)
        b.start()
        calls = [b.submit_one(_item(i)) for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        assert all(isinstance(r, BackendUnavailable) for r in results)
        await b.close(5)
        with pytest.raises(ShuttingDown):
            await b.submit_one(_item(0))

    asyncio.run(run())


def test_sheds_work_that_would_wait_too_long_and_drops_expired(local: LocalBackend) -> None:
    async def run() -> None:
        backend = SlowBackend(local, 0.05)
        b = Batcher(backend, max_batch=20, max_wait_s=0, max_inflight=1, max_queue=100_000, max_queue_wait_s=0.2)
        b.start()
        # Saturate: keep far more queued than 0.2 s of work, so the drain rate gets measured.
        accepted: list[asyncio.Future[Answer]] = []
        shed = 0
        for i in range(600):
            try:
                accepted.append(asyncio.ensure_future(b.submit_one(_item(i))))
                await asyncio.sleep(0)
            except Overloaded:
                shed += 1
            if i % 50 == 0:
                await asyncio.sleep(0.06)
        results = await asyncio.gather(*accepted, return_exceptions=True)
        assert shed > 0 or b.stats.shed > 0
        assert b.expected_wait_s() <= 0.5
        ok = [r for r in results if isinstance(r, Answer)]
        assert len(ok) > 50

        # An item whose deadline passes while queued is answered DEADLINE_EXCEEDED, not scored.
        blocker = asyncio.ensure_future(b.submit_batch(to_batch([_item(i) for i in range(20)])))
        await asyncio.sleep(0.01)
        soon = _item(1)._replace(deadline=time.time() + 0.02)
        with pytest.raises(DeadlineExceeded):
            await b.submit_one(soon)
        await blocker
        assert b.stats.expired >= 1
        await b.close(5)

    asyncio.run(run())
