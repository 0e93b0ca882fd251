"""One multiplexed socket to one replica: framing, calls in flight, and failing them all on loss.

Many calls share the connection; each frame carries a call id and the replica may
answer out of order. When the socket closes, breaks, or sends something that is not
a frame, every call still waiting fails with ``ReplicaLost`` at once, so a caller
can retry elsewhere instead of waiting for an answer that cannot come.

With a secret, ``connect`` runs the handshake (``auth.prove``) before the connection
counts as alive: a replica that cannot prove it holds the secret is never sent a batch.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from services.errors import BackendUnavailable, InternalError
from services.runtime.channel import auth, frames
from services.runtime.channel.frames import MAX_FRAME, Op, Part

log = logging.getLogger(__name__)


class ReplicaLost(BackendUnavailable):
    """The connection to a replica ended before it answered (safe to send elsewhere)."""


class Connection:
    def __init__(self, address: str, *, secret: bytes | None, max_frame: int = MAX_FRAME) -> None:
        self.address = address
        self._secret = secret
        # Decisions sent on this connection and not yet answered (the router's load signal).
        self.inflight = 0
        self.alive = False
        self._max_frame = max_frame
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._next = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, timeout_s: float) -> None:
        """Open the socket and, with a secret, pass the handshake, all within ``timeout_s``.

        Raises ``OSError``/``asyncio.TimeoutError`` (unreachable) or ``auth.HandshakeFailed``.
        """
        reader, writer = await asyncio.wait_for(self._open(), timeout_s)
        self._writer = writer
        self.alive = True
        self._reader_task = asyncio.ensure_future(self._read(reader))

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._secret is None:
            return reader, writer
        try:
            await auth.prove(reader, writer, self._secret)
        except BaseException:  # refused, broken or timed out: no half-open socket left behind
            writer.transport.abort()
            raise
        return reader, writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, op, payload = await frames.read_frame(reader, self._max_frame)
                fut = self._pending.pop(call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result((op, payload))
        except frames.FrameError as exc:
            log.warning("closing connection to replica %s: %s", self.address, exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._fail_all()

    def _fail_all(self) -> None:
        self.alive = False
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ReplicaLost(f"replica {self.address} closed the connection"))
        self._pending.clear()
        if self._writer is not None:
            self._writer.close()

    async def call(self, op: int, parts: list[Part]) -> bytes:
        """Send one operation and return its RESULT payload.

        Raises ``ReplicaLost`` if the connection ends first, and the services' error for
        the code of an ERROR answer (``Overloaded`` for a busy replica).
        """
        if not self.alive or self._writer is None:
            raise ReplicaLost(f"replica {self.address} is not connected")
        self._next += 1
        call_id = self._next
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        try:
            out = frames.frame(call_id, op, parts, self._max_frame)
        except frames.FrameError as exc:
            raise InternalError(f"batch too large for the channel to replica {self.address}: {exc}") from exc
        self._pending[call_id] = fut
        try:
            self._writer.writelines(out)
            await self._writer.drain()
            answer, payload = await fut
        except (ConnectionError, OSError) as exc:
            self._fail_all()
            raise ReplicaLost(f"replica {self.address}: {exc}") from exc
        finally:
            self._pending.pop(call_id, None)
        if answer == Op.RESULT:
            return payload
        if answer == Op.ERROR:
            raise frames.error_of(payload)
        raise InternalError(f"replica {self.address} answered op {op} with op {answer}")

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._fail_all()
