"""Batched online reads of Feast's SQLite layout.

``get_online_features`` builds protobuf objects per value and costs ~35 ms per 100
entities here. ``SqliteReader`` reads a whole batch in one pass of prepared statements
stepped in C (the GIL released) and decodes values in C into a dense float32 matrix,
with the same answers as the Feast SDK (tests check it value by value).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

import numpy as np

from features import catalog
from features.batch import FeatureBatch, assemble, unique_ids
from features.errors import FeatureDataError, OnlineStoreUnavailable
from features.settings import FeatureSettings
from features.stores import _codec, layout
from features.stores.sqlite import _sqlite

# Python's sqlite3 caps host parameters per statement; the fallback chunks bigger batches.
_SQLITE_MAX_IDS = 4000


def _layouts() -> list[list[tuple[str, int, int]]]:
    """Per view: ``(feature_name, kind, column)`` of every field the batch needs."""
    col = {name: i for i, name in enumerate(catalog.MATRIX_COLUMNS)}
    out = []
    for v in catalog.ALL_VIEWS:
        fields = [(f, _sqlite.KIND_NUMBER, col[f]) for f in v.numeric_names]
        if v is catalog.TAGS:
            fields.append(("tags", _sqlite.KIND_TAGS, 0))
        out.append(fields)
    return out


class SqliteReader:
    """Prepared statements per view table, stepped in C with the GIL released."""

    def __init__(self, settings: FeatureSettings, tag_bytes: int) -> None:
        path = settings.sqlite_path
        if not path.exists():
            raise OnlineStoreUnavailable(f"SQLite online store {path} does not exist")
        try:
            self._db = _sqlite.Database(
                str(path.resolve()), readonly=True, busy_timeout_ms=int(settings.timeout_s * 1000)
            )
            # Pages through mmap rather than read() calls, and a bigger page cache: a batch
            # touches a few pages per merchant per view, scattered over the file.
            self._db.execute("PRAGMA mmap_size=1073741824")
            self._db.execute("PRAGMA cache_size=-65536")
            self._reader = _sqlite.BatchReader(self._db, layout.tables(settings.project), _layouts())
        except _sqlite.SqliteError as exc:
            raise OnlineStoreUnavailable(f"cannot open {path}: {exc}") from exc
        self._tag_bytes = tag_bytes
        self._max_age = settings.max_feature_age_s
        self._lock = threading.Lock()  # one connection: one read at a time

    def read(self, merchant_ids: Sequence[str]) -> FeatureBatch:
        uniq, inverse = unique_ids(merchant_ids)
        n = len(uniq)
        matrix = np.full((n, len(catalog.MATRIX_COLUMNS)), np.nan, dtype=np.float32)
        tags = np.zeros((n, self._tag_bytes), dtype=np.uint8)
        view_ts = np.zeros((n, len(catalog.ALL_VIEWS)), dtype=np.int64)
        keys = layout.entity_keys(uniq)
        try:
            with self._lock:
                bad = self._reader.read(keys, matrix, tags, view_ts)
        except _sqlite.SqliteError as exc:
            raise OnlineStoreUnavailable(f"SQLite online read failed: {exc}") from exc
        if bad >= 0:
            row, v = divmod(bad, len(catalog.ALL_VIEWS))
            raise FeatureDataError(
                f"undecodable value in {catalog.ALL_VIEWS[v].name} for merchant {uniq[row]!r}"
            )
        return assemble(matrix, tags, view_ts, inverse, self._max_age)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PySqliteReader:
    """Fallback where the sqlite3 C API cannot be resolved: Python's sqlite3, one
    ``UNION ALL`` query per batch, values still decoded in C."""

    def __init__(self, settings: FeatureSettings, tag_bytes: int) -> None:
        path = settings.sqlite_path
        if not path.exists():
            raise OnlineStoreUnavailable(f"SQLite online store {path} does not exist")
        try:
            self._conn = sqlite3.connect(
                f"file:{path.resolve()}?mode=ro", uri=True, check_same_thread=False,
                timeout=settings.timeout_s,
            )
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"cannot open {path}: {exc}") from exc
        self._tag_bytes = tag_bytes
        self._max_age = settings.max_feature_age_s
        self._tables = layout.tables(settings.project)
        col = {name: i for i, name in enumerate(catalog.MATRIX_COLUMNS)}
        self._colmaps = [{f: col[f] for f in v.numeric_names} for v in catalog.ALL_VIEWS]
        self._tag_view = catalog.ALL_VIEWS.index(catalog.TAGS)
        self._sql: dict[int, str] = {}

    def _query(self, n: int) -> str:
        sql = self._sql.get(n)
        if sql is None:
            marks = ",".join("?" * n)
            sql = " UNION ALL ".join(
                f'SELECT entity_key, feature_name, value, event_ts, {i} FROM "{t}" '
                f"WHERE entity_key IN ({marks})"
                for i, t in enumerate(self._tables)
            )
            self._sql[n] = sql
        return sql

    def read(self, merchant_ids: Sequence[str]) -> FeatureBatch:
        uniq, inverse = unique_ids(merchant_ids)
        n = len(uniq)
        matrix = np.full((n, len(catalog.MATRIX_COLUMNS)), np.nan, dtype=np.float32)
        tags = np.zeros((n, self._tag_bytes), dtype=np.uint8)
        view_ts = np.zeros((n, len(self._tables)), dtype=np.int64)
        values: list[bytes | None] = []
        rows: list[int] = []
        cols: list[int] = []
        for start in range(0, n, _SQLITE_MAX_IDS):
            keys = layout.entity_keys(uniq[start : start + _SQLITE_MAX_IDS])
            row_of = {k: start + i for i, k in enumerate(keys)}
            try:
                fetched = self._conn.execute(self._query(len(keys)), keys * len(self._tables)).fetchall()
            except sqlite3.Error as exc:
                raise OnlineStoreUnavailable(f"SQLite online read failed: {exc}") from exc
            for ek, fname, val, ts, vi in fetched:
                r = row_of[ek]
                if isinstance(ts, int) and ts > 0 and (view_ts[r, vi] == 0 or ts < view_ts[r, vi]):
                    view_ts[r, vi] = ts
                if vi == self._tag_view:
                    try:
                        payload = _codec.decode_bytes_value(val)
                    except ValueError as exc:
                        raise FeatureDataError(f"undecodable tags value: {exc}") from exc
                    if payload is not None:
                        k = min(len(payload), self._tag_bytes)
                        tags[r, :k] = np.frombuffer(payload, dtype=np.uint8, count=k)
                    continue
                c = self._colmaps[vi].get(fname)
                if c is not None:
                    values.append(val)
                    rows.append(r)
                    cols.append(c)
        bad = _codec.decode_numbers(
            values, np.asarray(rows, dtype=np.int32), np.asarray(cols, dtype=np.int32), matrix
        )
        if bad >= 0:
            raise FeatureDataError(
                f"undecodable value for {catalog.MATRIX_COLUMNS[cols[bad]]}: {values[bad]!r}"
            )
        return assemble(matrix, tags, view_ts, inverse, self._max_age)

    def close(self) -> None:
        self._conn.close()
