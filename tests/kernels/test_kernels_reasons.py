"""Saabas reason codes against a slow pure-Python walker over LightGBM's dump_model()
and against XGBoost's own approximate (Saabas) contributions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernels_testlib import (
    adversarial,
    assert_reasons_match,
    lgb_booster,
    lgb_model,
    lgb_reference,
    xgb_booster,
    xgb_model,
)

from kernels import InputShapeError, TreeEnsemble


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"cat_features": (2,)},
        {"extra": (("zero_as_missing", True),), "zero_frac": 0.2},
        {"num_leaves": 100, "n_trees": 10},
    ],
)
def test_lightgbm_reasons_match_python_reference(cfg: dict[str, object]) -> None:
    text = lgb_model(**cfg)  # type: ignore[arg-type]
    ens = TreeEnsemble.from_lightgbm(text)
    cats = tuple(cfg.get("cat_features", ()))  # type: ignore[call-overload]
    X = adversarial(120, ens.n_features, seed=11, cat_features=cats)
    ref_raw, ref_contrib = lgb_reference(text, X)
    # The reference walker itself must agree with LightGBM, or it proves nothing.
    np.testing.assert_allclose(ref_raw, lgb_booster(text).predict(X, raw_score=True), atol=1e-12)
    contrib = ens.contributions(X)
    np.testing.assert_allclose(contrib, ref_contrib, atol=1e-12)
    # Contributions plus bias telescope to the raw score.
    np.testing.assert_allclose(contrib.sum(axis=1), ens.predict(X, raw_score=True), atol=1e-9)
    for k in (1, 3, ens.n_features):
        prob, idx, val = ens.predict_with_reasons(X, top_k=k)
        np.testing.assert_array_equal(prob, ens.predict(X))
        assert_reasons_match(idx, val, ref_contrib[:, :-1], k)
    # Single rows (the row kernels) against the reference, and against the same
    # rows scored in a batch (the block kernel): both sum the same float32 leaf
    # vectors in the same order, or (models over 64 leaves) exact float64 paths.
    _, idx_b, val_b = ens.predict_with_reasons(X, top_k=3)
    for i in range(12):
        _, idx1, val1 = ens.predict_with_reasons(X[i : i + 1], top_k=3)
        assert_reasons_match(idx1, val1, ref_contrib[i : i + 1, :-1], 3)
        np.testing.assert_array_equal(idx1[0], idx_b[i])
        np.testing.assert_allclose(val1[0], val_b[i], rtol=1e-12, atol=0)


def test_block_reasons_of_wide_models_equal_single_rows_past_the_first_block() -> None:
    """More features than a block has rows (97 > 64): the ranked row must not overwrite the
    next block's partial sums (it did: reasons from row 64 on were garbage, PD unaffected)."""
    text = lgb_model(n_features=97, n_trees=20, n_rows=3000)
    ens = TreeEnsemble.from_lightgbm(text)
    X = adversarial(300, ens.n_features, seed=5)
    _, ref_contrib = lgb_reference(text, X)
    _, idx_b, val_b = ens.predict_with_reasons(X, top_k=4)
    assert_reasons_match(idx_b, val_b, ref_contrib[:, :-1], 4)
    for i in range(0, 300, 7):
        _, idx1, val1 = ens.predict_with_reasons(X[i : i + 1], top_k=4)
        np.testing.assert_array_equal(idx1[0], idx_b[i])
        np.testing.assert_allclose(val1[0], val_b[i], rtol=1e-6, atol=1e-9)


def test_reasons_float32_input_and_raw_score() -> None:
    text = lgb_model()
    ens = TreeEnsemble.from_lightgbm(text)
    X = adversarial(80, ens.n_features, seed=12).astype(np.float32)
    raw, idx, val = ens.predict_with_reasons(X, top_k=2, raw_score=True)
    np.testing.assert_array_equal(raw, lgb_booster(text).predict(X, raw_score=True))
    _, ref = lgb_reference(text, X)
    assert_reasons_match(idx, val, ref[:, :-1], 2)


@pytest.mark.parametrize("max_depth", [3, 6, 8])
def test_xgboost_contributions_match_xgboost_approx_contribs(max_depth: int) -> None:
    import xgboost as xgb

    blob = xgb_model(max_depth=max_depth)
    ens = TreeEnsemble.from_xgboost_json(blob)
    X = adversarial(150, ens.n_features, seed=13)
    X = np.where(np.isfinite(X) & (np.abs(X) < 1e30), X, np.where(np.isnan(X), X, 1.0))
    expected = xgb_booster(blob).predict(xgb.DMatrix(X), pred_contribs=True, approx_contribs=True)
    got = ens.contributions(X)
    # XGBoost computes node means in float32; we use float64.
    np.testing.assert_allclose(got, expected, atol=2e-5)
    _prob, idx, val = ens.predict_with_reasons(X, top_k=3)
    assert_reasons_match(idx, val, got[:, :-1], 3)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 1000), k=st.integers(1, 6), leaves=st.sampled_from([4, 31, 70]))
def test_property_top_k_is_top_of_contributions(seed: int, k: int, leaves: int) -> None:
    text = lgb_model(n_trees=20, num_leaves=leaves, n_features=6, seed=seed)
    ens = TreeEnsemble.from_lightgbm(text)
    X = adversarial(60, 6, seed=seed)
    contrib = ens.contributions(X)
    _, idx, val = ens.predict_with_reasons(X, top_k=k)
    assert_reasons_match(idx, val, contrib[:, :-1], k)


@pytest.mark.parametrize("n_features", [40, 600])
def test_top_k_selection_wide_models_and_ties(n_features: int) -> None:
    # 40 features take the vectorised selection; 600 are past its stack buffer
    # (512) and the leaf-vector table's width, so the scalar insertion runs.
    # Integer-valued duplicated columns make exact ties, which go to the lower
    # feature index either way.
    text = lgb_model(n_trees=8, num_leaves=15, n_features=n_features, seed=3, n_rows=1500)
    ens = TreeEnsemble.from_lightgbm(text)
    X = np.ascontiguousarray(adversarial(40, n_features, seed=5))
    X[:, 1] = X[:, 0]
    contrib = ens.contributions(X)
    for rows in (X, X[:1]):
        _, idx, val = ens.predict_with_reasons(rows, top_k=5)
        assert_reasons_match(idx, val, contrib[: rows.shape[0], :-1], 5)


@pytest.mark.parametrize("k_arg", [np.int64(3), 3])
def test_top_k_accepts_numpy_and_python_ints(k_arg: object) -> None:
    ens = TreeEnsemble.from_lightgbm(lgb_model())
    X = adversarial(20, ens.n_features, seed=15)
    _, idx, _ = ens.predict_with_reasons(X, top_k=k_arg)  # type: ignore[arg-type]
    assert idx.shape == (20, 3)


def test_reason_names_helper() -> None:
    ens = TreeEnsemble.from_lightgbm(lgb_model())
    X = adversarial(5, ens.n_features, seed=14)
    _, idx, _ = ens.predict_with_reasons(X, top_k=3)
    names = ens.reason_names(idx)
    for row_idx, row_names in zip(idx, names, strict=True):
        assert row_names == [ens.feature_names[j] for j in row_idx if j >= 0]


@pytest.mark.parametrize("bad", [0, -1, 9, 2.0, True])
def test_bad_top_k(bad: object) -> None:
    ens = TreeEnsemble.from_lightgbm(lgb_model())
    X = np.zeros((2, ens.n_features))
    with pytest.raises(InputShapeError):
        ens.predict_with_reasons(X, top_k=bad)  # type: ignore[arg-type]
