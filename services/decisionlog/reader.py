"""Reading the log back: the Parquet layout (and chunks not rolled yet), with polars.

Look-up never sees an identifier in the clear: ``show`` hashes the id it is given with
the log's key and looks for that. Rows can be seen twice for a moment (a segment's
Parquet file is renamed in before its journal chunks are removed); rows are unique by
``(replica_id, batch_seq, row)``, so reads drop the second copy. ``lookup`` also reads
the front end's refusals (``refusals.py``: a sibling table under ``<root>/refusals``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import polars as pl

from services.decisionlog.privacy import IdHasher
from services.decisionlog.sinks.parquet import JOURNAL, REFUSALS

ROW_KEY = ("replica_id", "batch_seq", "row")
_RETRIES = 3  # a chunk rolled away between listing and reading: list again


def _frames(root: Path, journal: bool, days: tuple[dt.date, dt.date] | None = None) -> list[pl.LazyFrame]:
    frames = []
    files = sorted(root.glob("date=*/hour=*/*.parquet"))
    if days is not None:  # partition pruning: only the days asked for are opened
        lo, hi = (f"date={d:%Y-%m-%d}" for d in days)
        files = [f for f in files if lo <= f.parent.parent.name <= hi]
    if files:
        frames.append(pl.scan_parquet(files, hive_partitioning=True).drop("date", "hour"))
    chunks = sorted((root / JOURNAL).glob("*/*.arrow")) if journal else []
    if chunks:
        frames.append(pl.scan_ipc(chunks))
    return frames


def scan(root: Path, *, journal: bool = True) -> pl.DataFrame | None:
    """Every logged row (None: nothing logged yet), one copy each."""
    for attempt in range(_RETRIES):
        frames = _frames(root, journal)
        if not frames:
            return None
        try:
            return pl.concat(frames, how="diagonal_relaxed").unique(subset=list(ROW_KEY), keep="first").collect()
        except (FileNotFoundError, pl.exceptions.ComputeError):
            if attempt == _RETRIES - 1:
                raise
    return None


def lookup(
    root: Path, hasher: IdHasher | Sequence[IdHasher], application_id: str, caller: str | None = None
) -> pl.DataFrame:
    """Every row logged for ``application_id`` (optionally one caller's), oldest first;
    under each of ``hasher`` (the current key and those before a rotation)."""
    hashers = [hasher] if isinstance(hasher, IdHasher) else list(hasher)
    keys = [h.one(application_id) for h in hashers]
    frames = _frames(root, journal=True) + _frames(root / REFUSALS, journal=True)
    if not frames:
        return pl.DataFrame()
    q = pl.concat(frames, how="diagonal_relaxed").filter(pl.col("application_key").is_in(keys))
    if caller is not None:
        q = q.filter(pl.col("caller") == caller)
    return q.unique(subset=list(ROW_KEY), keep="first").sort("logged_at", "batch_seq", "row").collect()


def export(
    root: Path, start: dt.datetime, end: dt.datetime, out: Path, fmt: Literal["parquet", "csv"] = "parquet"
) -> int:
    """Rows logged in ``[start, end)`` to ``out``; returns how many."""
    lo, hi = _utc(start), _utc(end)
    frames = _frames(root, journal=True, days=(lo.date(), hi.date()))
    if not frames:
        df = pl.DataFrame()
    else:
        df = (
            pl.concat(frames, how="diagonal_relaxed")
            .filter((pl.col("logged_at") >= lo) & (pl.col("logged_at") < hi))
            .unique(subset=list(ROW_KEY), keep="first")
            .sort("logged_at", "replica_id", "batch_seq", "row")
            .collect()
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        # CSV holds no lists and no bytes: lists are joined with ";", keyed hashes in hex.
        lists = [c for c, t in df.schema.items() if isinstance(t, pl.List)]
        flat = df.with_columns(
            *(pl.col(c).cast(pl.List(pl.String)).list.join(";") for c in lists),
            *(pl.col(c).bin.encode("hex") for c, t in df.schema.items() if t == pl.Binary),
        )
        flat.write_csv(out)
    else:
        df.write_parquet(out)
    return df.height


def _utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.timezone.utc) if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)
