"""Per-transaction cash-register journals for a sample of merchants.

The population's flow table holds one row per merchant and trading day: the day's
register totals (sales count and amount, refunds, night sales, distinct customers).
Drawing every transaction for every merchant would cost ~7,000 rows per merchant (70
billion at 10M merchants) for nothing the features need, so the journal is drawn for
a seeded sample only. Each sampled day is expanded into individual sales and refunds
that roll up to that day's totals *exactly* (tests check every column), so the daily
table is a faithful reduction of a transaction journal, not a shortcut around one.

Journal columns: ``merchant_id``, ``ts`` (local register time), ``is_refund``,
``amount_minor`` and ``customer`` (a pseudonymous customer number within the merchant).
Night trading is 22:00-06:00 of the same calendar day.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

_DAY_S = 86_400
_NIGHT_S = 8 * 3600  # 00:00-06:00 and 22:00-24:00
# Customer numbers are scrambled with x -> (A x + C) mod base, a bijection because A is a
# prime larger than any customer base.
_A = 1_000_003
_C = 7_919

I64 = npt.NDArray[np.int64]


def _split(total: I64, count: I64, rng: np.random.Generator) -> I64:
    """Split each ``total[i]`` into ``count[i]`` non-negative parts summing to it exactly.

    Cumulative rounding of lognormal weights: part j is round(T * C_j) - round(T * C_{j-1})
    with C the running share of the segment, so the parts add up to T with nothing left
    over to distribute.
    """
    n = int(count.sum())
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    seg = np.repeat(np.arange(count.size), count)
    c0 = np.concatenate(([0.0], np.cumsum(rng.lognormal(0.0, 0.5, n))))
    ends = np.cumsum(count)
    starts = ends - count
    before, after = c0[starts], c0[ends]
    with np.errstate(divide="ignore", invalid="ignore"):  # empty segments have no rows
        share = (c0[1:] - before[seg]) / (after - before)[seg]
    nonempty = count > 0
    share[ends[nonempty] - 1] = 1.0  # exactly 1 at each segment's end despite rounding
    cum = np.rint(total[seg] * share).astype(np.int64)
    prev = np.concatenate(([0], cum[:-1]))
    prev[starts[nonempty]] = 0
    parts: I64 = cum - prev
    return parts


def _rank_in_segment(count: I64) -> I64:
    ends = np.cumsum(count)
    starts = np.repeat(ends - count, count)
    return np.arange(int(count.sum()), dtype=np.int64) - starts


def journal(flows: pl.DataFrame, customer_base: dict[str, int], rng: np.random.Generator) -> pl.DataFrame:
    """Expand daily register rows (the flow table's columns) into individual transactions."""
    if flows.height == 0:
        return _empty()
    txn = flows["txn_count"].to_numpy().astype(np.int64)
    refunds = flows["refund_count"].to_numpy().astype(np.int64)
    night = flows["night_txn_count"].to_numpy().astype(np.int64)
    base = np.array([customer_base[m] for m in flows["merchant_id"].to_list()], dtype=np.int64)
    base = np.maximum(base, 1)
    distinct = np.clip(flows["distinct_customers"].to_numpy().astype(np.int64), 1, np.minimum(txn, base))
    day_s = (flows["day"].cast(pl.Date).to_numpy().astype("datetime64[D]").astype(np.int64)) * _DAY_S

    # --- sales: the first night_txn_count of each day trade at night ----------
    row = np.repeat(np.arange(flows.height), txn)
    rank = _rank_in_segment(txn)
    is_night = rank < night[row]
    off = rng.random(row.size)
    night_s = (off * _NIGHT_S).astype(np.int64)
    night_s = np.where(night_s < 6 * 3600, night_s, night_s + 16 * 3600)  # 00-06 or 22-24
    day_part = (6 * 3600 + rng.beta(2.2, 2.2, row.size) * 16 * 3600).astype(np.int64)
    sale_s = day_s[row] + np.where(is_night, night_s, day_part)
    sale_amount = _split(flows["gross_minor"].to_numpy().astype(np.int64), txn, rng)
    # Customers: slots 0..d-1 go to the day's first d sales so the day has exactly d
    # distinct customers; later sales are repeat visits by one of them.
    offset = rng.integers(0, 1 << 30, flows.height)
    slot = np.where(rank < distinct[row], rank, (rng.random(row.size) * distinct[row]).astype(np.int64))
    sale_customer = (_A * ((offset[row] + slot) % base[row]) + _C) % base[row]

    # --- refunds: daytime, by one of the day's customers ----------------------
    rrow = np.repeat(np.arange(flows.height), refunds)
    refund_s = day_s[rrow] + (6 * 3600 + rng.random(rrow.size) * 16 * 3600).astype(np.int64)
    refund_amount = _split(flows["refund_minor"].to_numpy().astype(np.int64), refunds, rng)
    rslot = (rng.random(rrow.size) * distinct[rrow]).astype(np.int64)
    refund_customer = (_A * ((offset[rrow] + rslot) % base[rrow]) + _C) % base[rrow]

    ids = np.asarray(flows["merchant_id"].to_list(), dtype=object)
    out = pl.DataFrame(
        {
            "merchant_id": np.concatenate([ids[row], ids[rrow]]),
            "ts": pl.Series((np.concatenate([sale_s, refund_s]) * 1_000_000).astype("datetime64[us]")),
            "is_refund": np.concatenate([np.zeros(row.size, bool), np.ones(rrow.size, bool)]),
            "amount_minor": np.concatenate([sale_amount, refund_amount]),
            "customer": np.concatenate([sale_customer, refund_customer]).astype(np.uint32),
        }
    )
    return out.sort("merchant_id", "ts")


def _empty() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "merchant_id": pl.String,
            "ts": pl.Datetime("us"),
            "is_refund": pl.Boolean,
            "amount_minor": pl.Int64,
            "customer": pl.UInt32,
        }
    )


def daily_totals(journal: pl.DataFrame) -> pl.DataFrame:
    """Roll a journal back up to the flow table's daily register columns."""
    hour = pl.col("ts").dt.hour()
    sale = ~pl.col("is_refund")
    return (
        journal.group_by("merchant_id", pl.col("ts").dt.date().alias("day"))
        .agg(
            sale.sum().cast(pl.UInt32).alias("txn_count"),
            pl.col("amount_minor").filter(sale).sum().alias("gross_minor"),
            pl.col("is_refund").sum().cast(pl.UInt32).alias("refund_count"),
            pl.col("amount_minor").filter(pl.col("is_refund")).sum().alias("refund_minor"),
            (sale & ((hour < 6) | (hour >= 22))).sum().cast(pl.UInt32).alias("night_txn_count"),
            pl.col("customer").filter(sale).n_unique().cast(pl.UInt32).alias("distinct_customers"),
        )
        .sort("merchant_id", "day")
    )

