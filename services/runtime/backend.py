"""The interface between the front end and whatever scores batches."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from services.scoring import DecisionBatch, RequestBatch, ScoringEngine

if TYPE_CHECKING:
    from services.scoring.swap import SwappableEngine


class ScoringBackend(Protocol):
    """What the front end needs of a backend: open, score batches, say if it can, close."""

    async def start(self) -> None:
        """Open whatever the backend needs (connections, handles); raises when it cannot."""
        ...

    async def score(self, batch: RequestBatch) -> DecisionBatch:
        """Score one batch. Raises ``services.errors.BackendUnavailable`` when no replica can."""
        ...

    async def close(self) -> None: ...

    def healthy(self) -> bool:
        """Whether a batch sent now has somewhere to go (drives the gRPC health status)."""
        ...


class LocalBackend:
    """Scores in this process on a worker thread (the engine releases the GIL in C)."""

    def __init__(self, engine: ScoringEngine | SwappableEngine) -> None:
        self._engine = engine

    async def start(self) -> None:
        """The engine was built before: nothing left to open."""

    async def score(self, batch: RequestBatch) -> DecisionBatch:
        return await asyncio.to_thread(self._engine.score, batch)

    async def close(self) -> None:
        self._engine.close()

    def healthy(self) -> bool:
        return True
