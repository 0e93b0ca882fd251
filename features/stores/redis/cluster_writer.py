"""Bulk writes to a Redis Cluster: each node's share of a chunk through that layout's writer.

The layouts' writers (``RedisWriter``, ``PackedWriter``) pipeline over one connection; on a
cluster one of them runs per master, on the rows whose slots that master serves (a
merchant's keys share one slot in both layouts: one hash, or the ``{entity key}`` tag). A
node's replies are all read before the next chunk, so a redirect or a failover shows up in
the chunk that met it, which is then written again by the refreshed map: writes carry
their event times and, with ``dedup``, rows already stored are skipped, so a second pass
changes nothing the first one wrote.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import numpy as np
import polars as pl

from features import catalog
from features.errors import OnlineStoreUnavailable
from features.stores.redis.cluster import Addr, ClusterClient
from features.stores.redis.cluster_jobs import key_slots
from features.stores.redis.secure import ConnectionConfig

_ATTEMPTS = 4
_MAP_TIMEOUT_S = 10.0


class NodeWriter(Protocol):
    def write_entities(self, views: list[tuple[catalog.FeatureView, pl.DataFrame]], keys: list[bytes]) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class ClusterWriter:
    aligned = True

    def __init__(self, client: ClusterClient, make: Callable[[ConnectionConfig], NodeWriter],
                 slot_key: Callable[[bytes], bytes]) -> None:
        self._client = client
        self._make = make
        self._slot_key = slot_key  # entity key -> the part of its Redis key that picks the slot
        self._writers: dict[Addr, NodeWriter] = {}

    def write(self, view: catalog.FeatureView, frame: pl.DataFrame, keys: list[bytes]) -> int:
        return self.write_entities([(view, frame)], keys)

    def write_entities(self, views: list[tuple[catalog.FeatureView, pl.DataFrame]], keys: list[bytes]) -> int:
        slots = key_slots([self._slot_key(k) for k in keys])
        last: OnlineStoreUnavailable | None = None
        for _ in range(_ATTEMPTS):
            smap = self._client.slot_map(time.monotonic() + _MAP_TIMEOUT_S)
            owner = smap.owner[slots]
            try:
                return sum(self._write_node(smap.addrs[int(o)], np.flatnonzero(owner == o), views, keys)
                           for o in np.unique(owner))
            except OnlineStoreUnavailable as exc:  # a redirect or a failover: again, by a fresh map
                last = exc
                self._client.mark_stale()
        assert last is not None
        raise last

    def _write_node(self, addr: Addr, rows: np.ndarray, views: list[tuple[catalog.FeatureView, pl.DataFrame]],
                    keys: list[bytes]) -> int:
        if addr not in self._writers:
            self._writers[addr] = self._make(replace(self._client.config, host=addr[0], port=addr[1]))
        writer = self._writers[addr]
        try:
            n = writer.write_entities([(v, f[rows]) for v, f in views], [keys[i] for i in rows])
            writer.flush()
        except OnlineStoreUnavailable:
            self._writers.pop(addr)
            with contextlib.suppress(Exception):
                writer.close()
            raise
        return n

    def close(self) -> None:
        writers, self._writers = list(self._writers.values()), {}
        for w in writers:
            w.close()
