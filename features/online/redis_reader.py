"""Redis online reads: one pipeline of HMGETs per batch over Feast's hash layout.

Feast keeps one hash per entity, keyed by the serialized entity key followed by
the project name; each field is the 4-byte little-endian murmur3 of
``"view:feature"`` and ``_ts:view`` holds the view's event time.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import mmh3
import numpy as np
import redis

from features import catalog
from features.errors import FeatureDataError, OnlineStoreUnavailable
from features.online import _codec
from features.online.batch import FeatureBatch
from features.settings import FeatureSettings


def field_hash(view: str, feature: str) -> bytes:
    """Feast's Redis field name for ``view:feature`` (murmur3_32, little-endian)."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


class RedisReader:
    def __init__(self, settings: FeatureSettings, tag_bytes: int) -> None:
        host, port, db = settings.redis_host_port_db()
        self._client = redis.Redis(
            host=host, port=port, db=db,
            socket_timeout=settings.timeout_s, socket_connect_timeout=settings.timeout_s,
        )
        self._suffix = settings.project.encode()
        self._tag_bytes = tag_bytes
        col = {name: i for i, name in enumerate(catalog.MATRIX_COLUMNS)}
        fields: list[bytes] = []
        cols: list[int] = []
        for v in catalog.ALL_VIEWS:
            for f in v.field_names:
                if f in col:
                    fields.append(field_hash(v.name, f))
                    cols.append(col[f])
        self._n_numeric = len(fields)
        self._cols = np.asarray(cols, dtype=np.int32)
        fields.append(field_hash(catalog.TAGS.name, "tags"))
        self._ts_fields = [f"_ts:{v.name}".encode() for v in catalog.ALL_VIEWS]
        self._fields = fields + self._ts_fields
        # Which _ts fields make a merchant "known": every view but velocity.
        self._known_ts = len(catalog.BATCH_VIEWS)

    def read(self, merchant_ids: Sequence[str]) -> FeatureBatch:
        n = len(merchant_ids)
        keys = _codec.entity_keys(catalog.JOIN_KEY, list(merchant_ids))
        try:
            pipe = self._client.pipeline(transaction=False)
            for k in keys:
                pipe.hmget(k + self._suffix, self._fields)
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise OnlineStoreUnavailable(f"Redis online read failed: {exc}") from exc
        nn = self._n_numeric
        matrix = np.empty((n, len(catalog.MATRIX_COLUMNS)), dtype=np.float32)
        values = [v for reply in replies for v in reply[:nn]]
        rows = np.repeat(np.arange(n, dtype=np.int32), nn)
        cols = np.tile(self._cols, n)
        bad = _codec.decode_numbers(values, rows, cols, matrix)
        if bad >= 0:
            raise FeatureDataError(f"undecodable Redis value {values[bad]!r}")
        tags = np.zeros((n, self._tag_bytes), dtype=np.uint8)
        found = np.zeros(n, dtype=bool)
        oldest = np.zeros(n, dtype=np.int64)
        for r, reply in enumerate(replies):
            raw = reply[nn]
            if raw is not None:
                payload = _codec.decode_bytes_value(raw)
                if payload is not None:
                    k = min(len(payload), self._tag_bytes)
                    tags[r, :k] = np.frombuffer(payload, dtype=np.uint8, count=k)
            ts = [_codec.decode_timestamp(t) for t in reply[nn + 1 :]]
            present = [t for t in ts if t > 0]
            found[r] = any(t > 0 for t in ts[: self._known_ts])
            oldest[r] = min(present) if present else 0
        return FeatureBatch(matrix, tags, found, oldest)

    def close(self) -> None:
        self._client.close()
