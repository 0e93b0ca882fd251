"""Velocity state in Redis: one ``EVALSHA`` of ``velocity.lua`` per batch.

The script slides and bumps every merchant's windows inside Redis (atomic, so concurrent
replicas never lose an increment) and returns the new counts; the values it writes are
exactly what ``FeatureStore.push`` writes for them (see ``features.velocity``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from features import catalog
from features.errors import FeatureDataError
from features.settings import FeatureSettings
from features.stores import layout
from features.stores.layout import field_hash, ts_field
from features.stores.redis.client import RedisClient, Script

VIEW = catalog.VELOCITY
SCRIPT = Script.load(__package__, "velocity.lua")


class RedisVelocity:
    def __init__(self, client: RedisClient, settings: FeatureSettings) -> None:
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
        args = [*self._fields, str(now_us).encode(), *(str(c).encode() for c in k)]
        reply = self._client.eval_script(SCRIPT, keys, args, context="velocity update")
        if not isinstance(reply, list) or len(reply) != 2 * len(ids):
            raise FeatureDataError(f"velocity update returned {reply!r:.200}")
        return np.asarray(reply, dtype=np.int64).reshape(len(ids), 2)

    def close(self) -> None:
        self._client.close()
