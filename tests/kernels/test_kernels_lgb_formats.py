"""LightGBM models trained elsewhere: older text formats, located refusals, multiclass.

Older files are made the way older LightGBM versions wrote them: a current
model file with the lines they did not write removed. Each must load in
LightGBM 4.7 itself, and then score bit-exactly as LightGBM scores it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kernels_testlib import adversarial, lgb_booster, lgb_model, make_data

from kernels import ModelFormatError, MulticlassEnsemble, TreeEnsemble, UnsupportedModelError


def _drop_lines(*prefixes: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        return "\n".join(line for line in text.split("\n") if not line.startswith(prefixes)) + "\n"

    return edit


def _drop_sections(text: str) -> str:
    """No feature importances or parameters after the trees (LightGBM 2.0 wrote neither)."""
    return text.split("end of trees", maxsplit=1)[0]


def _v2(text: str) -> str:
    """What LightGBM 2.0.x wrote: version v2, no tree_sizes, no 'end of trees', nothing after the trees."""
    text = _drop_sections(text)
    text = _drop_lines("tree_sizes=", "is_linear=")(text)
    return re.sub(r"^version=v\d", "version=v2", text, flags=re.M)


def _v1(text: str) -> str:
    """Older still: no version line, no num_tree_per_iteration, no node values, no shrinkage."""
    return _drop_lines("version=", "num_tree_per_iteration=", "internal_value=", "internal_weight=",
                       "internal_count=", "shrinkage=")(_v2(text))


OLD_FORMATS: dict[str, Callable[[str], str]] = {
    "no_end_of_trees": lambda s: s.replace("end of trees\n", ""),
    "v2_no_tree_sizes": _v2,
    "no_version_no_node_values": _v1,
    "no_leaf_weights_either": lambda s: _drop_lines("leaf_weight=", "leaf_count=")(_v1(s)),
}

MODELS: dict[str, dict[str, Any]] = {
    "binary_nan": {},
    "categorical": {"cat_features": (2, 5)},
    "zero_as_missing": {"zero_frac": 0.2, "extra": (("zero_as_missing", True),)},
    "regression_sqrt": {"extra": (("objective", "regression"), ("reg_sqrt", True))},
}


def _assert_exact(ens: TreeEnsemble, booster: Any, X: np.ndarray) -> None:
    for dtype in (np.float64, np.float32):
        Xd = np.ascontiguousarray(X, dtype=dtype)
        np.testing.assert_array_equal(ens.predict(Xd), booster.predict(Xd))
        np.testing.assert_array_equal(ens.predict(Xd, raw_score=True), booster.predict(Xd, raw_score=True))


@pytest.mark.parametrize("fmt", list(OLD_FORMATS))
@pytest.mark.parametrize("model", list(MODELS))
def test_older_formats_score_as_lightgbm_loads_them(fmt: str, model: str) -> None:
    cfg = MODELS[model]
    old = OLD_FORMATS[fmt](lgb_model(n_trees=25, **cfg))
    assert "end of trees" not in old
    booster = lgb_booster(old)  # LightGBM itself accepts the older file
    ens = TreeEnsemble.from_lightgbm(old)
    assert ens.n_trees == booster.num_trees()
    X = adversarial(500, ens.n_features, seed=5, cat_features=tuple(cfg.get("cat_features", ())))
    _assert_exact(ens, booster, X)
    # Reason codes stay consistent where node values had to be rebuilt: they sum to the raw score.
    contrib = ens.contributions(X)
    np.testing.assert_allclose(contrib.sum(axis=1), ens.predict(X, raw_score=True), rtol=1e-9, atol=1e-9)


def test_tree_without_decision_type_is_numerical_missing_none() -> None:
    old = _drop_lines("decision_type=")(_v1(lgb_model(n_trees=20, nan_frac=0.2)))
    booster = lgb_booster(old)
    ens = TreeEnsemble.from_lightgbm(old)
    _assert_exact(ens, booster, adversarial(400, ens.n_features, seed=6))


def test_older_format_keeps_internal_values_it_has() -> None:
    text = lgb_model(n_trees=10)
    new, old = TreeEnsemble.from_lightgbm(text), TreeEnsemble.from_lightgbm(_v2(text))
    X = adversarial(200, new.n_features, seed=7)
    np.testing.assert_array_equal(new.contributions(X), old.contributions(X))
    assert new.expected_value == old.expected_value


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.txt"
    path.write_text(text)
    return path


def _line(text: str, pattern: str, nth: int = 0) -> int:
    hits = [i + 1 for i, line in enumerate(text.split("\n")) if re.match(pattern, line)]
    return hits[nth]


def test_a_current_file_missing_a_tree_is_truncated(tmp_path: Path) -> None:
    text = lgb_model(n_trees=6)
    cut = text[: text.index("Tree=5")] + "end of trees\n"
    path = _write(tmp_path, cut)
    with pytest.raises(ModelFormatError) as info:
        TreeEnsemble.from_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{_line(cut, 'tree_sizes=')}: header tree_sizes: lists 6 trees")
    assert "holds 5" in msg and "Tree=4" in msg


def test_a_tree_cut_mid_line_names_tree_line_and_field(tmp_path: Path) -> None:
    text = _v2(lgb_model(n_trees=4))
    line = _line(text, "leaf_value=", nth=3)
    lines = text.split("\n")
    lines[line - 1] = lines[line - 1][: len(lines[line - 1]) // 2]
    cut = "\n".join(lines[:line])
    path = _write(tmp_path, cut)
    with pytest.raises(ModelFormatError, match=rf"^{re.escape(str(path))}:{line}: Tree=3 leaf_value: \d+ leaf values"):
        TreeEnsemble.from_file(path)


@pytest.mark.parametrize(
    ("edit", "pattern", "key", "what"),
    [
        (lambda s: s.replace("left_child=", "left_child=99 ", 1), r"left_child=", "Tree=0 left_child",
         "entries, expected"),
        (lambda s: re.sub(r"^threshold=(\S+)", "threshold=abc", s, count=1, flags=re.M), r"threshold=",
         "Tree=0 threshold", "bad number"),
        (lambda s: re.sub(r"^num_leaves=\d+", "num_leaves=x", s, count=1, flags=re.M), r"num_leaves=",
         "Tree=0 num_leaves", "bad integer"),
        (lambda s: re.sub(r"^objective=.*$", "objective=made_up", s, count=1, flags=re.M), r"objective=",
         "header objective", "not supported"),
        (lambda s: re.sub(r"^version=.*$", "version=v9", s, count=1, flags=re.M), r"version=",
         "header version", "not supported"),
    ],
)
def test_refusals_name_file_line_and_field(  # type: ignore[no-untyped-def]
    tmp_path: Path, edit, pattern: str, key: str, what: str
) -> None:
    text = edit(lgb_model(n_trees=3))
    path = _write(tmp_path, text)
    with pytest.raises((ModelFormatError, UnsupportedModelError)) as info:
        TreeEnsemble.from_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{_line(text, pattern)}: {key}"), msg
    assert what in msg


def test_a_structural_error_names_the_tree_line(tmp_path: Path) -> None:
    text = re.sub(r"^split_feature=(\d+)", "split_feature=999", lgb_model(n_trees=3), count=1, flags=re.M)
    path = _write(tmp_path, text)
    with pytest.raises(ModelFormatError, match=rf"^{re.escape(str(path))}:{_line(text, 'Tree=0')}: Tree=0: split"):
        TreeEnsemble.from_file(path)


def test_binary_files_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "model.ubj"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelFormatError, match=rf"^{re.escape(str(path))}: neither XGBoost JSON nor LightGBM"):
        TreeEnsemble.from_file(path)


# ----------------------------------------------------------------------------- multiclass
def _multiclass_model(objective: str, *, cat: bool = False, extra: dict[str, Any] | None = None) -> str:
    import lightgbm as lgb

    X, _ = make_data(3000, 6, seed=11, cat_features=(4,) if cat else ())
    signal = np.nan_to_num(X) @ np.array([1.0, -0.7, 0.5, 0.3, 0.2, -0.4])
    y = np.digitize(signal, np.quantile(signal, [0.4, 0.75]))  # three grades
    params = {"objective": objective, "num_class": 3, "num_leaves": 15, "verbose": -1, "num_threads": 1,
              "seed": 3, "deterministic": True, "min_data_per_group": 5, **(extra or {})}
    ds = lgb.Dataset(X, y, categorical_feature=[4] if cat else "auto", params={"verbose": -1})
    return str(lgb.train(params, ds, num_boost_round=20).model_to_string())


MULTICLASS = {
    "softmax": ("multiclass", False, None),
    "softmax_categorical": ("multiclass", True, None),
    "one_vs_rest": ("multiclassova", False, None),
    "random_forest": ("multiclass", False, {"boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1}),
}


@pytest.mark.parametrize("name", list(MULTICLASS))
def test_multiclass_probabilities_match_lightgbm(name: str) -> None:
    objective, cat, extra = MULTICLASS[name]
    text = _multiclass_model(objective, cat=cat, extra=extra)
    booster = lgb_booster(text)
    ens = MulticlassEnsemble.from_lightgbm(text)
    assert ens.n_classes == 3 and ens.n_features == booster.num_feature()
    assert ens.kind == ("ova" if objective == "multiclassova" else "softmax")
    X = adversarial(500, ens.n_features, seed=12, cat_features=(4,) if cat else ())
    for dtype in (np.float64, np.float32):
        Xd = np.ascontiguousarray(X, dtype=dtype)
        expected = booster.predict(Xd)
        np.testing.assert_array_equal(ens.predict_proba(Xd), expected)
        np.testing.assert_array_equal(ens.predict_raw(Xd), booster.predict(Xd, raw_score=True))
        np.testing.assert_array_equal(ens.predict_class(Xd), np.argmax(expected, axis=1))


def test_multiclass_older_format_and_reasons() -> None:
    text = _v1(_multiclass_model("multiclass"))  # no num_tree_per_iteration: it defaults to num_class
    booster = lgb_booster(text)
    ens = MulticlassEnsemble.from_lightgbm(text)
    X = adversarial(300, ens.n_features, seed=13)
    np.testing.assert_array_equal(ens.predict_proba(X), booster.predict(X))
    raw, idx, val = ens.predict_with_reasons(X, 3, class_index=2)
    np.testing.assert_array_equal(raw, booster.predict(X, raw_score=True)[:, 2])
    assert idx.shape == (300, 3) and np.all(val[idx >= 0] > 0)
    with pytest.raises(ValueError, match="class_index"):
        ens.predict_with_reasons(X, 3, class_index=3)


def test_tree_ensemble_refuses_multiclass_and_says_what_to_use(tmp_path: Path) -> None:
    text = _multiclass_model("multiclass")
    path = _write(tmp_path, text)
    with pytest.raises(UnsupportedModelError) as info:
        TreeEnsemble.from_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{_line(text, 'num_class=')}: header num_class")
    assert "num_class=3" in msg and "MulticlassEnsemble.from_lightgbm" in msg and "one output per row" in msg


def test_multiclass_loader_refuses_binary_and_partial_iterations() -> None:
    with pytest.raises(UnsupportedModelError, match="not a multiclass model"):
        MulticlassEnsemble.from_lightgbm(lgb_model(n_trees=3))
    text = _v2(_multiclass_model("multiclass"))
    cut = text[: text.index("Tree=59")]  # 20 iterations of 3 trees, the last tree dropped
    with pytest.raises(ModelFormatError, match=r"59 trees is not a whole number of iterations of 3"):
        MulticlassEnsemble.from_lightgbm(cut, "m.txt")
