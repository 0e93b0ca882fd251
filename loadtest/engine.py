"""One generator's event loop: its share of every phase, sent over one gRPC channel.

Open-loop phases send at the schedule's intended times whatever the server
does; each answer's latency is measured from its intended time. If the
server stalls, requests queue (in the channel, or behind the in-flight cap)
and their latency grows by the time they waited, exactly as a real caller's
would. Closed-loop phases keep a fixed number in flight (their latency is
service time: a closed loop slows down with the server and so under-reports,
which is why open loop is the default).

Every request due is accounted for exactly once: answered correctly (decided,
or rejected when it was meant to be invalid), or an error, including
``NOT_SENT`` (never sent before the hard stop) and ``ABANDONED`` (in flight
at the hard stop).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from creditauth.v1 import authorization_pb2 as pb
from loadtest.campaign import Campaign, Phase
from loadtest.mix import RequestMix
from loadtest.streams import StreamPool
from loadtest.tally import (
    ABANDONED,
    ERROR,
    MISSING,
    NOT_SENT,
    Interval,
    Outcome,
    item_outcome,
    record_us,
    status_outcome,
)

_SERVICE = "/creditauth.v1.CreditAuthorization/"
# An open-loop phase may send late for this long after it ends; then the rest is NOT_SENT.
PHASE_GRACE_S = 1.0
# Yield to the event loop at least this often while catching up on a backlog,
# so answers are processed while the sender runs behind.
_YIELD_EVERY = 32

Emit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class WorkerPlan:
    campaign: Campaign
    target: str
    worker: int = 0
    workers: int = 1
    id_prefix: str = "lt"


def share(total: int, worker: int, workers: int) -> int:
    """Worker ``worker``'s part of ``total`` when split as evenly as possible."""
    return total // workers + (1 if worker < total % workers else 0)


class Engine:
    def __init__(self, plan: WorkerPlan, channel: grpc.aio.Channel, mix: RequestMix, emit: Emit) -> None:
        self.plan = plan
        self.campaign = plan.campaign
        self.mix = mix
        self._emit = emit
        # Requests go out pre-serialized (see RequestMix.next_encoded), so no request serializer.
        self.unary = channel.unary_unary(
            _SERVICE + "Authorize", request_serializer=None, response_deserializer=pb.AuthorizeResponse.FromString
        )
        self.batch = channel.unary_unary(
            _SERVICE + "AuthorizeBatch",
            request_serializer=None,
            response_deserializer=pb.AuthorizeBatchResponse.FromString,
        )
        self.stream = channel.stream_stream(
            _SERVICE + "AuthorizeStream", request_serializer=None, response_deserializer=pb.AuthorizeResponse.FromString
        )
        self.t0 = 0.0
        self.hard_stop = math.inf
        self.stopped = False
        self._stop = asyncio.Event()
        self._buckets: dict[tuple[int, int], Interval] = {}
        self._sem = asyncio.Semaphore(self.campaign.max_in_flight)
        self.inflight = 0
        self._tasks: set[asyncio.Future[Any]] = set()

    # --- bookkeeping ------------------------------------------------------------

    def bucket(self, phase: int, t: float) -> Interval:
        key = (phase, max(0, int(t - self.t0)))
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = Interval()
        return b

    def sent(self, phase: int, t_int: float, n: int) -> float:
        t = time.perf_counter()
        b = self.bucket(phase, t)
        b.sent += n
        record_us(b.lag, t - t_int)
        return t

    def done(self, phase: int, t_int: float, t_send: float, outcomes: list[Outcome], degraded: int = 0) -> None:
        t = time.perf_counter()
        b = self.bucket(phase, t)
        b.rpcs += 1
        b.degraded += degraded
        for o in outcomes:
            b.count(o)
        record_us(b.latency, t - t_int, len(outcomes))
        record_us(b.service, t - t_send, len(outcomes))

    def not_sent(self, phase: int, t_int: float, n: int) -> None:
        # Never sent: its latency is at least "now minus when it was due".
        b = self.bucket(phase, time.perf_counter())
        b.count((ERROR, NOT_SENT), n)
        record_us(b.latency, time.perf_counter() - t_int, n)

    async def acquire(self, phase: int, deadline: float) -> bool:
        """A slot under the in-flight cap; False if none came by ``deadline`` or the run is stopping."""
        if self._sem.locked():
            # The target is not keeping up: this request waits here, and the wait
            # counts in its latency (measured from the intended time).
            self.bucket(phase, time.perf_counter()).capped += 1
            try:
                await asyncio.wait_for(self._sem.acquire(), max(0.0, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                return False
        else:
            await self._sem.acquire()
        if self.stopped:
            self._sem.release()
            return False
        self.inflight += 1
        return True

    def release(self) -> None:
        self.inflight -= 1
        self._sem.release()

    def track(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    def flush(self) -> None:
        buckets = [(p, s, b.to_wire()) for (p, s), b in sorted(self._buckets.items())]
        self._buckets = {}
        self._emit("tick", {"buckets": buckets, "inflight": self.inflight, "at": time.perf_counter() - self.t0})

    # --- calls ------------------------------------------------------------------

    async def call_unary(self, phase: int, t_int: float) -> None:
        body, kind = self.mix.next_encoded()
        t_send = self.sent(phase, t_int, 1)
        outcome: Outcome = (ERROR, ABANDONED)
        degraded = 0
        try:
            resp: pb.AuthorizeResponse = await self.unary(body, timeout=self.campaign.timeout)
            outcome, degraded = item_outcome(resp, kind), int(resp.degraded)
        except grpc.aio.AioRpcError as exc:
            outcome = status_outcome(exc.code(), kind)
        except Exception as exc:  # a broken answer is the system's failure, not ours to crash on
            outcome = (ERROR, f"CLIENT_{type(exc).__name__}")
        finally:
            self.done(phase, t_int, t_send, [outcome], degraded)
            self.release()

    async def call_batch(self, phase: int, t_int: float, n: int) -> None:
        body, kinds = self.mix.batch_encoded(n)
        t_send = self.sent(phase, t_int, n)
        outcomes: list[Outcome] = [(ERROR, ABANDONED)] * n
        degraded = 0
        try:
            resp: pb.AuthorizeBatchResponse = await self.batch(body, timeout=self.campaign.timeout)
            got = resp.responses
            outcomes = [item_outcome(r, k) for r, k in zip(got, kinds, strict=False)]
            outcomes += [(ERROR, MISSING)] * (n - len(outcomes))
            degraded = sum(1 for r in got if r.degraded)
        except grpc.aio.AioRpcError as exc:
            outcomes = [status_outcome(exc.code(), k) for k in kinds]
        except Exception as exc:
            outcomes = [(ERROR, f"CLIENT_{type(exc).__name__}")] * n
        finally:
            self.done(phase, t_int, t_send, outcomes[:n], degraded)
            self.release()

    def fire(self, phase: int, ph: Phase, t_int: float, streams: StreamPool | None) -> asyncio.Future[Any]:
        """Send one RPC (a slot is already held); the future completes when it is answered."""
        if streams is not None:
            return streams.submit(phase, t_int)
        coro = self.call_batch(phase, t_int, ph.batch_size) if ph.rpc == "batch" else self.call_unary(phase, t_int)
        task = asyncio.ensure_future(coro)
        self.track(task)
        return task

    # --- phases -----------------------------------------------------------------

    def _per_rpc(self, ph: Phase) -> int:
        return ph.batch_size if ph.rpc == "batch" else 1

    def intended(self, phase: int, ph: Phase) -> Iterator[float]:
        assert ph.schedule is not None
        n = self._per_rpc(ph)
        sched = ph.schedule.scaled(1.0 / n) if n > 1 else ph.schedule
        seed = None if ph.arrivals == "uniform" else self.campaign.seed * 1000 + phase
        return sched.intended_times(worker=self.plan.worker, workers=self.plan.workers, poisson_seed=seed)

    def _streams(self, phase: int, ph: Phase) -> StreamPool | None:
        if ph.rpc != "stream":
            return None
        count = max(1, share(self.campaign.mix.streams, self.plan.worker, self.plan.workers))
        return StreamPool(self, phase, count)

    async def open_phase(self, phase: int, ph: Phase, start: float) -> None:
        n = self._per_rpc(ph)
        times = self.intended(phase, ph)
        streams = self._streams(phase, ph)
        # Past this, what is still unsent is NOT_SENT: a phase the generator (or the
        # in-flight cap) cannot keep up with must not eat into the next phase's time.
        cutoff = start + ph.duration + PHASE_GRACE_S
        behind = 0
        try:
            for off in times:
                t_int = start + off
                self.bucket(phase, t_int).offered += n
                wait = t_int - time.perf_counter()
                if wait > 0:
                    behind = 0
                    # uvloop's millisecond timers can fire up to ~1 ms early: never send
                    # before the intended time, or latency would be under-measured.
                    while wait > 0:
                        await asyncio.sleep(wait)
                        wait = t_int - time.perf_counter()
                else:
                    behind += 1
                    if behind % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                if self.stopped or time.perf_counter() > cutoff or not await self.acquire(phase, cutoff):
                    self.not_sent(phase, t_int, n)
                    break
                self.fire(phase, ph, t_int, streams)
        except asyncio.CancelledError:
            self._not_sent_rest(phase, start, times, n)
            raise
        finally:
            if streams is not None:
                streams.close()
        self._not_sent_rest(phase, start, times, n)

    def _not_sent_rest(self, phase: int, start: float, times: Iterator[float], n: int) -> None:
        if self._stop.is_set():
            return  # interrupted by the user: the run is void, do not invent errors
        for off in times:
            self.bucket(phase, start + off).offered += n
            self.not_sent(phase, start + off, n)

    async def closed_phase(self, phase: int, ph: Phase, start: float) -> None:
        plan = self.plan
        workers = share(ph.concurrency, plan.worker, plan.workers)
        limit = None if ph.max_requests is None else share(ph.max_requests, plan.worker, plan.workers)
        end = start + ph.duration
        n = self._per_rpc(ph)
        streams = self._streams(phase, ph) if workers else None
        issued = 0

        async def loop() -> None:
            nonlocal issued
            while not self.stopped and time.perf_counter() < end and (limit is None or issued < limit):
                issued += 1
                t = time.perf_counter()
                self.bucket(phase, t).offered += n
                if not await self.acquire(phase, end):
                    self.not_sent(phase, t, n)
                    return
                # The intended time of a closed-loop request is when it was sent: closed
                # loops measure service time by construction (see the module docstring).
                await self.fire(phase, ph, t, streams)

        try:
            await asyncio.gather(*(loop() for _ in range(workers)))
        finally:
            if streams is not None:
                streams.close()

    async def _phases(self) -> None:
        """Start each phase's sender at its start time, whatever the previous one is doing."""
        plan = list(zip(self.campaign.phases, self.campaign.phase_starts(), strict=True))
        senders: list[asyncio.Future[None]] = []
        try:
            for i, (ph, offset) in enumerate(plan):
                start = self.t0 + offset
                await asyncio.sleep(max(0.0, start - time.perf_counter()))
                run = self.open_phase if ph.mode == "open" else self.closed_phase
                senders.append(asyncio.ensure_future(run(i, ph, start)))
            await asyncio.gather(*senders)
        except asyncio.CancelledError:
            for s in senders:
                s.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            # Phases that never began (stopped early): what they would have sent is NOT_SENT.
            for j in range(len(senders), len(plan)):
                ph_j, off_j = plan[j]
                if ph_j.mode == "open":
                    self._not_sent_rest(j, self.t0 + off_j, self.intended(j, ph_j), self._per_rpc(ph_j))
            raise

    async def _flusher(self) -> None:
        k = 1
        while True:
            # Just after each second boundary, so the parent sees complete seconds.
            await asyncio.sleep(max(0.0, self.t0 + k + 0.05 - time.perf_counter()))
            self.flush()
            k = max(k + 1, int(time.perf_counter() - self.t0) + 1)

    def request_stop(self) -> None:
        """Stop now (the parent asked, e.g. on Ctrl-C); thread-safe via call_soon_threadsafe."""
        self._stop.set()

    async def run(self, t0: float) -> None:
        """All phases from ``t0`` (a perf_counter time), then drain until the hard stop."""
        c = self.campaign
        self.t0 = t0
        self.hard_stop = t0 + c.duration + c.drain_s
        runner = asyncio.ensure_future(self._phases())
        flusher = asyncio.ensure_future(self._flusher())
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({runner, stop_wait}, timeout=max(0.0, self.hard_stop - time.perf_counter()),
                               return_when=asyncio.FIRST_COMPLETED)
            while self._tasks and not self._stop.is_set():
                left = self.hard_stop - time.perf_counter()
                if left <= 0:
                    break
                await asyncio.wait(self._tasks | {stop_wait}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Hard stop: whatever is still due or in flight is counted, then cancelled.
            self.stopped = True
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            # Let calls created in this very iteration take their first step: a task
            # cancelled before it starts never runs its own accounting (its finally).
            await asyncio.sleep(0)
            pending = list(self._tasks)
            for fut in pending:
                fut.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            flusher.cancel()
            stop_wait.cancel()
            await asyncio.gather(flusher, stop_wait, return_exceptions=True)
            self.flush()


__all__ = ["Emit", "Engine", "WorkerPlan", "share"]
