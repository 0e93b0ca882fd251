"""WAL checkpoints off the hot path: one background thread per database file and process.

In WAL mode SQLite copies the log back into the database ("checkpoint") when a commit
leaves more than ``wal_autocheckpoint`` pages (1,000) in it, synchronously, inside that
commit: every so often one batch pays for the copy and the fsync of everything the batches
before it wrote (measured here: the velocity transaction of a 100-merchant batch 1.2-2x
dearer on average, and the batch that checkpoints several milliseconds late: a p99 spike).
Hot-path connections (velocity, idempotency) raise their own threshold to
``HOT_PATH_BOUND`` pages, a safety net only, and this thread checkpoints every
``INTERVAL_S`` instead: ``PASSIVE``, so it never waits for or blocks a reader or a writer;
a page written by several batches between two checkpoints is copied once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)
INTERVAL_S = 0.5
HOT_PATH_BOUND = 16_384  # pages (64 MiB at 4 KiB): checkpointed inline only if this thread falls behind

_lock = threading.Lock()
_running: dict[str, tuple[Checkpointer, int]] = {}  # path -> (its checkpointer, users)


class Checkpointer:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sqlite-checkpoint-{path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=0.1)
        except sqlite3.Error as exc:  # the hot path's own connection reports the store's state
            log.warning("WAL checkpointer for %s not started: %s", self._path, exc)
            return
        try:
            while not self._stop.wait(INTERVAL_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy or gone: the next interval tries again
                    log.debug("WAL checkpoint of %s: %s", self._path, exc)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def attach(conn: sqlite3.Connection, path: Path) -> None:
    """Move ``conn``'s checkpoints to the file's background checkpointer (started on first use)."""
    conn.execute(f"PRAGMA wal_autocheckpoint={HOT_PATH_BOUND}")
    key = str(path.resolve())
    with _lock:
        cp, users = _running.get(key, (None, 0))
        _running[key] = (cp or Checkpointer(path), users + 1)


def detach(path: Path) -> None:
    """One user fewer; the last one stops the thread."""
    key = str(path.resolve())
    with _lock:
        cp, users = _running.get(key, (None, 0))
        if cp is None:
            return
        if users > 1:
            _running[key] = (cp, users - 1)
            return
        del _running[key]
    cp.stop()


def running(path: Path) -> bool:
    return str(path.resolve()) in _running
