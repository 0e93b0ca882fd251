"""Bulk writes of the packed layout: one ``MSET`` per entity, built in C, pipelined.

Each entity's views go in one ``MSET`` (its keys share the entity's hash tag); each value
is the view's packed row, encoded from numpy columns (``_packed_build.encode_mset_entities``).
With ``dedup`` (Feast's default) the stored event times are read first, 8 bytes a key
(``GETRANGE`` of the header), and a row is written only if newer, as Feast does. The
stamps of the next slice are requested before this slice is encoded, so Redis works
while this process encodes. Like ``RedisWriter`` it keeps its own connection: it is the
materializer, holding one socket for a whole pipelined run under a bulk write's deadline.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from features import catalog
from features.settings import FeatureSettings
from features.stores.frames import columns
from features.stores.packed import _packed, _packed_build, layout
from features.stores.redis import _resp
from features.stores.redis.client import CLIENT_NAME, RespConnection
from features.stores.redis.secure import ConnectionConfig

_SLICE = 5_000  # entities per buffer (~7 MB with every view)
_DEPTH = 2  # write buffers in flight
_WRITE_TIMEOUT_S = 60.0
# The event time's bytes in a packed value's header (for GETRANGE, inclusive).
_TS_FIRST, _TS_LAST = layout.HEADER_BYTES - 8, layout.HEADER_BYTES - 1


class _Spec:
    """One view's arrays for a ``write_entities`` call, aligned to its keys."""

    def __init__(self, view: catalog.FeatureView, frame: pl.DataFrame, project: str) -> None:
        stamp = frame["event_timestamp"]
        self.view = view
        self.present = np.ascontiguousarray(stamp.is_not_null().to_numpy(), dtype=np.uint8)
        self.event_us = np.ascontiguousarray(stamp.dt.epoch("us").fill_null(0).to_numpy(), np.int64)
        self.suffix = layout.view_suffix(project, view.name)
        self.schema = layout.catalog_schema_id(view)
        self.cols = columns(frame, view.fields)

    def part(self, a: int, b: int, mask: npt.NDArray[np.uint8]) -> tuple[Any, ...]:
        cols = [(c[0], c[1][a:b]) if c[0] == "bytes" else (c[0], c[1][a:b], c[2][a:b]) for c in self.cols]
        return np.ascontiguousarray(mask), self.suffix, self.schema, self.event_us[a:b], cols


class PackedWriter:
    aligned = True  # one MSET per entity carries all its views

    def __init__(
        self, settings: FeatureSettings, *, dedup: bool = True, config: ConnectionConfig | None = None
    ) -> None:
        self._conn = RespConnection(
            settings, timeout_s=max(settings.timeout_s, _WRITE_TIMEOUT_S), name=f"{CLIENT_NAME}-packed-writer",
            config=config,
        )
        self._project = settings.project
        self._dedup = dedup
        self._inflight: collections.deque[Any] = collections.deque()  # decoders, in send order

    def write(self, view: catalog.FeatureView, frame: pl.DataFrame, keys: list[bytes]) -> int:
        return self.write_entities([(view, frame)], keys)

    def write_entities(self, views: list[tuple[catalog.FeatureView, pl.DataFrame]], keys: list[bytes]) -> int:
        """Views' rows aligned to ``keys`` (a null ``event_timestamp`` means no row)."""
        specs = [_Spec(v, f, self._project) for v, f in views]
        bounds = [(a, min(a + _SLICE, len(keys))) for a in range(0, len(keys), _SLICE)]
        stamps: dict[int, tuple[_packed.StampDecoder, npt.NDArray[np.int64]]] = {}
        written = 0
        if bounds:
            self._request_stamps(stamps, 0, bounds, keys, specs)
        for i, (a, b) in enumerate(bounds):
            self._request_stamps(stamps, i + 1, bounds, keys, specs)  # Redis reads them while we encode
            masks = [sp.present[a:b] for sp in specs]
            if i in stamps:
                decoder, stored = stamps.pop(i)
                self._await(decoder)
                table = stored.reshape(b - a, len(specs))
                # Feast's rule, per view: write a row only if newer than the stored one.
                masks = [m & ((table[:, j] == 0) | (sp.event_us[a:b] > table[:, j])).astype(np.uint8)
                         for j, (m, sp) in enumerate(zip(masks, specs, strict=True))]
            parts = [sp.part(a, b, m) for sp, m in zip(specs, masks, strict=True)]
            buf, n = _packed_build.encode_mset_entities(keys[a:b], parts)
            if n:
                self._conn.send_only(buf)
                self._inflight.append(_resp.ReplyCounter(n))
            self._limit()
            written += sum(int(m.sum()) * len(sp.view.fields) for m, sp in zip(masks, specs, strict=True))
        return written

    def _request_stamps(
        self, stamps: dict[int, Any], i: int, bounds: list[tuple[int, int]], keys: list[bytes], specs: list[_Spec]
    ) -> None:
        if not self._dedup or i >= len(bounds):
            return
        a, b = bounds[i]
        stored = np.zeros((b - a) * len(specs), dtype=np.int64)
        decoder = _packed.StampDecoder(stored)
        self._conn.send_only(_packed_build.encode_getrange(keys[a:b], [sp.suffix for sp in specs], _TS_FIRST, _TS_LAST))
        self._inflight.append(decoder)
        stamps[i] = (decoder, stored)

    def _await(self, decoder: object) -> None:
        """Read replies in order until ``decoder``'s are in (``_limit`` may have read them already)."""
        while self._inflight and not decoder.done:  # type: ignore[attr-defined]
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
