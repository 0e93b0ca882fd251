"""Every kernel (block, single-row, reference traversal) agrees with the source
library bit for bit, across batch sizes that straddle the block and the
row/batch cut-over, leaf counts that select 32-bit / 64-bit masks or the
traversal fallback, and float32/float64 input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kernels_testlib import (
    adversarial,
    assert_reasons_match,
    lgb_booster,
    lgb_model,
    xgb_booster,
    xgb_model,
)

from kernels import TreeEnsemble

BATCH_SIZES = (1, 2, 15, 16, 17, 63, 64, 65, 130)

LGB_CASES: dict[str, dict[str, Any]] = {
    "narrow_31_leaves": {"num_leaves": 31, "cat_features": (3,)},
    "wide_48_leaves": {"num_leaves": 48, "n_rows": 3000},
    "wide_64_leaves_zero_missing": {
        "num_leaves": 64,
        "n_rows": 3000,
        "extra": (("zero_as_missing", True),),
        "zero_frac": 0.2,
    },
    "traverse_90_leaves": {"num_leaves": 90, "n_rows": 4000, "cat_features": (1,)},
}


@pytest.mark.parametrize("case", list(LGB_CASES))
def test_lightgbm_all_kernels(case: str) -> None:
    cfg = LGB_CASES[case]
    text = lgb_model(n_trees=25, **cfg)
    ens = TreeEnsemble.from_lightgbm(text)
    booster = lgb_booster(text)
    leaves = ens.max_leaves
    expected_kernel = "block" if leaves <= 64 else "row-traverse"
    assert ens.kernel_name == expected_kernel
    cats = tuple(cfg.get("cat_features", ()))
    X_all = adversarial(max(BATCH_SIZES), ens.n_features, seed=31, cat_features=cats)
    kernels = ["row", "reference"] + (["block"] if leaves <= 64 else [])
    for dtype in (np.float64, np.float32):
        X_all_d = X_all.astype(dtype)
        for n in BATCH_SIZES:
            X = np.ascontiguousarray(X_all_d[:n])
            want = booster.predict(X)
            np.testing.assert_array_equal(ens.predict(X), want)
            for k in kernels:
                np.testing.assert_array_equal(ens._predict_kernel(X, k), want, err_msg=k)
            np.testing.assert_array_equal(
                ens._predict_kernel(X, kernels[0], raw_score=True),
                booster.predict(X, raw_score=True),
            )
        for i in range(0, 40, 7):
            assert ens.predict_one(X_all_d[i]) == booster.predict(X_all_d[i : i + 1])[0]


@pytest.mark.parametrize("case", list(LGB_CASES))
def test_reasons_every_kernel_path(case: str) -> None:
    cfg = LGB_CASES[case]
    text = lgb_model(n_trees=25, **cfg)
    ens = TreeEnsemble.from_lightgbm(text)
    cats = tuple(cfg.get("cat_features", ()))
    X_all = adversarial(130, ens.n_features, seed=32, cat_features=cats)
    for n in (1, 5, 15, 16, 64, 130):  # row path below the 16-row cut-over, block above
        X = np.ascontiguousarray(X_all[:n])
        contrib = ens.contributions(X)
        prob, idx, val = ens.predict_with_reasons(X, top_k=4)
        np.testing.assert_array_equal(prob, ens.predict(X))
        assert_reasons_match(idx, val, contrib[:, :-1], 4)


@pytest.mark.parametrize("max_depth", [4, 6, 7])
def test_xgboost_all_kernels(max_depth: int) -> None:
    # depth 4 -> <= 16 leaves (32-bit masks), 6 -> 64 leaves (64-bit), 7 -> traversal.
    blob = xgb_model(n_trees=20, max_depth=max_depth, n_rows=4000)
    ens = TreeEnsemble.from_xgboost_json(blob)
    booster = xgb_booster(blob)
    X_all = adversarial(130, ens.n_features, seed=33)
    kernels = ["row", "reference"] + (["block"] if ens.max_leaves <= 64 else [])
    for dtype in (np.float64, np.float32):
        for n in BATCH_SIZES:
            X = np.ascontiguousarray(X_all[:n], dtype=dtype)
            want = booster.inplace_predict(X)
            np.testing.assert_array_equal(ens.predict(X), want)
            for k in kernels:
                np.testing.assert_array_equal(ens._predict_kernel(X, k), want, err_msg=k)
    _prob, idx, val = ens.predict_with_reasons(X_all, top_k=3)
    assert_reasons_match(idx, val, ens.contributions(X_all)[:, :-1], 3)


def test_kernels_release_the_gil_and_are_thread_safe() -> None:
    from concurrent.futures import ThreadPoolExecutor

    text = lgb_model(n_trees=40)
    ens = TreeEnsemble.from_lightgbm(text)
    X = adversarial(2000, ens.n_features, seed=34)
    want = ens.predict(X)
    chunks = np.array_split(X, 8)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: ens.predict(np.ascontiguousarray(c)), chunks))
        ones = list(pool.map(lambda i: ens.predict_one(X[i]), range(50)))
    np.testing.assert_array_equal(np.concatenate(got), want)
    np.testing.assert_array_equal(ones, want[:50])
