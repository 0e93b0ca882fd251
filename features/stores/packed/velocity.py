"""Velocity state in the packed layout: one ``EVALSHA`` of ``velocity.lua`` per batch.

The same window arithmetic as ``features.stores.redis.velocity`` (atomic in Redis, new
counts returned), reading and writing each merchant's one packed ``merchant_velocity``
value, byte for byte what ``FeatureStore.push`` writes through the packed Feast store.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from features import catalog
from features.errors import FeatureDataError
from features.settings import FeatureSettings
from features.stores import layout as feast_layout
from features.stores.packed import layout
from features.stores.redis.client import Script
from features.stores.redis.cluster import AnyClient, ClusterClient
from features.stores.redis.velocity import grouped_counts

VIEW = catalog.VELOCITY
SCRIPT = Script.load(__package__, "velocity.lua")


class PackedVelocity:
    def __init__(self, client: AnyClient, settings: FeatureSettings) -> None:
        assert VIEW.field_names == ("apps_1h", "apps_24h", "window_state"), "velocity view changed: see velocity.lua"
        self._client = client
        self._project = settings.project
        self._schema = str(layout.catalog_schema_id(VIEW)).encode()

    def record(self, ids: list[str], k: list[int], now_us: int) -> npt.NDArray[np.int64]:
        keys = [layout.key(e, self._project, VIEW.name) for e in feast_layout.entity_keys(ids)]
        shared = [self._schema, str(now_us).encode()]
        counts = [str(c).encode() for c in k]
        if isinstance(self._client, ClusterClient):  # one call per slot (each key's tag is its merchant)
            return grouped_counts(self._client, SCRIPT, keys, shared, counts)
        reply = self._client.eval_script(SCRIPT, keys, [*shared, *counts], context="velocity update")
        if not isinstance(reply, list) or len(reply) != 2 * len(ids):
            raise FeatureDataError(f"velocity update returned {reply!r:.200}")
        return np.asarray(reply, dtype=np.int64).reshape(len(ids), 2)

    def close(self) -> None:
        self._client.close()
