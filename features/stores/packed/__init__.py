"""The packed Redis layout: one value per merchant and feature view (``layout``).

``PackedBackend`` is the Redis backend with the packed layout for the feature views:
its own reader, writer, velocity state, Feast store section and cleanup; the parts
that are not feature rows (idempotency records, operator controls, server statistics,
the shared connection pool and credentials) are the Redis backend's, inherited.
Chosen with ``online_store: redis`` and ``redis_layout: packed`` in the settings; Feast
reads and writes the same layout through ``feast_store.PackedRedisOnlineStore``.
"""

from __future__ import annotations

from typing import Any

from features.stores.base import OnlineReader, Writer
from features.stores.redis import RedisBackend
from features.tags import TagCatalog
from features.velocity import VelocityRecorder


class PackedBackend(RedisBackend):
    def reader(self, tag_bytes: int | None = None) -> OnlineReader:
        from features.stores.packed.reader import PackedReader

        if tag_bytes is None:
            tag_bytes = TagCatalog.load(self.settings).n_bytes
        return PackedReader(self.client, self.settings, tag_bytes)

    def writer(self, *, dedup: bool = True) -> Writer:
        from features.stores.packed.writer import PackedWriter

        if self.settings.redis_cluster:
            from features.stores.packed.layout import key_prefix
            from features.stores.redis.cluster import ClusterClient
            from features.stores.redis.cluster_writer import ClusterWriter

            client = self.client
            assert isinstance(client, ClusterClient)
            return ClusterWriter(client, lambda c: PackedWriter(self.settings, dedup=dedup, config=c), key_prefix)
        return PackedWriter(self.settings, dedup=dedup, config=self.connection_config)

    def velocity(self) -> VelocityRecorder:
        from features.stores.packed.velocity import PackedVelocity

        return VelocityRecorder(PackedVelocity(self.client, self.settings))

    def feast_online_store(self, *, reveal: bool = False) -> dict[str, Any]:
        """Feast's section: the packed store's class path, with the standard Redis store's
        connection string (credentials as placeholders unless ``reveal``, TLS options)."""
        from features.stores.packed.feast_store import CLASS_PATH

        section = super().feast_online_store(reveal=reveal)
        return {**section, "type": CLASS_PATH}

    def drop_project(self) -> None:
        from features.stores.packed.admin import drop_packed

        super().drop_project()  # the project's own keys (idempotency, controls), any standard rows
        drop_packed(self.client, self.settings.project)
