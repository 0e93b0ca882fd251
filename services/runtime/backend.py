"""The interface between the front end and whatever scores batches."""

from __future__ import annotations

import asyncio
from typing import Protocol

from services.scoring import RequestBatch, ResponseBatch, ScoringEngine


class ScoringBackend(Protocol):
    async def score(self, batch: RequestBatch) -> ResponseBatch:
        """Score one batch. Raises ``services.errors.BackendUnavailable`` when no replica can."""
        ...

    async def close(self) -> None: ...

    def healthy(self) -> bool:
        """Whether a batch sent now has somewhere to go (drives the gRPC health status)."""
        ...


class LocalBackend:
    """Scores in this process on a worker thread (the engine releases the GIL in C)."""

    def __init__(self, engine: ScoringEngine) -> None:
        self._engine = engine

    async def score(self, batch: RequestBatch) -> ResponseBatch:
        return await asyncio.to_thread(self._engine.score, batch)

    async def close(self) -> None:
        self._engine.close()

    def healthy(self) -> bool:
        return True
