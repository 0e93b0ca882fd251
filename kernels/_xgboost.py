"""Parse an XGBoost JSON model (``save_model("x.json")`` / ``save_raw("json")``).

XGBoost semantics mapped onto ForestIR:

* inputs are rounded to float32 (``float32_input``), leaves and thresholds are
  float32, the tree sum is accumulated in float32 from the base margin
  (``float32_sum``) -- all as XGBoost's CPU predictor does;
* ``x < split_condition`` (float32) goes left. For float32 ``x`` that is
  ``x <= nextafter(split_condition, -inf)``, which is the ForestIR form;
* NaN takes the node's ``default_left`` direction (``MISSING_NAN``);
* ``base_score`` is stored in probability space for logistic objectives (and
  as the mean for log-link objectives); it is converted to a margin with the
  objective's ``ProbToMargin`` in float32.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from kernels._ir import (
    LINK_EXP,
    LINK_IDENTITY,
    LINK_SIGMOID,
    MISSING_NAN,
    ForestIR,
    TreeIR,
    validate_tree,
)
from kernels.errors import ModelFormatError, UnsupportedModelError

_SIGMOID_OBJECTIVES = frozenset({"binary:logistic", "reg:logistic"})
_LOGIT_RAW = "binary:logitraw"
_IDENTITY_OBJECTIVES = frozenset(
    {"reg:squarederror", "reg:linear", "reg:pseudohubererror", "reg:absoluteerror",
     "reg:squaredlogerror", "reg:quantileerror", "rank:pairwise", "rank:ndcg", "rank:map"}
)
_EXP_OBJECTIVES = frozenset({"count:poisson", "reg:gamma", "reg:tweedie"})


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ModelFormatError(f"XGBoost JSON: missing '{key}' in {where}")
    return d[key]


def _parse_base_score(raw: Any) -> float:
    text = str(raw).strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except ValueError:
            raise ModelFormatError(f"XGBoost JSON: bad base_score {text!r}") from None
        if not isinstance(values, list) or len(values) != 1:
            raise UnsupportedModelError(
                f"XGBoost base_score {text!r}: only single-target models are supported"
            )
        text = str(values[0])
    try:
        value = float(text)
    except ValueError:
        raise ModelFormatError(f"XGBoost JSON: bad base_score {text!r}") from None
    if not math.isfinite(value):
        raise ModelFormatError(f"XGBoost JSON: non-finite base_score {text!r}")
    return value


def _f32_prev(values: np.ndarray) -> np.ndarray:
    """nextafter(v, -inf) in float32, returned as float64 (exact)."""
    v32 = values.astype(np.float32)
    return np.nextafter(v32, np.float32(-np.inf)).astype(np.float64)


def _node_means(left: np.ndarray, right: np.ndarray, leaf_val: np.ndarray,
                hess: np.ndarray, root: int) -> dict[int, float]:
    """Hessian-weighted mean leaf value under each node (XGBoost's approx contribs)."""
    means: dict[int, float] = {}
    order: list[int] = []
    stack = [root]
    while stack:
        n = stack.pop()
        order.append(n)
        if left[n] != -1:
            stack.extend((int(left[n]), int(right[n])))
    for n in reversed(order):
        if left[n] == -1:
            means[n] = float(leaf_val[n])
        else:
            lc, rc = int(left[n]), int(right[n])
            h = float(hess[n])
            if h > 0:
                means[n] = (means[lc] * float(hess[lc]) + means[rc] * float(hess[rc])) / h
            else:
                means[n] = 0.5 * (means[lc] + means[rc])
    return means


def _tree_arrays(t: Any, where: str) -> dict[str, np.ndarray]:
    """A tree's node arrays, all of one length, for a supported (scalar-leaf, numerical) tree."""
    try:
        left = np.asarray(_get(t, "left_children", where), dtype=np.int64)
        arrays = {
            "left_children": left,
            "right_children": np.asarray(_get(t, "right_children", where), dtype=np.int64),
            "split_conditions": np.asarray(_get(t, "split_conditions", where), dtype=np.float64),
            "split_indices": np.asarray(_get(t, "split_indices", where), dtype=np.int64),
            "default_left": np.asarray(_get(t, "default_left", where), dtype=np.int64),
            "split_type": np.asarray(t.get("split_type", [0] * len(left)), dtype=np.int64),
            "sum_hessian": np.asarray(t.get("sum_hessian", [1.0] * len(left)), dtype=np.float64),
        }
        size_leaf = int(t.get("tree_param", {}).get("size_leaf_vector", "1"))
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{where}: malformed arrays: {exc}") from None
    n = left.shape[0]
    if n == 0:
        raise ModelFormatError(f"{where}: empty tree")
    for name, arr in arrays.items():
        if name != "left_children" and (arr.ndim != 1 or arr.shape[0] != n):
            raise ModelFormatError(f"{where}: {name} length differs from left_children")
    if size_leaf > 1:
        raise UnsupportedModelError(
            f"{where}: vector leaves (multi-target trees) are not supported"
        )
    if np.any(arrays["split_type"] != 0):
        raise UnsupportedModelError(f"{where}: XGBoost categorical splits are not supported")
    right = arrays["right_children"]
    if np.any((left < -1) | (left >= n) | (right < -1) | (right >= n)) or np.any(
        (left == -1) != (right == -1)
    ):
        raise ModelFormatError(f"{where}: bad child indices")
    return arrays


def _renumber(left: np.ndarray, right: np.ndarray, where: str) -> tuple[dict[int, int], dict[int, int]]:
    """Renumber reachable nodes: internal nodes 0.. in DFS order, leaves 0.. in left-to-right order.

    Left to right is the leaf order the block kernel's bit masks rely on.
    """
    n = left.shape[0]
    internal_ids: dict[int, int] = {}
    leaf_ids: dict[int, int] = {}
    stack = [0]
    visited = 0
    while stack:
        node = stack.pop()
        visited += 1
        if visited > n:
            raise ModelFormatError(f"{where}: node graph is not a tree")
        if left[node] == -1:
            leaf_ids[node] = len(leaf_ids)
        else:
            internal_ids[node] = len(internal_ids)
            stack.append(int(right[node]))
            stack.append(int(left[node]))
    return internal_ids, leaf_ids


def _parse_tree(t: Any, n_features: int, where: str) -> TreeIR:
    arrays = _tree_arrays(t, where)
    left, right = arrays["left_children"], arrays["right_children"]
    cond, hess = arrays["split_conditions"], arrays["sum_hessian"]
    internal_ids, leaf_ids = _renumber(left, right, where)
    if len(internal_ids) == 0:
        leaf = float(np.float32(cond[0]))
        from kernels._ir import single_leaf_tree

        return single_leaf_tree(leaf)

    def enc(child: int) -> int:
        return internal_ids[child] if left[child] != -1 else ~leaf_ids[child]

    n_int = len(internal_ids)
    means = _node_means(left, right, cond.astype(np.float32).astype(np.float64), hess, 0)
    old_int = sorted(internal_ids, key=internal_ids.__getitem__)
    old_leaf = sorted(leaf_ids, key=leaf_ids.__getitem__)
    feat = arrays["split_indices"][old_int]
    if np.any(feat < 0) or np.any(feat >= n_features):
        raise ModelFormatError(f"{where}: split index outside [0, {n_features})")
    tree = TreeIR(
        split_feature=feat.astype(np.int32),
        threshold=_f32_prev(cond[old_int]),
        is_categorical=np.zeros(n_int, dtype=np.bool_),
        default_left=arrays["default_left"][old_int] != 0,
        missing=np.full(n_int, MISSING_NAN, dtype=np.uint8),
        left=np.array([enc(int(left[o])) for o in old_int], dtype=np.int32),
        right=np.array([enc(int(right[o])) for o in old_int], dtype=np.int32),
        internal_value=np.array([means[o] for o in old_int], dtype=np.float64),
        leaf_value=cond[old_leaf].astype(np.float32).astype(np.float64),
        cat_offset=np.zeros(n_int, dtype=np.int32),
        cat_length=np.zeros(n_int, dtype=np.int32),
        cat_words=np.zeros(0, dtype=np.uint32),
    )
    validate_tree(tree, n_features, where)
    return tree


def _n_features(param: Any) -> int:
    """The feature count of a single-output model's ``learner_model_param``."""
    num_class = int(param.get("num_class", "0"))
    num_target = int(param.get("num_target", "1"))
    if num_class > 1:
        raise UnsupportedModelError(
            f"XGBoost multiclass models (num_class={num_class}) are not supported"
        )
    if num_target > 1:
        raise UnsupportedModelError(
            f"XGBoost multi-target models (num_target={num_target}) are not supported"
        )
    n_features = int(_get(param, "num_feature", "learner_model_param"))
    if n_features < 1:
        raise ModelFormatError("XGBoost model has num_feature < 1")
    return n_features


def _link_and_margin(objective: str, base: float) -> tuple[str, float]:
    """The objective's link, and ``base_score`` as a margin (XGBoost's ``ProbToMargin``, in float32)."""
    from kernels._traverse import xgb_base_margin

    if objective in _SIGMOID_OBJECTIVES:
        if not 0.0 < base < 1.0:
            raise ModelFormatError(f"XGBoost {objective}: base_score {base} not in (0, 1)")
        return LINK_SIGMOID, xgb_base_margin(base, 1)
    if objective == _LOGIT_RAW:
        # XGBoost 2+/3.x keep logitraw's base_score as a margin (no logit).
        return LINK_IDENTITY, float(np.float32(base))
    if objective in _EXP_OBJECTIVES:
        if not base > 0.0:
            raise ModelFormatError(f"XGBoost {objective}: base_score {base} must be > 0")
        return LINK_EXP, xgb_base_margin(base, 2)
    if objective in _IDENTITY_OBJECTIVES:
        return LINK_IDENTITY, float(np.float32(base))
    raise UnsupportedModelError(f"XGBoost objective '{objective}' is not supported")


def _feature_names(learner: Any, n_features: int) -> tuple[str, ...]:
    types = learner.get("feature_types") or []
    if any(str(ft) == "c" for ft in types):
        raise UnsupportedModelError(
            "XGBoost categorical features (feature_types 'c') are not supported"
        )
    names_raw = learner.get("feature_names") or []
    if names_raw and len(names_raw) != n_features:
        raise ModelFormatError("XGBoost feature_names length differs from num_feature")
    return tuple(str(v) for v in names_raw) or tuple(f"f{j}" for j in range(n_features))


def _parse_trees(model: Any, n_features: int) -> tuple[TreeIR, ...]:
    trees_raw = _get(model, "trees", "gbtree model")
    info = model.get("tree_info", [0] * len(trees_raw))
    if any(int(g) != 0 for g in info):
        raise UnsupportedModelError("XGBoost model has trees for more than one output group")
    trees = tuple(
        _parse_tree(t, n_features, f"XGBoost tree {i}") for i, t in enumerate(trees_raw)
    )
    if not trees:
        raise ModelFormatError("XGBoost model has no trees")
    return trees


def parse_xgboost_json(text: str | bytes | bytearray) -> ForestIR:
    """Parse an XGBoost JSON model. Raises ModelFormatError / UnsupportedModelError."""
    try:
        doc = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"not an XGBoost JSON model: {exc}") from None
    learner = _get(doc, "learner", "document")
    booster = _get(learner, "gradient_booster", "learner")
    name = _get(booster, "name", "gradient_booster")
    if name != "gbtree":
        raise UnsupportedModelError(f"XGBoost booster '{name}' is not supported (only gbtree)")
    model = _get(booster, "model", "gradient_booster")
    param = _get(learner, "learner_model_param", "learner")
    n_features = _n_features(param)
    objective = str(_get(_get(learner, "objective", "learner"), "name", "objective"))
    base = _parse_base_score(_get(param, "base_score", "learner_model_param"))
    link, margin = _link_and_margin(objective, base)
    names = _feature_names(learner, n_features)
    trees = _parse_trees(model, n_features)
    return ForestIR(
        source="xgboost",
        objective=objective,
        n_features=n_features,
        feature_names=names,
        trees=trees,
        link=link,
        sigmoid_scale=1.0,
        base_margin=margin,
        average_output=False,
        float32_input=True,
        float32_sum=True,
        lightgbm_zero=False,
    )
