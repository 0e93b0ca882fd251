"""The early-warning scan: merchants and segments whose revenue changed suddenly (polars).

Per merchant, the last week against its own 13-week profile (``baseline``): a merchant
is flagged when its robust z-score and its relative change both pass their thresholds
(the z-score alone flags a tiny move of a merchant whose profile is nearly flat, the
change alone flags a merchant whose revenue always swings that much).

Per segment (a region, an industry), the share of its merchants flagged. A shock that
hits a whole region shows as a share many times the usual one: a segment is flagged when
its share is at least ``segment_share`` and ``segment_lift`` times the median share of its
kind of segment (so a noisy week that lifts every share does not flag them all), with at
least ``min_segment`` merchants scored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features.catalog import BASELINE_FEATURES
from features.early_warning.baseline import baseline_frame
from features.errors import FeatureConfigError

MERCHANT_CODE = "EW_MERCHANT_REVENUE_DROP"
SEGMENT_CODES = {"region": "EW_REGION_SHOCK", "industry": "EW_INDUSTRY_SHOCK"}
WARNING_SCHEMA = {
    "as_of": pl.Date, "kind": pl.String, "subject": pl.String, "signal": pl.String, "value": pl.Float64,
    "threshold": pl.Float64, "reason_code": pl.String, "reason": pl.String, "merchants": pl.Int64,
    "region": pl.String, "industry": pl.String,
}


@dataclass(frozen=True)
class Thresholds:
    z: float = -2.5  # flag a merchant at or below this robust z-score ...
    change: float = -0.4  # ... and at or below this change against its profile median
    segment_share: float = 0.10  # flag a segment with at least this share of merchants flagged ...
    segment_lift: float = 2.5  # ... at least this many times its kind's median share ...
    min_segment: int = 20  # ... and at least this many merchants scored


@dataclass(frozen=True)
class ScanResult:
    as_of: dt.date
    merchants: pl.DataFrame  # merchant_id, region, industry, baseline columns, flagged
    segments: pl.DataFrame  # kind, subject, merchants, dropped, share, median_share, flagged
    warnings: pl.DataFrame  # WARNING_SCHEMA: one row per flagged merchant or segment
    thresholds: Thresholds


def _parts(data_dir: Path) -> list[Path]:
    parts = sorted((data_dir / "raw" / "flows").glob("part-*.parquet"))
    if not parts or not (data_dir / "raw" / "merchants").is_dir():
        raise FeatureConfigError(f"no daily flows under {data_dir / 'raw'}: run `creditauth data generate`")
    return parts


def latest_as_of(data_dir: Path) -> dt.date:
    """The day after the last day with flows: the scan's default ``as_of``."""
    last = pl.scan_parquet(_parts(data_dir)).select(pl.col("day").max()).collect().item()
    return last + dt.timedelta(days=1)  # type: ignore[no-any-return]


def merchant_signals(data_dir: Path, as_of: dt.date, th: Thresholds,
                     progress: Callable[[int], None] | None = None) -> pl.DataFrame:
    """Each merchant's baseline and whether it is flagged; one flows part at a time
    (each part holds whole merchants, so memory is one part)."""
    frames = []
    for part in _parts(data_dir):
        merchants = pl.read_parquet(data_dir / "raw" / "merchants" / part.name,
                                    columns=["merchant_id", "region", "industry"])
        base = baseline_frame(pl.scan_parquet(part), as_of, merchants.select("merchant_id"))
        frames.append(merchants.join(base, on="merchant_id", how="left"))
        if progress is not None:
            progress(merchants.height)
    return pl.concat(frames).with_columns(flagged(th)).sort("merchant_id")


def flagged(th: Thresholds) -> pl.Expr:
    """A merchant's flag: both its z-score and its change at or below their thresholds."""
    hit = (pl.col("rev_robust_z_7d") <= th.z) & (pl.col("rev_change_7d") <= th.change)
    return hit.fill_null(False).alias("flagged")


def segment_signals(merchants: pl.DataFrame, th: Thresholds) -> pl.DataFrame:
    """Per region and per industry: merchants scored, flagged, the share and whether flagged."""
    scored = merchants.filter(pl.col("rev_robust_z_7d").is_not_null())
    frames = []
    for kind in ("region", "industry"):
        frames.append(
            scored.group_by(pl.col(kind).alias("subject"))
            .agg(pl.len().cast(pl.Int64).alias("merchants"), pl.col("flagged").sum().cast(pl.Int64).alias("dropped"))
            .with_columns(pl.lit(kind).alias("kind"), (pl.col("dropped") / pl.col("merchants")).alias("share"))
        )
    seg = pl.concat(frames).with_columns(pl.col("share").median().over("kind").alias("median_share"))
    flagged = (
        (pl.col("merchants") >= th.min_segment)
        & (pl.col("share") >= th.segment_share)
        & (pl.col("share") >= th.segment_lift * pl.col("median_share"))
    )
    return seg.with_columns(flagged.alias("flagged")).select(
        "kind", "subject", "merchants", "dropped", "share", "median_share", "flagged"
    ).sort("kind", "subject")


def segment_shares(merchants: pl.DataFrame, th: Thresholds) -> pl.DataFrame:
    """Per merchant: the share of its region's and of its industry's merchants flagged
    (``region_drop_share``, ``industry_drop_share``), null for a segment with fewer than
    ``min_segment`` merchants scored (too few for a share to mean anything)."""
    seg = segment_signals(merchants, th).filter(pl.col("merchants") >= th.min_segment)
    out = merchants.select("merchant_id", "region", "industry")
    for kind in ("region", "industry"):
        shares = seg.filter(pl.col("kind") == kind).select(
            pl.col("subject").alias(kind), pl.col("share").alias(f"{kind}_drop_share"))
        out = out.join(shares, on=kind, how="left")
    return out.select("merchant_id", "region_drop_share", "industry_drop_share")


def add_segment_shares(baseline_path: Path, profile_path: Path, th: Thresholds | None = None) -> None:
    """Add the segment shares to the ``merchant_baseline`` offline table (rewritten in place).

    A second pass because a share needs every merchant of a segment, and the offline
    build sees one chunk at a time; it reads the baseline's z-scores and the profile's
    region and industry codes, a few columns of the population, not its flows.
    """
    th = th or Thresholds()
    base = pl.read_parquet(baseline_path).drop("region_drop_share", "industry_drop_share", strict=False)
    prof = pl.read_parquet(profile_path, columns=["merchant_id", "region_code", "industry_code"]).select(
        "merchant_id", pl.col("region_code").cast(pl.String).alias("region"),
        pl.col("industry_code").cast(pl.String).alias("industry"))
    merchants = base.join(prof, on="merchant_id", how="left").with_columns(flagged(th))
    shares = segment_shares(merchants, th).with_columns(pl.col("^.*_drop_share$").cast(pl.Float32))
    joined = base.join(shares, on="merchant_id", how="left", maintain_order="left")
    # In the catalogue's order: columns added to the view after the shares stay after them.
    keys = [c for c in joined.columns if c not in BASELINE_FEATURES]
    joined.select(*keys, *(c for c in BASELINE_FEATURES if c in joined.columns)).write_parquet(
        baseline_path, compression="zstd")


def _merchant_warnings(m: pl.DataFrame, as_of: dt.date, th: Thresholds) -> pl.DataFrame:
    return m.filter("flagged").select(
        pl.lit(as_of).alias("as_of"), pl.lit("merchant").alias("kind"), pl.col("merchant_id").alias("subject"),
        pl.lit("rev_robust_z_7d").alias("signal"), pl.col("rev_robust_z_7d").alias("value"),
        pl.lit(th.z).alias("threshold"), pl.lit(MERCHANT_CODE).alias("reason_code"),
        pl.format("last 7 days' revenue {} ({}% against its 13-week median {}), robust z {}",
                  pl.col("rev_recent_7d").round(0), (pl.col("rev_change_7d") * 100).round(0),
                  pl.col("rev_profile_median_7d").round(0), pl.col("rev_robust_z_7d").round(2)).alias("reason"),
        pl.lit(1, pl.Int64).alias("merchants"), "region", "industry",
    )


def _segment_warnings(seg: pl.DataFrame, as_of: dt.date, th: Thresholds) -> pl.DataFrame:
    return seg.filter("flagged").select(
        pl.lit(as_of).alias("as_of"), "kind", "subject", pl.lit("share_dropped").alias("signal"),
        pl.col("share").alias("value"),
        pl.max_horizontal(pl.lit(th.segment_share), th.segment_lift * pl.col("median_share")).alias("threshold"),
        pl.col("kind").replace_strict(SEGMENT_CODES).alias("reason_code"),
        pl.format("{} of {} merchants ({}%) lost revenue against their own baseline; usual share {}%",
                  "dropped", "merchants", (pl.col("share") * 100).round(1),
                  (pl.col("median_share") * 100).round(1)).alias("reason"),
        "merchants",
        pl.when(pl.col("kind") == "region").then("subject").alias("region"),
        pl.when(pl.col("kind") == "industry").then("subject").alias("industry"),
    )


def scan(data_dir: Path, as_of: dt.date | None = None, *, thresholds: Thresholds | None = None,
         progress: Callable[[int], None] | None = None) -> ScanResult:
    """Scan the population under ``data_dir`` as of ``as_of`` (default: the day after the
    last flows). ``progress`` is called with a number of merchants after each part."""
    th = thresholds or Thresholds()
    day = as_of or latest_as_of(data_dir)
    merchants = merchant_signals(data_dir, day, th, progress)
    seg = segment_signals(merchants, th)
    warnings = pl.concat([_segment_warnings(seg, day, th), _merchant_warnings(merchants, day, th)])
    return ScanResult(day, merchants, seg, warnings.cast(WARNING_SCHEMA).select(list(WARNING_SCHEMA)), th)  # type: ignore[arg-type]


def write_warnings(result: ScanResult, path: Path) -> Path:
    """The warnings table as Parquet (and the segment table beside it, ``<stem>.segments.parquet``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    result.warnings.write_parquet(path)
    result.segments.with_columns(pl.lit(result.as_of).alias("as_of")).write_parquet(
        path.with_name(f"{path.stem}.segments.parquet"))
    return path
