"""Request-time features: our per-batch numpy code equals Feast's on-demand feature view."""

from __future__ import annotations

import math

import numpy as np

from features.catalog import JOIN_KEY, REQUEST_COLUMNS
from features.feast_repo import open_store
from features.request import request_features
from tests.conftest import World, feature_settings


def test_matches_feast_on_demand_view(world: World) -> None:
    store = open_store(feature_settings(world))
    rows = [
        {JOIN_KEY: "M00000003", "amount_minor": 5_000_000, "declared_monthly_revenue_minor": 900_000.0,
         "term_months": 12, "channel_code": 2, "product_code": 1},
        {JOIN_KEY: "M00000042", "amount_minor": 120_000, "declared_monthly_revenue_minor": None,
         "term_months": 36, "channel_code": 5, "product_code": 4},
        {JOIN_KEY: "UNKNOWN", "amount_minor": 777, "declared_monthly_revenue_minor": 0.0,
         "term_months": 1, "channel_code": 1, "product_code": 2},
    ]
    refs = [f"request_features:{c}" for c in REQUEST_COLUMNS] + ["merchant_flows:rev_mean_30d"]
    sdk = store.get_online_features(features=refs, entity_rows=rows).to_dict()
    ours = request_features(
        amount_minor=np.array([r["amount_minor"] for r in rows], dtype=np.int64),
        declared_revenue_minor=np.array(
            [np.nan if (d := r["declared_monthly_revenue_minor"]) is None else d for r in rows]
        ),
        term_months=np.array([r["term_months"] for r in rows]),
        channel_code=np.array([r["channel_code"] for r in rows]),
        product_code=np.array([r["product_code"] for r in rows]),
        rev_mean_30d=np.array([np.nan if v is None else v for v in sdk["rev_mean_30d"]], dtype=np.float64),
    )
    for k, col in enumerate(REQUEST_COLUMNS):
        for i in range(len(rows)):
            w, g = sdk[col][i], float(ours[i, k])
            if w is None or (isinstance(w, float) and math.isnan(w)):
                assert math.isnan(g), (col, i)
            else:
                assert g == float(np.float32(w)), (col, i, w, g)


def test_amount_to_revenue_uses_30_day_revenue() -> None:
    out = request_features(
        amount_minor=np.array([300_000], dtype=np.int64),  # 3,000.00
        declared_revenue_minor=np.array([np.nan]),
        term_months=np.array([6]),
        channel_code=np.array([1]),
        product_code=np.array([1]),
        rev_mean_30d=np.array([100.0]),  # 3,000.00 a month
    )
    assert out[0, 0] == 1.0 and math.isnan(out[0, 1]) and out[0, 2] == 6
