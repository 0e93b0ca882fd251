"""The replica-local feature cache returns exactly what the store returns, within its TTL and size."""

from __future__ import annotations

import time

import numpy as np

from features.cache import CachedReader
from features.stores import open_backend
from tests.conftest import World, feature_settings


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert np.array_equal(a.matrix, b.matrix, equal_nan=True)
    assert np.array_equal(a.tags, b.tags)
    assert np.array_equal(a.found, b.found)
    assert np.array_equal(a.event_ts, b.event_ts)


def test_hits_equal_store_reads_and_respect_ttl_and_size(world: World) -> None:
    store = open_backend(feature_settings(world)).reader()
    cached = CachedReader(open_backend(feature_settings(world)).reader(), ttl_s=0.5, max_entries=50)
    ids = [f"M{i:08d}" for i in range(0, 60, 2)] + ["UNKNOWN-1", "M00000004"]
    _same(cached.read(ids), store.read(ids))
    assert cached.misses == len(set(ids)) and cached.hits == 0
    _same(cached.read(ids), store.read(ids))  # all from memory now, same answers
    assert cached.hits == len(set(ids))
    mixed = ids[:5] + [f"M{i:08d}" for i in range(1000, 1030)]
    _same(cached.read(mixed), store.read(mixed))
    # Bounded: 50 slots, so the oldest entries were reused.
    assert len(cached._slot) <= 50
    time.sleep(0.6)
    before = cached.misses
    _same(cached.read(ids[:3]), store.read(ids[:3]))
    assert cached.misses == before + 3  # expired entries are read again
    assert len(cached.read([])) == 0
    cached.close()
    store.close()
