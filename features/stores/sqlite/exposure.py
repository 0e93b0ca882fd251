"""Exposure counters in the embedded store: a WAL-mode SQLite file, one ``BEGIN IMMEDIATE`` per batch.

Two tables: ``reservations`` (one row per counter and batch: its grants' sum and count,
with their expiry) and ``totals`` (the live amount and count per counter), so a batch costs
O(its counters + what expired), whatever is held. The transaction drops what expired from
the totals, reads the batch's counters, runs ``features.exposure.allocate`` and writes the
grants; the write lock taken before the read serializes every replica on the host, so no
cap is overdrawn between them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from features.errors import OnlineStoreUnavailable
from features.exposure import CapLimit, Claims, Grants, allocate, entries
from features.stores.breaker import Breaker

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS reservations (cap TEXT, value TEXT, token BLOB, amount INTEGER, count INTEGER, "
    "expires REAL, PRIMARY KEY (cap, value, token))",
    "CREATE INDEX IF NOT EXISTS reservations_by_expiry ON reservations (expires)",
    "CREATE TABLE IF NOT EXISTS totals (cap TEXT, value TEXT, amount INTEGER, count INTEGER, "
    "PRIMARY KEY (cap, value))",
)
_VALUES_PER_STATEMENT = 900  # values per IN list, under SQLite's parameter cap


class SqliteExposure:
    def __init__(self, path: Path, *, timeout_s: float = 5.0, breaker: Breaker | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._breaker = breaker
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=timeout_s, isolation_level=None)
            # As the velocity and idempotency files: a commit is an append, synced at checkpoints.
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                self._conn.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            raise OnlineStoreUnavailable(f"exposure store {path} cannot be opened: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction behind the breaker; SQLite's errors as the feature layer's."""
        with self._breaker.guard() if self._breaker is not None else contextlib.nullcontext():
            try:
                with self._lock:
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._conn
                        self._conn.execute("COMMIT")
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
            except sqlite3.Error as exc:
                raise OnlineStoreUnavailable(f"exposure {what} in {self._path} failed: {exc}") from exc

    def reserve(self, caps: Sequence[CapLimit], claims: Claims, now: float) -> Grants:
        if len(claims) == 0:
            return Grants(np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0, np.intp))
        names = [(caps[c].name, v) for c, v in claims.counters]
        with self._transaction("reserve") as conn:
            _expire(conn, now)
            used = _totals(conn, names)
            grants = allocate(caps, claims, used)
            held = entries(claims, grants)
            touched = np.flatnonzero(held[:, 1] > 0).tolist()
            conn.executemany(
                "INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?, ?, ?)",
                [(*names[p], claims.token, int(held[p, 0]), int(held[p, 1]),
                  now + caps[claims.counters[p][0]].window_s) for p in touched],
            )
            conn.executemany(
                "INSERT INTO totals VALUES (?, ?, ?, ?) ON CONFLICT(cap, value) DO UPDATE SET "
                "amount = excluded.amount, count = excluded.count",
                [(*names[p], used[p][0], used[p][1]) for p in touched],
            )
        return grants

    def release(self, caps: Sequence[CapLimit], claims: Claims, grants: Grants, items: Sequence[int]) -> None:
        held, left = entries(claims, grants), entries(claims, grants, items)
        changed = np.flatnonzero((held != left).any(axis=1)).tolist()
        if not changed:
            return
        with self._transaction("release") as conn:
            for p in changed:
                cap, value = caps[claims.counters[p][0]].name, claims.counters[p][1]
                gone = (held[p] - left[p]).tolist()
                # Only from the entry as the batch left it: a release is never applied twice.
                hit = conn.execute(
                    "UPDATE reservations SET amount = ?, count = ? WHERE cap = ? AND value = ? AND token = ? "
                    "AND amount = ? AND count = ? RETURNING 1",
                    (int(left[p, 0]), int(left[p, 1]), cap, value, claims.token, int(held[p, 0]), int(held[p, 1])),
                ).fetchone()
                if hit is not None:
                    conn.execute("UPDATE totals SET amount = amount - ?, count = count - ? WHERE cap = ? AND value = ?",
                                 (gone[0], gone[1], cap, value))

    def usage(self, cap: CapLimit, value: str, now: float) -> tuple[int, int]:
        with self._transaction("usage") as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(count), 0) FROM reservations "
                "WHERE cap = ? AND value = ? AND expires > ?", (cap.name, value, now),
            ).fetchone()
        return int(row[0]), int(row[1])

    def close(self) -> None:
        self._conn.close()


def _expire(conn: sqlite3.Connection, now: float) -> None:
    """Take what expired (``expires <= now``) out of the totals and the reservations."""
    # By the expiry index (the planner would rather walk the primary key for a GROUP BY:
    # every live entry, each batch); what expired since the last batch is a few rows.
    gone: dict[tuple[str, str], list[int]] = {}
    for cap, value, amount, count in conn.execute(
        "SELECT cap, value, amount, count FROM reservations INDEXED BY reservations_by_expiry WHERE expires <= ?",
        (now,),
    ):
        g = gone.setdefault((cap, value), [0, 0])
        g[0] += amount
        g[1] += count
    if gone:
        conn.executemany("UPDATE totals SET amount = amount - ?, count = count - ? WHERE cap = ? AND value = ?",
                         [(a, n, cap, value) for (cap, value), (a, n) in gone.items()])
        conn.execute("DELETE FROM reservations INDEXED BY reservations_by_expiry WHERE expires <= ?", (now,))


def _totals(conn: sqlite3.Connection, names: list[tuple[str, str]]) -> list[list[int]]:
    """The live ``[amount, count]`` of each counter (zeros for one never used)."""
    by_cap: dict[str, list[str]] = {}
    for cap, value in names:
        by_cap.setdefault(cap, []).append(value)
    found: dict[tuple[str, str], list[int]] = {}
    for cap, values in by_cap.items():
        # ``cap = ? AND value IN (...)``: a primary-key lookup per value (a row-value IN list scans).
        for start in range(0, len(values), _VALUES_PER_STATEMENT):
            part = values[start : start + _VALUES_PER_STATEMENT]
            for value, amount, count in conn.execute(
                f"SELECT value, amount, count FROM totals WHERE cap = ? AND value IN ({','.join('?' * len(part))})",
                [cap, *part],
            ):
                found[(cap, value)] = [int(amount), int(count)]
    return [list(found.get(n, [0, 0])) for n in names]
