"""Replica side of the direct channel: a socket server on its own thread and loop.

It runs beside Serve's own machinery inside the replica process. Scoring runs
on a small thread pool (the feature read and the kernel release the GIL), at
most ``max_inflight`` batches at a time; past that the server answers
RESOURCE_EXHAUSTED at once rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.runtime.channel import codec
from services.scoring import RequestBatch, ResponseBatch

log = logging.getLogger(__name__)
RESOURCE_EXHAUSTED = 8
INTERNAL = 13


@dataclass
class ChannelStats:
    inflight_batches: int = 0
    inflight_decisions: int = 0
    batches: int = 0
    decisions: int = 0
    rejected: int = 0
    busy_s: float = 0.0


class ChannelServer:
    def __init__(
        self,
        score: Callable[[RequestBatch], ResponseBatch],
        *,
        host: str = "127.0.0.1",
        ports: tuple[int, int] | None = None,
        max_inflight: int = 8,
        workers: int = 2,
        inline_max: int = 0,
    ) -> None:
        self._inline_max = inline_max
        self._score = score
        self._host = host
        self._ports = ports
        self._max_inflight = max_inflight
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="score")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="channel", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.stats = ChannelStats()
        self.address = ""

    def start(self) -> str:
        """Listen and return ``host:port``."""
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.address = fut.result(30)
        return self.address

    async def _start(self) -> str:
        candidates = [0] if self._ports is None else list(range(self._ports[0], self._ports[1] + 1))
        last: OSError | None = None
        for port in candidates:
            try:
                self._server = await asyncio.start_server(self._serve_conn, self._host, port, backlog=512)
                break
            except OSError as exc:  # taken: try the next one in the range
                last = exc
        else:
            raise OSError(f"no free channel port in {self._ports}: {last}")
        bound = self._server.sockets[0].getsockname()[1]
        return f"{self._host}:{bound}"

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop accepting, let batches in flight finish (at most ``drain_s``), then close."""

        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            deadline = time.monotonic() + drain_s
            while self.stats.inflight_batches and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            # Close every connection so front ends see this replica go (and retry
            # whatever was still in flight elsewhere) instead of waiting on it.
            for w in list(self._writers):
                w.transport.abort()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(drain_s + 5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lock = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readexactly(codec.FRAME.size)
                length, call_id, kind = codec.FRAME.unpack(head)
                payload = await reader.readexactly(length - 9)
                if kind != codec.KIND_SCORE:
                    raise ConnectionError(f"unexpected frame kind {kind}")
                t = asyncio.ensure_future(self._handle(call_id, payload, writer, lock))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, call_id: int, payload: bytes, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        st = self.stats
        if st.inflight_batches >= self._max_inflight:
            st.rejected += 1
            await self._send_error(writer, lock, call_id, RESOURCE_EXHAUSTED, "replica busy")
            return
        try:
            batch, _ = codec.decode(RequestBatch, memoryview(payload))
        except (ValueError, KeyError, TypeError) as exc:
            await self._send_error(writer, lock, call_id, INTERNAL, f"undecodable batch: {exc}")
            return
        n = len(batch)
        st.inflight_batches += 1
        st.inflight_decisions += n
        t0 = time.perf_counter()
        try:
            if n <= self._inline_max:
                # Small batches: a thread hop costs more than the scoring itself.
                resp = self._score(batch)
            else:
                resp = await self._loop.run_in_executor(self._pool, self._score, batch)
        except Exception as exc:  # the caller gets an answer, whatever happened
            log.exception("scoring failed")
            await self._send_error(writer, lock, call_id, INTERNAL, f"scoring failed: {exc!r}")
            return
        finally:
            st.inflight_batches -= 1
            st.inflight_decisions -= n
            st.busy_s += time.perf_counter() - t0
        st.batches += 1
        st.decisions += n
        parts = codec.encode(resp)
        size = sum(len(p) for p in parts)
        async with lock:
            writer.write(codec.frame_header(size, call_id, codec.KIND_RESULT))
            writer.writelines(parts)
            await writer.drain()

    async def _send_error(
        self, writer: asyncio.StreamWriter, lock: asyncio.Lock, call_id: int, code: int, message: str
    ) -> None:
        body = json.dumps({"code": code, "message": message}).encode()
        async with lock:
            writer.write(codec.frame_header(len(body), call_id, codec.KIND_ERROR) + body)
            await writer.drain()
