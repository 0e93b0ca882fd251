"""Bulk materialization: offline parquet -> Feast's online-store layout, fast.

``feast materialize`` turns every value into a protobuf object and writes row by row.
This writes the layout Feast writes, byte for byte (so the Feast SDK reads it back
identically), but streams the offline table in chunks and encodes whole columns in C
(the store backend's writer, ``features.stores.<kind>.writer``). It then records the materialized interval in the Feast
registry exactly as ``feast materialize`` does, so ``feast materialize-incremental``
carries on from there.

Semantics kept from Feast: per view, the latest row per entity with
``start <= event_timestamp < end`` (ties broken by ``created_timestamp``); on Redis,
by default, a row is written only if it is newer than the stored one (``dedup``,
Feast's default; pass ``dedup=False`` for Feast's ``skip_dedup`` behaviour).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import polars as pl
import pyarrow.parquet as pq

from features import catalog
from features.errors import FeatureConfigError
from features.feast_repo import open_store
from features.settings import FeatureSettings
from features.stores import layout, open_backend

_CHUNK = 50_000
_T = TypeVar("_T")


@dataclass(frozen=True)
class MaterializeReport:
    views: int
    entities: int
    values: int
    seconds: float


def _window(lf: pl.LazyFrame, start: dt.datetime, end: dt.datetime) -> pl.LazyFrame:
    return lf.filter((pl.col("event_timestamp") >= start) & (pl.col("event_timestamp") < end))


def latest_rows(
    settings: FeatureSettings, view: catalog.FeatureView, start: dt.datetime, end: dt.datetime
) -> Iterator[pl.DataFrame]:
    """The latest offline row per entity in ``[start, end)``, in chunks of ``_CHUNK``.

    Offline tables written by ``features.population`` hold one row per merchant, so the
    common case streams the file row group by row group with bounded memory; a table
    with several rows per entity in the window goes through a group-by first.
    """
    path = settings.offline_dir / f"{view.name}.parquet"
    if not path.exists():
        raise FeatureConfigError(f"offline table {path} missing: run `creditauth data generate`")
    windowed = _window(pl.scan_parquet(path), start, end)
    counts = windowed.select(pl.len().alias("rows"), pl.col(catalog.JOIN_KEY).n_unique().alias("keys"))
    stats = counts.collect(engine="streaming")
    if stats["rows"][0] == stats["keys"][0]:
        pending: list[pl.DataFrame] = []
        size = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_CHUNK):
            frame = _window(pl.from_arrow(batch).lazy(), start, end).collect()  # type: ignore[union-attr]
            if frame.height:
                pending.append(frame)
                size += frame.height
            if size >= _CHUNK:
                yield pl.concat(pending)
                pending, size = [], 0
        if pending:
            yield pl.concat(pending)
        return
    latest = (
        windowed.sort(["event_timestamp", "created_timestamp"])
        .group_by(catalog.JOIN_KEY, maintain_order=True)
        .last()
        .sort(catalog.JOIN_KEY)
        .collect(engine="streaming")
    )
    for offset in range(0, latest.height, _CHUNK):
        yield latest.slice(offset, _CHUNK)


def _sorted_bounds(path: Path) -> list[str] | None:
    """Upper merchant ids of ~``_CHUNK``-row ranges, from the row groups' statistics, if the
    file is sorted by merchant (row groups in order, not overlapping); otherwise None."""
    meta = pq.ParquetFile(path).metadata
    col = meta.schema.to_arrow_schema().get_field_index(catalog.JOIN_KEY)
    bounds: list[str] = []
    rows = 0
    prev_max: str | None = None
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        stats = rg.column(col).statistics
        if stats is None or not stats.has_min_max:
            return None
        lo, hi = str(stats.min), str(stats.max)
        if prev_max is not None and lo <= prev_max:
            return None
        prev_max = hi
        rows += rg.num_rows
        if rows >= _CHUNK:
            bounds.append(hi)
            rows = 0
    if prev_max is not None and (not bounds or bounds[-1] != prev_max):
        bounds.append(prev_max)
    return bounds


def aligned_chunks(
    settings: FeatureSettings, views: tuple[catalog.FeatureView, ...], start: dt.datetime, end: dt.datetime
) -> Iterator[tuple[list[str], dict[str, pl.DataFrame]]] | None:
    """Every view's rows for the same merchants, chunk by chunk, aligned row for row.

    Possible when each offline table has one row per merchant in the window and is sorted
    by merchant (as ``features.population`` writes them): then key ranges taken from the
    largest table's row-group statistics split every table the same way, and each range is
    read with row-group pruning. Returns None when that does not hold.
    """
    paths = {v.name: settings.offline_dir / f"{v.name}.parquet" for v in views}
    for path in paths.values():
        if not path.exists():
            raise FeatureConfigError(f"offline table {path} missing: run `creditauth data generate`")
    for v in views:
        stats = _window(pl.scan_parquet(paths[v.name]), start, end).select(
            pl.len().alias("rows"), pl.col(catalog.JOIN_KEY).n_unique().alias("keys")
        ).collect(engine="streaming")
        if stats["rows"][0] != stats["keys"][0]:
            return None
    biggest = max(paths.values(), key=lambda p: pq.ParquetFile(p).metadata.num_rows)
    bounds = _sorted_bounds(biggest)
    if bounds is None:
        return None

    def chunks() -> Iterator[tuple[list[str], dict[str, pl.DataFrame]]]:
        key = pl.col(catalog.JOIN_KEY)
        lows: list[str | None] = [None, *bounds]
        highs: list[str | None] = [*bounds, None]  # the last range is open: nothing is missed
        for lo, hi in zip(lows, highs, strict=True):
            cond = pl.lit(True)
            if lo is not None:
                cond = cond & (key > lo)
            if hi is not None:
                cond = cond & (key <= hi)
            frames = {
                name: _window(pl.scan_parquet(path), start, end).filter(cond).collect()
                for name, path in paths.items()
            }
            ids = pl.concat([f.select(catalog.JOIN_KEY) for f in frames.values()]).unique().sort(catalog.JOIN_KEY)
            if ids.height == 0:
                continue
            aligned = {name: ids.join(f, on=catalog.JOIN_KEY, how="left", maintain_order="left")
                       for name, f in frames.items()}
            yield ids[catalog.JOIN_KEY].to_list(), aligned

    return chunks()


def _prefetched(items: Iterator[_T]) -> Iterator[_T]:
    """Produce the next item in a thread while the caller consumes this one.

    Reading and aligning a chunk (parquet, joins: polars releases the GIL) then overlaps
    with writing the previous one, so the online store never waits for the offline side.
    """
    q: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((False, exc))

    worker = threading.Thread(target=produce, name="materialize-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                if isinstance(item, BaseException):
                    raise item
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
            worker.join(timeout=0.05)


def materialize(
    settings: FeatureSettings,
    start: dt.datetime,
    end: dt.datetime,
    *,
    views: tuple[catalog.FeatureView, ...] = catalog.ALL_VIEWS,
    progress: Callable[[int], None] | None = None,
    dedup: bool = True,
) -> MaterializeReport:
    """Write the latest offline row per merchant of every view into the online store.

    ``progress`` is called with the number of entity rows after each chunk.
    """
    t0 = time.perf_counter()
    store = open_store(settings)
    writer = open_backend(settings).writer(dedup=dedup)
    entities = values = 0
    # The tag bitset first: its value is over Redis's listpack limit (64 bytes), so the
    # entity's hash becomes a real hash table at once and every later field is an O(1)
    # insert instead of a scan of a growing listpack (~35% less Redis time measured).
    ordered = sorted(views, key=lambda v: v is not catalog.TAGS)
    try:
        chunks = aligned_chunks(settings, tuple(ordered), start, end) if writer.aligned else None
        if chunks is not None:
            # One command per merchant for all views (on Redis a fifth of the commands).
            for ids, frames in _prefetched(chunks):
                keys = layout.entity_keys(ids)
                values += writer.write_entities([(v, frames[v.name]) for v in ordered], keys)
                rows = sum(int(f["event_timestamp"].is_not_null().sum()) for f in frames.values())
                entities += rows
                if progress is not None:
                    progress(rows)
            for view in ordered:
                store.registry.apply_materialization(
                    store.get_feature_view(view.name), settings.project, start, end, commit=True
                )
        else:
            for view in ordered:
                for frame in _prefetched(latest_rows(settings, view, start, end)):
                    keys = layout.entity_keys(frame[catalog.JOIN_KEY].to_list())
                    values += writer.write(view, frame, keys)
                    entities += frame.height
                    if progress is not None:
                        progress(frame.height)
                store.registry.apply_materialization(
                    store.get_feature_view(view.name), settings.project, start, end, commit=True
                )
    finally:
        writer.close()
    return MaterializeReport(len(views), entities, values, time.perf_counter() - t0)


def materialize_with_feast(settings: FeatureSettings, start: dt.datetime, end: dt.datetime) -> float:
    """``feast materialize`` itself, for comparison; returns seconds taken."""
    store = open_store(settings)
    t0 = time.perf_counter()
    store.materialize(start, end)
    return time.perf_counter() - t0
