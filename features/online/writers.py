"""Writers of Feast's online-store layout, one feature view chunk at a time.

Both produce exactly what Feast's own ``online_write_batch`` produces for the same
rows (tests compare the stores byte for byte), with the per-value work in C:

- ``SqliteWriter``: Feast's upsert statement through the sqlite3 C API, rows in
  primary-key order so consecutive inserts touch the same B-tree pages.
- ``RedisWriter``: the ``HSET`` Feast sends per entity and view (``_ts:view`` + every
  field), with all of an entity's views in one command when they come aligned, built in
  C and pipelined over one socket. With ``dedup`` (Feast's default) it reads each
  entity's ``_ts:view`` first and skips rows not newer than what is stored, as Feast does.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from features import catalog
from features.errors import FeatureConfigError, OnlineStoreUnavailable
from features.online import _codec, _resp, _resp_build, _sqlite, _sqlite_write
from features.online.redis_reader import field_hash, ts_field
from features.online.resp import RespConnection
from features.settings import FeatureSettings

# Entities per Redis buffer (~2.5 MB with every view) and buffers in flight: Redis keeps
# about half a second of queued work, enough to ride out a pause on this side.
_REDIS_SLICE = 5_000
_DEPTH = 2
# Bulk writes may queue a lot of work in Redis: allow it more time than a read.
_WRITE_TIMEOUT_S = 60.0


class Writer(Protocol):
    def write(self, view: catalog.FeatureView, frame: pl.DataFrame, keys: list[bytes]) -> int: ...

    def close(self) -> None: ...


def open_writer(settings: FeatureSettings, *, dedup: bool = True) -> Writer:
    if settings.online_store == "redis":
        return RedisWriter(settings, dedup=dedup)
    if _sqlite.AVAILABLE:
        return SqliteWriter(settings)
    return PySqliteWriter(settings)


def columns(frame: pl.DataFrame, fields: tuple[tuple[str, catalog.ValueKind], ...]) -> list[tuple[Any, ...]]:
    """The column specs the C encoders take: values plus a validity mask (nulls -> null Values)."""
    out: list[tuple[Any, ...]] = []
    for name, kind in fields:
        col = frame[name]
        if kind == "bytes":
            out.append(("bytes", col.to_list()))
            continue
        valid = np.ascontiguousarray(col.is_not_null().to_numpy(), dtype=np.uint8)
        if kind == "float32":
            values = np.ascontiguousarray(col.fill_null(0.0).to_numpy(), dtype=np.float32)
        else:
            values = np.ascontiguousarray(col.fill_null(0).to_numpy(), dtype=np.int64)
        out.append((kind, values, valid))
    return out


def epoch_us(col: pl.Series) -> npt.NDArray[np.int64]:
    out: npt.NDArray[np.int64] = np.ascontiguousarray(col.dt.epoch("us").to_numpy(), dtype=np.int64)
    return out


class SqliteWriter:
    def __init__(self, settings: FeatureSettings) -> None:
        path = settings.sqlite_path
        if not path.exists():
            raise FeatureConfigError(f"{path} missing: run `creditauth features apply` first")
        try:
            self._db = _sqlite.Database(str(path.resolve()), readonly=False, busy_timeout_ms=30_000)
            # WAL lets scoring replicas keep reading while a materialization writes.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-262144")  # 256 MiB: the indexes stay hot
        except _sqlite.SqliteError as exc:
            raise OnlineStoreUnavailable(f"cannot open {path} for writing: {exc}") from exc
        self._project = settings.project
        self._path = path
        self._upserts: dict[str, Any] = {}
        self._deferred: list[str] = []  # CREATE INDEX statements to run at close

    def _defer_secondary_indexes(self, table: str) -> None:
        """On an empty table, drop Feast's ``<table>_ek`` index for the load and rebuild it at
        ``close`` (a sort, far cheaper than a B-tree insert per row). Readers lose nothing
        meanwhile: the primary-key index leads with ``entity_key`` too. Should the process
        die before ``close``, ``feast apply`` (``CREATE INDEX IF NOT EXISTS``) restores it."""
        conn = sqlite3.connect(self._path, timeout=30)
        try:
            if conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone() is not None:
                return
            rows = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                [table],
            ).fetchall()
            for name, sql in rows:
                conn.execute(f'DROP INDEX "{name}"')
                self._deferred.append(sql)
            conn.commit()
        finally:
            conn.close()

    def write(self, view: catalog.FeatureView, frame: pl.DataFrame, keys: list[bytes]) -> int:
        table = f"{self._project}_{view.name}"
        upsert = self._upserts.get(table)
        if upsert is None:
            self._defer_secondary_indexes(table)
            upsert = self._upserts[table] = _sqlite_write.UpsertWriter(self._db, table)
        fields = tuple(sorted(view.fields))
        event = epoch_us(frame["event_timestamp"]) // 1_000_000
        if "created_timestamp" in frame.columns:
            created_us = frame["created_timestamp"].dt.epoch("us")
            created = np.ascontiguousarray(created_us.fill_null(0).to_numpy(), dtype=np.int64) // 1_000_000
            has_created = np.ascontiguousarray(created_us.is_not_null().to_numpy(), dtype=np.uint8)
        else:
            created = np.zeros(frame.height, dtype=np.int64)
            has_created = np.zeros(frame.height, dtype=np.uint8)
        # Row-major in primary-key order (entity_key, feature_name).
        order = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = upsert.write(keys, order, [f for f, _ in fields], columns(frame, fields),
                                 event, created, has_created)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except _sqlite.SqliteError as exc:
            raise OnlineStoreUnavailable(f"SQLite write to {table} failed: {exc}") from exc
        return int(n)

    def close(self) -> None:
        self._upserts.clear()
        try:
            for sql in self._deferred:
                self._db.execute(sql)
        except _sqlite.SqliteError as exc:
            raise OnlineStoreUnavailable(f"rebuilding an index of {self._path} failed: {exc}") from exc
        finally:
            self._deferred.clear()
            self._db.close()


class PySqliteWriter:
    """Fallback where the sqlite3 C API cannot be resolved: Python's executemany."""

    def __init__(self, settings: FeatureSettings) -> None:
        path = settings.sqlite_path
        if not path.exists():
            raise FeatureConfigError(f"{path} missing: run `creditauth features apply` first")
        self._conn = sqlite3.connect(path, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._project = settings.project

    def write(self, view: catalog.FeatureView, frame: pl.DataFrame, keys: list[bytes]) -> int:
        table = f"{self._project}_{view.name}"
        sql = (
            f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
        )
        event = (epoch_us(frame["event_timestamp"]) // 1_000_000).tolist()
        created: list[int | None] = (
            [None if c is None else c // 1_000_000 for c in frame["created_timestamp"].dt.epoch("us").to_list()]
            if "created_timestamp" in frame.columns
            else [None] * frame.height
        )
        fields = sorted(view.fields)
        encoded = [_encode(frame, f, k) for f, k in fields]
        text = [_value_text(frame, f, k) for f, k in fields]
        names = [f for f, _ in fields]
        order = sorted(range(len(keys)), key=keys.__getitem__)

        def rows() -> Iterator[tuple[object, ...]]:
            for i in order:
                for j, name in enumerate(names):
                    yield (keys[i], name, encoded[j][i], text[j][i], event[i], created[i])

        with self._conn:
            self._conn.executemany(sql, rows())
        return len(keys) * len(names)

    def close(self) -> None:
        self._conn.close()


def _encode(frame: pl.DataFrame, field: str, kind: catalog.ValueKind) -> list[bytes]:
    col = frame[field]
    valid = col.is_not_null().to_numpy().astype(np.uint8)
    if kind == "float32":
        return _codec.encode_float32(np.ascontiguousarray(col.fill_null(0.0).to_numpy(), dtype=np.float32), valid)
    if kind == "int64":
        return _codec.encode_int64(np.ascontiguousarray(col.fill_null(0).to_numpy(), dtype=np.int64), valid)
    return _codec.encode_bytes(col.to_list())


def _value_text(frame: pl.DataFrame, field: str, kind: catalog.ValueKind) -> list[str | None]:
    """Feast's ``value_text`` column: ``str()`` of the Python value, NULL for bytes and nulls."""
    if kind == "bytes":
        return [None] * frame.height
    values = frame[field].cast(pl.Float64 if kind == "float32" else pl.Int64).to_list()
    return [None if v is None else str(v) for v in values]


class RedisWriter:
    """Pipelined HSETs, one per entity carrying every view that has a row for it.

    Up to ``_DEPTH`` slices are in flight, so Redis always has queued work while this
    process reads the next chunk or encodes the next slice. With ``dedup`` the ``_ts``
    stamps of slice ``i + _DEPTH`` are requested right after slice ``i``'s HSETs, and each
    slice is encoded optimistically (every row) before its stamps arrive; it is re-encoded
    only if some rows turn out not to be newer than what Redis holds.
    """

    def __init__(self, settings: FeatureSettings, *, dedup: bool = True) -> None:
        self._conn = RespConnection(settings, timeout_s=max(settings.timeout_s, _WRITE_TIMEOUT_S))
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

    def close(self) -> None:
        try:
            while self._inflight:
                self._conn.receive(self._inflight.popleft())
        finally:
            self._conn.close()


