"""Redis online reads: one round trip per batch over Feast's hash layout.

Feast keeps one hash per entity, keyed by the serialized entity key followed by the
project name; each field is the 4-byte little-endian murmur3 of ``"view:feature"``
and ``_ts:view`` holds the view's event time. A batch is one buffer of HMGETs (one
per distinct merchant, every field the matrix needs, the tag bitset and each view's
timestamp) sent with one ``sendall``; replies are decoded in C straight into the
matrix (``_resp.HmgetDecoder``), on a connection of the backend's shared ``RedisClient``.

On a Redis Cluster the merchants are read in slot order, so each node's share is runs of
consecutive rows: one buffer per node, all sent before any is read (``cluster``); the
key names are Feast's, unchanged (one hash per merchant needs no hash tag).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features import catalog
from features.batch import FeatureBatch, assemble, unique_ids
from features.settings import FeatureSettings
from features.stores import layout
from features.stores.layout import field_hash, ts_field
from features.stores.redis import _resp, _resp_build
from features.stores.redis.cluster import AnyClient, read_rows


class RedisReader:
    def __init__(self, client: AnyClient, settings: FeatureSettings, tag_bytes: int) -> None:
        self._client = client
        self._suffix = settings.project.encode()
        self._tag_bytes = tag_bytes
        self._max_age = settings.max_feature_age_s
        col = {name: i for i, name in enumerate(catalog.MATRIX_COLUMNS)}
        fields: list[bytes] = []
        kinds: list[int] = []
        cols: list[int] = []
        for v in catalog.ALL_VIEWS:
            for f in v.numeric_names:
                fields.append(field_hash(v.name, f))
                kinds.append(_resp.KIND_NUMBER)
                cols.append(col[f])
        fields.append(field_hash(catalog.TAGS.name, "tags"))
        kinds.append(_resp.KIND_TAGS)
        cols.append(0)
        for i, v in enumerate(catalog.ALL_VIEWS):
            fields.append(ts_field(v.name))
            kinds.append(_resp.KIND_TS_SECONDS)
            cols.append(i)
        self._kinds = np.asarray(kinds, dtype=np.int32)
        self._cols = np.asarray(cols, dtype=np.int32)
        self._n_fields = len(fields)
        self._tail = _resp_build.encode_fields(fields)

    def read(self, merchant_ids: Sequence[str]) -> FeatureBatch:
        uniq, inverse = unique_ids(merchant_ids)
        n = len(uniq)
        matrix = np.full((n, len(catalog.MATRIX_COLUMNS)), np.nan, dtype=np.float32)
        tags = np.zeros((n, self._tag_bytes), dtype=np.uint8)
        view_ts = np.zeros((n, len(catalog.ALL_VIEWS)), dtype=np.int64)
        if n:
            def build(keys: list[bytes], rows: slice) -> tuple[bytearray, _resp.HmgetDecoder]:
                payload = _resp_build.encode_hmget(keys, self._suffix, self._tail, self._n_fields)
                return payload, _resp.HmgetDecoder(self._kinds, self._cols, matrix[rows], tags[rows], view_ts[rows])

            inverse = read_rows(self._client, layout.entity_keys(uniq), lambda k: k + self._suffix, build, inverse)
        return assemble(matrix, tags, view_ts, inverse, self._max_age)

    def close(self) -> None:
        self._client.close()
