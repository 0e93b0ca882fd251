"""The production sink: each flush published to a NATS JetStream stream, acknowledged.

A flush's Arrow table goes out as Arrow IPC messages on ``<nats_subject>.<writer id>``
(one subject per writer), each at most the server's ``max_payload``; ``write`` returns
once the stream has acknowledged every one of them (a publish ack: stored, on a quorum of
the stream's replicas), so a flush counts as durable exactly when JetStream holds it.
Messages are published one after the other and the first failure stops the flush, so a
writer's rows reach the stream in order; each carries ``Nats-Msg-Id`` =
``<replica>:<batch_seq>:<row>:<rows>`` (its first row and its size, stable for the same
table), so a flush retried after a lost acknowledgement (the writer spools it and
publishes the same table again) is stored once by JetStream's duplicate window, and a
retry later than the window is dropped by the compactor (``compactor.py``).

The writer thread is synchronous; nats-py is asyncio. The sink keeps a private event loop
on a thread of its own (the client's reader, pings and timers run there between flushes)
and hands it each publish, waiting on the result with a bound. Connecting happens on that
loop too, in the background: a write finds the connection up, or waits at most
``nats_timeout_s`` for an attempt in progress, or fails at once. Not connected, no
acknowledgement within ``nats_timeout_s``, the stream full (it refuses, ``discard: new``):
``write`` raises ``NatsUnavailable``, an ``OSError``, which the writer treats as any
sink being unavailable (the spool takes over and drains back here once a write succeeds).
So a flush holds the writer at most ``nats_timeout_s`` for a connection plus
``nats_timeout_s`` per message, and an unresponsive server costs one timeout per flush. The client does
not reconnect by itself: a lost connection is noticed by the next write, which starts a
new attempt (a failed one is retried after ``RETRY_S``); nothing waits in a client buffer.

The stream is created if absent, with file storage and the configured retention and
limits; an existing stream is used as it is (operators may create it themselves, R3).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import re
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from services.decisionlog.settings import DecisionLogSettings

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)
T = TypeVar("T")

MSG_ID = "Nats-Msg-Id"
RETRY_S = 1.0  # after a failed connection attempt, writes fail at once for this long
CONNECT_S = 2.0  # a connection attempt (TCP, TLS, INFO/CONNECT) and the stream look-up, at least
_HEADROOM = 4096  # headers and protocol framing inside the server's max_payload
_TOKEN = re.compile(r"[^A-Za-z0-9_-]")  # what a subject token may not hold ('.', '*', '>', spaces)


class NatsUnavailable(OSError):
    """NATS could not take a flush: not connected, no acknowledgement in time, stream full."""


@dataclass(frozen=True)
class NatsOptions:
    """Where the stream is and how to reach it (from ``DecisionLogSettings``)."""

    servers: tuple[str, ...]
    stream: str
    subject: str
    timeout_s: float = 0.5
    user_file: Path | None = None
    password_file: Path | None = None
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    replicas: int = 1
    retention: str = "workqueue"
    max_bytes: int = -1
    max_age_s: float = 0.0
    duplicate_window_s: float = 120.0
    compression: str = "none"

    @classmethod
    def from_settings(cls, s: DecisionLogSettings, **override: Any) -> NatsOptions:
        opts = cls(
            servers=tuple(u.strip() for u in s.nats_url.split(",") if u.strip()),
            stream=s.nats_stream, subject=s.nats_subject, timeout_s=s.nats_timeout_s,
            user_file=s.nats_user_file, password_file=s.nats_password_file, creds_file=s.nats_creds_file,
            tls_ca_file=s.nats_tls_ca_file, tls_cert_file=s.nats_tls_cert_file, tls_key_file=s.nats_tls_key_file,
            replicas=s.nats_replicas, retention=s.nats_retention, max_bytes=s.nats_max_bytes,
            max_age_s=s.nats_max_age_s, duplicate_window_s=s.nats_duplicate_window_s, compression=s.nats_compression,
        )
        return opts if not override else cls(**{**opts.__dict__, **override})

    @property
    def filter_subject(self) -> str:
        return f"{self.subject}.>"

    def subject_of(self, writer: str) -> str:
        return f"{self.subject}.{_TOKEN.sub('_', writer) or '_'}"

    def credentials(self) -> dict[str, Any]:
        """nats-py's connect arguments for the credentials, read from their files now (a
        rotated Secret is read at the next connection)."""
        kw: dict[str, Any] = {}
        if self.user_file is not None and self.password_file is not None:
            kw["user"] = _read(self.user_file)
            kw["password"] = _read(self.password_file)
        if self.creds_file is not None:
            if not self.creds_file.is_file():
                raise NatsUnavailable(f"NATS credentials file {self.creds_file} not found")
            kw["user_credentials"] = str(self.creds_file)
        if self.tls_ca_file is not None or self.tls_cert_file is not None:
            ctx = ssl.create_default_context(cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
            if self.tls_cert_file is not None and self.tls_key_file is not None:
                ctx.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
            kw["tls"] = ctx
        return kw

    def stream_config(self) -> Any:
        from nats.js import api

        return api.StreamConfig(
            name=self.stream,
            description="creditauth decision log (Arrow IPC per flush; compacted to Parquet)",
            subjects=[self.filter_subject],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy(self.retention),
            max_bytes=self.max_bytes,
            max_age=self.max_age_s,
            discard=api.DiscardPolicy.NEW,  # full: refuse (the spool takes over), never drop silently
            duplicate_window=self.duplicate_window_s,
            num_replicas=self.replicas,
        )


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise NatsUnavailable(f"cannot read {path}: {exc.strerror}") from exc


def api_timeout(opts: NatsOptions) -> float:
    """Bound of a connection attempt per server and of a JetStream API call."""
    return max(CONNECT_S, opts.timeout_s)


async def connect(opts: NatsOptions, name: str) -> Client:
    """A connection to the first server of ``opts`` that answers, within ``api_timeout``
    per server; it does not reconnect by itself (the caller notices a closed connection)."""
    from nats.aio.client import Client

    async def quiet(exc: Exception) -> None:  # nats-py logs every error with a traceback by default
        log.debug("nats: %r", exc)

    nc = Client()
    bound = api_timeout(opts)
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=list(opts.servers), name=name, connect_timeout=math.ceil(bound),
                allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0, ping_interval=5,
                max_outstanding_pings=3, error_cb=quiet, **opts.credentials(),
            ),
            timeout=bound * (1 + len(opts.servers)),
        )
    except BaseException:
        await _close(nc, bound)
        raise
    return nc


async def _close(nc: Client, timeout: float) -> None:
    try:
        await asyncio.wait_for(nc.close(), timeout)
    except Exception as exc:  # closing a broken connection: nothing more to do
        log.debug("nats: close: %r", exc)


def _covers(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


async def ensure_stream(js: JetStreamContext, opts: NatsOptions, *, publisher: bool = True) -> None:
    """The stream, created with ``opts`` if it does not exist (used as it is if it does; a
    publisher checks that it takes the subjects it publishes on)."""
    from nats.js.errors import BadRequestError, NotFoundError

    try:
        info = await js.stream_info(opts.stream)
    except NotFoundError:
        try:
            await js.add_stream(opts.stream_config())
            log.info("decision log: created stream %s (%s, %s)", opts.stream, opts.filter_subject, opts.retention)
            return
        except BadRequestError:  # created meanwhile by another replica
            info = await js.stream_info(opts.stream)
    probe = opts.subject_of("x")
    if publisher and not any(_covers(p, probe) for p in info.config.subjects or []):
        raise NatsUnavailable(f"stream {opts.stream} does not take subjects {opts.filter_subject}")


def ipc_bytes(table: pa.Table, compression: str = "none") -> bytes:
    options = pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as w:
        w.write_table(table)
    payload: bytes = sink.getvalue().to_pybytes()
    return payload


def read_message(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


def msg_id(table: pa.Table, replica: str) -> str:
    """A message's identity: its writer, first row and size (the same for the same rows)."""
    return f"{replica}:{table['batch_seq'][0].as_py()}:{table['row'][0].as_py()}:{table.num_rows}"


def split(table: pa.Table, limit: int, compression: str = "none") -> Iterator[tuple[pa.Table, bytes]]:
    """``table`` as IPC payloads of at most ``limit`` bytes, in row order (deterministic:
    the same table and limit give the same parts). Parts are sized from the table's bytes
    per row; one that still comes out too large is halved."""
    n = table.num_rows
    per_row = max(1.0, table.nbytes / max(n, 1))
    step = max(1, min(n, int(limit * 0.9 / per_row)))
    for start in range(0, n, step):
        part = table.slice(start, step)
        payload = ipc_bytes(part, compression)
        if len(payload) <= limit or part.num_rows <= 1:
            yield part, payload
        else:
            half = math.ceil(part.num_rows / 2)
            yield from split(part.slice(0, half), limit, compression)
            yield from split(part.slice(half), limit, compression)


@dataclass
class NatsSinkStats:
    rows: int = 0
    messages: int = 0
    bytes: int = 0
    duplicates: int = 0  # acknowledged as already stored (a retry within the duplicate window)
    publish_failures: int = 0
    connect_failures: int = 0


class NatsSink:
    def __init__(self, opts: NatsOptions, writer_id: str) -> None:
        self._o = opts
        self.writer_id = writer_id
        self.stats = NatsSinkStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="decision-log-nats", daemon=True)
        self._thread.start()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._max_payload = 1024 * 1024
        self._failure: BaseException | None = None
        self._retry_at = 0.0
        # Connect at once: ready (usually) by the first flush.
        self._connecting: concurrent.futures.Future[tuple[Client, JetStreamContext]] | None = self._submit(
            self._connect()
        )

    @classmethod
    def from_settings(cls, settings: DecisionLogSettings, writer_id: str) -> NatsSink:
        return cls(NatsOptions.from_settings(settings), writer_id)

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _connect(self) -> tuple[Client, JetStreamContext]:
        nc = await connect(self._o, f"creditauth-decision-log-{self.writer_id}")
        bound = api_timeout(self._o)
        try:
            js = nc.jetstream(timeout=bound)
            await asyncio.wait_for(ensure_stream(js, self._o), bound * 2)
        except BaseException:
            await _close(nc, bound)
            raise
        return nc, js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def _ready(self) -> JetStreamContext:
        """The live connection's JetStream context; else start (or look at) an attempt in the
        background, waiting for it at most ``timeout_s``."""
        if self._nc is not None and self._nc.is_connected and self._js is not None:
            return self._js
        if self._nc is not None:  # the connection dropped: the client closed it
            self._submit(_close(self._nc, self._o.timeout_s))
            self._nc = self._js = None
        fut = self._connecting
        if fut is None:
            if time.monotonic() < self._retry_at:
                raise NatsUnavailable(f"NATS unavailable: {self._failure!r}")
            fut = self._connecting = self._submit(self._connect())
        with contextlib.suppress(Exception):  # its outcome is read below
            fut.result(timeout=self._o.timeout_s)
        if not fut.done():  # the attempt goes on; the next write looks again
            raise NatsUnavailable("connecting to NATS")
        self._connecting = None
        exc = fut.exception()
        if exc is not None:
            self._failure = exc
            self._retry_at = time.monotonic() + RETRY_S
            self.stats.connect_failures += 1
            raise NatsUnavailable(f"cannot connect to NATS: {exc!r}") from exc
        nc, js = fut.result()
        self._nc, self._js = nc, js
        self._max_payload = int(nc.max_payload)
        log.info("decision log: connected to NATS, stream %s", self._o.stream)
        return js

    def messages(self, table: pa.Table) -> list[tuple[str, bytes, str]]:
        """(subject, payload, message id) for each message of ``table``."""
        replica = table["replica_id"][0].as_py() if "replica_id" in table.schema.names else self.writer_id
        subject = self._o.subject_of(replica)  # a dead writer's spooled rows keep their writer's subject
        limit = self._max_payload - _HEADROOM
        return [(subject, payload, msg_id(part, replica)) for part, payload in split(table, limit, self._o.compression)]

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        js = self._ready()
        try:
            messages = self.messages(table)
        except (pa.ArrowException, KeyError, IndexError) as exc:  # not the writer's table: say so, spool it
            raise NatsUnavailable(f"cannot make messages of the flush: {exc!r}") from exc
        fut = self._submit(self._publish(js, messages))
        try:
            acks = fut.result(timeout=self._o.timeout_s * len(messages) + 1.0)
        except Exception as exc:
            fut.cancel()
            self.stats.publish_failures += 1
            raise NatsUnavailable(f"NATS did not acknowledge the flush ({len(messages)} message(s)): {exc!r}") from exc
        self.stats.rows += table.num_rows
        self.stats.messages += len(messages)
        self.stats.bytes += sum(len(p) for _, p, _ in messages)
        self.stats.duplicates += sum(1 for a in acks if a.duplicate)

    async def _publish(self, js: JetStreamContext, messages: list[tuple[str, bytes, str]]) -> list[Any]:
        # One after the other, each acknowledged before the next: the stream holds a writer's
        # rows in order, and a failure leaves a prefix (the retry resends it, deduplicated).
        acks = []
        for subject, payload, mid in messages:
            acks.append(await js.publish(
                subject, payload, timeout=self._o.timeout_s, stream=self._o.stream, headers={MSG_ID: mid}
            ))
        return acks

    def tick(self, now: float) -> None:
        """Nothing periodic: the client's own timers run on the sink's loop."""

    def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        try:
            self._submit(self._shutdown(nc)).result(timeout=api_timeout(self._o) * 2 + 1)
        except Exception as exc:
            log.warning("decision log: NATS close: %r", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=api_timeout(self._o))
        if not self._thread.is_alive():
            self._loop.close()

    async def _shutdown(self, nc: Client | None) -> None:
        fut = self._connecting
        if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
            late, _ = fut.result()  # connected after the last write looked
            await _close(late, api_timeout(self._o))
        if nc is not None:
            await _close(nc, api_timeout(self._o))
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:  # a connection attempt still in progress, a dropped client's tasks
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
