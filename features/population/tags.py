"""Identity and behaviour tags: 1,000+ boolean facts per merchant, one packed bitset.

Tags are derived by rules from the offline tables. Each rule is a polars
expression over the joined merchant row; thresholds that depend on the
population (ventiles of a flow statistic) are computed once from the data and
written into the catalogue, so a tag means the same thing wherever it is read.

Derivation is two passes so memory stays bounded at any population size: the
thresholds come from the flow table one column at a time (``thresholds``), then
every chunk of merchants is evaluated and packed on its own (``pack``).

Bit ids are positions in the rule list, so rules are only ever appended: a new
rule never moves an existing tag. ``features.tags.TagCatalog`` is the public way
to read the catalogue and resolve names to bit ids.

Bit layout: tag ``t`` is bit ``t % 8`` of byte ``t // 8`` (little-endian bit
order), so as little-endian uint64 words tag ``t`` is bit ``t % 64`` of word
``t // 64``. The bitset is padded to whole 64-bit words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from features.population import world
from features.tags import Tag, write_catalog

VENTILES = 20
# The flow statistics that get ventile tags: the original 36 (nine statistics over four
# windows). Fixed by name, not derived from FLOW_FEATURES, so adding a flow statistic
# does not renumber every tag after it.
TAGGED_FLOW_FEATURES: tuple[str, ...] = tuple(
    f"{s}_{w}d"
    for w in (7, 30, 90, 180)
    for s in ("rev_mean", "rev_cv", "rev_trend", "rev_growth", "active_days", "refund_ratio",
              "distinct_customers", "ticket_mean", "night_share")
)
_AGE_EDGES = (90, 180, 365, 730, 1095, 1825, 3650)


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


@dataclass(frozen=True)
class Thresholds:
    """Population-dependent rule thresholds, computed once from the flow table."""

    ventiles: dict[str, list[float]] = field(default_factory=dict)  # 19 inner edges per feature
    rev30_quartiles: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


def thresholds(column: Callable[[str], pl.Series]) -> Thresholds:
    """Thresholds from ``column(name)``, which returns one flow column for the whole population.

    One column at a time: memory is one float column, never the table.
    """
    qs = np.linspace(0.0, 1.0, VENTILES + 1)[1:-1]
    ventiles = {}
    for feat in TAGGED_FLOW_FEATURES:
        col = column(feat).drop_nulls().drop_nans()
        ventiles[feat] = (
            [float(col.quantile(float(q), "linear") or 0.0) for q in qs] if col.len() else [0.0] * len(qs)
        )
    rev = column("rev_mean_30d").drop_nulls()
    quartiles = [float(rev.quantile(q, "linear") or 0.0) for q in (0.25, 0.5, 0.75)] if rev.len() else [0.0] * 3
    return Thresholds(ventiles, quartiles)


# A rule before ``fill_null(False)``: (name, description, owner, rule text, expression).
_Spec = tuple[str, str, str, str, pl.Expr]

# Identity codes, one tag per value: (tag prefix, description template, code column, value names).
_CODES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("identity.industry", "Registered industry is {}", "industry_code", tuple(i.name for i in world.INDUSTRIES)),
    ("identity.region", "Registered in region {}", "region_code", tuple(world.REGIONS)),
    ("identity.segment", "Business segment is {}", "segment_code", tuple(world.SEGMENTS)),
)

# Bureau bands, one tag per [lo, hi): (tag name, value, description template, rule template, bands).
_BUREAU_BANDS: tuple[tuple[str, pl.Expr, str, str, tuple[tuple[float, float], ...]], ...] = (
    ("utilisation", pl.col("credit_utilisation"), "Credit utilisation in [{lo}, {hi})",
     "{lo} <= credit_utilisation < {hi}", ((0, 0.3), (0.3, 0.6), (0.6, 0.9), (0.9, 1.1), (1.1, 99))),
    ("delinquencies", pl.col("delinquencies_12m"), "Delinquencies in the last 12 months in [{lo}, {hi})",
     "{lo} <= delinquencies_12m < {hi}", ((0, 1), (1, 2), (2, 3), (3, 10_000))),
    ("inquiries", pl.col("inquiries_6m"), "Bureau inquiries in the last 6 months in [{lo}, {hi})",
     "{lo} <= inquiries_6m < {hi}", ((0, 1), (1, 3), (3, 6), (6, 10_000))),
    ("debt_to_revenue", pl.col("existing_debt_minor") / 100.0 / (pl.col("rev_mean_30d") * 30.0 + 1.0),
     "Existing debt / monthly revenue in [{lo}, {hi})", "{lo} <= existing_debt / (30 * rev_mean_30d) < {hi}",
     ((0, 0.1), (0.1, 0.5), (0.5, 1.0), (1.0, 3.0), (3.0, 1e12))),
)

# Behaviour flags: (name, description, rule text, expression); tagged ``behaviour.flag.<name>``.
_FLAGS: tuple[tuple[str, str, str, pl.Expr], ...] = (
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
)

# Appended with the wider flow statistics (ids after the original 1,046).
_LATER_FLAGS: tuple[tuple[str, str, str, pl.Expr], ...] = (
    ("long_gap_30d", "A week or more without trade inside the last 30 days",
     "max_gap_days_30d >= 7", pl.col("max_gap_days_30d") >= 7),
    ("weekend_heavy_30d", "Over half of the revenue on weekends (30d)",
     "weekend_share_30d > 0.5", pl.col("weekend_share_30d") > 0.5),
    ("frequent_refund_days_30d", "Refunds on more than half of the trading days (30d)",
     "refund_day_share_30d > 0.5", pl.col("refund_day_share_30d") > 0.5),
    ("spiky_revenue_30d", "Best day over five times the average day (30d)",
     "rev_max_ratio_30d > 5", pl.col("rev_max_ratio_30d") > 5.0),
    ("right_skewed_90d", "Daily revenue strongly right-skewed (90d)", "rev_skew_90d > 2",
     pl.col("rev_skew_90d") > 2.0),
    ("recently_inactive", "No trade in the last 14 days", "days_since_last_trade > 14",
     pl.col("days_since_last_trade") > 14),
    ("short_history", "First trade under 90 days ago", "trading_history_days < 90",
     pl.col("trading_history_days") < 90),
)


def _rules(th: Thresholds) -> list[_Rule]:
    """Every rule, in bit-id order: families are only ever appended at the end."""
    families = (
        _identity_specs(),
        _ventile_specs(th),
        _bureau_specs(),
        _flag_specs(_FLAGS),
        _cross_specs(th),
        _flag_specs(_LATER_FLAGS),
    )
    return [
        _Rule(name, description, owner, rule, expr.fill_null(False))
        for family in families
        for name, description, owner, rule, expr in family
    ]


def _identity_specs() -> list[_Spec]:
    out: list[_Spec] = [
        (f"{prefix}.{value}", title.format(value), "kyc", f"{column} == {k}", pl.col(column) == k)
        for prefix, title, column, values in _CODES
        for k, value in enumerate(values)
    ]
    for k in range(len(_AGE_EDGES) + 1):
        age_lo = 0 if k == 0 else _AGE_EDGES[k - 1]
        age_hi = _AGE_EDGES[k] if k < len(_AGE_EDGES) else None
        span = f"{age_lo} <= business_age_days" + (f" < {age_hi}" if age_hi else "")
        out.append((f"identity.age_bucket.{k}", f"Business age bucket {k} ({span})", "kyc", span,
                    _age_bucket() == k))
    return out


def _ventile_specs(th: Thresholds) -> list[_Spec]:
    """Population ventiles of the tagged flow statistics."""
    out: list[_Spec] = []
    for feat in TAGGED_FLOW_FEATURES:
        edges = th.ventiles[feat]
        for v in range(VENTILES):
            lo = -np.inf if v == 0 else edges[v - 1]
            hi = np.inf if v == VENTILES - 1 else edges[v]
            out.append((f"behaviour.{feat}.v{v:02d}", f"{feat} in population ventile {v + 1} of {VENTILES}",
                        "risk-data", f"{lo!r} <= {feat} < {hi!r}",
                        (pl.col(feat) >= lo) & (pl.col(feat) < hi)))
    return out


def _bureau_specs() -> list[_Spec]:
    util = pl.col("credit_utilisation")
    out: list[_Spec] = [("bureau.has_record", "Merchant has a credit bureau record", "bureau",
                         "credit_utilisation is not null", util.is_not_null())]
    for name, value, title, rule, bands in _BUREAU_BANDS:
        for k, (lo, hi) in enumerate(bands):
            out.append((f"bureau.{name}.{k}", title.format(lo=lo, hi=hi), "bureau",
                        rule.format(lo=lo, hi=hi), (value >= lo) & (value < hi)))
    return out


def _flag_specs(flags: tuple[tuple[str, str, str, pl.Expr], ...]) -> list[_Spec]:
    return [(f"behaviour.flag.{name}", desc, "risk-analytics", rule, expr) for name, desc, rule, expr in flags]


def _cross_specs(th: Thresholds) -> list[_Spec]:
    """Crossed identity tags (region x segment, industry x age) and industry x revenue quartile."""
    out: list[_Spec] = []
    for s, seg in enumerate(world.SEGMENTS):
        for r, reg in enumerate(world.REGIONS):
            out.append((f"identity.region_segment.{reg}.{seg}", f"{seg} in region {reg}", "kyc",
                        f"region_code == {r} and segment_code == {s}",
                        (pl.col("region_code") == r) & (pl.col("segment_code") == s)))
    for i, ind in enumerate(world.INDUSTRIES):
        for k in range(len(_AGE_EDGES) + 1):
            out.append((f"identity.industry_age.{ind.name}.{k}", f"{ind.name}, age bucket {k}", "kyc",
                        f"industry_code == {i} and age_bucket == {k}",
                        (pl.col("industry_code") == i) & (_age_bucket() == k)))
    bounds = [-np.inf, *th.rev30_quartiles, np.inf]
    for i, ind in enumerate(world.INDUSTRIES):
        for q in range(4):
            lo, hi = bounds[q], bounds[q + 1]
            out.append((f"behaviour.industry_revenue.{ind.name}.q{q + 1}",
                        f"{ind.name} with 30-day revenue in population quartile {q + 1}", "risk-data",
                        f"industry_code == {i} and {lo!r} <= rev_mean_30d < {hi!r}",
                        (pl.col("industry_code") == i) & (pl.col("rev_mean_30d") >= lo)
                        & (pl.col("rev_mean_30d") < hi)))
    return out


class TagRules:
    """The compiled rules for one set of thresholds: the catalogue and a chunk packer."""

    def __init__(self, th: Thresholds) -> None:
        self._rules = _rules(th)
        self.n_bytes = 8 * ((len(self._rules) + 63) // 64)
        self._select = [r.expr.alias(str(i)) for i, r in enumerate(self._rules)]

    def catalog(self) -> list[Tag]:
        return [Tag(i, r.name, r.description, r.owner, r.rule) for i, r in enumerate(self._rules)]

    def write_catalog(self, path: Path) -> None:
        write_catalog(path, self.catalog())

    def pack(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``merchant_id, tags`` for one chunk of joined merchant rows.

        ``tags`` is a Binary column of ``n_bytes`` (whole 64-bit words); tag ``t`` is bit
        ``t % 8`` of byte ``t // 8``.
        """
        bits = frame.select(self._select).to_numpy()
        packed = np.packbits(bits.astype(bool), axis=1, bitorder="little")
        padded = np.zeros((frame.height, self.n_bytes), dtype=np.uint8)
        padded[:, : packed.shape[1]] = packed
        flat = padded.reshape(-1)
        # One Binary column straight from the packed rows: offsets are multiples of n_bytes.
        import pyarrow as pa

        arr = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(),
            frame.height,
            [None, pa.py_buffer(np.arange(0, flat.size + 1, self.n_bytes, dtype=np.int64)),
             pa.py_buffer(flat)],
        )
        return pl.DataFrame({"merchant_id": frame["merchant_id"], "tags": pl.Series(arr)})


def derive_tags(frame: pl.DataFrame, catalog_path: Path, chunk: int = 100_000) -> pl.DataFrame:
    """One-shot derivation over an in-memory frame (small populations and tests)."""
    rules = TagRules(thresholds(lambda c: frame[c]))
    rules.write_catalog(catalog_path)
    parts = [rules.pack(frame.slice(s, chunk)) for s in range(0, frame.height, chunk)]
    return pl.concat(parts) if parts else pl.DataFrame(schema={"merchant_id": pl.String, "tags": pl.Binary})
