"""A minimal Redis connection: one socket, whole batches per round trip, bounded time.

Every call has a deadline (``FeatureSettings.timeout_s`` from its start): connecting,
authenticating, sending and receiving all share it, so a dead host, a closed port or
a server that accepts and never answers becomes ``OnlineStoreUnavailable`` within the
configured time, never a hang. After any failure the socket is dropped (its stream
position is unknown) and the next call reconnects.

The byte-level work (building the batch, decoding replies into arrays) is in the
compiled ``_resp`` module; this class only moves bytes.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from typing import Protocol
from urllib.parse import unquote, urlparse

from features.errors import FeatureConfigError, FeatureDataError, OnlineStoreUnavailable
from features.settings import FeatureSettings
from features.stores.redis import _resp, _resp_build

_INITIAL_BUFFER = 1 << 20
# Server errors that mean "not now" rather than "bad data".
_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOAUTH", "READONLY")


class Decoder(Protocol):
    @property
    def done(self) -> bool: ...

    def feed(self, buf: bytearray, start: int, end: int) -> int: ...


class RespConnection:
    """One Redis connection used by one caller at a time (a lock makes that so)."""

    def __init__(self, settings: FeatureSettings, *, timeout_s: float | None = None) -> None:
        u = urlparse(settings.redis_url)
        self._host, self._port, self._db = settings.redis_host_port_db()
        self._user = unquote(u.username) if u.username else None
        self._password = unquote(u.password) if u.password else None
        self._tls = u.scheme == "rediss"
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
            msg = str(exc)
            code = msg.split(" ", 1)[0]
            if code in _TRANSIENT:
                return OnlineStoreUnavailable(f"Redis {self.address}: {msg}")
            if code in ("WRONGPASS", "NOPERM"):
                return FeatureConfigError(f"Redis {self.address} rejected the credentials: {msg}")
            return FeatureDataError(f"Redis {self.address} refused a command: {msg}")
        if isinstance(exc, _resp.RespValueError):
            return FeatureDataError(f"Redis {self.address}: {exc}")
        if isinstance(exc, OSError | _resp.RespProtocolError):
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
            if self._tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
            self._sock = sock
            self._start = self._end = 0
            hello: list[list[bytes]] = []
            if self._password is not None:
                auth = [b"AUTH", self._password.encode()]
                if self._user:
                    auth.insert(1, self._user.encode())
                hello.append(auth)
            if self._db:
                hello.append([b"SELECT", str(self._db).encode()])
            if hello:
                collector = _resp.ReplyCollector(len(hello))
                self._send(sock, b"".join(_resp_build.encode_command(c) for c in hello), deadline)
                self._receive(sock, collector, deadline)
                for r in collector.replies:
                    if isinstance(r, _resp.RespServerError):
                        raise r
        except BaseException:
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
                if decoder.done:
                    return
                if start == end:
                    start = end = 0
                elif end == len(buf):
                    if start > 0:  # compact: keep the unconsumed tail at the front
                        buf[: end - start] = buf[start:end]
                        end -= start
                        start = 0
                    else:  # one reply larger than the buffer: grow it
                        buf.extend(bytes(len(buf)))
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

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._start = self._end = 0
        if len(self._buf) > 4 * _INITIAL_BUFFER:  # don't keep a one-off huge buffer
            self._buf = bytearray(_INITIAL_BUFFER)
