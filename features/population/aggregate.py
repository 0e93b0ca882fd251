"""Raw flows -> the window aggregates and profile tables Feast serves (polars).

The pipeline is lazy over the parquet parts and runs on polars' streaming
engine, so it works on populations larger than memory. Window statistics count
every calendar day of the window (a day without trade is a zero-revenue day),
which is what a lender means by "average daily revenue".
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from features.population import world
from features.population.generate import raw_dir

WINDOWS: tuple[int, ...] = (7, 30, 90, 180)
FLOW_STATS: tuple[str, ...] = (
    "rev_mean",
    "rev_cv",
    "rev_trend",
    "rev_growth",
    "active_days",
    "refund_ratio",
    "distinct_customers",
    "ticket_mean",
    "night_share",
)
FLOW_FEATURES: tuple[str, ...] = tuple(f"{s}_{w}d" for w in WINDOWS for s in FLOW_STATS)
PROFILE_FEATURES: tuple[str, ...] = (
    "business_age_days",
    "industry_code",
    "region_code",
    "segment_code",
    "customer_base",
)
BUREAU_FEATURES: tuple[str, ...] = (
    "existing_debt_minor",
    "credit_utilisation",
    "delinquencies_12m",
    "inquiries_6m",
    "oldest_account_months",
)


def offline_dir(data_dir: Path) -> Path:
    return data_dir / "offline"


def _window_exprs(w: int, as_of: dt.date) -> list[pl.Expr]:
    start = as_of - dt.timedelta(days=w)
    inw = pl.col("day") >= start
    # Day index inside the window, 0..w-1, for the least-squares trend.
    t = (pl.col("day") - pl.lit(start)).dt.total_days().cast(pl.Float64)
    rev = pl.col("gross_minor").cast(pl.Float64) / 100.0
    s = rev.filter(inw).sum()
    ss = (rev * rev).filter(inw).sum()
    sty = (t * rev).filter(inw).sum()
    mean = s / w
    t_mean = (w - 1) / 2.0
    t_ss = sum((i - t_mean) ** 2 for i in range(w))
    txn = pl.col("txn_count").filter(inw).sum().cast(pl.Float64)
    gross = pl.col("gross_minor").filter(inw).sum().cast(pl.Float64)
    if w < 180:
        prior = rev.filter((pl.col("day") >= start - dt.timedelta(days=w)) & ~inw).sum()
        growth = pl.when(prior > 0).then(s / prior - 1.0)
    else:
        # No prior 180-day window in a 180-day history: last 60 days over the first 60.
        last = rev.filter(pl.col("day") >= as_of - dt.timedelta(days=60)).sum()
        first = rev.filter(pl.col("day") < start + dt.timedelta(days=60)).sum()
        growth = pl.when(first > 0).then(last / first - 1.0)
    var = (ss / w - mean * mean) * (w / (w - 1))
    slope = (sty - t_mean * s) / t_ss
    base = pl.col("customer_base").first().cast(pl.Float64)
    return [
        mean.alias(f"rev_mean_{w}d"),
        pl.when(mean > 0).then(var.clip(lower_bound=0.0).sqrt() / mean).alias(f"rev_cv_{w}d"),
        pl.when(mean > 0).then(slope / mean).alias(f"rev_trend_{w}d"),
        growth.alias(f"rev_growth_{w}d"),
        pl.col("day").filter(inw).count().cast(pl.Float64).alias(f"active_days_{w}d"),
        pl.when(gross > 0)
        .then(pl.col("refund_minor").filter(inw).sum() / gross)
        .alias(f"refund_ratio_{w}d"),
        (base * -((txn * (-1.0 / base).log1p()).exp() - 1.0)).alias(f"distinct_customers_{w}d"),
        pl.when(txn > 0).then(gross / txn / 100.0).alias(f"ticket_mean_{w}d"),
        pl.when(txn > 0)
        .then(pl.col("night_txn_count").filter(inw).sum() / txn)
        .alias(f"night_share_{w}d"),
    ]


def build_offline_tables(data_dir: Path, as_of: dt.date) -> dict[str, Path]:
    """Write the offline feature tables Feast's file sources point at; returns their paths."""
    raw = raw_dir(data_dir)
    out = offline_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    ts = dt.datetime.combine(as_of, dt.time(), tzinfo=dt.timezone.utc)
    stamp = [
        pl.lit(ts).alias("event_timestamp"),
        pl.lit(ts).alias("created_timestamp"),
    ]
    merchants = pl.scan_parquet(raw / "merchants" / "*.parquet")
    flows = pl.scan_parquet(raw / "flows" / "*.parquet").join(
        merchants.select("merchant_id", "customer_base"), on="merchant_id"
    )
    exprs = [e for w in WINDOWS for e in _window_exprs(w, as_of)]
    agg = flows.group_by("merchant_id").agg(exprs)
    # Merchants with no trade at all in 180 days still get a row (all zeros/nulls).
    flow_table = (
        merchants.select("merchant_id")
        .join(agg, on="merchant_id", how="left")
        .with_columns(
            [pl.col(f"rev_mean_{w}d").fill_null(0.0) for w in WINDOWS]
            + [pl.col(f"active_days_{w}d").fill_null(0.0) for w in WINDOWS]
        )
        .select("merchant_id", *stamp, *[pl.col(f).cast(pl.Float32) for f in FLOW_FEATURES])
        .sort("merchant_id")
    )
    paths = {
        "merchant_flows": out / "merchant_flows.parquet",
        "merchant_profile": out / "merchant_profile.parquet",
        "merchant_bureau": out / "merchant_bureau.parquet",
    }
    flow_table.sink_parquet(paths["merchant_flows"])

    code = {
        "industry_code": {i.name: k for k, i in enumerate(world.INDUSTRIES)},
        "region_code": {r: k for k, r in enumerate(world.REGIONS)},
        "segment_code": {s: k for k, s in enumerate(world.SEGMENTS)},
    }
    merchants.select(
        "merchant_id",
        *stamp,
        pl.col("business_age_days").cast(pl.Int64),
        pl.col("industry").replace_strict(code["industry_code"], return_dtype=pl.Int64).alias("industry_code"),
        pl.col("region").replace_strict(code["region_code"], return_dtype=pl.Int64).alias("region_code"),
        pl.col("segment").replace_strict(code["segment_code"], return_dtype=pl.Int64).alias("segment_code"),
        pl.col("customer_base").cast(pl.Int64),
    ).sort("merchant_id").sink_parquet(paths["merchant_profile"])

    pl.scan_parquet(raw / "bureau" / "*.parquet").select(
        "merchant_id",
        *stamp,
        pl.col("existing_debt_minor").cast(pl.Int64),
        pl.col("credit_utilisation").cast(pl.Float32),
        pl.col("delinquencies_12m").cast(pl.Int64),
        pl.col("inquiries_6m").cast(pl.Int64),
        pl.col("oldest_account_months").cast(pl.Int64),
    ).sort("merchant_id").sink_parquet(paths["merchant_bureau"])

    # Tags need every table joined; derive them in merchant chunks.
    from features.population.tags import derive_tags

    joined = (
        pl.scan_parquet(paths["merchant_flows"])
        .join(pl.scan_parquet(paths["merchant_profile"]).drop(_STAMPS), on="merchant_id")
        .join(pl.scan_parquet(paths["merchant_bureau"]).drop(_STAMPS), on="merchant_id", how="left")
        .sort("merchant_id")
        .collect(engine="streaming")
    )
    tags = derive_tags(joined, out / "tag_catalog.json")
    paths["merchant_tags"] = out / "merchant_tags.parquet"
    tags.select("merchant_id", *stamp, "tags").write_parquet(paths["merchant_tags"])
    del joined

    # Velocity starts at zero for everyone; authorizations push updates online.
    paths["merchant_velocity"] = out / "merchant_velocity.parquet"
    merchants.select(
        "merchant_id", *stamp, pl.lit(0, pl.Int64).alias("apps_1h"), pl.lit(0, pl.Int64).alias("apps_24h")
    ).sort("merchant_id").sink_parquet(paths["merchant_velocity"])
    return paths


_STAMPS = ["event_timestamp", "created_timestamp"]
