"""The local spool: batches the sink could not take, kept on local disk until it can.

One Arrow IPC file per flush (whole or absent, like the journal's chunks), drained
oldest first. Bounded by ``max_bytes``: a full spool takes nothing more, and the log's
``when_full`` decides what happens then. Each writer spools into its own directory; the
spools of stopped writers are adopted (``owned.orphans``) and drained by the next one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from services.decisionlog.owned import OwnedDir, orphans, read_ipc, write_ipc
from services.decisionlog.sinks import Sink

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, root: Path, writer_id: str, max_bytes: int) -> None:
        self.root = root
        self._writer_id = writer_id
        self.max_bytes = max_bytes
        self._dir: OwnedDir | None = None
        self._files: list[Path] = []
        self._adopted: list[Path] = []
        self.bytes = 0
        self._seq = 0
        self.failure: OSError | None = None

    def _open(self) -> OwnedDir:
        if self._dir is None:
            self._dir = OwnedDir(self.root / self._writer_id)
        return self._dir

    def __len__(self) -> int:
        return len(self._files) + len(self._adopted)

    def put(self, table: pa.Table) -> bool:
        """Keep ``table``; False if the spool is full or cannot be written."""
        if self.bytes + table.nbytes > self.max_bytes:
            return False
        try:
            d = self._open()
            path = d.path / f"{self._seq:012d}.arrow"
            size = write_ipc(path, table, fsync=False)
        except OSError as exc:
            log.warning("decision log: spool unavailable: %s", exc)
            return False
        self._seq += 1
        self._files.append(path)
        self.bytes += size
        return True

    def drain(self, sink: Sink) -> int:
        """Hand the spooled batches to ``sink``, oldest first; the rows it took.

        Stops at the first batch the sink refuses (``self.failure`` says why); the rest
        stays for the next call.
        """
        self.failure = None
        rows = 0
        try:
            self._adopt()
            while self._adopted or self._files:
                queue = self._adopted if self._adopted else self._files
                path = queue[0]
                table = read_ipc(path)
                sink.write(table)
                size = path.stat().st_size
                path.unlink()
                queue.pop(0)
                rows += table.num_rows
                if queue is self._files:
                    self.bytes -= size
        except OSError as exc:  # still down: keep the rest for later
            self.failure = exc
        return rows

    def _adopt(self) -> None:
        """Move the files of stopped writers' spools into this one (once, while adopting)."""
        if self._adopted or not self.root.is_dir():
            return
        mine = self._dir.path if self._dir is not None else None
        with orphans(self.root, mine) as dead:
            if not dead:
                return
            d = self._open()
            for old in dead:
                for f in sorted(old.glob("*.arrow")):
                    target = d.path / f"adopted-{old.name}-{f.name}"
                    f.rename(target)
                    self._adopted.append(target)

    def close(self) -> None:
        if self._dir is not None:
            self._dir.release(remove=not self._files and not self._adopted)
            self._dir = None
