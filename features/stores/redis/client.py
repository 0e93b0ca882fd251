"""The project's Redis client: one small pool of RESP connections per process.

``RespConnection`` is one socket that sends whole batches per round trip within a
deadline; ``RedisClient`` is the pool a ``RedisBackend`` creates once and hands to its
reader, velocity state, idempotency store and admin helpers, so a replica holds as
many connections as it has concurrent callers (2-4 scoring threads), not one per part.

Every call has a deadline (``FeatureSettings.timeout_s`` from its start): waiting for a
pooled connection, connecting, authenticating, sending and receiving all share it, so a
dead host, a closed port or a server that accepts and never answers becomes
``OnlineStoreUnavailable`` within the configured time, never a hang. After any failure
the socket is dropped (its stream position is unknown) and the next call reconnects.

Every connection authenticates (``AUTH user password``) and, for ``rediss://``, speaks
TLS with the server's certificate and host name verified; both come from one
``ConnectionConfig`` (``secure``) resolved when the client is built. A reply is never
allowed to grow the receive buffer past ``redis_max_reply_bytes``.

Every call of a ``RedisClient`` goes through its circuit breaker
(``features.stores.breaker``): once the store has failed ``breaker_failures`` times in a
row, calls fail at once with ``OnlineStoreUnavailable`` until one probe per backoff
interval gets an answer, so a dead Redis costs one timeout per interval, not one per call.

The byte-level work (building the batch, decoding replies into arrays) is in the
compiled ``_resp`` modules; this module only moves bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

from features.errors import FeatureConfigError, FeatureDataError, FeatureError, OnlineStoreUnavailable
from features.settings import FeatureSettings
from features.stores.breaker import Breaker
from features.stores.redis import _resp, _resp_build
from features.stores.redis.secure import ConnectionConfig

_INITIAL_BUFFER = 1 << 20
# Server errors that mean "not now" rather than "bad data".
_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY")
# Connections one client opens at most: replicas score on 2-4 threads, and a caller holds
# a connection for one round trip only, so more than this means callers are piling up.
MAX_CONNECTIONS = 8
# CLIENT SETNAME prefix: operators (and tests) find this project's connections in CLIENT LIST.
CLIENT_NAME = "creditauth"
_CLIENT_NUMBERS = itertools.count(1)


class Decoder(Protocol):
    @property
    def done(self) -> bool: ...

    # After a feed that stopped inside a reply: a lower bound on the buffer index it ends at.
    @property
    def need(self) -> int: ...

    def feed(self, buf: bytearray, start: int, end: int) -> int: ...


class ClusterRedirect(OnlineStoreUnavailable):
    """A cluster node's ``MOVED``/``ASK`` reply: the slot is served elsewhere (``cluster``
    follows it; should one escape the retry bound, the store is unavailable for now)."""

    def __init__(self, message: str, kind: str, slot: int, host: str, port: int) -> None:
        super().__init__(message)
        self.kind, self.slot, self.host, self.port = kind, slot, host, port


def redirect_of(err: _resp.RespServerError, address: str = "") -> ClusterRedirect | None:
    """``MOVED <slot> <host>:<port>`` / ``ASK ...`` as a ``ClusterRedirect``; else None."""
    parts = str(err).split(" ")
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    return ClusterRedirect(f"Redis {address}: {err}", parts[0], int(parts[1]), host or "127.0.0.1", int(port))


def server_error(address: str, err: _resp.RespServerError, context: str = "") -> FeatureError:
    """The feature-layer error for a Redis error reply."""
    msg = str(err)
    code = msg.split(" ", 1)[0]
    if code in ("MOVED", "ASK") and (redirect := redirect_of(err, address)) is not None:
        return redirect
    where = f"Redis {address}" + (f" ({context})" if context else "")
    if code in _TRANSIENT:
        return OnlineStoreUnavailable(f"{where}: {msg}")
    if code in ("WRONGPASS", "NOPERM"):
        return FeatureConfigError(f"{where} rejected the credentials (redis_username, redis_password_file): {msg}")
    if code == "NOAUTH":
        return FeatureConfigError(f"{where} requires authentication: set redis_username and redis_password_file")
    return FeatureDataError(f"{where} refused a command: {msg}")


class RespConnection:
    """One Redis connection used by one caller at a time (a lock makes that so)."""

    def __init__(
        self, settings: FeatureSettings, *, timeout_s: float | None = None, name: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> None:
        self._config = config or ConnectionConfig.from_settings(settings)
        self._host, self._port, self._db = self._config.host, self._config.port, self._config.db
        self._name = name
        self.timeout_s = settings.timeout_s if timeout_s is None else timeout_s
        self._sock: socket.socket | None = None
        self._buf = bytearray(_INITIAL_BUFFER)
        self._start = self._end = 0  # unconsumed bytes of self._buf
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}/{self._db}"

    # --- public -----------------------------------------------------------------

    def call(self, payload: bytes | bytearray, decoder: Decoder, *, timeout_s: float | None = None) -> None:
        """Send ``payload`` and feed replies to ``decoder`` until it is done."""
        self._run(payload, decoder, timeout_s, connect=True)

    def send_only(self, payload: bytes | bytearray, *, timeout_s: float | None = None) -> None:
        """Send without reading: the caller reads the replies later with ``receive``."""
        self._run(payload, None, timeout_s, connect=True)

    def receive(self, decoder: Decoder, *, timeout_s: float | None = None) -> None:
        """Feed the replies of an earlier ``send_only`` to ``decoder`` until it is done."""
        self._run(b"", decoder, timeout_s, connect=False)

    def connect(self, *, timeout_s: float | None = None) -> None:
        """Connect now (if not connected): a failure here means nothing was sent."""
        self._run(b"", None, timeout_s, connect=True)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- internals --------------------------------------------------------------

    def _run(
        self, payload: bytes | bytearray, decoder: Decoder | None, timeout_s: float | None, *, connect: bool
    ) -> None:
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        with self._lock:
            try:
                if not connect and self._sock is None:
                    raise ConnectionResetError("connection lost before its replies were read")
                sock = self._connected(deadline)
                self._send(sock, payload, deadline)
                if decoder is not None:
                    self._receive(sock, decoder, deadline)
            except BaseException as exc:
                # Whatever went wrong, the stream position is unknown now: resync by reconnecting.
                self._drop()
                translated = self._translate(exc)
                if translated is exc:
                    raise
                raise translated from exc

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, _resp.RespServerError):
            return server_error(self.address, exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            # Not transient: the server is not the one the CA vouches for (or the CA is wrong).
            return FeatureConfigError(
                f"Redis {self.address}: TLS certificate not trusted ({exc.verify_message}); "
                "check redis_tls_ca_file and the host in redis_url"
            )
        if isinstance(exc, _resp.RespValueError):
            return FeatureDataError(f"Redis {self.address}: {exc}")
        if isinstance(exc, _resp.RespProtocolError):
            return OnlineStoreUnavailable(f"Redis {self.address} sent a reply this client refuses "
                                          f"(connection dropped): {exc}")
        if isinstance(exc, OSError):
            kind = "timed out" if isinstance(exc, TimeoutError) else "failed"
            return OnlineStoreUnavailable(
                f"Redis {self.address} {kind} (timeout {self.timeout_s:g} s): {exc}"
            )
        return exc

    def _connected(self, deadline: float) -> socket.socket:
        if self._sock is not None:
            return self._sock
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed before connecting")
        sock = socket.create_connection((self._host, self._port), timeout=remaining)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._config.tls is not None:
                # Handshake under the connect timeout; the name is checked against the
                # certificate (an IP against its IP SANs).
                sock = self._config.tls.wrap_socket(sock, server_hostname=self._host)
            self._sock = sock
            self._start = self._end = 0
            hello = self._config.hello()
            if self._name:
                hello.append([b"CLIENT", b"SETNAME", self._name.encode()])
            if hello:
                collector = _resp.ReplyCollector(len(hello))
                self._send(sock, b"".join(_resp_build.encode_command(c) for c in hello), deadline)
                self._receive(sock, collector, deadline)
                for r in collector.replies:
                    if isinstance(r, _resp.RespServerError):
                        raise r
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()  # the plain socket too, when the TLS handshake failed
            self._drop()
            raise
        return sock

    def _send(self, sock: socket.socket, payload: bytes | bytearray, deadline: float) -> None:
        if not payload:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed before sending")
        sock.settimeout(remaining)
        sock.sendall(payload)

    def _receive(self, sock: socket.socket, decoder: Decoder, deadline: float) -> None:
        buf = self._buf
        start, end = self._start, self._end
        try:
            while True:
                if end > start:
                    start = decoder.feed(buf, start, end)
                    if not decoder.done:  # refuse a reply that can never fit, without waiting for it
                        self._within_limit(decoder.need - start)
                if decoder.done:
                    return
                if start == end:
                    start = end = 0
                if end == len(buf):
                    if start > 0:  # compact: keep the unconsumed tail at the front
                        buf[: end - start] = buf[start:end]
                        end -= start
                        start = 0
                    else:  # one reply larger than the buffer: grow it, up to the limit
                        self._within_limit(len(buf) + 1)
                        buf.extend(bytes(min(len(buf), self._config.max_reply_bytes - len(buf))))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no complete reply before the deadline")
                sock.settimeout(remaining)
                got = sock.recv_into(memoryview(buf)[end:])
                if got == 0:
                    raise ConnectionResetError("Redis closed the connection")
                end += got
        finally:
            # Replies of the next call may already be here (pipelined writers).
            self._start, self._end = start, end

    def _within_limit(self, size: int) -> None:
        if size > self._config.max_reply_bytes:
            raise _resp.RespProtocolError(
                f"a reply of at least {size} bytes, over the {self._config.max_reply_bytes} byte limit "
                "(redis_max_reply_bytes)"
            )

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._start = self._end = 0
        if len(self._buf) > 4 * _INITIAL_BUFFER:  # don't keep a one-off huge buffer
            self._buf = bytearray(_INITIAL_BUFFER)


@dataclass(frozen=True)
class Script:
    """A Lua script run by ``EVALSHA`` (loaded on first ``NOSCRIPT``)."""

    body: bytes
    sha: bytes

    @classmethod
    def load(cls, package: str, name: str) -> Script:
        body = resources.files(package).joinpath(name).read_bytes()
        return cls(body, hashlib.sha1(body).hexdigest().encode())


class RedisClient:
    """The process's Redis connections: a pool of ``RespConnection``s, one per concurrent caller.

    A caller checks a connection out for one round trip (``connection()``, or the helpers
    below) and gives it back; connections are created only when every existing one is busy,
    up to ``max_connections`` (then callers wait, within their deadline). The idle one used
    most recently is handed out first, so a process that never has more than ``k`` callers
    at once holds ``k`` connections. Each one names itself ``name`` (``CLIENT SETNAME``).
    """

    def __init__(
        self, settings: FeatureSettings, *, max_connections: int = MAX_CONNECTIONS, name: str | None = None,
        config: ConnectionConfig | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.settings = settings
        # Password read and TLS context built here, once: a missing secret fails now, clearly.
        self.config = config or ConnectionConfig.from_settings(settings)
        self.timeout_s = settings.timeout_s
        # Project, pid and client number in the name: CLIENT LIST tells replicas and projects
        # apart, and shows a process that holds more than the one client it should.
        self.name = name or f"{CLIENT_NAME}:{settings.project}:{os.getpid()}:{next(_CLIENT_NUMBERS)}"
        self._max = max_connections
        self._idle: list[RespConnection] = []  # a stack: most recently returned last
        self._created = 0
        self._cond = threading.Condition()
        self.address = self.config.address
        # One breaker for every part sharing this client: they reach the same server.
        # Opening drops the idle connections: the probe then dials afresh rather than failing
        # on a socket the outage already broke.
        self.breaker = Breaker.from_settings(f"Redis {self.address}", settings, on_open=self.close)

    @property
    def connections(self) -> int:
        """Connections this client has created (open or reconnecting on demand)."""
        with self._cond:
            return self._created

    @contextlib.contextmanager
    def connection(self, *, timeout_s: float | None = None) -> Iterator[RespConnection]:
        """A connection of this client's for the caller alone until the block ends."""
        with self.breaker.guard():
            conn = self._checkout(time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s))
            try:
                yield conn
            finally:
                self._checkin(conn)

    def call(self, payload: bytes | bytearray, decoder: Decoder, *, timeout_s: float | None = None) -> None:
        """Send ``payload`` on a pooled connection and feed the replies to ``decoder``."""
        with self.breaker.guard():
            deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
            conn = self._checkout(deadline)
            try:
                conn.call(payload, decoder, timeout_s=max(deadline - time.monotonic(), 1e-6))
            finally:
                self._checkin(conn)

    def pipeline(self, commands: Sequence[Sequence[bytes]], *, timeout_s: float | None = None) -> list[object]:
        """Every command in one round trip; replies in order, error replies as ``RespServerError`` values."""
        collector = _resp.ReplyCollector(len(commands))
        self.call(b"".join(_resp_build.encode_command(list(c)) for c in commands), collector, timeout_s=timeout_s)
        return collector.replies

    def command(self, *args: bytes, timeout_s: float | None = None, context: str = "") -> object:
        """One command's reply; an error reply is raised as the feature layer's typed error."""
        return self.check(self.pipeline([args], timeout_s=timeout_s)[0], context)

    def eval_script(
        self, script: Script, keys: Sequence[bytes], args: Sequence[bytes], *,
        timeout_s: float | None = None, context: str = "",
    ) -> object:
        """``EVALSHA`` of ``script``; on ``NOSCRIPT`` (first use on this server, or its script
        cache was flushed) ``SCRIPT LOAD`` and the same ``EVALSHA`` go in one more round trip."""
        evalsha = _resp_build.encode_command([b"EVALSHA", script.sha, str(len(keys)).encode(), *keys, *args])
        with self.breaker.guard():
            deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
            conn = self._checkout(deadline)
            try:
                collector = _resp.ReplyCollector(1)
                conn.call(evalsha, collector, timeout_s=max(deadline - time.monotonic(), 1e-6))
                reply = collector.replies[0]
                if isinstance(reply, _resp.RespServerError) and str(reply).startswith("NOSCRIPT"):
                    load = _resp_build.encode_command([b"SCRIPT", b"LOAD", script.body])
                    collector = _resp.ReplyCollector(2)
                    conn.call(load + evalsha, collector, timeout_s=max(deadline - time.monotonic(), 1e-6))
                    reply = collector.replies[1]
            finally:
                self._checkin(conn)
        return self.check(reply, context)

    def check(self, reply: object, context: str = "") -> object:
        """``reply``, unless it is an error reply: then the typed error it stands for."""
        if isinstance(reply, _resp.RespServerError):
            raise server_error(self.address, reply, context)
        return reply

    def close(self) -> None:
        """Close the idle connections (one in use keeps its socket until it is next closed).

        The client stays usable: a later call reconnects, so closing one part of a backend
        (a reader, say) never breaks the parts still in use; it only costs them a reconnect.
        """
        with self._cond:
            idle = list(self._idle)
        for conn in idle:
            conn.close()  # waits for nobody: an idle connection's lock is free

    def acquire(self, deadline: float) -> RespConnection:
        """A pooled connection for the caller alone until ``release`` (no breaker: the
        cluster client, which holds one per node at once, keeps each node's verdict)."""
        return self._checkout(deadline)

    def release(self, conn: RespConnection) -> None:
        self._checkin(conn)

    # --- the pool ---------------------------------------------------------------

    def _checkout(self, deadline: float) -> RespConnection:
        with self._cond:
            while not self._idle and self._created >= self._max:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OnlineStoreUnavailable(
                        f"Redis {self.address}: all {self._max} connections busy until the deadline "
                        f"(timeout {self.timeout_s:g} s)"
                    )
                self._cond.wait(remaining)
            if self._idle:
                return self._idle.pop()
            # A new connection object only: it connects on its first call, under that call's deadline.
            self._created += 1
        return RespConnection(self.settings, name=self.name, config=self.config)

    def _checkin(self, conn: RespConnection) -> None:
        with self._cond:
            self._idle.append(conn)
            self._cond.notify()
