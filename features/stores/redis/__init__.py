"""The production store: Feast's Redis online store, with velocity and idempotency beside it.

One ``RedisBackend`` holds one ``RedisClient`` (created on first use), and every runtime
part it builds (reader, velocity state, idempotency store, controls, exposure counters, admin helpers) shares it: a
process holds one pool of connections, sized by its concurrent callers. The bulk writer
alone opens its own connection (see ``writer``), with the same credentials and TLS
context: the password is read once per backend, when its first client is built.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from features.exposure import ExposureState
from features.settings import FeatureSettings
from features.stores.base import ControlStore, OnlineReader, StoreKind, Writer
from features.stores.idempotency import IdempotencyStore, NoIdempotency
from features.tags import TagCatalog
from features.velocity import VelocityRecorder

if TYPE_CHECKING:
    from features.stores.redis.cluster import AnyClient
    from features.stores.redis.secure import ConnectionConfig


class RedisBackend:
    kind: StoreKind = "redis"

    def __init__(self, settings: FeatureSettings) -> None:
        self.settings = settings
        self._client: AnyClient | None = None
        self._config: ConnectionConfig | None = None
        self._lock = threading.Lock()

    @property
    def connection_config(self) -> ConnectionConfig:
        """Credentials and TLS of this backend's connections (files read on first use)."""
        with self._lock:
            return self._connection_config()

    def _connection_config(self) -> ConnectionConfig:
        if self._config is None:
            from features.stores.redis.secure import ConnectionConfig

            self._config = ConnectionConfig.from_settings(self.settings)
        return self._config

    @property
    def client(self) -> AnyClient:
        """The connection pool this backend's parts share (created on first use; connects lazily).
        With ``redis_cluster`` a ``ClusterClient`` (a pool per node), which the parts route by slot."""
        with self._lock:
            if self._client is None:
                if self.settings.redis_cluster:
                    from features.stores.redis.cluster import ClusterClient

                    # The parts take either; they branch on ClusterClient where routing matters.
                    self._client = ClusterClient(self.settings, config=self._connection_config())
                else:
                    from features.stores.redis.client import RedisClient

                    self._client = RedisClient(self.settings, config=self._connection_config())
            return self._client

    def reader(self, tag_bytes: int | None = None) -> OnlineReader:
        from features.stores.redis.reader import RedisReader

        if tag_bytes is None:
            tag_bytes = TagCatalog.load(self.settings).n_bytes
        return RedisReader(self.client, self.settings, tag_bytes)

    def writer(self, *, dedup: bool = True) -> Writer:
        from features.stores.redis.writer import RedisWriter

        if self.settings.redis_cluster:
            from features.stores.redis.cluster import ClusterClient
            from features.stores.redis.cluster_writer import ClusterWriter

            client = self.client
            assert isinstance(client, ClusterClient)
            suffix = self.settings.project.encode()
            return ClusterWriter(client, lambda c: RedisWriter(self.settings, dedup=dedup, config=c),
                                 lambda k: k + suffix)
        return RedisWriter(self.settings, dedup=dedup, config=self.connection_config)

    def velocity(self) -> VelocityRecorder:
        from features.stores.redis.velocity import RedisVelocity

        return VelocityRecorder(RedisVelocity(self.client, self.settings))

    def idempotency(self, window_s: float, namespace: str = "") -> IdempotencyStore:
        from features.stores.redis.idempotency import RedisIdempotency

        if window_s <= 0:
            return NoIdempotency()
        return RedisIdempotency(self.client, self.settings, window_s, namespace)

    def controls(self) -> ControlStore:
        from features.stores.redis.controls import RedisControls

        return RedisControls(self.client, self.settings)

    def exposure(self) -> ExposureState:
        from features.stores.redis.exposure import RedisExposure

        return RedisExposure(self.client, self.settings)

    def feast_online_store(self, *, reveal: bool = False) -> dict[str, Any]:
        """Feast's section: the password as the ``${CREDITAUTH_REDIS_PASSWORD}`` placeholder
        (for the ``feast`` CLI, run with that variable set) unless ``reveal``; TLS options as
        redis-py takes them."""
        from features.stores.redis.secure import feast_online_store

        return feast_online_store(self.settings, reveal=reveal)

    def server_cpu_s(self) -> float:
        from features.stores.redis.admin import server_cpu_s

        return server_cpu_s(self.client)

    def server_memory_bytes(self) -> int:
        from features.stores.redis.admin import server_memory_bytes

        return server_memory_bytes(self.client)

    def drop_project(self) -> None:
        from features.stores.redis.admin import drop_project

        drop_project(self.client, self.settings.project)
