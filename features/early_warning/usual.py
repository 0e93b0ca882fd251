"""A merchant's usual rate of credit applications, from the offline applications history (polars).

The live velocity counts (``apps_1h``, ``apps_24h``, ``features.velocity``) only say how
many applications a merchant made lately; an absolute threshold treats a chain that
refinances weekly and a corner shop that applies once a year alike. This is the
yardstick to compare them with, materialized with the ``merchant_baseline`` view::

    apps_usual_per_day = applications in the USUAL_DAYS (90) days before as_of
                         / days of that window the merchant was trading

"Trading" runs from the merchant's first day in the register flows (the same first day
the revenue baseline starts from), not only the days with a sale: a merchant applies on
closed days too, and dividing by sale days would inflate the rate of a seasonal shop.
Applications dated before that first day are not counted either, so numerator and
denominator cover the same span.

Missing (null) rather than a number: a merchant with no flows, or trading for fewer than
``MIN_USUAL_DAYS`` days of the window (a rate over a few days says little, as a profile
of fewer than 4 weeks does for the revenue baseline). A merchant trading long enough
with no application gets 0.0: its usual rate is known to be nil.

The applications table names the day of each application in ``applied_on`` (a date). A
table without that column (the synthetic population's: each merchant has one historical
application, dated at the snapshot) has every application counted on the last day of the
history, ``as_of - 1``; so in that world most usual rates are 1/90 or a little more.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

USUAL_DAYS = 90
MIN_USUAL_DAYS = 28
DAY_COLUMN = "applied_on"
# The columns this module adds to the ``merchant_baseline`` view, in the catalogue's order.
USUAL_COLUMNS: tuple[str, ...] = (
    "apps_usual_per_day",  # applications per trading day over the last 90 days; null when unknown
)


def _dated(applications: pl.LazyFrame, as_of: dt.date) -> pl.LazyFrame:
    """``merchant_id``, ``day`` of every application (undated ones on the history's last day)."""
    dated = DAY_COLUMN in applications.collect_schema().names()
    day = pl.col(DAY_COLUMN).cast(pl.Date) if dated else pl.lit(as_of - dt.timedelta(days=1))
    return applications.select("merchant_id", day.alias("day"))


def usual_rate_frame(applications: pl.LazyFrame | pl.DataFrame | None, flows: pl.LazyFrame | pl.DataFrame,
                     as_of: dt.date, merchants: pl.LazyFrame | pl.DataFrame | None = None) -> pl.DataFrame:
    """Per merchant: ``merchant_id`` and ``apps_usual_per_day`` (float64), sorted by id.

    ``applications``: one row per application (``merchant_id``, optionally ``applied_on``);
    None when there is no applications history at all: every rate is then null, as nothing
    is known. ``flows``: daily register totals (``merchant_id``, ``day``), read for each
    merchant's first trading day before ``as_of``. ``merchants`` names every merchant to
    answer for (default: those in ``flows``).
    """
    lf = flows.lazy()
    ids = (merchants.lazy() if merchants is not None else lf).select("merchant_id").unique()
    if applications is None:
        return ids.select("merchant_id", pl.lit(None, pl.Float64).alias("apps_usual_per_day")).sort(
            "merchant_id").collect()
    window = as_of - dt.timedelta(days=USUAL_DAYS)
    first = lf.filter(pl.col("day") < as_of).group_by("merchant_id").agg(pl.col("day").min().alias("first"))
    span = ids.join(first, on="merchant_id", how="left").with_columns(
        pl.max_horizontal(pl.col("first"), pl.lit(window)).alias("start"))
    days = (pl.lit(as_of) - pl.col("start")).dt.total_days()
    counted = (
        _dated(applications.lazy(), as_of)
        .join(span.select("merchant_id", "start"), on="merchant_id", how="inner")
        .filter((pl.col("day") >= pl.col("start")) & (pl.col("day") < as_of))
        .group_by("merchant_id")
        .agg(pl.len().alias("apps"))
    )
    out = span.join(counted, on="merchant_id", how="left").select(
        "merchant_id",
        # max_horizontal skips nulls: a merchant with no flows has a start but no first day.
        pl.when(pl.col("first").is_not_null() & (days >= MIN_USUAL_DAYS))
        .then(pl.col("apps").fill_null(0).cast(pl.Float64) / days)
        .alias("apps_usual_per_day"),
    )
    return out.sort("merchant_id").collect()
