"""TreeEnsemble.from_xgboost_json against XGBoost's inplace_predict.

XGBoost rounds inputs to float32, sums in float32 and applies a float32
sigmoid; the kernel reproduces that, so results are asserted bit-exact.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernels_testlib import adversarial, near_thresholds, xgb_booster, xgb_model, xgb_thresholds

from kernels import TreeEnsemble, check_parity

CONFIGS: dict[str, dict[str, Any]] = {
    "logistic_depth6": {},
    "logistic_base_score": {"extra": (("base_score", 0.3),)},
    "logitraw": {"extra": (("objective", "binary:logitraw"),)},
    "reg_logistic": {"extra": (("objective", "reg:logistic"),)},
    "squarederror": {"extra": (("objective", "reg:squarederror"),)},
    "poisson": {"extra": (("objective", "count:poisson"),)},
    "exact_depth8": {"max_depth": 8, "extra": (("tree_method", "exact"),)},
    "approx_lossguide": {
        "max_depth": 0,
        "extra": (("grow_policy", "lossguide"), ("max_leaves", 40), ("tree_method", "hist")),
    },
    "many_trees": {"n_trees": 400, "max_depth": 2, "n_rows": 500},
}


def _assert_exact(ens: TreeEnsemble, booster: Any, X: np.ndarray) -> None:
    for dtype in (np.float64, np.float32):
        Xd = np.ascontiguousarray(X, dtype=dtype)
        np.testing.assert_array_equal(ens.predict(Xd), booster.inplace_predict(Xd))
        np.testing.assert_array_equal(
            ens.predict(Xd, raw_score=True), booster.inplace_predict(Xd, predict_type="margin")
        )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_xgboost_exactly(name: str) -> None:
    blob = xgb_model(**CONFIGS[name])
    ens = TreeEnsemble.from_xgboost_json(blob)
    booster = xgb_booster(blob)
    assert ens.n_trees == len(booster.get_dump())
    X = adversarial(500, ens.n_features, seed=21)
    _assert_exact(ens, booster, X)
    th, ft = xgb_thresholds(blob)
    _assert_exact(ens, booster, near_thresholds(th, ens.n_features, ft, 300, seed=22))


def test_feature_names_default_and_given() -> None:
    import xgboost as xgb

    ens = TreeEnsemble.from_xgboost_json(xgb_model(n_trees=2))
    assert ens.feature_names == tuple(f"f{i}" for i in range(ens.n_features))
    X = np.random.default_rng(0).normal(size=(200, 3))
    names = ["income", "utilization", "age"]
    b = xgb.train({"max_depth": 2, "objective": "binary:logistic"},
                  xgb.DMatrix(X, (X[:, 0] > 0).astype(int), feature_names=names), 2)
    ens2 = TreeEnsemble.from_xgboost_json(bytes(b.save_raw("json")))
    assert ens2.feature_names == tuple(names)
    assert ens2.objective == "binary:logistic"


def test_single_leaf_xgboost_trees() -> None:
    import xgboost as xgb

    X = np.random.default_rng(0).normal(size=(100, 3))
    y = (X[:, 0] > 0).astype(int)
    b = xgb.train({"max_depth": 3, "gamma": 1e6, "objective": "binary:logistic"},
                  xgb.DMatrix(X, y), 3)
    doc = json.loads(b.save_raw("json"))
    trees = doc["learner"]["gradient_booster"]["model"]["trees"]
    assert all(len(t["left_children"]) == 1 for t in trees)
    ens = TreeEnsemble.from_xgboost_json(json.dumps(doc))
    np.testing.assert_array_equal(ens.predict(X), b.inplace_predict(X))


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n_trees=st.integers(1, 40),
    max_depth=st.integers(1, 9),
    n_features=st.integers(1, 10),
    seed=st.integers(0, 10_000),
    eta=st.sampled_from([0.05, 0.3, 1.0]),
)
def test_property_random_shapes(
    *, n_trees: int, max_depth: int, n_features: int, seed: int, eta: float
) -> None:
    blob = xgb_model(
        n_trees=n_trees, max_depth=max_depth, n_features=n_features, seed=seed,
        extra=(("eta", eta),), n_rows=800,
    )
    ens = TreeEnsemble.from_xgboost_json(blob)
    booster = xgb_booster(blob)
    _assert_exact(ens, booster, adversarial(200, n_features, seed=seed))


def test_parity_gate_on_xgboost() -> None:
    blob = xgb_model()
    ens = TreeEnsemble.from_xgboost_json(blob)
    X = adversarial(300, ens.n_features, seed=23)
    expected = xgb_booster(blob).inplace_predict(X)
    assert check_parity(ens, X, expected).passed
    # A gate must fail when the reference disagrees.
    bad = expected.copy()
    bad[17] += 1e-6
    report = check_parity(ens, X, bad, tolerance=1e-9)
    assert not report.passed
    assert report.worst_row == 17
    assert "FAILED" in str(report)
