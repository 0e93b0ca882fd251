"""WAL checkpoints of the embedded store run on a background thread, not inside a batch's commit."""

from __future__ import annotations

import sqlite3
import struct
import time
from pathlib import Path

from features import open_backend
from features.stores.sqlite import checkpoint
from tests.conftest import World, feature_settings


def _wal_sequence(db: Path) -> int:
    """The WAL header's checkpoint sequence number: it moves when the log restarts, which a
    writer does only after a checkpoint copied the whole log back."""
    header = (db.parent / f"{db.name}-wal").read_bytes()[:16]
    return int(struct.unpack(">I", header[12:16])[0])


def test_the_hot_path_leaves_checkpoints_to_the_thread(clean_world: World) -> None:
    settings = feature_settings(clean_world)
    db = settings.sqlite_path
    velocity = open_backend(settings).velocity()
    try:
        assert checkpoint.running(db)
        hot = velocity._impl._conn  # type: ignore[attr-defined]
        assert hot.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == checkpoint.HOT_PATH_BOUND
        velocity.record(["M00000001"], time.time())
        first = _wal_sequence(db)
        # A few small commits never reach the hot path's bound; the log still restarts,
        # because the thread checkpointed it (bounded wait on the observed header).
        deadline = time.monotonic() + 30
        while _wal_sequence(db) == first:
            assert time.monotonic() < deadline, "no background checkpoint within 30 s"
            velocity.record(["M00000002"], time.time())
        counts = velocity.record(["M00000003"] * 2, time.time())
        assert counts.apps_1h.tolist() == [2, 2], "the counts are right across checkpoints"
    finally:
        velocity.close()
    assert not checkpoint.running(db), "the last user's close stops the thread"


def test_one_thread_per_file_shared_by_its_users(clean_world: World) -> None:
    settings = feature_settings(clean_world)
    backend = open_backend(settings)
    a, b = backend.velocity(), backend.velocity()
    idem = backend.idempotency(60.0, "cp")
    try:
        assert checkpoint.running(settings.sqlite_path) and checkpoint.running(settings.data_dir / "idempotency.db")
        a.close()
        assert checkpoint.running(settings.sqlite_path), "b still writes"
    finally:
        b.close()
        idem.close()
    assert not checkpoint.running(settings.sqlite_path)
    assert not checkpoint.running(settings.data_dir / "idempotency.db")
    with sqlite3.connect(settings.sqlite_path) as conn:  # the file is intact
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
