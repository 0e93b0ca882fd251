"""Helpers shared by the kernels tests: model builders, adversarial inputs and
pure-Python reference implementations (deliberately slow and obvious).

The reference tree walker reads LightGBM's own ``dump_model()`` JSON, not the
text format our loader parses, so a parsing bug cannot hide in both.
"""

from __future__ import annotations

import json
import math
from functools import cache
from typing import Any

import numpy as np

LGB_ZERO = 1.0000000180025095e-35  # (double)1e-35f, LightGBM's kZeroThreshold


# ----------------------------------------------------------------------------- data
def make_data(
    n: int,
    n_features: int,
    seed: int,
    *,
    nan_frac: float = 0.1,
    zero_frac: float = 0.0,
    cat_features: tuple[int, ...] = (),
    n_categories: int = 12,
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    if zero_frac:
        X[rng.random(X.shape) < zero_frac] = 0.0
    for c in cat_features:
        X[:, c] = rng.integers(0, n_categories, n)
    if nan_frac:
        X[rng.random(X.shape) < nan_frac] = np.nan
    w = rng.normal(size=n_features)
    signal = np.nan_to_num(X) @ w
    for c in cat_features:
        signal += np.where(np.nan_to_num(X[:, c]) % 3 == 0, 1.5, -0.5)
    signal += 0.8 * np.isnan(X[:, 0])
    y = (signal + rng.normal(scale=0.5, size=n) > 0).astype(np.int32)
    return X, y


def adversarial(
    n: int, n_features: int, seed: int, *, cat_features: tuple[int, ...] = ()
) -> np.ndarray:
    """Rows full of the values tree predictors get wrong: NaN, +-inf, zeros,
    tiny/huge magnitudes, values just around float32 boundaries, odd categories."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)) * 2.0
    special = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-36, -1e-36, LGB_ZERO, -LGB_ZERO, 5e-324,
         1e300, -1e300, 3.0e38, 3.5e38, -3.5e38, 2.0**31, 2.0**31 - 1, -1.0, -0.5, -0.99,
         1e10, 0.5, 1.0, 2.0]
    )
    mask = rng.random(X.shape) < 0.15
    X[mask] = rng.choice(special, size=int(mask.sum()))
    for c in cat_features:
        base = rng.integers(-3, 40, n).astype(np.float64)
        frac = rng.choice([0.0, 0.0, 0.0, 0.25, 0.75, 0.999], n)
        col = base + frac
        m2 = rng.random(n) < 0.15
        col[m2] = rng.choice(special, size=int(m2.sum()))
        X[:, c] = col
    return X


def near_thresholds(thresholds: np.ndarray, n_features: int, feats: np.ndarray, n: int,
                    seed: int) -> np.ndarray:
    """Rows whose values sit exactly on, and one ulp either side of, split thresholds
    (in float64 and float32), the places where a wrong comparison shows up."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    per_feature = [thresholds[feats == j] for j in range(n_features)]
    for i in range(n):
        for j in range(n_features):
            ths = per_feature[j]
            if ths.size == 0 or rng.random() < 0.2:
                continue
            t = float(ths[rng.integers(0, ths.size)])
            t32 = np.float32(t)
            candidates = [
                t,
                np.nextafter(t, np.inf),
                np.nextafter(t, -np.inf),
                float(t32),
                float(np.nextafter(t32, np.float32(np.inf))),
                float(np.nextafter(t32, np.float32(-np.inf))),
            ]
            X[i, j] = candidates[rng.integers(0, len(candidates))]
    return X


# ----------------------------------------------------------------------------- models
@cache
def lgb_model(
    *,
    n_trees: int = 30,
    num_leaves: int = 31,
    n_features: int = 8,
    seed: int = 0,
    cat_features: tuple[int, ...] = (),
    extra: tuple[tuple[str, Any], ...] = (),
    n_rows: int = 2000,
    nan_frac: float = 0.1,
    zero_frac: float = 0.0,
) -> str:
    import lightgbm as lgb

    X, y = make_data(n_rows, n_features, seed, cat_features=cat_features, nan_frac=nan_frac,
                     zero_frac=zero_frac)
    params: dict[str, Any] = {
        "objective": "binary",
        "num_leaves": num_leaves,
        "learning_rate": 0.1,
        "min_data_in_leaf": 5,
        "min_data_per_group": 5,
        "cat_smooth": 1.0,
        "verbose": -1,
        "num_threads": 1,
        "seed": seed,
        "deterministic": True,
    }
    params.update(dict(extra))
    ds = lgb.Dataset(X, y, categorical_feature=list(cat_features) or "auto",
                     params={"verbose": -1})
    booster = lgb.train(params, ds, num_boost_round=n_trees)
    return str(booster.model_to_string())


def lgb_booster(model_text: str) -> Any:
    import lightgbm as lgb

    return lgb.Booster(model_str=model_text, params={"num_threads": 1})


@cache
def xgb_model(
    *,
    n_trees: int = 30,
    max_depth: int = 5,
    n_features: int = 8,
    seed: int = 0,
    extra: tuple[tuple[str, Any], ...] = (),
    n_rows: int = 2000,
) -> bytes:
    import xgboost as xgb

    X, y = make_data(n_rows, n_features, seed)
    params: dict[str, Any] = {
        "objective": "binary:logistic",
        "max_depth": max_depth,
        "eta": 0.3,
        "nthread": 1,
        "seed": seed,
    }
    params.update(dict(extra))
    booster = xgb.train(params, xgb.DMatrix(X, y), num_boost_round=n_trees)
    return bytes(booster.save_raw("json"))


def xgb_booster(model_json: bytes) -> Any:
    import xgboost as xgb

    b = xgb.Booster(params={"nthread": 1})
    b.load_model(bytearray(model_json))
    return b


# ----------------------------------------------------------------------------- reference
def _lgb_numerical_go_left(x: float, node: dict[str, Any]) -> bool:
    """LightGBM's NumericalDecision, written out in Python from its documented rules."""
    mt = node["missing_type"]
    if math.isnan(x) and mt != "NaN":
        x = 0.0
    if (mt == "Zero" and -LGB_ZERO <= x <= LGB_ZERO) or (mt == "NaN" and math.isnan(x)):
        return bool(node["default_left"])
    return x <= float(node["threshold"])


def _lgb_categorical_go_left(x: float, node: dict[str, Any]) -> bool:
    if math.isnan(x) or x <= -1.0 or x >= 2.0**31:
        return False
    cats = {int(c) for c in str(node["threshold"]).split("||")}
    return int(x) in cats  # int() truncates toward zero like static_cast<int>


def lgb_reference(model_text: str, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walk LightGBM's dump_model() trees in Python.

    Returns (raw scores, Saabas contributions (n, n_features + 1)) where the last
    column is the sum of root values.
    """
    dump = lgb_booster(model_text).dump_model()
    nf = int(dump["max_feature_idx"]) + 1
    n = X.shape[0]
    raw = np.zeros(n)
    contrib = np.zeros((n, nf + 1))
    for i in range(n):
        row = [float(v) for v in X[i]]
        row = [0.0 if abs(v) <= LGB_ZERO else v for v in row]
        for tree in dump["tree_info"]:
            node = tree["tree_structure"]
            if "leaf_value" in node:
                raw[i] += node["leaf_value"]
                contrib[i, nf] += node["leaf_value"]
                continue
            contrib[i, nf] += node["internal_value"]
            while "leaf_value" not in node:
                x = row[node["split_feature"]]
                if node["decision_type"] == "==":
                    left = _lgb_categorical_go_left(x, node)
                else:
                    left = _lgb_numerical_go_left(x, node)
                child = node["left_child"] if left else node["right_child"]
                child_value = child.get("internal_value", child.get("leaf_value"))
                contrib[i, node["split_feature"]] += child_value - node["internal_value"]
                node = child
            raw[i] += node["leaf_value"]
    return raw, contrib


def reference_top_k(contrib: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k strictly positive contributions per row, descending, ties -> lower index."""
    n = contrib.shape[0]
    idx = np.full((n, k), -1, dtype=np.int32)
    val = np.zeros((n, k))
    for i in range(n):
        pos = [(-contrib[i, j], j) for j in range(contrib.shape[1]) if contrib[i, j] > 0]
        pos.sort()
        for p, (negv, j) in enumerate(pos[:k]):
            idx[i, p] = j
            val[i, p] = -negv
    return idx, val


def model_thresholds(model_text: str) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, split features) of all numerical splits, from dump_model()."""
    dump = lgb_booster(model_text).dump_model()
    th: list[float] = []
    ft: list[int] = []
    for tree in dump["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "leaf_value" in node:
                continue
            if node["decision_type"] == "<=":
                th.append(float(node["threshold"]))
                ft.append(int(node["split_feature"]))
            stack.extend((node["left_child"], node["right_child"]))
    return np.array(th), np.array(ft, dtype=np.int64)


def xgb_thresholds(model_json: bytes) -> tuple[np.ndarray, np.ndarray]:
    doc = json.loads(model_json)
    th: list[float] = []
    ft: list[int] = []
    for t in doc["learner"]["gradient_booster"]["model"]["trees"]:
        for lc, cond, idx in zip(t["left_children"], t["split_conditions"], t["split_indices"],
                                 strict=True):
            if lc != -1:
                th.append(float(cond))
                ft.append(int(idx))
    return np.array(th), np.array(ft, dtype=np.int64)


def assert_reasons_match(idx: np.ndarray, val: np.ndarray, contrib: np.ndarray, k: int,
                         rtol: float = 1e-6) -> None:
    """Top-k reasons agree with an exact (n, n_features) contribution matrix.

    The block kernel accumulates per-node contributions in float32 for a few
    trees at a time, so values are compared with a tolerance relative to the
    matrix's largest contribution. Checked: reported values match the exact
    top-k values; each reported index carries its reported value in the exact
    matrix (robust to near-ties that rounding may order either way); unused
    slots are -1 / 0.0 and agree with the reference except for contributions
    within the tolerance of zero; values are descending.
    """
    atol = rtol * max(1.0, float(np.max(np.abs(contrib), initial=0.0)))
    ref_idx, ref_val = reference_top_k(contrib, k)
    np.testing.assert_allclose(val, ref_val, atol=atol, rtol=0)
    used = idx >= 0
    clear = ref_val > atol
    np.testing.assert_array_equal(used[clear], (ref_idx >= 0)[clear])
    assert not np.any(used & (ref_val == 0.0) & (val > atol))
    rows = np.nonzero(used)[0]
    np.testing.assert_allclose(contrib[rows, idx[used]], val[used], atol=atol, rtol=0)
    assert np.all(val[~used] == 0.0)
    assert np.all(val[used] > 0.0)
    assert np.all(np.diff(val, axis=1) <= 0)
