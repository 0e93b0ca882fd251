"""AuthorizeStream load: a few long-lived bidirectional streams per generator.

Each request is written at its intended time and answered in order on the
same stream, so answers are matched to requests first-in first-out. A stream
that breaks fails what it had in flight (with the status it ended with) and
is reopened for the requests still queued.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc

from loadtest.mix import Kind
from loadtest.tally import ABANDONED, ERROR, MISSING, item_outcome

if TYPE_CHECKING:
    from loadtest.engine import Engine

_BROKEN = object()  # queued by a reader whose call ended while the writer waits for work
_CLOSE = None


class StreamPool:
    """``count`` streams for one phase, used round-robin."""

    def __init__(self, engine: Engine, phase: int, count: int) -> None:
        self._streams = [_Stream(engine, phase) for _ in range(count)]
        self._next = 0

    def submit(self, phase: int, t_int: float) -> asyncio.Future[None]:
        s = self._streams[self._next]
        self._next = (self._next + 1) % len(self._streams)
        return s.submit(t_int)

    def close(self) -> None:
        for s in self._streams:
            s.close()


class _Stream:
    def __init__(self, engine: Engine, phase: int) -> None:
        self.e = engine
        self.phase = phase
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.pending: deque[tuple[float, float, Kind, asyncio.Future[None]]] = deque()
        self.closing = False
        self.generation = 0
        task = asyncio.ensure_future(self._run())
        engine.track(task)

    def submit(self, t_int: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((t_int, fut))
        return fut

    def close(self) -> None:
        self.queue.put_nowait(_CLOSE)

    def _finish(self, t_int: float, t_send: float, outcome: tuple[str, str], fut: asyncio.Future[None],
                degraded: int = 0) -> None:
        self.e.done(self.phase, t_int, t_send, [outcome], degraded)
        self.e.release()
        if not fut.done():
            fut.set_result(None)

    def _fail_pending(self, key: str) -> None:
        while self.pending:
            t_int, t_send, _, fut = self.pending.popleft()
            self._finish(t_int, t_send, (ERROR, key), fut)

    async def _run(self) -> None:
        failures = 0
        try:
            while not self.e.stopped:
                closed, wrote = await self._one_call()
                if closed:
                    return
                failures = 0 if wrote else failures + 1
                # A target that refuses every stream must not make us spin.
                await asyncio.sleep(min(1.0, 0.05 * failures))
        finally:
            # Hard stop (cancelled) or a stop while reconnecting: account for everything.
            self._fail_pending(ABANDONED)
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], asyncio.Future):
                    t_int, fut = item
                    self.e.not_sent(self.phase, t_int, 1)
                    self.e.release()
                    if not fut.done():
                        fut.set_result(None)

    async def _one_call(self) -> tuple[bool, bool]:
        """One stream call: (closed normally, wrote anything)."""
        self.generation += 1
        gen = self.generation
        call = self.e.stream(timeout=self._deadline())  # type: ignore[call-arg]
        reader = asyncio.ensure_future(self._read(call, gen))
        wrote = False
        closed = False
        try:
            while True:
                item = await self.queue.get()
                if item is _CLOSE:
                    self.closing = closed = True
                    await call.done_writing()
                    break
                if isinstance(item, tuple) and item[0] is _BROKEN:
                    if item[1] == gen:
                        break
                    continue  # stale: from a call already replaced
                t_int, fut = item
                body, kind = self.e.mix.next_encoded()
                t_send = self.e.sent(self.phase, t_int, 1)
                self.pending.append((t_int, t_send, kind, fut))
                wrote = True
                await call.write(body)
        except asyncio.CancelledError:
            reader.cancel()
            raise
        except Exception:  # the call ended under us: the reader knows why
            pass
        code = await reader
        self._fail_pending(code or MISSING)
        return closed, wrote

    def _deadline(self) -> float:
        # The stream may live until the run's hard stop, no longer.
        return max(0.001, self.e.hard_stop - time.perf_counter())

    async def _read(self, call: Any, gen: int) -> str | None:
        code: str | None = None
        try:
            async for resp in call:
                if not self.pending:
                    code = "UNEXPECTED_ANSWER"
                    continue
                t_int, t_send, kind, fut = self.pending.popleft()
                self._finish(t_int, t_send, item_outcome(resp, kind), fut, int(resp.degraded))
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        except asyncio.CancelledError:
            raise
        if not self.closing:
            self.queue.put_nowait((_BROKEN, gen))
        return code
