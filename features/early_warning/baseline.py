"""A merchant's revenue against its own history: a robust z-score of the last week (polars).

The absolute thresholds a policy had before (``rev_growth_30d < -0.3``) treat a volatile
online shop and a steady pharmacy alike. Here each merchant is its own yardstick: the
revenue of the last 7 days against the profile of the ``PROFILE_WEEKS`` weeks (91 days)
before them, as a robust z-score::

    rev_robust_z_7d = (week_0 - median(week_1..13)) / (1.4826 * MAD(week_1..13))

Whole weeks, not days: a day's revenue is dominated by noise and the day of the week (a
factory's Sunday is not a drop), so a median of 7 days against the MAD of 90 single days
hardly moves when revenue halves (docs/warnings.md, "Why weeks"). Medians and MAD, not mean and standard
deviation: one exceptional week neither hides nor fakes a drop; 1.4826 x MAD estimates the
standard deviation of normal noise. The profile ends where the recent week starts, so a
drop does not dilute its own baseline.

Only whole weeks from the merchant's first trading day on count (the weeks before it
opened are not its history). Missing (null) rather than a number: fewer than
``MIN_PROFILE_WEEKS`` profile weeks, no whole recent week, or a profile with MAD 0 (a
z-score would be infinite or undefined).
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from features.early_warning.usual import USUAL_COLUMNS, usual_rate_frame

WEEK = 7
PROFILE_WEEKS = 13
MIN_PROFILE_WEEKS = 4
MAD_SCALE = 1.4826  # MAD x this = sigma for normal noise
# The revenue columns of the ``merchant_baseline`` view, in the catalogue's order (the
# segment shares and the usual application rate follow them there).
BASELINE_COLUMNS: tuple[str, ...] = (
    "rev_recent_7d",  # revenue of the last 7 days (major units)
    "rev_profile_median_7d",  # median weekly revenue of the 13 weeks before them
    "rev_profile_mad_7d",  # median absolute deviation of those weekly revenues
    "rev_robust_z_7d",  # (recent - median) / (1.4826 * MAD); null when undefined
    "rev_change_7d",  # recent / median - 1; null when the median is 0
)


def _weeks(flows: pl.LazyFrame, ids: pl.LazyFrame, as_of: dt.date) -> pl.LazyFrame:
    """One row per merchant and whole week it traded in (week 0 = the last 7 days), zero-filled."""
    start = as_of - dt.timedelta(days=WEEK * (PROFILE_WEEKS + 1))
    week = ((pl.lit(as_of) - pl.col("day")).dt.total_days() - 1) // WEEK
    sums = (
        flows.filter((pl.col("day") >= start) & (pl.col("day") < as_of))
        .group_by("merchant_id", week.alias("week"))
        .agg((pl.col("gross_minor").sum() / 100.0).alias("rev"))
    )
    first = flows.filter(pl.col("day") < as_of).group_by("merchant_id").agg(pl.col("day").min().alias("first"))
    grid = pl.LazyFrame({"week": list(range(PROFILE_WEEKS + 1))}, schema={"week": pl.Int64})
    week_start = pl.lit(as_of) - pl.duration(days=WEEK * (pl.col("week") + 1))
    return (
        ids.join(first, on="merchant_id", how="inner")
        .join(grid, how="cross")
        .filter(week_start >= pl.col("first"))
        .join(sums, on=["merchant_id", "week"], how="left")
        .with_columns(pl.col("rev").fill_null(0.0))
    )


def baseline_frame(flows: pl.LazyFrame | pl.DataFrame, as_of: dt.date,
                   merchants: pl.LazyFrame | pl.DataFrame | None = None) -> pl.DataFrame:
    """Per merchant: ``merchant_id`` and ``BASELINE_COLUMNS`` (float64), sorted by id.

    ``flows``: daily register totals (``merchant_id``, ``day``, ``gross_minor``); only days
    before ``as_of`` are read. ``merchants``: a frame with ``merchant_id`` naming every
    merchant to answer for (default: those in ``flows``); one that never traded gets nulls.
    """
    lf = flows.lazy()
    ids = (merchants.lazy() if merchants is not None else lf).select("merchant_id").unique()
    rev, recent = pl.col("rev"), pl.col("week") == 0
    prof = rev.filter(~recent)
    stats = _weeks(lf, ids, as_of).group_by("merchant_id").agg(
        rev.filter(recent).sum().alias("week0"),
        recent.sum().alias("n0"),
        prof.median().alias("med"),
        (prof - prof.median()).abs().median().alias("mad"),
        (~recent).sum().alias("n"),
    )
    has_profile = pl.col("n") >= MIN_PROFILE_WEEKS
    both = has_profile & (pl.col("n0") == 1)
    out = ids.join(stats, on="merchant_id", how="left").select(
        "merchant_id",
        pl.when(pl.col("n0") == 1).then(pl.col("week0")).alias("rev_recent_7d"),
        pl.when(has_profile).then(pl.col("med")).alias("rev_profile_median_7d"),
        pl.when(has_profile).then(pl.col("mad")).alias("rev_profile_mad_7d"),
        pl.when(both & (pl.col("mad") > 0))
        .then((pl.col("week0") - pl.col("med")) / (MAD_SCALE * pl.col("mad")))
        .alias("rev_robust_z_7d"),
        pl.when(both & (pl.col("med") > 0)).then(pl.col("week0") / pl.col("med") - 1.0).alias("rev_change_7d"),
    )
    return out.sort("merchant_id").collect()


def baseline_table(merchants: pl.DataFrame, flows: pl.DataFrame, as_of: dt.date,
                   stamp: list[pl.Expr], applications: pl.DataFrame | None = None) -> pl.DataFrame:
    """The ``merchant_baseline`` offline rows of one chunk of merchants (float32, sorted by id):
    the revenue columns, then the usual application rate (``features.early_warning.usual``;
    ``applications`` None: no history, null). The segment shares are added afterwards, in
    a pass over every chunk (``scan.add_segment_shares``), in the catalogue's order."""
    ids = merchants.select("merchant_id")
    frame = baseline_frame(flows, as_of, ids).join(
        usual_rate_frame(applications, flows, as_of, ids), on="merchant_id", how="left")
    return frame.select(
        "merchant_id", *stamp, *(pl.col(c).cast(pl.Float32) for c in (*BASELINE_COLUMNS, *USUAL_COLUMNS))
    ).sort("merchant_id")
