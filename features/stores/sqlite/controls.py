"""Operator controls in the embedded store: tables in a WAL SQLite file beside the online store.

``control_meta`` holds the version row, ``controls`` the set (one row per id), ``control_reasons``
the reason registry (a slot is a row's fixed position) and ``control_audit`` every change. A
change is one ``BEGIN IMMEDIATE`` transaction, so replicas on the host serialize on it and
see the version, the set, the registry and the audit change together. There is no push
notification here: caches poll the version row (one indexed read of a local file), so the
interval is short.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from features.controls import AuditEntry, Control, ControlSnapshot, audit_of, clear_body
from features.errors import OnlineStoreUnavailable

_POLL_S = 0.25  # the only way a change arrives: a local read, cheap enough to do often
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS control_meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO control_meta (k, v) VALUES ('version', 0)",
    "CREATE TABLE IF NOT EXISTS controls (id TEXT PRIMARY KEY, version INTEGER, slot INTEGER, body TEXT)",
    "CREATE TABLE IF NOT EXISTS control_reasons (slot INTEGER PRIMARY KEY, code TEXT, description TEXT, "
    "UNIQUE (code, description))",
    "CREATE TABLE IF NOT EXISTS control_audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT, "
    "version INTEGER, control_version INTEGER, slot INTEGER, body TEXT, extra TEXT)",
)


class SqliteControls:
    poll_s = _POLL_S

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=timeout_s, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._write():
                for statement in _SCHEMA:
                    self._conn.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            raise OnlineStoreUnavailable(f"controls store {path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def version(self) -> int:
        try:
            with self._lock:
                row = self._conn.execute("SELECT v FROM control_meta WHERE k = 'version'").fetchone()
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"controls version: {exc}") from exc
        return int(row[0]) if row else 0

    def snapshot(self) -> ControlSnapshot:
        try:
            with self._lock:
                # One read transaction: the version, the set and the registry agree.
                self._conn.execute("BEGIN")
                try:
                    version = self._conn.execute("SELECT v FROM control_meta WHERE k = 'version'").fetchone()[0]
                    rows = self._conn.execute("SELECT body, version, slot FROM controls ORDER BY id").fetchall()
                    reasons = self._conn.execute(
                        "SELECT code, description FROM control_reasons ORDER BY slot").fetchall()
                finally:
                    self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"controls read: {exc}") from exc
        controls = tuple(Control.from_body(b, v, s) for b, v, s in rows)
        return ControlSnapshot(int(version), controls, tuple((str(c), str(d)) for c, d in reasons))

    def put(self, control: Control) -> Control:
        body = control.body()
        try:
            with self._lock, self._write() as db:
                db.execute(
                    "INSERT OR IGNORE INTO control_reasons (slot, code, description) "
                    "VALUES ((SELECT COALESCE(MAX(slot) + 1, 0) FROM control_reasons), ?, ?)",
                    (control.reason_code, control.reason_description),
                )
                (slot,) = db.execute("SELECT slot FROM control_reasons WHERE code = ? AND description = ?",
                                     (control.reason_code, control.reason_description)).fetchone()
                version = self._bump(db)
                db.execute("INSERT OR REPLACE INTO controls (id, version, slot, body) VALUES (?, ?, ?, ?)",
                           (control.id, version, slot, body))
                db.execute("INSERT INTO control_audit (action, version, control_version, slot, body, extra) "
                           "VALUES ('set', ?, ?, ?, ?, '')", (version, version, slot, body))
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"controls set: {exc}") from exc
        return Control.from_body(body, version, int(slot))

    def clear(self, control_id: str, author: str, justification: str, now: float) -> tuple[Control, int] | None:
        extra = clear_body(author, justification, now)
        try:
            with self._lock, self._write() as db:
                row = db.execute("SELECT body, version, slot FROM controls WHERE id = ?", (control_id,)).fetchone()
                if row is None:
                    return None
                db.execute("DELETE FROM controls WHERE id = ?", (control_id,))
                version = self._bump(db)
                db.execute("INSERT INTO control_audit (action, version, control_version, slot, body, extra) "
                           "VALUES ('clear', ?, ?, ?, ?, ?)", (version, row[1], row[2], row[0], extra))
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"controls clear: {exc}") from exc
        return Control.from_body(row[0], row[1], row[2]), version

    @staticmethod
    def _bump(db: sqlite3.Connection) -> int:
        db.execute("UPDATE control_meta SET v = v + 1 WHERE k = 'version'")
        return int(db.execute("SELECT v FROM control_meta WHERE k = 'version'").fetchone()[0])

    def history(self, limit: int) -> list[AuditEntry]:
        try:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT action, version, control_version, slot, body, extra FROM control_audit "
                    "ORDER BY seq DESC LIMIT ?",
                    (max(1, limit),),
                ).fetchall()
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"controls audit: {exc}") from exc
        out = []
        for action, version, control_version, slot, body, extra in reversed(rows):
            # The entry carries the change's version, its control the version it was set under.
            out.append(audit_of(action, version, extra, Control.from_body(body, control_version, slot)))
        return out

    def watch(self, notify: Callable[[], None]) -> None:
        return None  # no notification in a file: caches poll the version row

    def close(self) -> None:
        with self._lock:
            self._conn.close()
