"""Online reads of the packed layout: one ``MGET`` per merchant (its views), one round trip a batch.

A batch is one buffer of ``MGET {entity key}:<project>:<view>...`` commands, one per
distinct merchant, sent with one ``sendall`` on a connection of the backend's shared
``RedisClient``; each reply (one packed value per view) is decoded in C straight into
the same ``FeatureBatch`` arrays the standard reader fills (``_packed.PackedDecoder``).
Redis does one key lookup per view instead of ~100 hash-field lookups per merchant.

On a Redis Cluster a merchant's views share its slot (the key's ``{entity key}`` hash
tag, the layout's own), so each ``MGET`` is valid there; merchants are read in slot order,
one buffer per node, all sent before any is read (``features.stores.redis.cluster``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features import catalog
from features.batch import FeatureBatch, assemble, unique_ids
from features.settings import FeatureSettings
from features.stores import layout as feast_layout
from features.stores.packed import _packed, _packed_build, layout
from features.stores.redis.cluster import AnyClient, ClusterClient
from features.stores.redis.cluster_jobs import ReadJob, reorder_inverse, slot_order


class PackedReader:
    def __init__(self, client: AnyClient, settings: FeatureSettings, tag_bytes: int) -> None:
        self._client = client
        self._tag_bytes = tag_bytes
        self._max_age = settings.max_feature_age_s
        col = {name: i for i, name in enumerate(catalog.MATRIX_COLUMNS)}
        kinds: list[int] = []
        cols: list[int] = []
        first: list[int] = []
        for v in catalog.ALL_VIEWS:
            first.append(len(kinds))
            for f, k in v.fields:
                if k != "bytes":
                    kinds.append(_packed.KIND_NUMBER)
                    cols.append(col[f])
                else:
                    # The tag bitset is the one bytes value the batch keeps; others (velocity's
                    # window state) are read past.
                    kinds.append(_packed.KIND_TAGS if v is catalog.TAGS else _packed.KIND_SKIP)
                    cols.append(0)
        self._schemas = np.asarray([layout.catalog_schema_id(v) for v in catalog.ALL_VIEWS], dtype=np.uint32)
        self._first = np.asarray(first, dtype=np.int32)
        self._counts = np.asarray([len(v.fields) for v in catalog.ALL_VIEWS], dtype=np.int32)
        self._kinds = np.asarray(kinds, dtype=np.int32)
        self._cols = np.asarray(cols, dtype=np.int32)
        self._suffixes = [layout.view_suffix(settings.project, v.name) for v in catalog.ALL_VIEWS]

    def read(self, merchant_ids: Sequence[str]) -> FeatureBatch:
        uniq, inverse = unique_ids(merchant_ids)
        n = len(uniq)
        matrix = np.full((n, len(catalog.MATRIX_COLUMNS)), np.nan, dtype=np.float32)
        tags = np.zeros((n, self._tag_bytes), dtype=np.uint8)
        view_ts = np.zeros((n, len(catalog.ALL_VIEWS)), dtype=np.int64)
        client = self._client
        if n and isinstance(client, ClusterClient):
            inverse = self._read_cluster(client, feast_layout.entity_keys(uniq), (matrix, tags, view_ts), inverse)
        elif n and not isinstance(client, ClusterClient):
            payload = _packed_build.encode_mget(feast_layout.entity_keys(uniq), self._suffixes)
            client.call(payload, self._decoder(matrix, tags, view_ts))
        return assemble(matrix, tags, view_ts, inverse, self._max_age)

    def _decoder(self, matrix: np.ndarray, tags: np.ndarray, view_ts: np.ndarray) -> _packed.PackedDecoder:
        return _packed.PackedDecoder(self._schemas, self._first, self._counts, self._kinds, self._cols,
                                     matrix, tags, view_ts)

    def _read_cluster(
        self, client: ClusterClient, keys: list[bytes], out: tuple[np.ndarray, np.ndarray, np.ndarray],
        inverse: np.ndarray | None,
    ) -> np.ndarray:
        """Rows read in slot order into ``out`` (matrix, tags, view times); returned: the
        inverse that maps the inputs onto them."""
        matrix, tags, view_ts = out
        order, slots = slot_order([layout.key_prefix(k) for k in keys])
        keys = [keys[i] for i in order]

        def build(a: int, b: int) -> tuple[bytearray, _packed.PackedDecoder]:
            payload = _packed_build.encode_mget(keys[a:b], self._suffixes)
            return payload, self._decoder(matrix[a:b], tags[a:b], view_ts[a:b])

        client.run(ReadJob(slots, build))
        return reorder_inverse(order, inverse)

    def close(self) -> None:
        self._client.close()
