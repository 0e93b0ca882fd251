"""Velocity state in Redis: one ``EVALSHA`` of ``velocity.lua`` per batch.

The script slides and bumps every merchant's windows inside Redis (atomic, so concurrent
replicas never lose an increment) and returns the new counts; the values it writes are
exactly what ``FeatureStore.push`` writes for them (see ``features.velocity``).

On a Redis Cluster the same script runs once per slot of the batch's merchants (a
script's keys must share a slot; each merchant is one hash, Feast's key unchanged), all
pipelined per node; it is not retried once it may have run, so nothing counts twice.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from features import catalog
from features.errors import FeatureDataError
from features.settings import FeatureSettings
from features.stores import layout
from features.stores.layout import field_hash, ts_field
from features.stores.redis.client import Script
from features.stores.redis.cluster import AnyClient, ClusterClient

VIEW = catalog.VELOCITY
SCRIPT = Script.load(__package__, "velocity.lua")


class RedisVelocity:
    def __init__(self, client: AnyClient, settings: FeatureSettings) -> None:
        self._client = client
        self._project = settings.project
        names = dict(zip(VIEW.field_names, range(3), strict=True))
        assert list(names) == ["apps_1h", "apps_24h", "window_state"], "velocity view changed"
        self._fields = [
            ts_field(VIEW.name),
            field_hash(VIEW.name, "apps_1h"),
            field_hash(VIEW.name, "apps_24h"),
            field_hash(VIEW.name, "window_state"),
        ]

    def record(self, ids: list[str], k: list[int], now_us: int) -> npt.NDArray[np.int64]:
        keys = [layout.redis_key(k, self._project) for k in layout.entity_keys(ids)]
        shared = [*self._fields, str(now_us).encode()]
        counts = [str(c).encode() for c in k]
        if isinstance(self._client, ClusterClient):
            return grouped_counts(self._client, SCRIPT, keys, shared, counts)
        reply = self._client.eval_script(SCRIPT, keys, [*shared, *counts], context="velocity update")
        if not isinstance(reply, list) or len(reply) != 2 * len(ids):
            raise FeatureDataError(f"velocity update returned {reply!r:.200}")
        return np.asarray(reply, dtype=np.int64).reshape(len(ids), 2)

    def close(self) -> None:
        self._client.close()


def grouped_counts(
    client: ClusterClient, script: Script, keys: list[bytes], shared: list[bytes], counts: list[bytes]
) -> npt.NDArray[np.int64]:
    """The velocity script once per slot (cluster): the new (1 h, 24 h) counts per key, in order."""
    out = np.zeros((len(keys), 2), dtype=np.int64)
    for rows, reply in client.eval_grouped(script, keys, shared, counts, context="velocity update"):
        if not isinstance(reply, list) or len(reply) != 2 * len(rows):
            raise FeatureDataError(f"velocity update returned {reply!r:.200}")
        out[rows] = np.asarray(reply, dtype=np.int64).reshape(len(rows), 2)
    return out
