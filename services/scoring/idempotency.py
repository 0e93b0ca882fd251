"""Idempotency: the same ``application_id`` within the window gets the same decision.

The replica that first decides an application stores the decision under its
application id (insert-if-absent), and every replica checks the store before
scoring, so the guarantee holds across front-end processes and replicas. The
store is the online store's kind: a SQLite file beside the embedded online
store, or Redis in production. Each batch costs one lookup and one write round
trip, whatever its size.

A stored decision is one fixed-size numpy record (no per-item Python objects);
reason codes are stored as indices into the reason table of the policy version
that made the decision, and each policy's table is stored once by version.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from features import FeatureSettings
from services.errors import BackendUnavailable


def record_dtype(reasons: int) -> np.dtype[np.void]:
    return np.dtype(
        [
            ("fp", "<u8"),
            ("decision", "i1"),
            ("approved", "<i8"),
            ("apr", "<i4"),
            ("grade", "i1"),
            ("pd", "<f8"),
            ("reason", "<i2", (reasons,)),
            ("contrib", "<f4", (reasons,)),
            ("age", "<f4"),
            ("stale", "?"),
            ("degraded", "?"),
            ("decision_id", "S40"),
            ("model", "S64"),
            ("policy", "S64"),
        ]
    )


def fingerprints(  # noqa: PLR0917 -- one argument per request column
    merchant_ids: Sequence[str],
    amount: npt.NDArray[np.int64],
    currency: npt.NDArray[np.int8],
    term: npt.NDArray[np.int16],
    product: npt.NDArray[np.int8],
    channel: npt.NDArray[np.int8],
    declared: npt.NDArray[np.float64],
) -> npt.NDArray[np.uint64]:
    """A stable 64-bit digest of what was asked (not of when): same request, same digest."""
    n = len(merchant_ids)
    h = np.fromiter((zlib.crc32(m.encode()) for m in merchant_ids), np.uint64, n)
    mix = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for col in (
            amount.astype(np.uint64),
            currency.astype(np.uint64),
            term.astype(np.uint64),
            product.astype(np.uint64),
            channel.astype(np.uint64),
            np.nan_to_num(declared, nan=-1.0).view(np.uint64),
        ):
            h = (h ^ col) * mix
            h ^= h >> np.uint64(29)
    return h


class IdempotencyStore(Protocol):
    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]: ...

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        """Insert each absent id; returns the stored record of every id that was already present."""
        ...

    def put_reasons(self, policy_version: str, table: tuple[tuple[str, str], ...]) -> None: ...

    def reasons(self, policy_version: str) -> tuple[tuple[str, str], ...] | None: ...

    def close(self) -> None: ...


class NoStore:
    """Idempotency disabled (window 0)."""

    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]:
        return {}

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        return {}

    def put_reasons(self, policy_version: str, table: tuple[tuple[str, str], ...]) -> None:
        return None

    def reasons(self, policy_version: str) -> tuple[tuple[str, str], ...] | None:
        return None

    def close(self) -> None:
        return None


# Rows per INSERT statement (3 parameters each, under SQLite's 32,766-parameter cap).
_ROWS_PER_STATEMENT = 2000


class SqliteStore:
    """A WAL-mode SQLite file shared by every replica on the host."""

    def __init__(self, path: Path, window_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=5.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS decisions (app_id TEXT PRIMARY KEY, record BLOB, expires REAL)")
        self._conn.execute("CREATE TABLE IF NOT EXISTS reasons (policy TEXT PRIMARY KEY, tbl TEXT)")
        self._window = window_s
        self._lock = threading.Lock()
        self._writes = 0

    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        now = time.time()
        out: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(app_ids), 4000):
                part = list(app_ids[start : start + 4000])
                rows = self._conn.execute(
                    "SELECT app_id, record FROM decisions WHERE expires > ? "
                    f"AND app_id IN ({','.join('?' * len(part))})",
                    [now, *part],
                ).fetchall()
                out.update(rows)
        return out

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        now = time.time()
        expires = now + self._window
        written: set[str] = set()
        with self._lock:
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
                        "INSERT INTO decisions (app_id, record, expires) VALUES "
                        + ",".join(["(?, ?, ?)"] * len(ids))
                        + " ON CONFLICT(app_id) DO UPDATE SET record = excluded.record, "
                        "expires = excluded.expires WHERE decisions.expires <= ? RETURNING app_id",
                        [*params, now],
                    ).fetchall()
                    written.update(r[0] for r in rows)
                self._writes += 1
                if self._writes % 1000 == 0:
                    self._conn.execute("DELETE FROM decisions WHERE expires <= ?", (now,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        lost = [a for a in app_ids if a not in written]
        return self.lookup(lost) if lost else {}

    def put_reasons(self, policy_version: str, table: tuple[tuple[str, str], ...]) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO reasons (policy, tbl) VALUES (?, ?)", (policy_version, json.dumps(table))
            )

    def reasons(self, policy_version: str) -> tuple[tuple[str, str], ...] | None:
        with self._lock:
            row = self._conn.execute("SELECT tbl FROM reasons WHERE policy = ?", (policy_version,)).fetchone()
        return _table(row[0]) if row else None

    def close(self) -> None:
        self._conn.close()


_SAVE_LUA = """
local lost = {}
for i = 1, #KEYS do
  if not redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'EX', ARGV[1]) then
    lost[#lost + 1] = i
  end
end
return lost
"""


class RedisStore:
    """SET NX EX per decision, in one pipeline per batch."""

    def __init__(self, settings: FeatureSettings, window_s: float) -> None:
        import redis

        host, port, db = settings.redis_host_port_db()
        self._client = redis.Redis(
            host=host, port=port, db=db, socket_timeout=settings.timeout_s, socket_connect_timeout=settings.timeout_s
        )
        self._prefix = f"{settings.project}:idem:".encode()
        self._window = max(1, int(window_s))
        self._error = redis.RedisError
        self._save_script = self._client.register_script(_SAVE_LUA)

    def _key(self, app_id: str) -> bytes:
        return self._prefix + app_id.encode()

    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        try:
            values: Any = self._client.mget([self._key(a) for a in app_ids])
        except self._error as exc:
            raise BackendUnavailable(f"idempotency store unreachable: {exc}") from exc
        return {a: v for a, v in zip(app_ids, values, strict=True) if v is not None}

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        try:
            # One EVAL per batch: SET NX EX for every id server-side, returning the
            # positions another replica had already decided.
            lost_at: Any = self._save_script(
                keys=[self._key(a) for a in app_ids], args=[self._window, *records]
            )
        except self._error as exc:
            raise BackendUnavailable(f"idempotency store unreachable: {exc}") from exc
        lost = [app_ids[int(i) - 1] for i in lost_at]
        return self.lookup(lost) if lost else {}

    def put_reasons(self, policy_version: str, table: tuple[tuple[str, str], ...]) -> None:
        try:
            self._client.set(self._prefix + b"reasons:" + policy_version.encode(), json.dumps(table))
        except self._error as exc:
            raise BackendUnavailable(f"idempotency store unreachable: {exc}") from exc

    def reasons(self, policy_version: str) -> tuple[tuple[str, str], ...] | None:
        raw: Any = self._client.get(self._prefix + b"reasons:" + policy_version.encode())
        return _table(raw) if raw else None

    def close(self) -> None:
        self._client.close()


def _table(raw: str | bytes) -> tuple[tuple[str, str], ...]:
    return tuple((str(code), str(desc)) for code, desc in json.loads(raw))


def open_store(settings: FeatureSettings, window_s: float) -> IdempotencyStore:
    if window_s <= 0:
        return NoStore()
    if settings.online_store == "redis":
        return RedisStore(settings, window_s)
    return SqliteStore(settings.data_dir / "idempotency.db", window_s)
