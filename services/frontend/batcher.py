"""Adaptive coalescing of requests into batches for the scoring backend.

Units of work are single validated requests (unary calls: one ``bytes`` record
each) or whole ``RequestBatch`` objects (a batch RPC, a stream window); each unit
carries one future, never one per item. A dispatcher sends whatever has gathered as one
backend call whenever a slot is free:

* idle system: the first request goes out at once (no added latency);
* under load: while ``max_inflight`` calls are out, arrivals gather, so batch
  size grows with load, bounded by ``max_batch`` and, when a slot is free but
  other calls are still out, by a short linger of ``max_wait``.

Overload is shed, never queued: work whose expected wait in the queue (queued
decisions over the measured drain rate) exceeds ``max_queue_wait`` is refused at
once with ``Overloaded``, past ``max_queue`` queued decisions everything is; work
whose expected wait exceeds its own deadline is refused at once with
``DeadlineExceeded`` (it would expire waiting), and work whose deadline passes
while queued is dropped with ``DeadlineExceeded`` instead of being scored late.

Every future is resolved, whatever happens: a backend failure fails the call's units
with ``BackendUnavailable`` (or the backend's own error), a failure after the backend
answered (an answer ``prepare`` refuses, a bug) with ``InternalError``, and a call or
dispatcher ended any other way (cancelled, crashed) fails what it held, so no caller waits
for its deadline.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.errors import (
    BackendUnavailable,
    CreditAuthError,
    DeadlineExceeded,
    InternalError,
    Overloaded,
    ShuttingDown,
)
from services.runtime.backend import ScoringBackend
from services.schema.records import DecisionBatch, RequestBatch
from services.telemetry import NullTelemetry


@dataclass(frozen=True)
class Answer:
    """A unit's share of a backend call: rows ``start .. start + size`` of ``batch``.

    ``prepared`` is the batcher's ``prepare(batch)``, computed once per backend
    call (the front end's response encoder), shared by every unit in it.
    """

    batch: DecisionBatch
    prepared: Any
    start: int
    size: int

    def rows(self) -> DecisionBatch:
        return self.batch.slice(self.start, self.start + self.size)


@dataclass
class _Unit:
    size: int
    future: asyncio.Future[Answer]
    deadline: float
    record: bytes | None = None  # one request (a REQUEST_DTYPE record) ...
    trace: str = ""  # ... and its traceparent, when sampled
    batch: RequestBatch | None = None  # ... or many


@dataclass
class BatcherStats:
    calls: int = 0
    decisions: int = 0
    failures: int = 0
    shed: int = 0
    expired: int = 0
    sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class Batcher:
    def __init__(
        self,
        backend: ScoringBackend,
        *,
        max_batch: int,
        max_wait_s: float,
        max_inflight: int,
        max_queue: int,
        max_queue_wait_s: float = 0.25,
        telemetry: NullTelemetry | None = None,
        prepare: Callable[[DecisionBatch], Any] | None = None,
    ) -> None:
        self._tel = telemetry or NullTelemetry()
        self._prepare = prepare
        self._backend = backend
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._max_inflight = max_inflight
        self._max_queue = max_queue
        self._max_queue_wait = max_queue_wait_s
        # Decisions per second the backend drains while saturated (None until measured).
        self._drain_rate: float | None = None
        self._last_done = 0.0
        self._pending: collections.deque[_Unit] = collections.deque()
        self._queued = 0
        self._inflight = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self.stats = BatcherStats()

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def inflight(self) -> int:
        return self._inflight

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    def expected_wait_s(self, extra: int = 0) -> float:
        """How long ``extra`` more decisions would wait before dispatch, at the measured drain rate."""
        if self._drain_rate is None or not self._pending:
            return 0.0
        return (self._queued + extra) / self._drain_rate

    def _enqueue(self, unit: _Unit) -> None:
        if self._closed:
            raise ShuttingDown("front end is draining")
        if self._queued + unit.size > self._max_queue:
            self.stats.shed += unit.size
            raise Overloaded(f"{self._queued} decisions queued (limit {self._max_queue})")
        wait = self.expected_wait_s(unit.size)
        if wait > self._max_queue_wait:
            self.stats.shed += unit.size
            raise Overloaded(f"about {wait * 1000:.0f} ms of work queued ahead; retry with backoff")
        if wait > unit.deadline - time.time():
            # Its own budget cannot cover the queue: it would expire waiting, so say so now.
            self.stats.shed += unit.size
            raise DeadlineExceeded(f"about {wait * 1000:.0f} ms of work queued ahead, more than the deadline allows")
        self._pending.append(unit)
        self._queued += unit.size
        self._wake.set()

    async def submit_one(self, record: bytes, deadline: float, trace: str = "") -> Answer:
        """Score one request record; its answer is row ``answer.start`` of ``answer.batch``."""
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._enqueue(_Unit(1, fut, deadline, record=record, trace=trace))
        return await fut

    async def submit_batch(self, batch: RequestBatch) -> Answer:
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._enqueue(_Unit(len(batch), fut, float(batch.deadline.max(initial=0.0)), batch=batch))
        return await fut

    async def _run(self) -> None:
        try:
            await self._dispatch_loop()
        finally:  # ended by a crash or cancelled: nothing queued may wait for its deadline
            stopped = ShuttingDown("front end stopped before scoring") if self._closed else None
            self._fail(list(self._pending), stopped or InternalError("the front end's dispatcher stopped"))

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and self._inflight < self._max_inflight:
                if self._inflight > 0 and self._queued < self._max_batch and self._max_wait > 0:
                    # A slot is free but others are still out: linger briefly to fill.
                    await asyncio.sleep(self._max_wait)
                    if not self._pending:
                        break
                self._dispatch(self._take())
            if self._closed and not self._pending and self._inflight == 0:
                return

    def _take(self) -> list[_Unit]:
        units: list[_Unit] = []
        size = 0
        now = time.time()
        while self._pending and (not units or size + self._pending[0].size <= self._max_batch):
            u = self._pending.popleft()
            self._queued -= u.size
            if u.deadline <= now:  # expired while queued: answer now, never score late
                self.stats.expired += u.size
                if not u.future.done():
                    u.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            units.append(u)
            size += u.size
        return units

    def _dispatch(self, units: list[_Unit]) -> None:
        if not units:
            return
        self._inflight += 1
        # Only calls sent with work still waiting measure capacity: idle gaps
        # between calls would understate it.
        saturated = bool(self._pending)
        task = asyncio.get_running_loop().create_task(self._call(units, saturated))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    def _measure(self, decisions: int, saturated: bool) -> None:
        now = time.perf_counter()
        if saturated and self._last_done:
            gap = max(now - self._last_done, 1e-4)
            rate = decisions / gap
            self._drain_rate = rate if self._drain_rate is None else 0.7 * self._drain_rate + 0.3 * rate
        self._last_done = now

    @staticmethod
    def _assemble(units: list[_Unit]) -> RequestBatch:
        """One backend batch: the single records first (joined as bytes), then the batches."""
        singles = [u for u in units if u.record is not None]
        parts: list[RequestBatch] = []
        if singles:
            trace = "\n".join(u.trace for u in singles if u.trace)
            parts.append(RequestBatch.of_records([u.record for u in singles if u.record is not None], trace))
        parts += [u.batch for u in units if u.batch is not None]
        return RequestBatch.concat(parts)

    @staticmethod
    def _fail(units: list[_Unit], exc: CreditAuthError) -> None:
        for u in units:
            if not u.future.done():
                u.future.set_exception(exc)

    def _answer(self, units: list[_Unit], resp: DecisionBatch) -> None:
        """Each unit its share of ``resp``; raises, before resolving any, if it cannot be answered."""
        if len(resp) != sum(u.size for u in units):
            raise InternalError(f"replica answered {len(resp)} items for {sum(u.size for u in units)}")
        prepared = self._prepare(resp) if self._prepare is not None else None
        # Results come back in the order the batch was built: singles first.
        pos = 0
        for single in (True, False):
            for u in units:
                if (u.record is not None) is single:
                    if not u.future.done():
                        u.future.set_result(Answer(resp, prepared, pos, u.size))
                    pos += u.size

    async def _call(self, units: list[_Unit], saturated: bool = False) -> None:
        answered = False
        try:
            batch = self._assemble(units)
            t0 = time.perf_counter()
            resp = await self._backend.score(batch)
            answered = True
            self._measure(len(batch), saturated)
            self._tel.batch(len(batch), time.perf_counter() - t0, resp.stage_s, resp)
            self._answer(units, resp)
            self.stats.calls += 1
            self.stats.decisions += len(batch)
            self.stats.sizes[len(batch)] += 1
        except CreditAuthError as exc:  # unavailable, overloaded, deadline, a refused answer: as they are
            self.stats.failures += 1
            self._fail(units, exc)
        except Exception as exc:  # never leave a caller hanging
            self.stats.failures += 1
            self._fail(units, self._unexpected(exc, answered))
        finally:
            # Cancelled (or any other way out): whoever is still waiting is told now.
            self._fail(units, InternalError("the backend call ended without an answer"))
            self._inflight -= 1
            self._wake.set()

    @staticmethod
    def _unexpected(exc: Exception, answered: bool) -> CreditAuthError:
        """An error that is not ours: the backend's failure before it answered, ours after."""
        text = repr(exc)[:200]
        err: CreditAuthError = (
            InternalError(f"answering failed: {text}") if answered else BackendUnavailable(f"scoring failed: {text}")
        )
        err.__cause__ = exc
        return err

    async def close(self, timeout_s: float) -> None:
        """Refuse new work, finish what is queued and in flight (bounded by ``timeout_s``)."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except asyncio.TimeoutError:
                self._task.cancel()
        for u in list(self._pending):
            if not u.future.done():
                u.future.set_exception(ShuttingDown("front end stopped before scoring"))
        self._pending.clear()
