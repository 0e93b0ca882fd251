"""The feature catalogue: every feature view, its fields and their types.

One source of truth for the Feast definitions, the offline tables, the bulk
materializer and the online reader, so they cannot drift apart. It is the serving
contract: whatever produces the offline tables (the synthetic population here, a
lender's own pipelines in production) fills these columns; nothing here depends on
how they are produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Window aggregates of the cash-register flows (``merchant_flows``), one column per
# statistic and window.
WINDOWS: tuple[int, ...] = (7, 30, 90, 180)
# Per-window statistics. The first nine are the original set: tag rules and their
# bit ids refer to them (see ``features.population.tags.TAGGED_FLOW_FEATURES``), so they keep their names.
FLOW_STATS: tuple[str, ...] = (
    "rev_mean",  # mean daily revenue (major units), every calendar day
    "rev_cv",  # coefficient of variation of daily revenue
    "rev_trend",  # least-squares slope of daily revenue / mean (per day)
    "rev_growth",  # revenue against the prior window of the same length, -1..inf
    "active_days",  # days with at least one sale
    "refund_ratio",  # refunded / gross amount
    "distinct_customers",  # expected distinct customers over the window
    "ticket_mean",  # gross / transactions (major units)
    "night_share",  # share of transactions between 22:00 and 06:00
    "txn_mean",  # transactions per calendar day
    "txn_cv",  # coefficient of variation of daily transactions
    "net_rev_mean",  # (gross - refunds) per calendar day
    "rev_max_ratio",  # best day / mean day
    "rev_median_active",  # median revenue of trading days
    "rev_skew",  # skewness of daily revenue (calendar days)
    "weekend_share",  # share of revenue on Saturdays and Sundays
    "refund_count_ratio",  # refund transactions / sales
    "refund_day_share",  # share of trading days with a refund
    "customers_mean",  # mean distinct customers per calendar day
    "max_gap_days",  # longest run of days without trade inside the window
)
# Merchant-level flow facts that have no window.
FLOW_GLOBALS: tuple[str, ...] = ("days_since_last_trade", "trading_history_days")
FLOW_FEATURES: tuple[str, ...] = (
    *(f"{s}_{w}d" for w in WINDOWS for s in FLOW_STATS),
    *FLOW_GLOBALS,
)
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

# A merchant's last week against its own 13-week profile (``features.early_warning.baseline``,
# which documents each column), the share of its region's and industry's merchants
# whose revenue dropped so (``features.early_warning.scan.segment_shares``), and its usual
# rate of applications (``features.early_warning.usual``). Policy signals,
# not model inputs: ``features.training`` lists the model's columns by view and leaves this
# view out, as it leaves velocity out.
BASELINE_FEATURES: tuple[str, ...] = (
    "rev_recent_7d",
    "rev_profile_median_7d",
    "rev_profile_mad_7d",
    "rev_robust_z_7d",
    "rev_change_7d",
    "region_drop_share",
    "industry_drop_share",
    # Applications per trading day over the last 90 days (``features.early_warning.usual``):
    # what the live ``apps_24h`` is compared with. Last, so every earlier column keeps its place.
    "apps_usual_per_day",
)

ENTITY = "merchant"
JOIN_KEY = "merchant_id"
FEATURE_SERVICE = "credit_authorization_v1"

ValueKind = Literal["float32", "int64", "bytes"]


@dataclass(frozen=True)
class FeatureView:
    name: str
    fields: tuple[tuple[str, ValueKind], ...]
    description: str
    owner: str

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.fields)

    @property
    def numeric_names(self) -> tuple[str, ...]:
        """Fields that go into the dense float32 matrix (everything but ``bytes``)."""
        return tuple(f for f, k in self.fields if k != "bytes")


FLOWS = FeatureView(
    "merchant_flows",
    tuple((f, "float32") for f in FLOW_FEATURES),
    "Cash-register flow aggregates over 7/30/90/180-day windows",
    "risk-data",
)
PROFILE = FeatureView(
    "merchant_profile",
    tuple((f, "int64") for f in PROFILE_FEATURES),
    "Descriptive merchant attributes (industry, region, segment, age)",
    "kyc",
)
BUREAU = FeatureView(
    "merchant_bureau",
    tuple(
        (f, "float32" if f == "credit_utilisation" else "int64") for f in BUREAU_FEATURES
    ),
    "Credit bureau attributes",
    "bureau",
)
TAGS = FeatureView(
    "merchant_tags",
    (("tags", "bytes"),),
    "1,000+ identity and behaviour tags packed as one little-endian bitset",
    "risk-data",
)
BASELINE = FeatureView(
    "merchant_baseline",
    tuple((f, "float32") for f in BASELINE_FEATURES),
    "Revenue of the last 7 days against the merchant's own 13-week profile (robust z-score), "
    "the share of its region and industry whose revenue dropped, and its usual daily rate of "
    "credit applications",
    "risk-data",
)
VELOCITY = FeatureView(
    "merchant_velocity",
    (("apps_1h", "int64"), ("apps_24h", "int64"), ("window_state", "bytes")),
    "Credit applications per merchant in the last hour and day, pushed on every authorization; "
    "window_state holds the minute and quarter-hour counters the windows slide over "
    "(see features.velocity)",
    "risk-platform",
)

BATCH_VIEWS: tuple[FeatureView, ...] = (FLOWS, PROFILE, BUREAU, TAGS, BASELINE)
ALL_VIEWS: tuple[FeatureView, ...] = (*BATCH_VIEWS, VELOCITY)
# Views whose float/int fields form the dense feature matrix, in this order (the baseline
# last: earlier columns keep their positions).
MATRIX_VIEWS: tuple[FeatureView, ...] = (FLOWS, PROFILE, BUREAU, VELOCITY, BASELINE)
MATRIX_COLUMNS: tuple[str, ...] = tuple(f for v in MATRIX_VIEWS for f in v.numeric_names)

# Request-time features, computed per batch from the request (see features.request).
REQUEST_COLUMNS: tuple[str, ...] = (
    "amount_to_revenue",
    "amount_to_declared_revenue",
    "term_months",
    "channel_code",
    "product_code",
)
# Categorical columns (integer codes): LightGBM treats them as categories.
CATEGORICAL_COLUMNS: tuple[str, ...] = (
    "industry_code",
    "region_code",
    "segment_code",
    "channel_code",
    "product_code",
)


def view(name: str) -> FeatureView:
    for v in ALL_VIEWS:
        if v.name == name:
            return v
    raise KeyError(name)
