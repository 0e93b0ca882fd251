"""Raw daily register totals -> the window aggregates and profile tables Feast serves (polars).

Everything here works on one chunk of merchants at a time (``features.population.offline``
drives the chunks), so memory is bounded by the chunk whatever the population size.
Window statistics count every calendar day of the window (a day without trade is a
zero-revenue day), which is what a lender means by "average daily revenue".

Granularity: the aggregates are computed from the daily register totals (one row per
merchant and trading day, what a cash register's end-of-day "Z report" holds). The
per-transaction journal that ``features.population.transactions`` writes for a sample of
merchants rolls up to exactly those totals (a test checks it), so nothing here would
change if it ran on transactions. The one statistic a daily total cannot give exactly
is distinct customers over a window (a union across days); it is the expected number
of distinct customers for the window's transaction count and the merchant's customer
base.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from features.catalog import (  # the catalogue is the contract: the generator fills it
    FLOW_FEATURES,
    WINDOWS,
)
from features.population import world

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Dense:
    """One chunk's register totals as (merchants x calendar days) matrices, zero where idle."""

    gross: F64  # minor units
    refund: F64
    txn: F64
    refunds: F64
    night: F64
    customers: F64
    weekend: npt.NDArray[np.bool_]  # (days,)

    @property
    def traded(self) -> npt.NDArray[np.bool_]:
        return self.txn > 0


def _dense(merchants: pl.DataFrame, flows: pl.DataFrame, as_of: dt.date) -> _Dense:
    h = world.HISTORY_DAYS
    first = as_of - dt.timedelta(days=h)
    rows = (
        flows.filter((pl.col("day") >= first) & (pl.col("day") < as_of))
        .join(merchants.select("merchant_id").with_row_index("mi"), on="merchant_id")
        .select(
            "mi",
            (pl.col("day") - pl.lit(first)).dt.total_days().alias("d"),
            "gross_minor", "refund_minor", "txn_count", "refund_count", "night_txn_count",
            "distinct_customers",
        )
    )
    mi = rows["mi"].to_numpy()
    d = rows["d"].to_numpy()

    def grid(col: str) -> F64:
        out = np.zeros((merchants.height, h), dtype=np.float64)
        out[mi, d] = rows[col].to_numpy()
        return out

    days = [first + dt.timedelta(days=k) for k in range(h)]
    return _Dense(
        gross=grid("gross_minor"),
        refund=grid("refund_minor"),
        txn=grid("txn_count"),
        refunds=grid("refund_count"),
        night=grid("night_txn_count"),
        customers=grid("distinct_customers"),
        weekend=np.array([x.weekday() >= 5 for x in days]),
    )


def _div(a: F64, b: F64) -> F64:
    """a / b, NaN (null in the table) where b is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: F64 = np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)
    return out


def _max_gap(traded: npt.NDArray[np.bool_]) -> F64:
    """Longest run of idle days per row: day j's run is j minus the last trading day <= j."""
    w = traded.shape[1]
    last = np.maximum.accumulate(np.where(traded, np.arange(w), -1), axis=1)
    gap: F64 = (np.arange(w) - last).max(axis=1, initial=0).astype(np.float64)
    return gap


def _median_of_traded(rev: F64, traded: npt.NDArray[np.bool_]) -> F64:
    """Median revenue over each row's trading days (NaN if none); NaNs sort last."""
    srt = np.sort(np.where(traded, rev, np.nan), axis=1)
    k = traded.sum(axis=1)
    lo = np.take_along_axis(srt, np.maximum((k - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(srt, (k // 2)[:, None].clip(max=rev.shape[1] - 1), axis=1)[:, 0]
    return np.where(k > 0, (lo + hi) / 2.0, np.nan)


def _window_stats(x: _Dense, w: int, base: F64) -> dict[str, F64]:
    h = x.gross.shape[1]
    win = slice(h - w, h)
    rev = x.gross[:, win] / 100.0
    traded = x.traded[:, win]
    s = rev.sum(axis=1)
    mean = s / w
    t = np.arange(w) - (w - 1) / 2.0
    slope = (rev * t).sum(axis=1) / float((t * t).sum())
    if w < h:
        prior = x.gross[:, h - 2 * w : h - w].sum(axis=1) / 100.0
        growth = _div(s, prior) - 1.0
    else:
        # No prior 180-day window in a 180-day history: last 60 days over the first 60.
        growth = _div(x.gross[:, h - 60 :].sum(axis=1), x.gross[:, :60].sum(axis=1)) - 1.0
    gross = x.gross[:, win].sum(axis=1)
    txn_d = x.txn[:, win]
    txn = txn_d.sum(axis=1)
    active = traded.sum(axis=1).astype(np.float64)
    dev = rev - mean[:, None]
    m2 = (dev * dev).mean(axis=1)
    m3 = (dev * dev * dev).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no trading day -> null
        skew = np.where(m2 > 0, m3 / np.where(m2 > 0, m2, 1.0) ** 1.5, np.nan)
        median = _median_of_traded(rev, traded)
        distinct = base * -np.expm1(txn * np.log1p(-1.0 / base))
    return {
        "rev_mean": mean,
        "rev_cv": _div(rev.std(axis=1, ddof=1), mean),
        "rev_trend": _div(slope, mean),
        "rev_growth": growth,
        "active_days": active,
        "refund_ratio": _div(x.refund[:, win].sum(axis=1), gross),
        "distinct_customers": distinct,
        "ticket_mean": _div(gross / 100.0, txn),
        "night_share": _div(x.night[:, win].sum(axis=1), txn),
        "txn_mean": txn / w,
        "txn_cv": _div(txn_d.std(axis=1, ddof=1), txn / w),
        "net_rev_mean": (gross - x.refund[:, win].sum(axis=1)) / 100.0 / w,
        "rev_max_ratio": _div(rev.max(axis=1), mean),
        "rev_median_active": median,
        "rev_skew": skew,
        "weekend_share": _div(rev[:, x.weekend[win]].sum(axis=1), s),
        "refund_count_ratio": _div(x.refunds[:, win].sum(axis=1), txn),
        "refund_day_share": _div(((x.refunds[:, win] > 0) & traded).sum(axis=1) * 1.0, active),
        "customers_mean": x.customers[:, win].sum(axis=1) / w,
        "max_gap_days": _max_gap(traded),
    }


def flow_table(
    merchants: pl.DataFrame, flows: pl.DataFrame, as_of: dt.date, stamp: list[pl.Expr]
) -> pl.DataFrame:
    """The ``merchant_flows`` rows of one chunk of merchants, sorted by id.

    Statistics are reductions over a dense (merchants x days) matrix of the chunk, so a
    day without trade is a zero by construction; undefined ratios (nothing to divide
    by) are null.
    """
    x = _dense(merchants, flows, as_of)
    h = world.HISTORY_DAYS
    base = np.maximum(merchants["customer_base"].to_numpy().astype(np.float64), 1.0)
    cols: dict[str, F64] = {}
    for w in WINDOWS:
        for stat, values in _window_stats(x, w, base).items():
            cols[f"{stat}_{w}d"] = values
    traded = x.traded
    anyt = traded.any(axis=1)
    last = h - 1 - np.argmax(traded[:, ::-1], axis=1)
    first = np.argmax(traded, axis=1)
    # No trade in the whole history: "last trade" is censored just beyond it.
    cols["days_since_last_trade"] = np.where(anyt, h - last, h + 1).astype(np.float64)
    cols["trading_history_days"] = np.where(anyt, h - first, 0).astype(np.float64)
    frame = pl.DataFrame(
        {f: pl.Series(f, cols[f].astype(np.float32), nan_to_null=True) for f in FLOW_FEATURES}
    )
    return (
        pl.concat([merchants.select("merchant_id"), frame], how="horizontal")
        .select("merchant_id", *stamp, *FLOW_FEATURES)
        .sort("merchant_id")
    )


_CODES = {
    "industry_code": {i.name: k for k, i in enumerate(world.INDUSTRIES)},
    "region_code": {r: k for k, r in enumerate(world.REGIONS)},
    "segment_code": {s: k for k, s in enumerate(world.SEGMENTS)},
}


def profile_table(merchants: pl.DataFrame, stamp: list[pl.Expr]) -> pl.DataFrame:
    return merchants.select(
        "merchant_id",
        *stamp,
        pl.col("business_age_days").cast(pl.Int64),
        *[
            pl.col(src).replace_strict(_CODES[dst], return_dtype=pl.Int64).alias(dst)
            for src, dst in (("industry", "industry_code"), ("region", "region_code"),
                             ("segment", "segment_code"))
        ],
        pl.col("customer_base").cast(pl.Int64),
    ).sort("merchant_id")


def bureau_table(bureau: pl.DataFrame, stamp: list[pl.Expr]) -> pl.DataFrame:
    return bureau.select(
        "merchant_id",
        *stamp,
        pl.col("existing_debt_minor").cast(pl.Int64),
        pl.col("credit_utilisation").cast(pl.Float32),
        pl.col("delinquencies_12m").cast(pl.Int64),
        pl.col("inquiries_6m").cast(pl.Int64),
        pl.col("oldest_account_months").cast(pl.Int64),
    ).sort("merchant_id")


def velocity_seed(merchants: pl.DataFrame, stamp: list[pl.Expr]) -> pl.DataFrame:
    """Velocity starts at zero for everyone; authorizations push updates online."""
    return merchants.select(
        "merchant_id",
        *stamp,
        pl.lit(0, pl.Int64).alias("apps_1h"),
        pl.lit(0, pl.Int64).alias("apps_24h"),
        pl.lit(None, pl.Binary).alias("window_state"),
    ).sort("merchant_id")
