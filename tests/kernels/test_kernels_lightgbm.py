"""TreeEnsemble.from_lightgbm against LightGBM's own Booster.predict.

Predictions must match LightGBM to 1e-9 (the contract); the kernels are built
to be exact, so most tests assert bit-for-bit equality, which catches
summation-order or precision slips long before they reach 1e-9.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernels_testlib import adversarial, lgb_booster, lgb_model, model_thresholds, near_thresholds

from kernels import TreeEnsemble, check_parity

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "zero_as_missing": {"extra": (("zero_as_missing", True),), "zero_frac": 0.2},
    "no_missing": {"extra": (("use_missing", False),)},
    "categorical": {"cat_features": (2, 5)},
    "categorical_zero_missing": {
        "cat_features": (1,),
        "extra": (("zero_as_missing", True),),
        "zero_frac": 0.2,
    },
    "sigmoid_0_5": {"extra": (("sigmoid", 0.5),)},
    "deep_255_leaves": {"num_leaves": 255, "n_trees": 8, "n_rows": 4000},
    "regression": {"extra": (("objective", "regression"),)},
    "regression_sqrt": {"extra": (("objective", "regression"), ("reg_sqrt", True))},
    "cross_entropy": {"extra": (("objective", "cross_entropy"),)},
    "poisson": {"extra": (("objective", "poisson"),)},
    "random_forest": {
        "extra": (("boosting", "rf"), ("bagging_fraction", 0.5), ("bagging_freq", 1)),
    },
    "stumps_2000_trees": {"n_trees": 2000, "num_leaves": 2, "n_rows": 500},
}


def _assert_exact(ens: TreeEnsemble, booster: Any, X: np.ndarray) -> None:
    for dtype in (np.float64, np.float32):
        Xd = np.ascontiguousarray(X, dtype=dtype)
        expected = booster.predict(Xd)
        got = ens.predict(Xd)
        np.testing.assert_array_equal(got, expected)
        raw = ens.predict(Xd, raw_score=True)
        np.testing.assert_array_equal(raw, booster.predict(Xd, raw_score=True))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_lightgbm_exactly(name: str) -> None:
    cfg = CONFIGS[name]
    text = lgb_model(**cfg)
    ens = TreeEnsemble.from_lightgbm(text)
    booster = lgb_booster(text)
    assert ens.n_trees == booster.num_trees()
    assert ens.n_features == booster.num_feature()
    assert ens.feature_names == tuple(booster.feature_name())
    n_features = ens.n_features
    cats = tuple(cfg.get("cat_features", ()))
    X = adversarial(600, n_features, seed=1, cat_features=cats)
    _assert_exact(ens, booster, X)
    th, ft = model_thresholds(text)
    Xn = near_thresholds(th, n_features, ft, 300, seed=2)
    _assert_exact(ens, booster, Xn)


def test_single_row_paths_agree_with_batch() -> None:
    text = lgb_model(cat_features=(3,))
    ens = TreeEnsemble.from_lightgbm(text)
    booster = lgb_booster(text)
    X = adversarial(50, ens.n_features, seed=3, cat_features=(3,))
    batch = ens.predict(X)
    for i in range(X.shape[0]):
        assert ens.predict_one(X[i]) == batch[i]
        assert ens.predict(X[i : i + 1])[0] == batch[i]
        assert ens.predict_one(X[i].astype(np.float32)) == booster.predict(
            X[i : i + 1].astype(np.float32)
        )[0]
        assert ens.predict_one(X[i], raw_score=True) == booster.predict(
            X[i : i + 1], raw_score=True
        )[0]


def _append_single_leaf_trees(text: str, values: list[float]) -> str:
    """Add num_leaves=1 trees to a model text (LightGBM itself reads them back)."""
    head, tail = text.split("end of trees", 1)
    n_existing = len(re.findall(r"^Tree=", head, flags=re.M))
    blocks = []
    for i, v in enumerate(values):
        blocks.append(
            f"Tree={n_existing + i}\nnum_leaves=1\nnum_cat=0\nsplit_feature=\nsplit_gain=\n"
            f"threshold=\ndecision_type=\nleft_child=\nright_child=\nleaf_value={v!r}\n"
            f"leaf_weight=\nleaf_count=\ninternal_value=\ninternal_weight=\ninternal_count=\n"
            f"is_linear=0\nshrinkage=1\n\n\n"
        )
    head = re.sub(r"^tree_sizes=.*\n", "", head, flags=re.M)
    return head + "".join(blocks) + "end of trees" + tail


def test_single_leaf_trees() -> None:
    text = _append_single_leaf_trees(lgb_model(n_trees=5), [0.125, -0.3, 1e-3])
    booster = lgb_booster(text)
    assert booster.num_trees() == 8
    ens = TreeEnsemble.from_lightgbm(text)
    X = adversarial(200, ens.n_features, seed=4)
    _assert_exact(ens, booster, X)
    # A model made only of a single-leaf tree predicts a constant.
    only = lgb_model(n_trees=3, n_rows=40, extra=(("min_data_in_leaf", 100),))
    assert "num_leaves=1" in only
    ens1 = TreeEnsemble.from_lightgbm(only)
    _assert_exact(ens1, lgb_booster(only), X)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n_trees=st.integers(1, 60),
    num_leaves=st.sampled_from([2, 3, 7, 16, 31, 32, 33, 64, 65, 100]),
    n_features=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    use_cat=st.booleans(),
    missing=st.sampled_from(["nan", "zero", "none"]),
    max_depth=st.sampled_from([-1, 3, 6]),
)
def test_property_random_shapes(
    *,
    n_trees: int,
    num_leaves: int,
    n_features: int,
    seed: int,
    use_cat: bool,
    missing: str,
    max_depth: int,
) -> None:
    cats = (n_features - 1,) if use_cat and n_features > 1 else ()
    extra: list[tuple[str, Any]] = [("max_depth", max_depth)]
    if missing == "zero":
        extra.append(("zero_as_missing", True))
    elif missing == "none":
        extra.append(("use_missing", False))
    text = lgb_model(
        n_trees=n_trees,
        num_leaves=num_leaves,
        n_features=n_features,
        seed=seed,
        cat_features=cats,
        extra=tuple(extra),
        n_rows=1500,
        zero_frac=0.1,
    )
    ens = TreeEnsemble.from_lightgbm(text)
    booster = lgb_booster(text)
    X = adversarial(300, n_features, seed=seed + 1, cat_features=cats)
    _assert_exact(ens, booster, X)


def test_parity_gate_on_lightgbm() -> None:
    text = lgb_model()
    ens = TreeEnsemble.from_lightgbm(text)
    X = adversarial(500, ens.n_features, seed=5)
    report = check_parity(ens, X, lgb_booster(text).predict(X))
    assert report.passed
    assert report.rows == 500
    assert report.max_abs_error <= 1e-9
