"""``RayServeBackend``: batches through a Serve deployment handle (``serving.channel: handle``).

Slower than the direct channel (several milliseconds of CPU per call, see
docs/benchmarks/serving.md) but with nothing of our own between front end and replica;
kept as the reference path and for clusters where replica sockets cannot be reached.
"""

from __future__ import annotations

from services.errors import BackendUnavailable
from services.runtime.seam.app import DEPLOYMENT
from services.scoring import DecisionBatch, RequestBatch
from services.settings import Settings


class RayServeBackend:
    """Sends each batch to the Scorer deployment through a Serve handle."""

    def __init__(self, settings: Settings) -> None:
        from ray import serve

        self._handle = serve.get_deployment_handle(DEPLOYMENT, app_name=settings.ray.app_name)
        self._method = self._handle.score

    async def start(self) -> None:
        """Nothing to open: Serve routes each call to a replica itself."""

    async def score(self, batch: RequestBatch) -> DecisionBatch:
        from ray.exceptions import RayError
        from ray.serve.exceptions import RayServeException

        try:
            result: DecisionBatch = await self._method.remote(batch)
        except (RayError, RayServeException) as exc:
            raise BackendUnavailable(f"scoring replica failed: {exc}") from exc
        return result

    async def versions(self) -> tuple[str, str]:
        result: tuple[str, str] = await self._handle.versions.remote()
        return result

    async def close(self) -> None:
        return None

    def healthy(self) -> bool:
        return True
