"""Chunked, seeded generation of the synthetic population as parquet.

Determinism: the output is a pure function of (seed, merchants, as_of). Each
chunk of ``CHUNK`` merchants draws from its own ``numpy`` stream seeded with
``[seed, chunk_index]``, so chunks can be produced in any order and memory is
bounded by one chunk (``CHUNK`` x ``HISTORY_DAYS`` day-cells), whatever the
population size.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from features.population import transactions, world
from features.population.world import HISTORY_DAYS, INDUSTRIES

CHUNK = 20_000
# Day-of-week revenue multipliers (Mon..Sun) by segment.
_DOW = {
    "street_shop": np.array([0.9, 0.9, 0.95, 1.0, 1.1, 1.25, 1.15]),
    "online_store": np.array([1.05, 1.0, 1.0, 1.0, 1.05, 0.95, 1.1]),
    "small_factory": np.array([1.2, 1.2, 1.2, 1.2, 1.1, 0.1, 0.05]),
}


@dataclass(frozen=True)
class GenerationReport:
    merchants: int
    flow_rows: int
    default_rate: float
    raw_dir: Path
    transaction_rows: int = 0


def raw_dir(data_dir: Path) -> Path:
    return data_dir / "raw"


def generate_population(
    data_dir: Path,
    *,
    merchants: int = 100_000,
    seed: int = 7,
    as_of: dt.date,
    progress: Callable[[int], None] | None = None,
    journal_sample: float = 0.001,
) -> GenerationReport:
    """Write ``raw/{merchants,flows,bureau,applications,transactions}/part-*.parquet``.

    ``flows`` holds each merchant's daily register totals; ``transactions`` holds the
    individual sales and refunds behind them for a seeded ``journal_sample`` fraction of
    merchants (see ``features.population.transactions``). ``progress`` is called with
    the number of merchants finished after each chunk.
    """
    if not 0.0 <= journal_sample <= 1.0:
        raise ValueError(f"journal_sample must be in [0, 1], got {journal_sample}")
    if merchants <= 0:
        raise ValueError(f"merchants must be positive, got {merchants}")
    out = raw_dir(data_dir)
    if out.exists():
        shutil.rmtree(out)
    for sub in ("merchants", "flows", "bureau", "applications", "transactions"):
        (out / sub).mkdir(parents=True)
    regions = world.region_effects(seed)
    flow_rows = txn_rows = 0
    defaults = 0
    for chunk, start in enumerate(range(0, merchants, CHUNK)):
        n = min(CHUNK, merchants - start)
        tables = _generate_chunk(seed, chunk, start, n, as_of=as_of, regions=regions)
        tables["transactions"] = _journal_chunk(seed, chunk, tables, journal_sample)
        for name, frame in tables.items():
            frame.write_parquet(out / name / f"part-{chunk:05d}.parquet", compression="zstd")
        flow_rows += tables["flows"].height
        txn_rows += tables["transactions"].height
        defaults += int(tables["applications"]["defaulted"].sum())
        if progress is not None:
            progress(n)
    return GenerationReport(merchants, flow_rows, defaults / merchants, out, txn_rows)


def _journal_chunk(seed: int, chunk: int, tables: dict[str, pl.DataFrame], fraction: float) -> pl.DataFrame:
    # Its own random stream: sampling journals never changes the rest of the population.
    rng = np.random.default_rng([seed, chunk, 0x7A11])
    merchants = tables["merchants"]
    picked = merchants.filter(pl.Series(rng.random(merchants.height) < fraction))
    flows = tables["flows"].filter(pl.col("merchant_id").is_in(picked["merchant_id"].implode()))
    base = dict(zip(picked["merchant_id"].to_list(), picked["customer_base"].to_list(), strict=True))
    return transactions.journal(flows, base, rng)


def merchant_ids(start: int, n: int) -> list[str]:
    return [f"M{i:08d}" for i in range(start, start + n)]


@dataclass(frozen=True)
class _Traits:
    """The hidden traits of one chunk's merchants, one array entry per merchant."""

    ind: np.ndarray  # index into INDUSTRIES
    region: np.ndarray  # index into world.REGIONS
    age_days: np.ndarray
    prop: dict[str, np.ndarray]  # industry properties, indexed by industry
    lam0: np.ndarray  # base daily transactions
    ticket: np.ndarray
    cv: np.ndarray  # day-to-day volatility
    growth: np.ndarray
    closed_p: np.ndarray
    refund_rate: np.ndarray
    risky: np.ndarray
    night: np.ndarray
    customer_base: np.ndarray
    shock_day: np.ndarray  # -1: no own shock
    shock_factor: np.ndarray

    @property
    def monthly_revenue(self) -> np.ndarray:
        """Major units, ground truth."""
        revenue: np.ndarray = self.lam0 * self.ticket * 30.0 * (1.0 - self.closed_p)
        return revenue


@dataclass(frozen=True)
class _Credit:
    """What the bureau draw knows about each merchant, needed again for the default outcome."""

    has_bureau: np.ndarray
    utilisation: np.ndarray
    delinq: np.ndarray


def _generate_chunk(
    seed: int,
    chunk: int,
    start: int,
    n: int,
    *,
    as_of: dt.date,
    regions: world.RegionEffects,
) -> dict[str, pl.DataFrame]:
    # One stream for the chunk, drawn from in this fixed order: traits, flows, bureau, applications.
    rng = np.random.default_rng([seed, chunk])
    ids_arr = np.array(merchant_ids(start, n), dtype=object)
    tr = _draw_traits(rng, n, regions)
    flows = _daily_flows(rng, tr, regions, ids_arr, as_of=as_of)
    bureau, credit = _bureau(rng, tr, ids_arr)
    applications = _applications(rng, tr, regions, credit, ids_arr, start=start)
    return {
        "merchants": _merchants(tr, ids_arr),
        "flows": flows,
        "bureau": bureau,
        "applications": applications,
    }


def _draw_traits(rng: np.random.Generator, n: int, regions: world.RegionEffects) -> _Traits:
    days = HISTORY_DAYS
    ind_weights = np.array([14, 14, 9, 5, 6, 7, 6, 5, 10, 6, 7, 6], dtype=float)
    ind = rng.choice(len(INDUSTRIES), size=n, p=ind_weights / ind_weights.sum())
    # Zipf-like region sizes: a few big regions, a long tail.
    reg_w = 1.0 / np.arange(1, world.N_REGIONS + 1) ** 0.7
    region = rng.choice(world.N_REGIONS, size=n, p=reg_w / reg_w.sum())
    age_days = np.clip(rng.lognormal(np.log(3.0 * 365), 0.9, n), 20, 12_000).astype(np.int64)
    prop = {
        f: np.array([getattr(i, f) for i in INDUSTRIES])
        for f in INDUSTRIES[0].__dataclass_fields__
        if f not in ("name", "segment")
    }
    lam0 = prop["daily_txn"][ind] * rng.lognormal(0.0, 0.6, n)
    ticket = prop["ticket"][ind] * rng.lognormal(0.0, 0.35, n)
    cv = prop["volatility"][ind] * rng.lognormal(0.0, 0.35, n)
    growth = rng.normal(0.0, 0.0015, n) + regions.growth[region]
    closed_p = np.clip(rng.beta(1.2, 12.0, n), 0.0, 0.6)
    refund_rate = prop["refund_rate"][ind] * rng.lognormal(0.0, 0.5, n)
    risky = rng.random(n) < 0.03
    refund_rate = np.where(risky, refund_rate * 4.0, refund_rate).clip(0.0, 0.5)
    night = np.clip(rng.beta(2.0, 2.0 / np.maximum(prop["night_share"][ind], 0.01), n), 0.0, 0.95)
    customer_base = np.maximum(lam0 * rng.uniform(5.0, 60.0, n), 5.0)
    own_shock = rng.random(n) < 0.06
    shock_day = np.where(own_shock, rng.integers(days - 120, days - 3, n), -1)
    shock_factor = np.where(own_shock, rng.uniform(0.25, 0.75, n), 1.0)
    return _Traits(
        ind=ind, region=region, age_days=age_days, prop=prop, lam0=lam0, ticket=ticket, cv=cv, growth=growth,
        closed_p=closed_p, refund_rate=refund_rate, risky=risky, night=night, customer_base=customer_base,
        shock_day=shock_day, shock_factor=shock_factor,
    )


def _daily_flows(
    rng: np.random.Generator, tr: _Traits, regions: world.RegionEffects, ids_arr: np.ndarray, *, as_of: dt.date
) -> pl.DataFrame:
    """Daily register totals: dense merchants x days, then long (traded days only)."""
    n, days = len(ids_arr), HISTORY_DAYS
    t = np.arange(days)
    first_day = as_of - dt.timedelta(days=days)
    dow = (np.array([(first_day + dt.timedelta(days=int(d))).weekday() for d in t]))
    seg_idx = np.array([world.SEGMENTS.index(i.segment) for i in INDUSTRIES])[tr.ind]
    dow_mult = np.stack([_DOW[s] for s in world.SEGMENTS])[seg_idx][:, dow]
    mult = dow_mult * np.exp(tr.growth[:, None] * (t[None, :] - days))
    shock_day = tr.shock_day
    mult *= np.where(t[None, :] >= shock_day[:, None], tr.shock_factor[:, None], 1.0) * (
        shock_day[:, None] >= 0
    ) + (shock_day[:, None] < 0)
    rs = regions.shock_day[tr.region]
    mult *= np.where((rs[:, None] >= 0) & (t[None, :] >= rs[:, None]), regions.shock_factor[tr.region][:, None], 1.0)
    mult *= rng.lognormal(-0.5 * tr.cv[:, None] ** 2, tr.cv[:, None], (n, days))
    open_day = (t[None, :] >= (days - tr.age_days)[:, None]) & (rng.random((n, days)) >= tr.closed_p[:, None])
    txn = np.where(open_day, rng.poisson(tr.lam0[:, None] * mult), 0)
    day_ticket = tr.ticket[:, None] * rng.lognormal(0.0, 0.15, (n, days))
    gross_minor = np.rint(txn * day_ticket * 100.0).astype(np.int64)
    refunds = rng.binomial(txn, tr.refund_rate[:, None])
    refund_minor = np.rint(refunds * day_ticket * 100.0).astype(np.int64)
    night_txn = rng.binomial(txn, tr.night[:, None])
    base = tr.customer_base[:, None]
    customers = np.rint(base * -np.expm1(txn * np.log1p(-1.0 / base)))

    traded = txn > 0
    mi, di = np.nonzero(traded)
    return pl.DataFrame(
        {
            "merchant_id": ids_arr[mi],
            "day": pl.Series(np.datetime64(first_day, "D") + di.astype("timedelta64[D]")),
            "txn_count": txn[mi, di].astype(np.uint32),
            "gross_minor": gross_minor[mi, di],
            "refund_count": refunds[mi, di].astype(np.uint32),
            "refund_minor": refund_minor[mi, di],
            "night_txn_count": night_txn[mi, di].astype(np.uint32),
            "distinct_customers": customers[mi, di].astype(np.uint32),
        }
    )


def _bureau(rng: np.random.Generator, tr: _Traits, ids_arr: np.ndarray) -> tuple[pl.DataFrame, _Credit]:
    n = len(ids_arr)
    monthly_revenue = tr.monthly_revenue
    stress = rng.beta(2.0, 5.0, n) + 0.3 * tr.risky
    has_bureau = rng.random(n) < 0.82
    utilisation = np.clip(stress * 1.3 + rng.normal(0.0, 0.1, n), 0.0, 1.5)
    delinq = rng.poisson(0.1 + 1.2 * stress**2)
    bureau = pl.DataFrame(
        {
            "merchant_id": ids_arr[has_bureau],
            "existing_debt_minor": np.rint(
                monthly_revenue * rng.lognormal(-0.7, 1.0, n) * 100.0 * (rng.random(n) < 0.7)
            ).astype(np.int64)[has_bureau],
            "credit_utilisation": utilisation[has_bureau].astype(np.float32),
            "delinquencies_12m": delinq[has_bureau].astype(np.int64),
            "inquiries_6m": rng.poisson(0.5 + 2.0 * stress)[has_bureau].astype(np.int64),
            "oldest_account_months": np.minimum(
                rng.integers(1, 240, n), tr.age_days // 30 + 24
            )[has_bureau].astype(np.int64),
        }
    )
    return bureau, _Credit(has_bureau=has_bureau, utilisation=utilisation, delinq=delinq)


def _applications(
    rng: np.random.Generator,
    tr: _Traits,
    regions: world.RegionEffects,
    credit: _Credit,
    ids_arr: np.ndarray,
    *,
    start: int,
) -> pl.DataFrame:
    """One historical application per merchant, with its outcome."""
    n, days = len(ids_arr), HISTORY_DAYS
    ind, region, prop = tr.ind, tr.region, tr.prop
    monthly_revenue = tr.monthly_revenue
    amount_major = np.maximum(
        np.round(monthly_revenue * rng.lognormal(np.log(0.8), 0.7, n), -2), 100.0
    )
    term = rng.choice(np.array(world.TERMS), size=n, p=[0.1, 0.25, 0.3, 0.1, 0.15, 0.1])
    channel = rng.choice(len(world.CHANNELS), size=n, p=[0.35, 0.3, 0.15, 0.15, 0.05])
    product = rng.choice(len(world.PRODUCTS), size=n, p=[0.5, 0.25, 0.1, 0.15])
    rs = regions.shock_day[region]
    shocked = np.maximum(
        np.where((tr.shock_day >= 0) & (tr.shock_day >= days - 90), 1.0 - tr.shock_factor, 0.0),
        np.where(rs >= 0, 1.0 - regions.shock_factor[region], 0.0),
    )
    has_bureau = credit.has_bureau
    logit = world.default_logit(
        volatility_excess=tr.cv / prop["volatility"][ind] - 1.0,
        growth=tr.growth,
        shocked=2.0 * shocked,
        refund_excess=tr.refund_rate - prop["refund_rate"][ind],
        utilisation=np.where(has_bureau, credit.utilisation, np.nan),
        delinquencies=np.where(has_bureau, credit.delinq, np.nan),
        industry_risk=prop["risk"][ind],
        region_risk=regions.risk[region],
        age_years=tr.age_days / 365.0,
        amount_to_revenue=amount_major / np.maximum(monthly_revenue, 1.0),
        term_months=term.astype(float),
        noise=rng.normal(0.0, 0.6, n),
    )
    defaulted = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    declared = np.where(
        rng.random(n) < 0.6, np.rint(monthly_revenue * rng.lognormal(0.1, 0.3, n) * 100.0), np.nan
    )
    return pl.DataFrame(
        {
            "application_id": [f"A{i:08d}" for i in range(start, start + n)],
            "merchant_id": ids_arr,
            "amount_minor": (amount_major * 100).astype(np.int64),
            "currency": ["CNY"] * n,
            "term_months": term.astype(np.int64),
            "product": np.array(world.PRODUCTS, dtype=object)[product],
            "channel": np.array(world.CHANNELS, dtype=object)[channel],
            "declared_monthly_revenue_minor": pl.Series(declared).cast(pl.Int64, strict=False),
            "defaulted": defaulted,
        }
    )


def _merchants(tr: _Traits, ids_arr: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "merchant_id": ids_arr,
            "industry": np.array([i.name for i in INDUSTRIES], dtype=object)[tr.ind],
            "segment": np.array([i.segment for i in INDUSTRIES], dtype=object)[tr.ind],
            "region": np.array(world.REGIONS, dtype=object)[tr.region],
            "business_age_days": tr.age_days,
            "customer_base": np.rint(tr.customer_base).astype(np.int64),
        }
    )
