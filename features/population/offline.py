"""Raw parts -> the offline tables Feast's file sources point at, one merchant chunk at a time.

``generate`` writes each chunk of merchants to ``part-NNNNN.parquet`` of every raw table,
so part ``k`` of ``flows`` and ``bureau`` holds exactly the merchants of part ``k`` of
``merchants``. Each offline table is one parquet file written row group by row group
(a chunk per row group), so peak memory is one chunk whatever the population size:

1. per chunk: flow aggregates, profile, bureau, velocity seed, baseline (revenue against
   its own profile, usual application rate from ``applications``) -> appended to their
   files; the joined rows the tag rules need -> a temporary part file;
2. tag thresholds from the flow table, one column at a time;
3. per temporary part: evaluate and pack the tags -> appended to ``merchant_tags``.

Every step is therefore linear in the population with bounded memory (measured figures
in docs/benchmarks/features.md).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.early_warning.baseline import baseline_table
from features.early_warning.scan import add_segment_shares
from features.errors import FeatureDataError
from features.population import aggregate
from features.population.generate import raw_dir
from features.population.tags import TagRules, thresholds

# build_offline_tables reports every merchant once per pass.
PASSES = 2
_STAMPS = ["event_timestamp", "created_timestamp"]
_TABLES = ("merchant_flows", "merchant_profile", "merchant_bureau", "merchant_velocity", "merchant_baseline")


def offline_dir(data_dir: Path) -> Path:
    return data_dir / "offline"


class _Appender:
    """Appends polars frames to one parquet file, one row group per frame."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self._writer is None:
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self._path, self._schema, compression="zstd")
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def build_offline_tables(
    data_dir: Path, as_of: dt.date, *, progress: Callable[[int], None] | None = None
) -> dict[str, Path]:
    """Write the offline feature tables and the tag catalogue; returns the tables' paths.

    ``progress`` is called with a number of merchants after each chunk of each pass;
    over the whole call it adds up to ``PASSES`` x the population.
    """
    raw = raw_dir(data_dir)
    out = offline_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".tag_input"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    ts = dt.datetime.combine(as_of, dt.time(), tzinfo=dt.timezone.utc)
    stamp = [pl.lit(ts).alias("event_timestamp"), pl.lit(ts).alias("created_timestamp")]
    paths = {name: out / f"{name}.parquet" for name in (*_TABLES, "merchant_tags")}
    writers = {name: _Appender(paths[name]) for name in _TABLES}
    parts = sorted((raw / "merchants").glob("part-*.parquet"))
    if not parts:
        raise FeatureDataError(f"no raw merchant parts under {raw}: run `creditauth data generate`")
    try:
        for part in parts:
            merchants = pl.read_parquet(part)
            flows = pl.read_parquet(raw / "flows" / part.name)
            bureau = pl.read_parquet(raw / "bureau" / part.name)
            apps_part = raw / "applications" / part.name
            # No applications part: no history to take a usual rate from (null, not zero).
            applications = pl.read_parquet(apps_part) if apps_part.exists() else None
            tables = {
                "merchant_flows": aggregate.flow_table(merchants, flows, as_of, stamp),
                "merchant_profile": aggregate.profile_table(merchants, stamp),
                "merchant_bureau": aggregate.bureau_table(bureau, stamp),
                "merchant_velocity": aggregate.velocity_seed(merchants, stamp),
                "merchant_baseline": baseline_table(merchants, flows, as_of, stamp, applications),
            }
            for name, frame in tables.items():
                writers[name].write(frame)
            (
                tables["merchant_flows"]
                .join(tables["merchant_profile"].drop(_STAMPS), on="merchant_id")
                .join(tables["merchant_bureau"].drop(_STAMPS), on="merchant_id", how="left")
                .sort("merchant_id")
                .write_parquet(work / part.name)
            )
            if progress is not None:
                progress(merchants.height)
    finally:
        for w in writers.values():
            w.close()

    add_segment_shares(paths["merchant_baseline"], paths["merchant_profile"])
    flow_path = paths["merchant_flows"]
    rules = TagRules(thresholds(lambda c: pl.read_parquet(flow_path, columns=[c]).to_series()))
    rules.write_catalog(out / "tag_catalog.json")
    tags = _Appender(paths["merchant_tags"])
    try:
        for part in sorted(work.glob("part-*.parquet")):
            joined = pl.read_parquet(part)
            tags.write(rules.pack(joined).select("merchant_id", *stamp, "tags"))
            if progress is not None:
                progress(joined.height)
    finally:
        tags.close()
    shutil.rmtree(work)
    return paths

