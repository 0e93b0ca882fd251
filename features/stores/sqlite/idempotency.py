"""Idempotency in the embedded store: a WAL-mode SQLite file beside the online store.

Records are opaque bytes keyed by application id (the services define what a record
holds); inserts are insert-if-absent, so the first replica to decide an application wins,
and each batch costs one lookup and one write transaction whatever its size.

A file that cannot be read or written in time (another process holding the write lock
past ``timeout_s``, a missing or broken file) is ``OnlineStoreUnavailable``, like a Redis
failure, behind the same kind of circuit breaker; ``clock`` (the wall clock by default)
decides when records expire, so tests move time instead of sleeping.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from features.errors import OnlineStoreUnavailable
from features.stores.breaker import Breaker
from features.stores.idempotency import decode_table, encode_table
from features.stores.sqlite import checkpoint

# Rows per INSERT statement (3 parameters each, under SQLite's 32,766-parameter cap).
_ROWS_PER_STATEMENT = 2000


class SqliteIdempotency:
    """A WAL-mode SQLite file shared by every replica on the host."""

    def __init__(
        self, path: Path, window_s: float, namespace: str = "", *, timeout_s: float = 5.0,
        breaker: Breaker | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        if namespace and not namespace.isalnum():
            raise ValueError(f"idempotency namespace must be alphanumeric, got {namespace!r}")
        # One table per record schema: a changed record layout never reads an old one.
        self._table = f"decisions_{namespace}" if namespace else "decisions"
        self._path = path
        self._window = window_s
        self._lock = threading.Lock()
        self._writes = 0
        self._clock = clock
        self._breaker = breaker
        self._attached = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=timeout_s, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} (app_id TEXT PRIMARY KEY, record BLOB, expires REAL)"
            )
            self._conn.execute("CREATE TABLE IF NOT EXISTS reasons (policy TEXT PRIMARY KEY, tbl TEXT)")
            checkpoint.attach(self._conn, path)  # no batch pays for a checkpoint
            self._attached = True
        except (sqlite3.Error, OSError) as exc:
            raise OnlineStoreUnavailable(f"idempotency store {path} cannot be opened: {exc}") from exc

    @contextlib.contextmanager
    def _guarded(self, what: str) -> Iterator[None]:
        """One store call: behind the breaker (if any), SQLite's errors as the feature layer's."""
        with self._breaker.guard() if self._breaker is not None else contextlib.nullcontext():
            try:
                yield
            except sqlite3.Error as exc:
                raise OnlineStoreUnavailable(f"idempotency {what} in {self._path} failed: {exc}") from exc

    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        now = self._clock()
        out: dict[str, bytes] = {}
        with self._guarded("lookup"), self._lock:
            for start in range(0, len(app_ids), 4000):
                part = list(app_ids[start : start + 4000])
                rows = self._conn.execute(
                    f"SELECT app_id, record FROM {self._table} WHERE expires > ? "
                    f"AND app_id IN ({','.join('?' * len(part))})",
                    [now, *part],
                ).fetchall()
                out.update(rows)
        return out

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        now = self._clock()
        expires = now + self._window
        written: set[str] = set()
        with self._guarded("save"), self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                # One multi-row statement per chunk; RETURNING names the rows this call
                # wrote (new ids, or expired records replaced), so no second read is
                # needed to find the ids another replica decided first.
                for start in range(0, len(app_ids), _ROWS_PER_STATEMENT):
                    ids = app_ids[start : start + _ROWS_PER_STATEMENT]
                    recs = records[start : start + _ROWS_PER_STATEMENT]
                    params: list[object] = []
                    for a, r in zip(ids, recs, strict=True):
                        params += (a, r, expires)
                    rows = self._conn.execute(
                        f"INSERT INTO {self._table} (app_id, record, expires) VALUES "
                        + ",".join(["(?, ?, ?)"] * len(ids))
                        + " ON CONFLICT(app_id) DO UPDATE SET record = excluded.record, "
                        f"expires = excluded.expires WHERE {self._table}.expires <= ? RETURNING app_id",
                        [*params, now],
                    ).fetchall()
                    written.update(r[0] for r in rows)
                self._writes += 1
                if self._writes % 1000 == 0:
                    self._conn.execute(f"DELETE FROM {self._table} WHERE expires <= ?", (now,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        lost = [a for a in app_ids if a not in written]
        return self.lookup(lost) if lost else {}

    def put_reasons(self, policy_version: str, table: tuple[tuple[str, str], ...]) -> None:
        with self._guarded("reason table write"), self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO reasons (policy, tbl) VALUES (?, ?)", (policy_version, encode_table(table))
            )

    def reasons(self, policy_version: str) -> tuple[tuple[str, str], ...] | None:
        with self._guarded("reason table read"), self._lock:
            row = self._conn.execute("SELECT tbl FROM reasons WHERE policy = ?", (policy_version,)).fetchone()
        return decode_table(row[0]) if row else None

    def close(self) -> None:
        self._conn.close()
        if self._attached:
            self._attached = False
            checkpoint.detach(self._path)
