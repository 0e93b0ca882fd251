"""Identity and behaviour tags: 1,000+ boolean facts per merchant, one packed bitset.

Tags are derived by rules from the offline tables. Each rule is a polars
expression over the joined merchant row; thresholds that depend on the
population (ventiles of a flow statistic) are computed once from the data and
written into the catalogue, so a tag means the same thing wherever it is read.

Bit layout: tag ``t`` is bit ``t % 8`` of byte ``t // 8`` (little-endian bit
order), so as little-endian uint64 words tag ``t`` is bit ``t % 64`` of word
``t // 64``. The bitset is padded to whole 64-bit words.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from features.population import world
from features.population.aggregate import FLOW_FEATURES

VENTILES = 20
_AGE_EDGES = (90, 180, 365, 730, 1095, 1825, 3650)


@dataclass(frozen=True)
class Tag:
    id: int
    name: str
    description: str
    owner: str
    rule: str  # human-readable rule, for audit


@dataclass(frozen=True)
class _Rule:
    name: str
    description: str
    owner: str
    rule: str
    expr: pl.Expr


def _age_bucket() -> pl.Expr:
    age = pl.col("business_age_days")
    e = pl.lit(len(_AGE_EDGES))
    for k, edge in reversed(list(enumerate(_AGE_EDGES))):
        e = pl.when(age < edge).then(pl.lit(k)).otherwise(e)
    return e


def _rules(frame: pl.DataFrame) -> list[_Rule]:
    rules: list[_Rule] = []

    def add(name: str, description: str, owner: str, rule: str, expr: pl.Expr) -> None:
        rules.append(_Rule(name, description, owner, rule, expr.fill_null(False)))

    for k, ind in enumerate(world.INDUSTRIES):
        add(f"identity.industry.{ind.name}", f"Registered industry is {ind.name}", "kyc",
            f"industry_code == {k}", pl.col("industry_code") == k)
    for k, reg in enumerate(world.REGIONS):
        add(f"identity.region.{reg}", f"Registered in region {reg}", "kyc",
            f"region_code == {k}", pl.col("region_code") == k)
    for k, seg in enumerate(world.SEGMENTS):
        add(f"identity.segment.{seg}", f"Business segment is {seg}", "kyc",
            f"segment_code == {k}", pl.col("segment_code") == k)
    for k in range(len(_AGE_EDGES) + 1):
        lo = 0 if k == 0 else _AGE_EDGES[k - 1]
        hi = _AGE_EDGES[k] if k < len(_AGE_EDGES) else None
        span = f"{lo} <= business_age_days" + (f" < {hi}" if hi else "")
        add(f"identity.age_bucket.{k}", f"Business age bucket {k} ({span})", "kyc", span,
            _age_bucket() == k)

    # Population ventiles of every flow statistic.
    qs = np.linspace(0.0, 1.0, VENTILES + 1)[1:-1]
    for feat in FLOW_FEATURES:
        col = frame[feat].drop_nulls().drop_nans()
        edges = [float(col.quantile(float(q), "linear") or 0.0) for q in qs] if col.len() else [0.0] * len(qs)
        for v in range(VENTILES):
            lo = -np.inf if v == 0 else edges[v - 1]
            hi = np.inf if v == VENTILES - 1 else edges[v]
            add(f"behaviour.{feat}.v{v:02d}", f"{feat} in population ventile {v + 1} of {VENTILES}",
                "risk-data", f"{lo!r} <= {feat} < {hi!r}",
                (pl.col(feat) >= lo) & (pl.col(feat) < hi))

    util = pl.col("credit_utilisation")
    add("bureau.has_record", "Merchant has a credit bureau record", "bureau",
        "credit_utilisation is not null", util.is_not_null())
    for k, (lo, hi) in enumerate([(0, 0.3), (0.3, 0.6), (0.6, 0.9), (0.9, 1.1), (1.1, 99)]):
        add(f"bureau.utilisation.{k}", f"Credit utilisation in [{lo}, {hi})", "bureau",
            f"{lo} <= credit_utilisation < {hi}", (util >= lo) & (util < hi))
    dq = pl.col("delinquencies_12m")
    for k, (lo, hi) in enumerate([(0, 1), (1, 2), (2, 3), (3, 10_000)]):
        add(f"bureau.delinquencies.{k}", f"Delinquencies in the last 12 months in [{lo}, {hi})",
            "bureau", f"{lo} <= delinquencies_12m < {hi}", (dq >= lo) & (dq < hi))
    iq = pl.col("inquiries_6m")
    for k, (lo, hi) in enumerate([(0, 1), (1, 3), (3, 6), (6, 10_000)]):
        add(f"bureau.inquiries.{k}", f"Bureau inquiries in the last 6 months in [{lo}, {hi})",
            "bureau", f"{lo} <= inquiries_6m < {hi}", (iq >= lo) & (iq < hi))
    dti = pl.col("existing_debt_minor") / 100.0 / (pl.col("rev_mean_30d") * 30.0 + 1.0)
    for k, (lo, hi) in enumerate([(0, 0.1), (0.1, 0.5), (0.5, 1.0), (1.0, 3.0), (3.0, 1e12)]):
        add(f"bureau.debt_to_revenue.{k}", f"Existing debt / monthly revenue in [{lo}, {hi})",
            "bureau", f"{lo} <= existing_debt / (30 * rev_mean_30d) < {hi}", (dti >= lo) & (dti < hi))

    flags = [
        ("night_trader", "Over 40% of transactions at night (30d)", "night_share_30d > 0.4",
         pl.col("night_share_30d") > 0.4),
        ("high_refunds", "Refunds above 5% of gross (30d)", "refund_ratio_30d > 0.05",
         pl.col("refund_ratio_30d") > 0.05),
        ("very_high_refunds", "Refunds above 15% of gross (30d)", "refund_ratio_30d > 0.15",
         pl.col("refund_ratio_30d") > 0.15),
        ("declining_30d", "Revenue down over 20% on the prior 30 days", "rev_growth_30d < -0.2",
         pl.col("rev_growth_30d") < -0.2),
        ("growing_30d", "Revenue up over 20% on the prior 30 days", "rev_growth_30d > 0.2",
         pl.col("rev_growth_30d") > 0.2),
        ("sudden_drop_7d", "Last week's revenue under half the 90-day average",
         "rev_mean_7d < 0.5 * rev_mean_90d", pl.col("rev_mean_7d") < 0.5 * pl.col("rev_mean_90d")),
        ("sudden_jump_7d", "Last week's revenue over twice the 90-day average",
         "rev_mean_7d > 2 * rev_mean_90d", pl.col("rev_mean_7d") > 2.0 * pl.col("rev_mean_90d")),
        ("dormant_7d", "No trade in the last 7 days", "active_days_7d == 0",
         pl.col("active_days_7d") == 0),
        ("intermittent", "Traded on fewer than half the days (90d)", "active_days_90d < 45",
         pl.col("active_days_90d") < 45),
        ("volatile_30d", "Daily revenue CV above 1 (30d)", "rev_cv_30d > 1",
         pl.col("rev_cv_30d") > 1.0),
        ("steady_180d", "Daily revenue CV below 0.3 (180d)", "rev_cv_180d < 0.3",
         pl.col("rev_cv_180d") < 0.3),
        ("new_business", "Business under 6 months old", "business_age_days < 180",
         pl.col("business_age_days") < 180),
        ("large_ticket", "Average ticket above 1,000 (30d)", "ticket_mean_30d > 1000",
         pl.col("ticket_mean_30d") > 1000),
        ("thin_customer_base", "Fewer than 50 distinct customers (30d)",
         "distinct_customers_30d < 50", pl.col("distinct_customers_30d") < 50),
        ("no_history", "No trade in 180 days", "active_days_180d == 0",
         pl.col("active_days_180d") == 0),
        ("trend_down_90d", "Negative 90-day revenue trend below -0.5%/day", "rev_trend_90d < -0.005",
         pl.col("rev_trend_90d") < -0.005),
    ]
    for name, desc, rule, expr in flags:
        add(f"behaviour.flag.{name}", desc, "risk-analytics", rule, expr)

    for s, seg in enumerate(world.SEGMENTS):
        for r, reg in enumerate(world.REGIONS):
            add(f"identity.region_segment.{reg}.{seg}", f"{seg} in region {reg}", "kyc",
                f"region_code == {r} and segment_code == {s}",
                (pl.col("region_code") == r) & (pl.col("segment_code") == s))
    for i, ind in enumerate(world.INDUSTRIES):
        for k in range(len(_AGE_EDGES) + 1):
            add(f"identity.industry_age.{ind.name}.{k}", f"{ind.name}, age bucket {k}", "kyc",
                f"industry_code == {i} and age_bucket == {k}",
                (pl.col("industry_code") == i) & (_age_bucket() == k))
    rev = frame["rev_mean_30d"].drop_nulls()
    quartiles = [float(rev.quantile(q, "linear") or 0.0) for q in (0.25, 0.5, 0.75)] if rev.len() else [0.0] * 3
    bounds = [-np.inf, *quartiles, np.inf]
    for i, ind in enumerate(world.INDUSTRIES):
        for q in range(4):
            lo, hi = bounds[q], bounds[q + 1]
            add(f"behaviour.industry_revenue.{ind.name}.q{q + 1}",
                f"{ind.name} with 30-day revenue in population quartile {q + 1}", "risk-data",
                f"industry_code == {i} and {lo!r} <= rev_mean_30d < {hi!r}",
                (pl.col("industry_code") == i) & (pl.col("rev_mean_30d") >= lo)
                & (pl.col("rev_mean_30d") < hi))
    return rules


def derive_tags(frame: pl.DataFrame, catalog_path: Path, chunk: int = 100_000) -> pl.DataFrame:
    """Compute the tag catalogue from ``frame`` (one joined row per merchant) and pack bitsets.

    Returns ``merchant_id, tags`` with ``tags`` a Binary column of ``8 * ceil(n_tags / 64)``
    bytes; writes the catalogue as JSON to ``catalog_path``.
    """
    rules = _rules(frame)
    catalog = [Tag(i, r.name, r.description, r.owner, r.rule) for i, r in enumerate(rules)]
    catalog_path.write_text(json.dumps([asdict(t) for t in catalog], indent=1))
    n_bytes = 8 * ((len(rules) + 63) // 64)
    parts = []
    for start in range(0, frame.height, chunk):
        part = frame.slice(start, chunk)
        bits = part.select([r.expr.alias(str(i)) for i, r in enumerate(rules)]).to_numpy()
        packed = np.packbits(bits.astype(bool), axis=1, bitorder="little")
        padded = np.zeros((part.height, n_bytes), dtype=np.uint8)
        padded[:, : packed.shape[1]] = packed
        parts.append(
            pl.DataFrame(
                {"merchant_id": part["merchant_id"], "tags": [row.tobytes() for row in padded]},
                schema={"merchant_id": pl.String, "tags": pl.Binary},
            )
        )
    return pl.concat(parts) if parts else pl.DataFrame(schema={"merchant_id": pl.String, "tags": pl.Binary})


def load_catalog(path: Path) -> list[Tag]:
    return [Tag(**t) for t in json.loads(path.read_text())]
