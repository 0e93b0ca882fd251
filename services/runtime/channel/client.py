"""Front-end side of the direct channel: a ``ScoringBackend`` over sockets to every replica.

Composed of three parts: ``Membership`` keeps one ``Connection`` per registered replica,
``Router`` picks one per batch (least loaded of two, one retry elsewhere, deadline-bound),
and ``frames`` turns batches into frames and back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from services.errors import InternalError
from services.runtime.channel import frames
from services.runtime.channel.frames import MAX_FRAME, Op
from services.runtime.channel.membership import Answer, EndpointSource, Membership
from services.runtime.channel.router import Router
from services.scoring import DecisionBatch, RequestBatch

__all__ = ["DirectBackend", "EndpointSource", "static_endpoints"]


class DirectBackend:
    """A ``ScoringBackend`` that speaks the direct channel to registered replicas.

    ``secret``: the channel key every connection proves (``auth.resolve_secret``); ``None``
    only where the replicas run plaintext too.
    """

    def __init__(
        self,
        endpoints: EndpointSource,
        *,
        secret: bytes | None,
        refresh_s: float = 1.0,
        connect_timeout_s: float = 2.0,
        default_timeout_s: float = 10.0,
        max_frame: int = MAX_FRAME,
        rng: random.Random | None = None,
    ) -> None:
        self.membership = Membership(
            endpoints, secret=secret, refresh_s=refresh_s, connect_timeout_s=connect_timeout_s, max_frame=max_frame
        )
        self._router = Router(self.membership, rng)
        self._default_timeout = default_timeout_s

    async def start(self, wait_s: float = 60.0) -> None:
        """Connect to the current replicas and keep following the registry."""
        await self.membership.start(wait_s)

    def healthy(self) -> bool:
        return self.membership.healthy()

    @property
    def replicas(self) -> list[str]:
        return self.membership.replicas

    @property
    def retries(self) -> int:
        return self._router.retries

    async def refresh(self) -> None:
        await self.membership.refresh()

    async def score(self, batch: RequestBatch) -> DecisionBatch:
        parts = frames.encode(batch)
        payload = await self._router.call(Op.SCORE, parts, weight=len(batch), deadline=self._deadline(batch))
        try:
            resp, _ = frames.decode(DecisionBatch, memoryview(payload))
        except frames.FrameError as exc:
            raise InternalError(f"undecodable answer from a replica: {exc}") from exc
        return resp

    def _deadline(self, batch: RequestBatch) -> float:
        # The batch waits as long as its most patient request; none set: the default.
        finite = batch.deadline[np.isfinite(batch.deadline)]
        return float(finite.max()) if finite.size else time.time() + self._default_timeout

    async def broadcast(
        self, op: int, payload: Mapping[str, Any] | None = None, *, timeout_s: float = 5.0
    ) -> dict[str, Answer]:
        """One control op to every connected replica; the answers by replica address."""
        return await self.membership.broadcast(op, payload, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.membership.close()


def static_endpoints(addresses: list[str]) -> EndpointSource:
    """A fixed endpoint list (read on each refresh, so appending to it adds a replica)."""

    async def source() -> list[str]:
        return list(addresses)

    return source
