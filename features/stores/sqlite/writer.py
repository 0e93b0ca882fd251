"""Bulk writes of Feast's SQLite layout, one feature view chunk at a time.

``SqliteWriter`` runs Feast's own upsert statement through the sqlite3 C API, rows in
primary-key order so consecutive inserts touch the same B-tree pages; the stored rows
are exactly what Feast's ``online_write_batch`` writes for the same data (tests compare
the stores byte for byte).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl

from features import catalog
from features.errors import FeatureConfigError, OnlineStoreUnavailable
from features.settings import FeatureSettings
from features.stores import _codec, layout
from features.stores.frames import columns, epoch_us, per_view
from features.stores.sqlite import _sqlite, _sqlite_write


class SqliteWriter:
    aligned = False  # per-view writes in primary-key order beat one statement per entity

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
        table = layout.table(self._project, view)
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

    def write_entities(self, views: list[tuple[catalog.FeatureView, pl.DataFrame]], keys: list[bytes]) -> int:
        return per_view(self.write, views, keys)

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

    aligned = False  # per-view writes in primary-key order beat one statement per entity

    def __init__(self, settings: FeatureSettings) -> None:
        path = settings.sqlite_path
        if not path.exists():
            raise FeatureConfigError(f"{path} missing: run `creditauth features apply` first")
        self._conn = sqlite3.connect(path, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._project = settings.project

    def write(self, view: catalog.FeatureView, frame: pl.DataFrame, keys: list[bytes]) -> int:
        table = layout.table(self._project, view)
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

    def write_entities(self, views: list[tuple[catalog.FeatureView, pl.DataFrame]], keys: list[bytes]) -> int:
        return per_view(self.write, views, keys)

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
