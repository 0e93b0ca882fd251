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
from features.stores.redis.cluster import AnyClient, ClusterClient
from features.stores.redis.cluster_jobs import ReadJob, reorder_inverse, slot_order


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
        client = self._client
        if n and isinstance(client, ClusterClient):
            inverse = self._read_cluster(client, layout.entity_keys(uniq), (matrix, tags, view_ts), inverse)
        elif n and not isinstance(client, ClusterClient):
            keys = layout.entity_keys(uniq)
            payload = _resp_build.encode_hmget(keys, self._suffix, self._tail, self._n_fields)
            decoder = _resp.HmgetDecoder(self._kinds, self._cols, matrix, tags, view_ts)
            client.call(payload, decoder)
        return assemble(matrix, tags, view_ts, inverse, self._max_age)

    def _read_cluster(
        self, client: ClusterClient, keys: list[bytes], out: tuple[np.ndarray, np.ndarray, np.ndarray],
        inverse: np.ndarray | None,
    ) -> np.ndarray:
        """Rows read in slot order into ``out`` (matrix, tags, view times); returned: the
        inverse that maps the inputs onto them."""
        matrix, tags, view_ts = out
        order, slots = slot_order([k + self._suffix for k in keys])
        keys = [keys[i] for i in order]

        def build(a: int, b: int) -> tuple[bytearray, _resp.HmgetDecoder]:
            payload = _resp_build.encode_hmget(keys[a:b], self._suffix, self._tail, self._n_fields)
            return payload, _resp.HmgetDecoder(self._kinds, self._cols, matrix[a:b], tags[a:b], view_ts[a:b])

        client.run(ReadJob(slots, build))
        return reorder_inverse(order, inverse)

    def close(self) -> None:
        self._client.close()
