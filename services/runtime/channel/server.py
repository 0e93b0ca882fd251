"""Replica side of the direct channel: a socket server on its own thread and loop.

It runs beside Serve's own machinery inside the replica process. Each frame is
dispatched by its op code to the handler registered for it at construction
(SCORE, PING and INFO, plus any the replica adds); an op with no handler is answered
with an UNIMPLEMENTED error frame, and a handler's error with its status code
(``services.errors.code_of``), so the connection outlives any one bad call.

Before any frame, a connection must pass the handshake (``auth``) when the server has a
secret: a peer that fails it, or says nothing within ``handshake_timeout_s``, is closed,
counted (``stats.refused``) and logged once per peer host. Every SCORE batch is checked
by ``services.schema.validate`` before it is scored: bad rows are answered with
INVALID_ARGUMENT in their status, a payload that is no request batch with an error frame.

Scoring runs on a small thread pool (the feature read and the kernel release the GIL),
at most ``max_inflight`` batches at a time; past that the server answers
RESOURCE_EXHAUSTED at once rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from services.errors import CreditAuthError, InternalError, Overloaded, code_of
from services.runtime.channel import auth, frames
from services.runtime.channel.frames import MAX_FRAME, Op, Part
from services.schema import validate
from services.schema.codes import Code
from services.scoring import DecisionBatch, RequestBatch

log = logging.getLogger(__name__)
# Peer hosts whose refusals were logged; past this many, refusals are only counted (a scan
# from many addresses must not grow memory or the log without bound).
MAX_LOGGED_PEERS = 1024
# Connections in the handshake at once; more are refused at once, so peers that connect and
# say nothing hold at most this many sockets for the handshake timeout.
MAX_HANDSHAKES = 64
# A handler gets a frame's payload and returns its RESULT payload, or raises.
Handler = Callable[[bytes], Awaitable[list[Part]]]


@dataclass
class ChannelStats:
    inflight_batches: int = 0
    inflight_decisions: int = 0
    batches: int = 0
    decisions: int = 0
    rejected: int = 0  # batches refused because the replica was busy
    refused: int = 0  # connections that failed the handshake (or said nothing in time)
    invalid: int = 0  # request rows answered INVALID_ARGUMENT by validation
    busy_s: float = 0.0


class ChannelServer:
    def __init__(
        self,
        score: Callable[[RequestBatch], DecisionBatch],
        *,
        secret: bytes | None,
        info: Callable[[], Mapping[str, Any]] | None = None,
        handlers: Mapping[int, Handler] | None = None,
        host: str = "127.0.0.1",
        ports: tuple[int, int] | None = None,
        max_inflight: int = 8,
        workers: int = 2,
        inline_max: int = 0,
        max_frame: int = MAX_FRAME,
        handshake_timeout_s: float = auth.HANDSHAKE_TIMEOUT_S,
    ) -> None:
        """``secret``: the key peers must prove they hold; ``None`` runs the channel in
        plaintext (no handshake), which callers choose explicitly (``auth.resolve_secret``)."""
        if secret is not None and len(secret) < auth.MIN_SECRET:
            raise ValueError(f"channel secret of {len(secret)} bytes, need at least {auth.MIN_SECRET}")
        self._secret = secret
        self._handshake_timeout = handshake_timeout_s
        self._logged_peers: set[str] = set()
        self._handshakes = 0
        self._inline_max = inline_max
        self._score = score
        self._info = info or dict
        self._host = host
        self._ports = ports
        self._max_inflight = max_inflight
        self._max_frame = max_frame
        self._handlers: dict[int, Handler] = {
            Op.SCORE: self._on_score,
            Op.PING: self._on_ping,
            Op.INFO: self._on_info,
            **(handlers or {}),
        }
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="score")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="channel", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._idle = asyncio.Event()  # no batch being scored (what a drain waits for)
        self._idle.set()
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
            try:
                await asyncio.wait_for(self._idle.wait(), drain_s)
            except asyncio.TimeoutError:
                log.warning("channel stopping with %d batches in flight", self.stats.inflight_batches)
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
        tasks: set[asyncio.Task[None]] = set()
        self._writers.add(writer)
        try:
            if not await self._admit(reader, writer):
                return
            while True:
                call_id, op, payload = await frames.read_frame(reader, self._max_frame)
                t = asyncio.ensure_future(self._dispatch(call_id, op, payload, writer))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        except frames.FrameError as exc:
            log.warning("closing channel connection from %s: %s", writer.get_extra_info("peername"), exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Whether the peer proved it holds the secret (always, in plaintext) within the timeout."""
        if self._secret is None:
            return True
        if self._handshakes >= MAX_HANDSHAKES:
            self._refuse(writer, f"{MAX_HANDSHAKES} handshakes already under way")
            return False
        self._handshakes += 1
        try:
            await asyncio.wait_for(auth.serve(reader, writer, self._secret), self._handshake_timeout)
            return True
        except asyncio.TimeoutError:  # before OSError: on 3.11 it is the builtin TimeoutError
            why = f"no handshake within {self._handshake_timeout:g} s"
        except auth.HandshakeFailed as exc:
            why = str(exc)
        except (ConnectionError, OSError) as exc:
            why = f"connection broke during the handshake: {exc}"
        finally:
            self._handshakes -= 1
        self._refuse(writer, why)
        return False

    def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        self.stats.refused += 1
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        if host not in self._logged_peers and len(self._logged_peers) < MAX_LOGGED_PEERS:
            self._logged_peers.add(host)
            log.warning("refused a channel connection from %s: %s (further refusals from it are only counted)",
                        host, why)
        writer.transport.abort()

    async def _dispatch(self, call_id: int, op: int, payload: bytes, writer: asyncio.StreamWriter) -> None:
        handler = self._handlers.get(op)
        if handler is None:
            answer, parts = Op.ERROR, frames.error_payload(Code.UNIMPLEMENTED, f"no handler for op {op}")
        else:
            try:
                answer, parts = Op.RESULT, await handler(payload)
            except Exception as exc:  # the caller gets an answer, whatever happened
                if not isinstance(exc, CreditAuthError):
                    log.exception("op %d failed", op)
                answer, parts = Op.ERROR, frames.error_payload(code_of(exc), _message(exc))
        try:
            out = frames.frame(call_id, answer, parts, self._max_frame)
        except frames.FrameError as exc:  # an answer the peer would refuse to read; not worth a retry
            out = frames.frame(call_id, Op.ERROR, frames.error_payload(Code.INTERNAL, f"answer too large: {exc}"))
        try:
            writer.writelines(out)
            await writer.drain()
        except (ConnectionError, OSError):  # the front end went away: nobody to answer
            pass

    async def _on_score(self, payload: bytes) -> list[Part]:
        st = self.stats
        if st.inflight_batches >= self._max_inflight:
            st.rejected += 1
            raise Overloaded("replica busy")
        try:
            batch, _ = frames.decode(RequestBatch, memoryview(payload))
        except frames.FrameError as exc:
            raise InternalError(f"undecodable batch: {exc}") from exc
        validate.require_rows(batch.rows)  # a payload of other records: INVALID_ARGUMENT for all of it
        n = len(batch)
        st.inflight_batches += 1
        st.inflight_decisions += n
        self._idle.clear()
        t0 = time.perf_counter()
        try:
            if n <= self._inline_max:
                # Small batches: a thread hop costs more than the scoring itself.
                resp = self._screened(batch)
            else:
                resp = await self._loop.run_in_executor(self._pool, self._screened, batch)
        finally:
            st.inflight_batches -= 1
            st.inflight_decisions -= n
            st.busy_s += time.perf_counter() - t0
            if not st.inflight_batches:
                self._idle.set()
        st.batches += 1
        st.decisions += n
        if resp.message:  # some rows were refused: count those validation refused
            st.invalid += int(np.count_nonzero(resp.status == Code.INVALID_ARGUMENT))
        return frames.encode(resp)

    def _screened(self, batch: RequestBatch) -> DecisionBatch:
        return validate.screen(batch, self._score)

    async def _on_ping(self, payload: bytes) -> list[Part]:
        return frames.json_payload({"ok": True})

    async def _on_info(self, payload: bytes) -> list[Part]:
        return frames.json_payload(self.info())

    def info(self) -> dict[str, Any]:
        """What INFO answers: the replica's own facts (versions, build) and the channel's counters."""
        return {**self._info(), **asdict(self.stats)}


def _message(exc: BaseException) -> str:
    if isinstance(exc, CreditAuthError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
