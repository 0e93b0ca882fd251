"""A replica-local read-through cache in front of an online reader.

Batch features (flow aggregates, profile, bureau, tags) change when a
materialization runs, not per request; re-reading them from the store for every
decision is what dominates a replica's time (a page-cache miss in a 2 GB SQLite
file, or ~20 µs of Redis server time per merchant). This keeps recently read
rows in preallocated numpy arrays for ``ttl_s`` seconds, bounded to
``max_entries`` merchants (oldest slot reused first), and sends only the misses
to the store — still one round trip per batch.

Freshness is unchanged: a cached row keeps the event times it was read with,
so ``FeatureBatch.age_s``/``stale`` report the data's real age; ``ttl_s`` only
bounds how long a replica may keep serving a row after the store changed.
The velocity columns of a cached row are as old as the cache entry: callers
that need them fresh overwrite them from ``VelocityRecorder.record`` (the
scoring engine does), or leave the cache off (``ttl_s = 0``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from features.batch import VIEW_NAMES, FeatureBatch, assemble, unique_ids
from features.stores.base import OnlineReader


class CachedReader:
    def __init__(self, inner: OnlineReader, *, ttl_s: float, max_entries: int) -> None:
        if ttl_s <= 0 or max_entries <= 0:
            raise ValueError("a cache needs ttl_s > 0 and max_entries > 0")
        self._inner = inner
        self._ttl = ttl_s
        self._cap = max_entries
        self._slot: dict[str, int] = {}
        self._owner: list[str | None] = [None] * max_entries
        self._next = 0
        self._matrix: np.ndarray | None = None  # allocated on first read (widths come from it)
        self._tags: np.ndarray | None = None
        self._view_ts = np.zeros((max_entries, len(VIEW_NAMES)), dtype=np.int64)
        self._born = np.zeros(max_entries, dtype=np.float64)
        self._max_age = float("inf")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def read(self, merchant_ids: Sequence[str]) -> FeatureBatch:
        if not merchant_ids:
            return self._inner.read(merchant_ids)
        now = time.monotonic()
        uniq, inverse = unique_ids(merchant_ids)
        n = len(uniq)
        hit_rows: list[int] = []
        hit_slots: list[int] = []
        miss: list[int] = []
        oldest_ok = now - self._ttl
        with self._lock:  # replicas score batches on a few threads
            get = self._slot.get
            born = self._born
            for i, m in enumerate(uniq):
                s = get(m)
                if s is None or born[s] < oldest_ok:
                    miss.append(i)
                else:
                    hit_rows.append(i)
                    hit_slots.append(s)
            if hit_rows:
                assert self._matrix is not None and self._tags is not None
                hm, ht, hv = self._matrix[hit_slots], self._tags[hit_slots], self._view_ts[hit_slots]
        fresh = self._inner.read([uniq[i] for i in miss]) if miss else None
        if fresh is not None:
            self._max_age = fresh.max_age_s
            with self._lock:
                for k, i in enumerate(miss):
                    self._store(uniq[i], fresh, k, now)
        width = fresh.matrix.shape[1] if fresh is not None else hm.shape[1]
        tag_bytes = fresh.tags.shape[1] if fresh is not None else ht.shape[1]
        matrix = np.empty((n, width), dtype=np.float32)
        tags = np.empty((n, tag_bytes), dtype=np.uint8)
        view_ts = np.empty((n, len(VIEW_NAMES)), dtype=np.int64)
        if hit_rows:
            matrix[hit_rows], tags[hit_rows], view_ts[hit_rows] = hm, ht, hv
        if fresh is not None:
            matrix[miss], tags[miss] = fresh.matrix, fresh.tags
            view_ts[miss] = self._view_ts_of(fresh)
        self.hits += len(hit_rows)
        self.misses += len(miss)
        return assemble(matrix, tags, view_ts, inverse, self._max_age)

    @staticmethod
    def _view_ts_of(fresh: FeatureBatch) -> np.ndarray:
        if fresh.view_ts is not None:
            return fresh.view_ts
        # A producer without per-view times: the oldest time stands for every view.
        return np.repeat(np.where(fresh.found, fresh.event_ts, 0)[:, None], len(VIEW_NAMES), axis=1)

    def _store(self, merchant: str, fresh: FeatureBatch, row: int, now: float) -> int:
        if self._matrix is None:
            self._matrix = np.empty((self._cap, fresh.matrix.shape[1]), dtype=np.float32)
            self._tags = np.zeros((self._cap, fresh.tags.shape[1]), dtype=np.uint8)
        assert self._tags is not None
        s = self._slot.get(merchant)
        if s is None:
            s = self._next
            self._next = (self._next + 1) % self._cap
            old = self._owner[s]
            if old is not None:
                del self._slot[old]
            self._owner[s] = merchant
            self._slot[merchant] = s
        self._matrix[s] = fresh.matrix[row]
        self._tags[s] = fresh.tags[row]
        self._view_ts[s] = self._view_ts_of(fresh)[row]
        self._born[s] = now
        return s

    def close(self) -> None:
        self._inner.close()
