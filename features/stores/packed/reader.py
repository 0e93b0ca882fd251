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
from features.stores.redis.cluster import AnyClient, read_rows


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
        if n:
            def build(keys: list[bytes], rows: slice) -> tuple[bytearray, _packed.PackedDecoder]:
                payload = _packed_build.encode_mget(keys, self._suffixes)
                return payload, _packed.PackedDecoder(self._schemas, self._first, self._counts, self._kinds,
                                                      self._cols, matrix[rows], tags[rows], view_ts[rows])

            inverse = read_rows(self._client, feast_layout.entity_keys(uniq), layout.key_prefix, build, inverse)
        return assemble(matrix, tags, view_ts, inverse, self._max_age)

    def close(self) -> None:
        self._client.close()
