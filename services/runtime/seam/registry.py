"""The endpoint registry: a detached actor holding where each replica's channel socket listens."""

from __future__ import annotations

import time
from typing import Any

from services.runtime.channel.membership import EndpointSource
from services.settings import Settings


class _EndpointRegistry:
    """Detached actor: where each replica's direct-channel socket listens.

    Replicas register on start and re-register every few seconds; entries not
    refreshed for ``ttl_s`` are dropped, so a replica that died without saying
    so disappears on its own.
    """

    def __init__(self, ttl_s: float = 10.0) -> None:
        self._ttl = ttl_s
        self._entries: dict[str, tuple[str, float]] = {}

    def register(self, key: str, address: str) -> None:
        self._entries[key] = (address, time.time())

    def unregister(self, key: str) -> None:
        self._entries.pop(key, None)

    def endpoints(self) -> list[str]:
        now = time.time()
        self._entries = {k: v for k, v in self._entries.items() if now - v[1] < self._ttl}
        return sorted({a for a, _ in self._entries.values()})


def registry_actor(settings: Settings) -> Any:
    """A handle on this app's registry, created on first use (one per app and namespace)."""
    import ray

    actor: Any = ray.remote(num_cpus=0)(_EndpointRegistry)
    return actor.options(
        name=f"{settings.ray.app_name}-endpoints",
        namespace=settings.ray.namespace,
        lifetime="detached",
        get_if_exists=True,
    ).remote()


def endpoint_source(settings: Settings) -> EndpointSource:
    """The replicas registered for this app, as the direct channel's membership follows them."""
    registry = registry_actor(settings)

    async def endpoints() -> list[str]:
        result: list[str] = await registry.endpoints.remote()
        return result

    return endpoints
