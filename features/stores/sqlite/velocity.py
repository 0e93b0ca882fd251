"""Velocity state in the embedded SQLite store: one ``BEGIN IMMEDIATE`` transaction per batch.

The transaction reads every merchant's ``window_state``, applies the window arithmetic to
the whole batch in numpy (``features.velocity.record_states``) and writes the three rows
per merchant that ``FeatureStore.push`` would write; the write lock taken before the read
serializes replicas, so no increment is lost.
"""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import numpy.typing as npt

from features import catalog
from features.errors import OnlineStoreUnavailable
from features.settings import FeatureSettings
from features.stores import _codec, layout
from features.stores.breaker import Breaker
from features.stores.sqlite import checkpoint
from features.velocity import STATE_BYTES, record_states

VIEW = catalog.VELOCITY


class SqliteVelocity:
    def __init__(self, settings: FeatureSettings) -> None:
        path = settings.sqlite_path
        if not path.exists():
            raise OnlineStoreUnavailable(f"SQLite online store {path} does not exist")
        self._attached = False
        try:
            self._conn = sqlite3.connect(
                path, timeout=settings.timeout_s, isolation_level=None, check_same_thread=False
            )
            # Every decision commits a velocity update. In the default rollback-journal
            # mode each commit costs two fsyncs (~1 ms here, most of a single-request
            # batch's time); WAL with synchronous=NORMAL makes a commit an append and
            # syncs at checkpoints. On a crash the last commits may be lost: counters
            # of the embedded dev store, like Redis without persistence in production.
            # The mode is a property of the file: Feast's own connections and our
            # readers follow it, and readers no longer wait for writers.
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            checkpoint.attach(self._conn, path)  # no batch pays for a checkpoint
            self._attached = True
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"cannot open {path}: {exc}") from exc
        self._path = path
        self._table = layout.table(settings.project, VIEW)
        self._lock = threading.Lock()
        # The write lock can be held past timeout_s by another process: fail fast once it keeps being.
        self._breaker = Breaker.from_settings(f"SQLite {path}", settings)

    def record(self, ids: list[str], k: list[int], now_us: int) -> npt.NDArray[np.int64]:
        keys = layout.entity_keys(ids)
        out = np.zeros((len(ids), 2), dtype=np.int64)
        upsert = (
            f'INSERT INTO "{self._table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
        )
        with self._breaker.guard():
            self._record(keys, k, now_us, out, upsert)
        return out

    def _record(
        self, keys: list[bytes], k: list[int], now_us: int, out: npt.NDArray[np.int64], upsert: str
    ) -> None:
        try:
            with self._lock:
                # IMMEDIATE takes the write lock before reading: concurrent replicas serialize
                # on it, so no increment is lost between our read and our write.
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    stored: dict[bytes, bytes] = {}
                    for start in range(0, len(keys), 900):
                        part = keys[start : start + 900]
                        stored.update(self._conn.execute(
                            f'SELECT entity_key, value FROM "{self._table}" WHERE feature_name = '
                            f"'window_state' AND entity_key IN ({','.join('?' * len(part))})",
                            part,
                        ).fetchall())
                    # The window arithmetic for the whole batch in numpy (record_states);
                    # what is left per merchant is building its three row tuples.
                    st = record_states([stored.get(key) for key in keys], now_us, k)
                    out[:, 0] = st["apps_1h"]
                    out[:, 1] = st["apps_24h"]
                    enc = _codec.encode_int64(out.ravel(), np.ones(2 * len(keys), np.uint8))
                    raw = st.tobytes()
                    states = _codec.encode_bytes([raw[i : i + STATE_BYTES] for i in range(0, len(raw), STATE_BYTES)])
                    # Feast stores whole seconds (int(datetime.timestamp())).
                    ts = (st["last_us"] // 1_000_000).astype(np.int64).tolist()
                    created = now_us // 1_000_000
                    c = out.tolist()
                    rows: list[tuple[object, ...]] = []
                    for i, key in enumerate(keys):
                        rows += [
                            (key, "apps_1h", enc[2 * i], str(c[i][0]), ts[i], created),
                            (key, "apps_24h", enc[2 * i + 1], str(c[i][1]), ts[i], created),
                            (key, "window_state", states[i], None, ts[i], created),
                        ]
                    self._conn.executemany(upsert, rows)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"SQLite velocity write failed: {exc}") from exc

    def close(self) -> None:
        self._conn.close()
        if self._attached:
            self._attached = False
            checkpoint.detach(self._path)
