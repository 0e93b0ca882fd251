"""Velocity state in Redis: one ``EVALSHA`` of ``velocity.lua`` per batch.

The script slides and bumps every merchant's windows inside Redis (atomic, so concurrent
replicas never lose an increment) and returns the new counts; the values it writes are
exactly what ``FeatureStore.push`` writes for them (see ``features.velocity``).
"""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import numpy.typing as npt

from features import catalog
from features.errors import FeatureDataError
from features.settings import FeatureSettings
from features.stores import layout
from features.stores.layout import field_hash, ts_field
from features.stores.redis import _resp, _resp_build
from features.stores.redis.client import RespConnection

VIEW = catalog.VELOCITY
_LUA = resources.files(__package__).joinpath("velocity.lua").read_bytes()
_LUA_SHA = hashlib.sha1(_LUA).hexdigest().encode()


class RedisVelocity:
    def __init__(self, settings: FeatureSettings) -> None:
        self._conn = RespConnection(settings)
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
        args = [b"EVALSHA", _LUA_SHA, str(len(keys)).encode(), *keys, *self._fields,
                str(now_us).encode(), *(str(c).encode() for c in k)]
        evalsha = _resp_build.encode_command(args)
        reply = self._call(evalsha)
        if isinstance(reply, _resp.RespServerError) and str(reply).startswith("NOSCRIPT"):
            # First use on this server (or its script cache was flushed): load, then retry.
            load = _resp_build.encode_command([b"SCRIPT", b"LOAD", _LUA])
            collector = _resp.ReplyCollector(2)
            self._conn.call(load + evalsha, collector)
            reply = collector.replies[1]
        if isinstance(reply, _resp.RespServerError):
            raise FeatureDataError(f"velocity update refused by Redis: {reply}")
        if not isinstance(reply, list) or len(reply) != 2 * len(ids):
            raise FeatureDataError(f"velocity update returned {reply!r:.200}")
        return np.asarray(reply, dtype=np.int64).reshape(len(ids), 2)

    def _call(self, payload: bytearray) -> object:
        collector = _resp.ReplyCollector(1)
        self._conn.call(payload, collector)
        return collector.replies[0]

    def close(self) -> None:
        self._conn.close()
