"""Adaptive coalescing: idle dispatches at once, load gathers, queues are bounded."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from services.errors import BackendUnavailable, DeadlineExceeded, InternalError, Overloaded, ShuttingDown, code_of
from services.frontend import wire
from services.frontend.batcher import Answer, Batcher
from services.runtime import LocalBackend
from services.schema.codes import Code
from services.schema.records import REQUEST_DTYPE, DecisionBatch, RequestBatch, blank_decisions
from services.scoring.factory import build_engine
from services.settings import load_settings
from tests.conftest import World


class SlowBackend:
    """The real engine behind a delay (and, when ``gate`` is given, held until it opens),
    recording every batch it is given; ``entered`` is set whenever a batch arrives."""

    def __init__(self, inner: LocalBackend, delay_s: float, fail: bool = False, gate: bool = False) -> None:
        self.inner = inner
        self.delay = delay_s
        self.sizes: list[int] = []
        self.fail = fail
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = asyncio.Event() if gate else None

    async def score(self, batch: RequestBatch) -> DecisionBatch:
        self.sizes.append(len(batch))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if self.fail:
            raise BackendUnavailable("replica died")
        return await self.inner.score(batch)

    async def start(self) -> None:
        return None

    def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _item(i: int, merchant: str = "M00000001", deadline: float = 0.0) -> bytes:
    """One request record. Unique application ids: the session's world keeps an idempotency store."""
    r = np.zeros(1, REQUEST_DTYPE)
    r["application_id"] = f"b-{uuid.uuid4().hex[:12]}-{i}".encode()
    r["merchant_id"] = merchant.encode()
    r["amount_minor"], r["currency"], r["term_months"], r["product"], r["channel"] = 100_000, 0, 12, 1, 2
    r["declared_revenue_minor"] = float("nan")
    r["deadline"] = deadline or time.time() + 30
    return r.tobytes()


def _one(b: Batcher, record: bytes) -> Any:
    return b.submit_one(record, float(np.frombuffer(record, REQUEST_DTYPE)["deadline"][0]))


def to_batch(records: list[bytes]) -> RequestBatch:
    return RequestBatch.of_records(records)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Yield to the loop until ``condition()`` holds (observed state, not a timed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0)


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
        first = (await _one(b, _item(0))).rows()
        assert time.perf_counter() - t0 < 0.5 and len(first) == 1
        # 200 concurrent arrivals while one call is out: they gather into few calls.
        results = await asyncio.gather(*(_one(b, _item(i)) for i in range(200)))
        assert all(len(r.rows()) == 1 for r in results)
        await b.close(5)
        return backend

    backend = asyncio.run(run())
    assert backend.sizes[0] == 1
    assert sum(backend.sizes) == 201
    assert len(backend.sizes) <= 4, backend.sizes


def test_batches_never_exceed_max_and_results_go_to_their_callers(local: LocalBackend) -> None:
    async def run() -> tuple[SlowBackend, list[DecisionBatch], list[DecisionBatch]]:
        backend = SlowBackend(local, 0.01)
        b = Batcher(backend, max_batch=64, max_wait_s=0.001, max_inflight=2, max_queue=10_000)
        b.start()
        known = [_one(b, _item(i, "M00000005")) for i in range(50)]
        unknown = [_one(b, _item(i, "NO-SUCH")) for i in range(50)]
        batch = b.submit_batch(to_batch([_item(i, "NO-SUCH") for i in range(30)]))
        out = [a.rows() for a in await asyncio.gather(*known, *unknown, batch)]
        await b.close(5)
        return backend, out[:50], out[50:]

    backend, known, rest = asyncio.run(run())
    assert max(backend.sizes) <= 64 and sum(backend.sizes) == 130
    # The unknown merchant's answers went to the unknown callers (NO_HISTORY -> pd NaN).
    assert all(not np.isnan(r["pd"][0]) for r in known)
    assert all(np.isnan(r["pd"]).all() for r in rest)
    assert len(rest[-1]) == 30


def test_queue_bound_refuses_fast(local: LocalBackend) -> None:
    async def run() -> None:
        backend = SlowBackend(local, 0.0, gate=True)
        b = Batcher(backend, max_batch=10, max_wait_s=0, max_inflight=1, max_queue=20)
        b.start()
        first = asyncio.ensure_future(b.submit_batch(to_batch([_item(i) for i in range(10)])))
        await backend.entered.wait()  # the first batch is out, held by the backend
        queued = asyncio.ensure_future(b.submit_batch(to_batch([_item(i) for i in range(20)])))
        await until(lambda: b.queued == 20)
        t0 = time.perf_counter()
        with pytest.raises(Overloaded):
            await _one(b, _item(99))
        assert time.perf_counter() - t0 < 0.05
        assert backend.gate is not None
        backend.gate.set()
        await asyncio.gather(first, queued)
        await b.close(5)

    asyncio.run(run())


def test_backend_failure_fails_every_caller_never_hangs(local: LocalBackend) -> None:
    async def run() -> None:
        b = Batcher(SlowBackend(local, 0.01, fail=True), max_batch=100, max_wait_s=0, max_inflight=1, max_queue=1000)
        b.start()
        calls = [_one(b, _item(i)) for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        assert all(isinstance(r, BackendUnavailable) for r in results)
        await b.close(5)
        with pytest.raises(ShuttingDown):
            await _one(b, _item(0))

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
                accepted.append(asyncio.ensure_future(_one(b, _item(i))))
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
        backend.entered.clear()
        blocker = asyncio.ensure_future(b.submit_batch(to_batch([_item(i) for i in range(20)])))
        await backend.entered.wait()  # the blocker is out: the next item waits behind it
        soon = _item(1, deadline=time.time() + 0.02)
        with pytest.raises(DeadlineExceeded):
            await _one(b, soon)
        await blocker
        assert b.stats.expired >= 1
        await b.close(5)

    asyncio.run(run())


class AnsweringBackend:
    """Answers every batch at once with ``answer(batch)`` (a crafted, possibly inconsistent reply)."""

    def __init__(self, answer: Callable[[RequestBatch], DecisionBatch]) -> None:
        self.answer = answer

    async def score(self, batch: RequestBatch) -> DecisionBatch:
        return self.answer(batch)

    async def start(self) -> None:
        return None

    def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _blank(batch: RequestBatch) -> DecisionBatch:
    return DecisionBatch(blank_decisions(len(batch)))


async def _everyone_fails(b: Batcher) -> list[BaseException]:
    """Singles and a batch in one backend call; each must get an error long before its 30 s deadline."""
    t0 = time.monotonic()
    calls = [_one(b, _item(i)) for i in range(5)] + [b.submit_batch(to_batch([_item(i) for i in range(7)]))]
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert time.monotonic() - t0 < 5
    assert all(isinstance(r, BaseException) for r in results), results
    return [r for r in results if isinstance(r, BaseException)]


def test_a_failure_after_the_backend_answered_fails_every_caller_at_once() -> None:
    def prepare(resp: DecisionBatch) -> Any:
        raise RuntimeError("encoder bug")

    async def run() -> list[BaseException]:
        b = Batcher(AnsweringBackend(_blank), max_batch=100, max_wait_s=0, max_inflight=1, max_queue=1000,
                    prepare=prepare)
        b.start()
        out = await _everyone_fails(b)
        assert b.stats.failures >= 1 and b.inflight == 0
        await b.close(5)
        return out

    errors = asyncio.run(run())
    assert all(isinstance(e, InternalError) and "encoder bug" in str(e) for e in errors), errors
    assert all(code_of(e) == Code.INTERNAL for e in errors)


def test_an_answer_the_encoder_refuses_is_a_typed_internal_error() -> None:
    def bad_reasons(batch: RequestBatch) -> DecisionBatch:
        rows = blank_decisions(len(batch))
        rows["reason"][:, 0] = 3  # a reason table of one entry
        return DecisionBatch(rows, (("R", "reason"),))

    async def run() -> list[BaseException]:
        b = Batcher(AnsweringBackend(bad_reasons), max_batch=100, max_wait_s=0, max_inflight=1, max_queue=1000,
                    prepare=wire.encoder)
        b.start()
        out = await _everyone_fails(b)
        await b.close(5)
        return out

    errors = asyncio.run(run())
    assert all(isinstance(e, wire.EncodeError) and code_of(e) == Code.INTERNAL for e in errors), errors


def test_a_short_answer_and_a_cancelled_call_fail_every_caller() -> None:
    def short(batch: RequestBatch) -> DecisionBatch:
        return DecisionBatch(blank_decisions(len(batch) - 1))

    def cancelled(batch: RequestBatch) -> DecisionBatch:
        raise asyncio.CancelledError  # e.g. an inner call cancelled under the backend

    async def run(answer: Callable[[RequestBatch], DecisionBatch]) -> list[BaseException]:
        b = Batcher(AnsweringBackend(answer), max_batch=100, max_wait_s=0, max_inflight=1, max_queue=1000)
        b.start()
        out = await _everyone_fails(b)
        await until(lambda: b.inflight == 0)
        await b.close(5)
        return out

    for answer, words in ((short, "answered 11 items for 12"), (cancelled, "ended without an answer")):
        errors = asyncio.run(run(answer))
        assert all(isinstance(e, InternalError) and words in str(e) for e in errors), (words, errors)
