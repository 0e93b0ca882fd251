"""Directories owned by one live writer, told apart from those of dead ones by a lock.

A writer holds an exclusive ``flock`` on ``<dir>/lock`` for its lifetime; the kernel drops
it when the process dies, however it dies (SIGKILL included). Whoever can take the lock of
another writer's directory knows that writer is gone and may adopt what it left.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
from pyarrow import ipc


class OwnedDir:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise

    def release(self, remove: bool) -> None:
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


@contextmanager
def orphans(root: Path, mine: Path | None) -> Iterator[list[Path]]:
    """Directories under ``root`` whose writer is gone, locked for the caller while it adopts them."""
    taken: list[OwnedDir] = []
    try:
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if d == mine or not d.is_dir():
                continue
            try:
                taken.append(OwnedDir(d))
            except OSError:
                continue  # alive (or not ours to take)
        yield [t.path for t in taken]
    finally:
        for t in taken:
            t.release(remove=True)


def write_ipc(path: Path, table: pa.Table, fsync: bool) -> int:
    """``table`` as one Arrow IPC file at ``path``, whole or not at all (a hidden temp, renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    if fsync:
        _fsync(tmp)
    os.replace(tmp, path)
    return path.stat().st_size


def read_ipc(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return ipc.open_file(source).read_all()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
