"""The embedded sink: Parquet files per replica, ``date=YYYY-MM-DD/hour=HH/<writer>-<seg>.parquet``.

A flush cannot append to a Parquet file (its footer is written last), so each flush goes
to the writer's journal as one Arrow IPC chunk, written under a hidden temporary name and
renamed: a chunk is whole or absent. A segment (the chunks since the last roll) becomes
one Parquet file, again written hidden and renamed, when it reaches ``roll_bytes``, when
it is ``roll_interval_s`` old, when the hour changes and on close; then its chunks go.

A writer killed with SIGKILL leaves its journal behind. The next writer on the same
directory takes the dead writer's journal lock (``owned.orphans``) and rolls its chunks
into the Parquet files it would have written; a segment whose Parquet file already
exists (killed between the rename and the clean-up) only loses its chunks.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.decisionlog.owned import OwnedDir, orphans, read_ipc, write_ipc

log = logging.getLogger(__name__)
JOURNAL = "_journal"
REFUSALS = "refusals"  # the front end's refusals: the same layout under <root>/refusals (refusals.py)
# Measured (docs/decision-log.md): dictionary pages and statistics on every one of ~140
# columns cost 5 us per decision; kept where they pay (repeated strings; time and order
# columns, for pruning) the file is written in 1.5 us and is smaller.
DICTIONARY = ["replica_id", "caller", "currency", "limit_currency", "risk_grade", "model_version", "policy_version"]
STATISTICS = ["logged_at", "batch_seq", "deadline"]
_HOUR_US = 3_600_000_000


@dataclass
class _Segment:
    seq: int
    hour: int  # logged_at // 1 h
    opened: float
    chunks: list[Path]
    bytes: int = 0


def partition(root: Path, hour: int) -> Path:
    t = dt.datetime.fromtimestamp(hour * 3600, dt.timezone.utc)
    return root / f"date={t:%Y-%m-%d}" / f"hour={t:%H}"


def _hours(table: pa.Table) -> np.ndarray:
    us = pc.cast(table["logged_at"], pa.int64()).to_numpy()
    return np.asarray(us // _HOUR_US)


class ParquetSink:
    def __init__(
        self, root: Path, writer_id: str, *, roll_bytes: int, roll_interval_s: float, fsync: bool = False
    ) -> None:
        self.root = root
        self.writer_id = writer_id
        self._roll_bytes = roll_bytes
        self._roll_s = roll_interval_s
        self._fsync = fsync
        self._journal: OwnedDir | None = None
        self._segment: _Segment | None = None
        self._next_seg = 0
        self.files_written = 0

    def _open(self) -> OwnedDir:
        """The journal, made on first use (the directory may be unavailable at start)."""
        if self._journal is None:
            self._journal = OwnedDir(self.root / JOURNAL / self.writer_id)
            recover(self.root, mine=self._journal.path)
        return self._journal

    def write(self, table: pa.Table) -> None:
        journal = self._open()
        if table.num_rows == 0:
            return
        hours = _hours(table)
        # Rows are in logged order: one slice per hour they fall in.
        cuts = np.flatnonzero(np.diff(hours)) + 1
        for start, stop in zip([0, *cuts.tolist()], [*cuts.tolist(), len(hours)], strict=True):
            self._write_chunk(journal, table.slice(start, stop - start), int(hours[start]))

    def _write_chunk(self, journal: OwnedDir, table: pa.Table, hour: int) -> None:
        seg = self._segment
        if seg is not None and seg.hour != hour:
            self._roll()
            seg = None
        if seg is None:
            seg = self._segment = _Segment(self._next_seg, hour, time.monotonic(), [])
            self._next_seg += 1
        path = journal.path / f"{seg.seq:08d}-{len(seg.chunks):06d}.arrow"
        seg.bytes += write_ipc(path, table, self._fsync)
        seg.chunks.append(path)
        if seg.bytes >= self._roll_bytes:
            self._roll()

    def tick(self, now: float) -> None:
        seg = self._segment
        if seg is not None and (time.monotonic() - seg.opened >= self._roll_s or int(now // 3600) != seg.hour):
            self._roll()

    def _roll(self) -> None:
        seg, self._segment = self._segment, None
        if seg is not None and seg.chunks:
            roll_segment(self.root, self.writer_id, seg.seq, seg.chunks, self._fsync)
            self.files_written += 1

    def close(self) -> None:
        self._roll()
        if self._journal is not None:
            self._journal.release(remove=True)
            self._journal = None


def segment_file(root: Path, writer_id: str, seq: int, hour: int) -> Path:
    return partition(root, hour) / f"{writer_id}-{seq:08d}.parquet"


def roll_segment(root: Path, writer_id: str, seq: int, chunks: list[Path], fsync: bool) -> Path:
    """A segment's chunks as one Parquet file (hidden temp, renamed), then the chunks removed."""
    table = pa.concat_tables([read_ipc(c) for c in chunks])
    target = segment_file(root, writer_id, seq, int(_hours(table)[0]))
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        pq.write_table(table, tmp, compression="zstd", use_dictionary=DICTIONARY, write_statistics=STATISTICS)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        os.replace(tmp, target)
    for c in chunks:
        c.unlink(missing_ok=True)
    return target


def recover(root: Path, mine: Path | None = None) -> int:
    """Roll the journals of dead writers into Parquet; returns the files written."""
    written = 0
    with orphans(root / JOURNAL, mine) as dead:
        for d in dead:
            segments: dict[int, list[Path]] = {}
            for c in sorted(d.glob("*.arrow")):
                segments.setdefault(int(c.name.split("-")[0]), []).append(c)
            for seq, chunks in sorted(segments.items()):
                roll_segment(root, d.name, seq, chunks, fsync=False)
                written += 1
            for tmp in root.glob(f"date=*/hour=*/.{d.name}-*.tmp"):
                tmp.unlink(missing_ok=True)  # a roll the dead writer never finished
    if written:
        log.info("decision log: recovered %d segment(s) left by stopped writers", written)
    return written
