"""Front-end side of the direct channel: connections to every replica, least-loaded routing.

Every registered replica gets one multiplexed connection; a batch goes to the
live replica with the fewest decisions in flight (ties broken at random). A
batch whose replica dies before answering is sent once more to another
replica; a replica that says it is busy is skipped once. Every wait is bounded
by the batch's deadline, so nothing hangs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable

import numpy as np

from services.errors import BackendUnavailable, DeadlineExceeded, Overloaded
from services.runtime.channel import codec
from services.runtime.channel.server import RESOURCE_EXHAUSTED
from services.scoring import RequestBatch, ResponseBatch

log = logging.getLogger(__name__)
EndpointSource = Callable[[], Awaitable[list[str]]]


class _ReplicaLost(Exception):
    pass


class _Busy(Exception):
    pass


class _Conn:
    def __init__(self, address: str) -> None:
        self.address = address
        self.inflight = 0
        self.alive = False
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._next = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, timeout_s: float) -> None:
        host, port = self.address.rsplit(":", 1)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = writer
        self.alive = True
        self._reader_task = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(codec.FRAME.size)
                length, call_id, kind = codec.FRAME.unpack(head)
                payload = await reader.readexactly(length - 9)
                fut = self._pending.pop(call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result((kind, payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._fail_all()

    def _fail_all(self) -> None:
        self.alive = False
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(_ReplicaLost(self.address))
        self._pending.clear()
        if self._writer is not None:
            self._writer.close()

    async def call(self, parts: list[bytes | memoryview], size: int) -> tuple[int, bytes]:
        if not self.alive or self._writer is None:
            raise _ReplicaLost(self.address)
        self._next += 1
        call_id = self._next
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        try:
            self._writer.write(codec.frame_header(size, call_id, codec.KIND_SCORE))
            self._writer.writelines(parts)
            await self._writer.drain()
            return await fut
        except (ConnectionError, OSError) as exc:
            self._fail_all()
            raise _ReplicaLost(self.address) from exc
        finally:
            self._pending.pop(call_id, None)

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._fail_all()


class DirectBackend:
    """A ``ScoringBackend`` that speaks the direct channel to registered replicas."""

    def __init__(
        self,
        endpoints: EndpointSource,
        *,
        refresh_s: float = 1.0,
        connect_timeout_s: float = 2.0,
        default_timeout_s: float = 10.0,
    ) -> None:
        self._source = endpoints
        self._refresh_s = refresh_s
        self._connect_timeout = connect_timeout_s
        self._default_timeout = default_timeout_s
        self._conns: dict[str, _Conn] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.retries = 0

    def healthy(self) -> bool:
        return any(c.alive for c in self._conns.values())

    @property
    def replicas(self) -> list[str]:
        return sorted(a for a, c in self._conns.items() if c.alive)

    async def start(self, wait_s: float = 60.0) -> None:
        """Connect to the current replicas and keep following the registry."""
        self._refresher = asyncio.ensure_future(self._refresh_forever())
        try:
            await asyncio.wait_for(self._ready.wait(), wait_s)
        except asyncio.TimeoutError as exc:
            raise BackendUnavailable(f"no scoring replica registered within {wait_s:.0f} s") from exc

    async def refresh(self) -> None:
        try:
            wanted = set(await self._source())
        except Exception as exc:  # registry briefly unreachable: keep what we have
            log.warning("endpoint refresh failed: %s", exc)
            return
        for addr in list(self._conns):
            if addr not in wanted or not self._conns[addr].alive:
                self._conns.pop(addr).close()
        for addr in wanted - self._conns.keys():
            conn = _Conn(addr)
            try:
                await conn.connect(self._connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("cannot reach replica %s: %s", addr, exc)
                continue
            self._conns[addr] = conn
        if self._conns:
            self._ready.set()

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s)

    def _pick(self, exclude: set[str]) -> _Conn | None:
        live = [c for c in self._conns.values() if c.alive and c.address not in exclude]
        if not live:
            return None
        if len(live) == 1:
            return live[0]
        a, b = random.sample(live, 2)  # power of two choices
        return a if a.inflight <= b.inflight else b

    async def score(self, batch: RequestBatch) -> ResponseBatch:
        parts = codec.encode(batch)
        size = sum(len(p) for p in parts)
        finite = batch.deadline[np.isfinite(batch.deadline)]
        deadline = float(finite.max()) if finite.size else time.time() + self._default_timeout
        tried: set[str] = set()
        last: Exception | None = None
        for attempt in range(2):  # the first try and one retry elsewhere
            conn = self._pick(tried)
            if conn is None:
                break
            remaining = deadline - time.time()
            if remaining <= 0:
                raise DeadlineExceeded("batch deadline passed before a replica answered")
            conn.inflight += len(batch)
            try:
                kind, payload = await asyncio.wait_for(conn.call(parts, size), remaining)
            except asyncio.TimeoutError as exc:
                raise DeadlineExceeded(f"replica {conn.address} did not answer before the deadline") from exc
            except _ReplicaLost as exc:
                last = exc
                tried.add(conn.address)
                self.retries += attempt == 0
                continue
            finally:
                conn.inflight -= len(batch)
            if kind == codec.KIND_RESULT:
                resp, _ = codec.decode(ResponseBatch, memoryview(payload))
                return resp
            err = json.loads(payload)
            if err.get("code") == RESOURCE_EXHAUSTED:
                last = Overloaded(f"replica {conn.address} busy")
                tried.add(conn.address)
                continue
            raise BackendUnavailable(f"replica {conn.address}: {err.get('message')}")
        if isinstance(last, Overloaded):
            raise last
        if last is None and not self._conns:
            raise BackendUnavailable("no scoring replica is registered")
        raise BackendUnavailable(f"scoring replicas lost mid-batch: {last}") from last

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for c in self._conns.values():
            c.close()
        self._conns.clear()


def static_endpoints(addresses: list[str]) -> EndpointSource:
    async def source() -> list[str]:
        return list(addresses)

    return source


