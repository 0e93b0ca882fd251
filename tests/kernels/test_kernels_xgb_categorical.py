"""XGBoost models with native categorical splits (``enable_categorical=True``) against XGBoost.

Models are trained on pandas categorical columns; the kernel is given the
category codes (what the serving matrix holds) and must match XGBoost's own
predictions on the same codes bit for bit, for odd values too: NaN (missing),
negative and fractional codes, codes past every category, huge values, +-inf.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kernels_testlib import adversarial

from kernels import ModelFormatError, TreeEnsemble
from kernels._ir import CAT_LIGHTGBM, CAT_XGBOOST
from kernels._xgboost import parse_xgboost_json

N_FEATURES = 6
CATS = (1, 4)  # categorical columns
N_CATEGORIES = (7, 40)


def _frame(n: int, seed: int, nan_frac: float = 0.1) -> tuple[Any, np.ndarray]:
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    for c, k in zip(CATS, N_CATEGORIES, strict=True):
        X[:, c] = rng.integers(0, k, n)
    X[rng.random(X.shape) < nan_frac] = np.nan
    effect = {c: rng.normal(size=k) * 1.5 for c, k in zip(CATS, N_CATEGORIES, strict=True)}
    signal = np.nan_to_num(X[:, 0]) - 0.5 * np.nan_to_num(X[:, 2]) + 0.8 * np.isnan(X[:, 1])
    for c in CATS:
        codes = np.nan_to_num(X[:, c], nan=0).astype(int)
        signal += np.where(np.isnan(X[:, c]), 0.7, effect[c][codes])
    y = (signal + rng.normal(scale=0.5, size=n) > 0).astype(int)
    df = pd.DataFrame({f"x{j}": X[:, j] for j in range(N_FEATURES)})
    for c, k in zip(CATS, N_CATEGORIES, strict=True):
        df[f"x{c}"] = pd.Categorical.from_codes(
            np.where(np.isnan(X[:, c]), -1, np.nan_to_num(X[:, c], nan=0)).astype(int), categories=list(range(k))
        )
    return df, y


def _train(params: dict[str, Any], rounds: int = 30) -> Any:
    import xgboost as xgb

    df, y = _frame(3000, seed=params.pop("data_seed", 0))
    base = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 5, "eta": 0.3, "nthread": 1,
            "seed": 1}
    return xgb.train({**base, **params}, xgb.DMatrix(df, y, enable_categorical=True), rounds)


CONFIGS: dict[str, dict[str, Any]] = {
    "partition_splits": {"max_cat_to_onehot": 1},
    "one_hot_splits": {"max_cat_to_onehot": 64},
    "deep_lossguide": {"max_cat_to_onehot": 1, "grow_policy": "lossguide", "max_leaves": 48, "max_depth": 0},
    "wide_80_leaves": {"max_cat_to_onehot": 1, "grow_policy": "lossguide", "max_leaves": 80, "max_depth": 0},
    "regression": {"max_cat_to_onehot": 1, "objective": "reg:squarederror", "data_seed": 3},
}


def _codes_matrix(n: int, seed: int) -> np.ndarray:
    """Adversarial rows; categorical columns get codes, fractions, negatives, out-of-range and specials."""
    X: np.ndarray = adversarial(n, N_FEATURES, seed=seed, cat_features=CATS)
    rng = np.random.default_rng(seed + 1)
    odd = np.array([np.nan, -0.5, -0.0, -1.0, 0.999, 6.5, 39.0, 40.0, 1e7, 16777215.0, 16777216.0, 3e9,
                    np.inf, -np.inf])
    for c in CATS:
        mask = rng.random(n) < 0.3
        X[mask, c] = rng.choice(odd, size=int(mask.sum()))
    return X


def _booster_predict(booster: Any, X: np.ndarray, margin: bool = False) -> np.ndarray:
    # inplace_predict takes every value (a DMatrix refuses +-inf); the trees'
    # split types make it treat the categorical columns as codes.
    out: np.ndarray = np.asarray(booster.inplace_predict(X, predict_type="margin" if margin else "value"))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_categorical_splits_match_xgboost_exactly(name: str) -> None:
    booster = _train(dict(CONFIGS[name]))
    blob = bytes(booster.save_raw("json"))
    doc = json.loads(blob)
    split_types = [t for tree in doc["learner"]["gradient_booster"]["model"]["trees"] for t in tree["split_type"]]
    assert 1 in split_types  # the model really has categorical splits
    ens = TreeEnsemble.from_xgboost_json(blob)
    assert ens.feature_names == tuple(f"x{j}" for j in range(N_FEATURES))
    X = _codes_matrix(800, seed=4)
    for dtype in (np.float64, np.float32):
        Xd = np.ascontiguousarray(X, dtype=dtype)
        expected = _booster_predict(booster, Xd)
        np.testing.assert_array_equal(ens.predict(Xd), expected)
        np.testing.assert_array_equal(ens.predict(Xd, raw_score=True), _booster_predict(booster, Xd, True))
        for kernel in ("reference", "row", "block"):
            try:
                got = ens._predict_kernel(Xd, kernel)
            except ValueError:
                continue  # that kernel does not serve this model
            np.testing.assert_array_equal(got, expected, err_msg=kernel)
    batch = ens.predict(X[:60])
    assert [ens.predict_one(X[i]) for i in range(60)] == batch.tolist()


def test_the_xgboost_rule_is_what_makes_it_exact() -> None:
    """The same trees under LightGBM's categorical rule disagree with XGBoost on odd values."""
    booster = _train({"max_cat_to_onehot": 1})
    forest = parse_xgboost_json(bytes(booster.save_raw("json")))
    assert forest.categorical_rule == CAT_XGBOOST
    X = _codes_matrix(800, seed=4)
    wrong = TreeEnsemble(dataclasses.replace(forest, categorical_rule=CAT_LIGHTGBM))
    expected = _booster_predict(booster, X)
    assert np.any(wrong.predict(X) != expected)
    np.testing.assert_array_equal(TreeEnsemble(forest).predict(X), expected)


def test_training_frame_scores_as_its_codes() -> None:
    """The DataFrame XGBoost was trained on and its codes give the same scores."""
    import xgboost as xgb

    booster = _train({"max_cat_to_onehot": 1})
    df, _ = _frame(500, seed=9)
    codes = df.copy()
    for c in CATS:
        codes[f"x{c}"] = df[f"x{c}"].cat.codes.replace(-1, np.nan).astype(float)
    ens = TreeEnsemble.from_xgboost_json(bytes(booster.save_raw("json")))
    expected = booster.predict(xgb.DMatrix(df, enable_categorical=True))
    np.testing.assert_array_equal(ens.predict(np.ascontiguousarray(codes.to_numpy(dtype=np.float64))), expected)


def test_reasons_on_categorical_models_sum_to_the_margin() -> None:
    booster = _train({"max_cat_to_onehot": 1})
    ens = TreeEnsemble.from_xgboost_json(bytes(booster.save_raw("json")))
    X = _codes_matrix(300, seed=6)
    contrib = ens.contributions(X)
    np.testing.assert_allclose(contrib.sum(axis=1), ens.predict(X, raw_score=True), rtol=0, atol=1e-5)
    _, idx, val = ens.predict_with_reasons(X, 3)
    assert np.all(val[idx >= 0] > 0)


def _doc() -> dict[str, Any]:
    return json.loads(bytes(_train({"max_cat_to_onehot": 1}, rounds=3).save_raw("json")))  # type: ignore[no-any-return]


def _first_cat_tree(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    trees = doc["learner"]["gradient_booster"]["model"]["trees"]
    return next((i, t) for i, t in enumerate(trees) if t["categories_nodes"])


@pytest.mark.parametrize(
    ("edit", "field", "what"),
    [
        (lambda t: t.update(categories=[-3] * len(t["categories"])), "categories", "outside [0, 16777216)"),
        (lambda t: t.update(categories_nodes=[len(t["left_children"]) + 5] * len(t["categories_nodes"])),
         "categories_nodes",
         "does not list the nodes"),
        (lambda t: t.update(categories_sizes=[10**6] * len(t["categories_sizes"])), "categories_segments",
         "out of range"),
        (lambda t: t["split_type"].__setitem__(0, 7), "split_type[0]", "0 numerical, 1 categorical"),
    ],
)
def test_broken_categorical_splits_are_refused_by_json_path(  # type: ignore[no-untyped-def]
    tmp_path: Path, edit, field: str, what: str
) -> None:
    doc = _doc()
    i, tree = _first_cat_tree(doc)
    edit(tree)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelFormatError) as info:
        TreeEnsemble.from_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: learner.gradient_booster.model.trees[{i}].{field}"), msg
    assert what in msg
