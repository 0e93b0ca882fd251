"""Bulk writes of Feast's Redis layout: pipelined ``HSET``s built in C.

The ``HSET`` Feast sends per entity and view (``_ts:view`` + every field), with all of an
entity's views in one command when they come aligned, pipelined over one socket. With
``dedup`` (Feast's default) it reads each entity's ``_ts:view`` first and skips rows not
newer than what is stored, as Feast does.

The writer keeps its own ``RespConnection`` instead of the backend's shared
``RedisClient``: it is the materializer, not a replica, it holds the socket for a whole
pipelined run (replies of earlier slices are read while later ones are sent), and its
deadline is a bulk write's, not a read's.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import polars as pl

from features import catalog
from features.settings import FeatureSettings
from features.stores.frames import columns
from features.stores.layout import field_hash, ts_field
from features.stores.redis import _resp, _resp_build
from features.stores.redis.client import CLIENT_NAME, RespConnection
from features.stores.redis.secure import ConnectionConfig

# Entities per Redis buffer (~2.5 MB with every view) and buffers in flight: Redis keeps
# about half a second of queued work, enough to ride out a pause on this side.
_REDIS_SLICE = 5_000
_DEPTH = 2
# Bulk writes may queue a lot of work in Redis: allow it more time than a read.
_WRITE_TIMEOUT_S = 60.0


class RedisWriter:
    """Pipelined HSETs, one per entity carrying every view that has a row for it.

    Up to ``_DEPTH`` slices are in flight, so Redis always has queued work while this
    process reads the next chunk or encodes the next slice. With ``dedup`` the ``_ts``
    stamps of slice ``i + _DEPTH`` are requested right after slice ``i``'s HSETs, and each
    slice is encoded optimistically (every row) before its stamps arrive; it is re-encoded
    only if some rows turn out not to be newer than what Redis holds.
    """

    aligned = True  # one HSET per entity carries all its views: a fifth of the commands

    def __init__(
        self, settings: FeatureSettings, *, dedup: bool = True, config: ConnectionConfig | None = None
    ) -> None:
        self._conn = RespConnection(
            settings, timeout_s=max(settings.timeout_s, _WRITE_TIMEOUT_S), name=f"{CLIENT_NAME}-writer",
            config=config,
        )
        self._suffix = settings.project.encode()
        self._dedup = dedup
        # Decoders of the replies still to come, in the order their commands were sent.
        self._inflight: collections.deque[Any] = collections.deque()

    def write(self, view: catalog.FeatureView, frame: pl.DataFrame, keys: list[bytes]) -> int:
        return self.write_entities([(view, frame)], keys)

    def write_entities(self, views: list[tuple[catalog.FeatureView, pl.DataFrame]], keys: list[bytes]) -> int:
        """Views' rows aligned to ``keys`` (a null ``event_timestamp`` means no row)."""
        specs = []
        for view, frame in views:
            stamp = frame["event_timestamp"]
            present = np.ascontiguousarray(stamp.is_not_null().to_numpy(), dtype=np.uint8)
            event = np.ascontiguousarray(stamp.dt.epoch("us").fill_null(0).to_numpy(), np.int64)
            fields = [field_hash(view.name, f) for f, _ in view.fields]
            specs.append((view, present, event, fields, columns(frame, view.fields)))
        ts_tail = _resp_build.encode_fields([ts_field(v.name) for v, _ in views])
        bounds = [(a, min(a + _REDIS_SLICE, len(keys))) for a in range(0, len(keys), _REDIS_SLICE)]
        stamps: dict[int, tuple[_resp.HmgetDecoder, np.ndarray]] = {}

        def request_stamps(i: int) -> None:
            if not self._dedup or i >= len(bounds):
                return
            a, b = bounds[i]
            stored = np.zeros((b - a, len(views)), dtype=np.int64)
            decoder = _resp.HmgetDecoder(
                np.full(len(views), _resp.KIND_TS_NANOS, dtype=np.int32), np.arange(len(views), dtype=np.int32),
                np.zeros((b - a, 0), np.float32), np.zeros((b - a, 0), np.uint8), stored,
            )
            self._conn.send_only(_resp_build.encode_hmget(keys[a:b], self._suffix, ts_tail, len(views)))
            self._inflight.append(decoder)
            stamps[i] = (decoder, stored)

        def encode(a: int, b: int, masks: list[np.ndarray]) -> tuple[bytearray, int]:
            parts = []
            for (view, _, event, fields, cols), mask in zip(specs, masks, strict=True):
                part = [(c[0], c[1][a:b]) if c[0] == "bytes" else (c[0], c[1][a:b], c[2][a:b]) for c in cols]
                parts.append((np.ascontiguousarray(mask), ts_field(view.name), event[a:b], fields, part))
            return _resp_build.encode_hset_entities(keys[a:b], self._suffix, parts)

        for i in range(min(_DEPTH, len(bounds))):
            request_stamps(i)
        written = 0
        for i, (a, b) in enumerate(bounds):
            masks = [sp[1][a:b] for sp in specs]
            buf, n = encode(a, b, masks)  # while Redis works through earlier slices
            if i in stamps:
                decoder, stored = stamps.pop(i)
                self._await(decoder)
                # Feast's rule, per view: write a row only if newer than the stored _ts:view.
                newer = [
                    m & ((stored[:, j] == 0) | (sp[2][a:b] * 1000 > stored[:, j])).astype(np.uint8)
                    for j, (m, sp) in enumerate(zip(masks, specs, strict=True))
                ]
                if any(not np.array_equal(x, m) for x, m in zip(newer, masks, strict=True)):
                    masks = newer
                    buf, n = encode(a, b, masks)
            if n:
                self._conn.send_only(buf)
                self._inflight.append(_resp.ReplyCounter(n))
            request_stamps(i + _DEPTH)
            self._limit()
            written += sum(int(m.sum()) * len(sp[3]) for m, sp in zip(masks, specs, strict=True))
        return written

    def _await(self, decoder: object) -> None:
        """Read replies in order until ``decoder``'s are in."""
        while self._inflight:
            head = self._inflight.popleft()
            self._conn.receive(head)
            if head is decoder:
                return

    def _limit(self) -> None:
        writes = sum(isinstance(d, _resp.ReplyCounter) for d in self._inflight)
        while writes > _DEPTH:
            head = self._inflight.popleft()
            self._conn.receive(head)
            writes -= isinstance(head, _resp.ReplyCounter)

    def flush(self) -> None:
        """Read every reply still to come (a cluster writer checks each node's share this way)."""
        while self._inflight:
            self._conn.receive(self._inflight.popleft())

    def close(self) -> None:
        try:
            while self._inflight:
                self._conn.receive(self._inflight.popleft())
        finally:
            self._conn.close()
