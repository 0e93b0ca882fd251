"""The feature catalogue: every feature view, its fields and their types.

One source of truth for the Feast definitions, the offline tables, the bulk
materializer and the online reader, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from features.population.aggregate import BUREAU_FEATURES, FLOW_FEATURES, PROFILE_FEATURES

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
VELOCITY = FeatureView(
    "merchant_velocity",
    (("apps_1h", "int64"), ("apps_24h", "int64"), ("window_state", "bytes")),
    "Credit applications per merchant in the last hour and day, pushed on every authorization; "
    "window_state holds the minute and quarter-hour counters the windows slide over "
    "(see features.velocity)",
    "risk-platform",
)

BATCH_VIEWS: tuple[FeatureView, ...] = (FLOWS, PROFILE, BUREAU, TAGS)
ALL_VIEWS: tuple[FeatureView, ...] = (*BATCH_VIEWS, VELOCITY)
# Views whose float/int fields form the dense feature matrix, in this order.
MATRIX_VIEWS: tuple[FeatureView, ...] = (FLOWS, PROFILE, BUREAU, VELOCITY)
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
