"""Which replicas a front end is connected to: follows the endpoint source, connects and drops.

The source (the registry actor, or a fixed list in tests and benchmarks) names the
replicas that should exist; every refresh connects to new ones and drops those that
left or whose connection died. ``broadcast`` sends one control operation to every
connected replica and gathers the answers (versions, counters, and later bundle swaps).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from services.errors import BackendUnavailable, CreditAuthError, InternalError
from services.runtime.channel import auth, frames
from services.runtime.channel.connection import Connection
from services.runtime.channel.frames import MAX_FRAME, Op

log = logging.getLogger(__name__)
EndpointSource = Callable[[], Awaitable[list[str]]]
# A replica's answer to a control op: its JSON object, or the error it (or the link) gave.
Answer = dict[str, Any] | CreditAuthError


class Membership:
    def __init__(
        self,
        source: EndpointSource,
        *,
        secret: bytes | None,
        refresh_s: float = 1.0,
        connect_timeout_s: float = 2.0,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self._source = source
        self._secret = secret
        self._refused: set[str] = set()  # replicas whose failed handshake was logged (once each)
        self._refresh_s = refresh_s
        self._connect_timeout = connect_timeout_s
        self._max_frame = max_frame
        self._conns: dict[str, Connection] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def live(self) -> list[Connection]:
        return [c for c in self._conns.values() if c.alive]

    def healthy(self) -> bool:
        return any(c.alive for c in self._conns.values())

    @property
    def known(self) -> bool:
        """Whether any replica was ever registered (tells "none registered" from "all lost")."""
        return bool(self._conns)

    @property
    def replicas(self) -> list[str]:
        return sorted(c.address for c in self.live())

    async def start(self, wait_s: float = 60.0) -> None:
        """Connect to the current replicas, keep following the source; wait for the first one."""
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
            conn = Connection(addr, secret=self._secret, max_frame=self._max_frame)
            try:
                await conn.connect(self._connect_timeout)
            except auth.HandshakeFailed as exc:
                # Tried again on every refresh: say it once, not once a second.
                if addr not in self._refused:
                    self._refused.add(addr)
                    log.warning("not using replica %s: %s", addr, exc)
                continue
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("cannot reach replica %s: %s", addr, exc)
                continue
            self._refused.discard(addr)
            self._conns[addr] = conn
        if self._conns:
            self._ready.set()

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s)

    async def broadcast(
        self, op: int, payload: Mapping[str, Any] | None = None, *, timeout_s: float = 5.0
    ) -> dict[str, Answer]:
        """Send a control op to every live replica at once; each one's answer by address.

        A replica that fails, times out or is lost answers with the error; the others
        are not held up by it (every ask runs at once, each bounded by ``timeout_s``).
        """
        if op in (Op.SCORE, Op.RESULT, Op.ERROR):
            raise ValueError(f"op {op} is not a control operation")
        parts = frames.json_payload(payload or {})
        conns = self.live()
        answers = await asyncio.gather(*(self._ask(c, op, parts, timeout_s) for c in conns))
        return {c.address: a for c, a in zip(conns, answers, strict=True)}

    @staticmethod
    async def _ask(conn: Connection, op: int, parts: list[frames.Part], timeout_s: float) -> Answer:
        try:
            return frames.read_json(await asyncio.wait_for(conn.call(op, parts), timeout_s))
        except CreditAuthError as exc:
            return exc
        except asyncio.TimeoutError:
            return BackendUnavailable(f"replica {conn.address} did not answer op {op} in {timeout_s} s")
        except frames.FrameError as exc:
            return InternalError(f"replica {conn.address}: {exc}")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for c in self._conns.values():
            c.close()
        self._conns.clear()
