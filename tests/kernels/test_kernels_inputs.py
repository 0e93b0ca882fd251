"""Bad inputs and unsupported models are refused with clear errors, before any C runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from kernels_testlib import lgb_model, xgb_model

from kernels import (
    InputDtypeError,
    InputShapeError,
    KernelError,
    ModelFormatError,
    TreeEnsemble,
    UnsupportedModelError,
    check_parity,
)


@pytest.fixture(scope="module")
def ens() -> TreeEnsemble:
    return TreeEnsemble.from_lightgbm(lgb_model())


@pytest.mark.parametrize(
    ("make", "err", "pattern"),
    [
        (lambda nf: np.zeros((3, nf), dtype=np.int64), InputDtypeError, "dtype"),
        (lambda nf: np.zeros((3, nf), dtype=np.float16), InputDtypeError, "dtype"),
        (lambda nf: np.zeros((3, nf), dtype=">f8"), InputDtypeError, "dtype"),
        (lambda nf: [[0.0] * nf], InputDtypeError, "ndarray"),
        (np.zeros, InputShapeError, "2-D"),
        (lambda nf: np.zeros((2, 2, nf)), InputShapeError, "2-D"),
        (lambda nf: np.zeros((3, nf + 1)), InputShapeError, "expects"),
        (lambda nf: np.zeros((3, nf - 1)), InputShapeError, "expects"),
        (lambda nf: np.zeros((nf, 3)).T, InputDtypeError, "contiguous"),
        (lambda nf: np.zeros((6, nf))[::2], InputDtypeError, "contiguous"),
        (lambda nf: np.asfortranarray(np.zeros((3, nf))), InputDtypeError, "contiguous"),
    ],
)
def test_bad_matrices(ens: TreeEnsemble, make, err, pattern) -> None:  # type: ignore[no-untyped-def]
    X = make(ens.n_features)
    for call in (
        lambda: ens.predict(X),
        lambda: ens.predict_with_reasons(X, top_k=2),
        lambda: ens.contributions(X),
    ):
        with pytest.raises(err, match=pattern):
            call()
    # All are KernelErrors, and shape errors are also ValueErrors.
    with pytest.raises(KernelError):
        ens.predict(X)


@pytest.mark.parametrize(
    ("make", "err"),
    [
        (lambda nf: np.zeros(nf, dtype=np.int32), InputDtypeError),
        (lambda nf: np.zeros((1, nf)), InputShapeError),
        (lambda nf: np.zeros(nf + 1), InputShapeError),
        (lambda nf: np.zeros(2 * nf)[::2], InputDtypeError),
        (lambda nf: tuple([0.0] * nf), InputDtypeError),
    ],
)
def test_bad_rows(ens: TreeEnsemble, make, err) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(err):
        ens.predict_one(make(ens.n_features))


def test_errors_are_value_or_type_errors() -> None:
    assert issubclass(InputShapeError, ValueError)
    assert issubclass(InputDtypeError, TypeError)
    assert issubclass(UnsupportedModelError, KernelError)
    assert issubclass(ModelFormatError, KernelError)


def test_empty_batch(ens: TreeEnsemble) -> None:
    X = np.zeros((0, ens.n_features))
    assert ens.predict(X).shape == (0,)
    p, i, v = ens.predict_with_reasons(X, top_k=2)
    assert p.shape == (0,) and i.shape == (0, 2) and v.shape == (0, 2)
    report = check_parity(ens, X, np.zeros(0))
    assert not report.passed


# ----------------------------------------------------------------------------- models
def test_linear_tree_rejected() -> None:
    text = lgb_model(n_trees=3, extra=(("linear_tree", True),), nan_frac=0.0)
    with pytest.raises(UnsupportedModelError, match="linear"):
        TreeEnsemble.from_lightgbm(text)


def test_multiclass_rejected() -> None:
    text = lgb_model(n_trees=2, extra=(("objective", "multiclass"), ("num_class", 3)))
    with pytest.raises(UnsupportedModelError, match="multiclass"):
        TreeEnsemble.from_lightgbm(text)


def test_unknown_objective_rejected() -> None:
    text = re.sub(r"^objective=.*$", "objective=made_up_loss", lgb_model(n_trees=2), flags=re.M)
    with pytest.raises(UnsupportedModelError, match="made_up_loss"):
        TreeEnsemble.from_lightgbm(text)


def test_xentlambda_rejected() -> None:
    text = lgb_model(n_trees=2, extra=(("objective", "cross_entropy_lambda"),))
    with pytest.raises(UnsupportedModelError, match="cross_entropy_lambda"):
        TreeEnsemble.from_lightgbm(text)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda s: s.replace("left_child=", "left_child=99 ", 1), "left_child"),
        (lambda s: re.sub(r"^split_feature=(\d+)", "split_feature=999", s, count=1, flags=re.M),
         "split feature"),
        # A current file (with tree_sizes) that lost its last tree; a missing
        # 'end of trees' alone is not an error (older files never had one).
        (lambda s: s[: s.index("Tree=2")], "truncated"),
        (lambda s: "not a model", "first line"),
        (lambda s: re.sub(r"^leaf_value=\S+", "leaf_value=abc", s, count=1, flags=re.M),
         "bad number"),
        (lambda s: re.sub(r"^right_child=(\S+) (\S+)", r"right_child=\1 \1", s, count=1,
                          flags=re.M), "reached twice|unreachable|out of range"),
    ],
)
def test_malformed_lightgbm(mutate, pattern) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelFormatError, match=pattern):
        TreeEnsemble.from_lightgbm(mutate(lgb_model(n_trees=3)))


def _xgb_doc() -> dict:  # type: ignore[type-arg]
    return json.loads(xgb_model(n_trees=3))  # type: ignore[no-any-return]


def test_xgboost_categorical_split_without_categories_refused() -> None:
    doc = _xgb_doc()
    doc["learner"]["gradient_booster"]["model"]["trees"][1]["split_type"][0] = 1
    with pytest.raises(ModelFormatError, match=r"trees\[1\]\.categories_nodes"):
        TreeEnsemble.from_xgboost_json(json.dumps(doc))


@pytest.mark.parametrize(
    ("path", "value", "pattern"),
    [
        (("learner", "objective", "name"), "multi:softprob", "multi:softprob"),
        (("learner", "learner_model_param", "num_class"), "3", "multiclass"),
        (("learner", "learner_model_param", "num_target"), "2", "multi-target"),
        (("learner", "gradient_booster", "name"), "gblinear", "gblinear"),
        (("learner", "objective", "name"), "binary:hinge", "binary:hinge"),
    ],
)
def test_xgboost_unsupported(path, value, pattern) -> None:  # type: ignore[no-untyped-def]
    doc = _xgb_doc()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(UnsupportedModelError, match=pattern):
        TreeEnsemble.from_xgboost_json(json.dumps(doc))


def test_xgboost_malformed() -> None:
    with pytest.raises(ModelFormatError):
        TreeEnsemble.from_xgboost_json("{")
    doc = _xgb_doc()
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"][0] = 10_000
    with pytest.raises(ModelFormatError, match="child"):
        TreeEnsemble.from_xgboost_json(json.dumps(doc))
    doc = _xgb_doc()
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["split_indices"][0] = 500
    with pytest.raises(ModelFormatError, match="split index"):
        TreeEnsemble.from_xgboost_json(json.dumps(doc))


def test_no_lightgbm_or_xgboost_import() -> None:
    import subprocess
    import sys

    code = (
        "import sys, kernels, kernels.ensemble, kernels.parity;"
        "bad = [m for m in ('lightgbm', 'xgboost', 'tl2cgen', 'lleaves', 'kernels.bench')"
        " if m in sys.modules];"
        "others = [m for m in sys.modules if m.split('.')[0] in"
        " ('services', 'features', 'loadtest', 'creditauth')];"
        "print(bad + others)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
