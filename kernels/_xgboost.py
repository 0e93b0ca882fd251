"""Parse an XGBoost JSON model (``save_model("x.json")`` / ``save_raw("json")``).

XGBoost semantics mapped onto ForestIR:

* inputs are rounded to float32 (``float32_input``), leaves and thresholds are
  float32, the tree sum is accumulated in float32 from the base margin
  (``float32_sum``) -- all as XGBoost's CPU predictor does;
* ``x < split_condition`` (float32) goes left. For float32 ``x`` that is
  ``x <= nextafter(split_condition, -inf)``, which is the ForestIR form;
* NaN takes the node's ``default_left`` direction (``MISSING_NAN``);
* native categorical splits (``split_type`` 1, ``enable_categorical=True``):
  the listed categories go to XGBoost's right child, every other value in
  ``[0, 2**24)`` and every invalid one (negative, ``>= 2**24``, +-inf) to
  the left, NaN to the default child. They become ForestIR categorical nodes
  under ``CAT_XGBOOST`` with children swapped (see ``_ir.py``). Inputs are
  the category *codes* the model was trained on (pandas ``cat.codes``);
  XGBoost's re-coding of differently ordered pandas categories is the
  caller's business;
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
    CAT_XGBOOST,
    LINK_EXP,
    LINK_IDENTITY,
    LINK_SIGMOID,
    MISSING_NAN,
    ForestIR,
    TreeIR,
    single_leaf_tree,
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


DEFAULT_SOURCE = "<XGBoost JSON>"
# XGBoost's InvalidCat: categories are codes in [0, 16777216) (exact in float32).
_MAX_CATEGORY = 16777216


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ModelFormatError(f"{where}: missing '{key}'")
    return d[key]


def _parse_base_score(raw: Any, where: str) -> float:
    text = str(raw).strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except ValueError:
            raise ModelFormatError(f"{where}: bad base_score {text!r}") from None
        if not isinstance(values, list) or len(values) != 1:
            raise UnsupportedModelError(
                f"{where}: base_score {text!r}: only single-target models are supported"
            )
        text = str(values[0])
    try:
        value = float(text)
    except ValueError:
        raise ModelFormatError(f"{where}: bad base_score {text!r}") from None
    if not math.isfinite(value):
        raise ModelFormatError(f"{where}: non-finite base_score {text!r}")
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
    """A tree's node arrays, all of one length, for a supported (scalar-leaf) tree."""
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
            raise ModelFormatError(f"{where}.{name}: length differs from left_children")
    if size_leaf > 1:
        raise UnsupportedModelError(
            f"{where}: vector leaves (multi-target trees) are not supported"
        )
    bad_type = np.flatnonzero((arrays["split_type"] != 0) & (arrays["split_type"] != 1))
    if bad_type.size:
        raise ModelFormatError(
            f"{where}.split_type[{bad_type[0]}]: {arrays['split_type'][bad_type[0]]} "
            "(0 numerical, 1 categorical)"
        )
    right = arrays["right_children"]
    if np.any((left < -1) | (left >= n) | (right < -1) | (right >= n)) or np.any(
        (left == -1) != (right == -1)
    ):
        raise ModelFormatError(f"{where}: bad child indices")
    return arrays


def _int_list(t: Any, key: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(t.get(key, []), dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelFormatError(f"{where}.{key}: not a list of integers: {exc}") from None
    if arr.ndim != 1:
        raise ModelFormatError(f"{where}.{key}: not a flat list")
    return arr


def _category_sets(t: Any, split_type: np.ndarray, where: str) -> dict[int, np.ndarray]:
    """Each categorical node's bitset words (bit c set: category c goes to XGBoost's right child)."""
    cat_nodes = np.flatnonzero(split_type == 1)
    if cat_nodes.size == 0:
        return {}
    nodes = _int_list(t, "categories_nodes", where)
    segments = _int_list(t, "categories_segments", where)
    sizes = _int_list(t, "categories_sizes", where)
    categories = _int_list(t, "categories", where)
    if not (nodes.shape == segments.shape == sizes.shape):
        raise ModelFormatError(
            f"{where}: categories_nodes, categories_segments and categories_sizes differ in length"
        )
    if set(nodes.tolist()) != set(cat_nodes.tolist()) or len(set(nodes.tolist())) != nodes.size:
        raise ModelFormatError(
            f"{where}.categories_nodes: {sorted(nodes.tolist())[:8]} does not list the nodes whose "
            f"split_type is 1 ({cat_nodes[:8].tolist()})"
        )
    sets: dict[int, np.ndarray] = {}
    for node, beg, size in zip(nodes.tolist(), segments.tolist(), sizes.tolist(), strict=True):
        if beg < 0 or size < 0 or beg + size > categories.shape[0]:
            raise ModelFormatError(f"{where}.categories_segments: node {node}'s segment is out of range")
        cats = categories[beg : beg + size]
        if np.any(cats < 0) or np.any(cats >= _MAX_CATEGORY):
            raise ModelFormatError(
                f"{where}.categories: node {node} has a category outside [0, {_MAX_CATEGORY})"
            )
        words = np.zeros((int(cats.max()) // 32 + 1) if size else 0, dtype=np.uint32)
        for c in cats.tolist():
            words[c >> 5] |= np.uint32(1 << (c & 31))
        sets[node] = words
    return sets


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


def _oriented(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(left, right, default_left)`` in ForestIR's orientation.

    XGBoost sends a categorical node's listed categories (and invalid ones
    the other way) to its right child; ForestIR sends bitset members left, so
    categorical nodes swap children and their default direction.
    """
    is_cat = arrays["split_type"] == 1
    left0, right0 = arrays["left_children"], arrays["right_children"]
    dl = arrays["default_left"] != 0
    return np.where(is_cat, right0, left0), np.where(is_cat, left0, right0), np.where(is_cat, ~dl, dl)


def _cat_arrays(old_int: list[int], sets: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offsets = np.zeros(len(old_int), dtype=np.int32)
    lengths = np.zeros(len(old_int), dtype=np.int32)
    words: list[np.ndarray] = []
    total = 0
    for i, node in enumerate(old_int):
        if node in sets:
            offsets[i], lengths[i] = total, sets[node].shape[0]
            words.append(sets[node])
            total += int(sets[node].shape[0])
    all_words = np.concatenate(words) if words else np.zeros(0, dtype=np.uint32)
    return offsets, lengths, all_words.astype(np.uint32)


def _parse_tree(t: Any, n_features: int, where: str) -> TreeIR:
    arrays = _tree_arrays(t, where)
    sets = _category_sets(t, arrays["split_type"], where)
    left, right, default_left = _oriented(arrays)
    cond, hess = arrays["split_conditions"], arrays["sum_hessian"]
    internal_ids, leaf_ids = _renumber(left, right, where)
    if len(internal_ids) == 0:
        return single_leaf_tree(float(np.float32(cond[0])))

    def enc(child: int) -> int:
        return internal_ids[child] if left[child] != -1 else ~leaf_ids[child]

    means = _node_means(left, right, cond.astype(np.float32).astype(np.float64), hess, 0)
    old_int = sorted(internal_ids, key=internal_ids.__getitem__)
    old_leaf = sorted(leaf_ids, key=leaf_ids.__getitem__)
    feat = arrays["split_indices"][old_int]
    if np.any(feat < 0) or np.any(feat >= n_features):
        raise ModelFormatError(f"{where}.split_indices: split index outside [0, {n_features})")
    is_cat = arrays["split_type"][old_int] == 1
    cat_offset, cat_length, cat_words = _cat_arrays(old_int, sets)
    tree = TreeIR(
        split_feature=feat.astype(np.int32),
        threshold=np.where(is_cat, 0.0, _f32_prev(cond[old_int])),
        is_categorical=is_cat,
        default_left=default_left[old_int],
        missing=np.full(len(old_int), MISSING_NAN, dtype=np.uint8),
        left=np.array([enc(int(left[o])) for o in old_int], dtype=np.int32),
        right=np.array([enc(int(right[o])) for o in old_int], dtype=np.int32),
        internal_value=np.array([means[o] for o in old_int], dtype=np.float64),
        leaf_value=cond[old_leaf].astype(np.float32).astype(np.float64),
        cat_offset=cat_offset,
        cat_length=cat_length,
        cat_words=cat_words,
    )
    validate_tree(tree, n_features, where)
    return tree


def _n_features(param: Any, where: str) -> int:
    """The feature count of a single-output model's ``learner_model_param``."""
    num_class = int(param.get("num_class", "0"))
    num_target = int(param.get("num_target", "1"))
    if num_class > 1:
        raise UnsupportedModelError(
            f"{where}.num_class: XGBoost multiclass models (num_class={num_class}) are not "
            "supported: the kernels serve one output per row (binary, regression); multiclass "
            "models are served for LightGBM (MulticlassEnsemble)"
        )
    if num_target > 1:
        raise UnsupportedModelError(
            f"{where}.num_target: XGBoost multi-target models (num_target={num_target}) are not supported"
        )
    n_features = int(_get(param, "num_feature", where))
    if n_features < 1:
        raise ModelFormatError(f"{where}.num_feature: the model has num_feature < 1")
    return n_features


def _link_and_margin(objective: str, base: float, where: str) -> tuple[str, float]:
    """The objective's link, and ``base_score`` as a margin (XGBoost's ``ProbToMargin``, in float32)."""
    from kernels._traverse import xgb_base_margin

    if objective in _SIGMOID_OBJECTIVES:
        if not 0.0 < base < 1.0:
            raise ModelFormatError(f"{where}: {objective}: base_score {base} not in (0, 1)")
        return LINK_SIGMOID, xgb_base_margin(base, 1)
    if objective == _LOGIT_RAW:
        # XGBoost 2+/3.x keep logitraw's base_score as a margin (no logit).
        return LINK_IDENTITY, float(np.float32(base))
    if objective in _EXP_OBJECTIVES:
        if not base > 0.0:
            raise ModelFormatError(f"{where}: {objective}: base_score {base} must be > 0")
        return LINK_EXP, xgb_base_margin(base, 2)
    if objective in _IDENTITY_OBJECTIVES:
        return LINK_IDENTITY, float(np.float32(base))
    raise UnsupportedModelError(f"{where}: XGBoost objective '{objective}' is not supported")


def _feature_names(learner: Any, n_features: int, where: str) -> tuple[str, ...]:
    names_raw = learner.get("feature_names") or []
    if names_raw and len(names_raw) != n_features:
        raise ModelFormatError(f"{where}.feature_names: length differs from num_feature")
    return tuple(str(v) for v in names_raw) or tuple(f"f{j}" for j in range(n_features))


def _parse_trees(model: Any, n_features: int, where: str) -> tuple[TreeIR, ...]:
    trees_raw = _get(model, "trees", where)
    info = model.get("tree_info", [0] * len(trees_raw))
    if any(int(g) != 0 for g in info):
        raise UnsupportedModelError(
            f"{where}.tree_info: the model has trees for more than one output group"
        )
    trees = tuple(
        _parse_tree(t, n_features, f"{where}.trees[{i}]") for i, t in enumerate(trees_raw)
    )
    if not trees:
        raise ModelFormatError(f"{where}.trees: the model has no trees")
    return trees


def parse_xgboost_json(text: str | bytes | bytearray, source: str = DEFAULT_SOURCE) -> ForestIR:
    """Parse an XGBoost JSON model. Raises ModelFormatError / UnsupportedModelError.

    Every message starts with ``source`` and the JSON path of what is wrong.
    """
    try:
        doc = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{source}: not an XGBoost JSON model: {exc}") from None
    learner = _get(doc, "learner", source)
    booster = _get(learner, "gradient_booster", f"{source}: learner")
    where_b = f"{source}: learner.gradient_booster"
    name = _get(booster, "name", where_b)
    if name != "gbtree":
        raise UnsupportedModelError(
            f"{where_b}.name: XGBoost booster '{name}' is not supported (only gbtree)"
        )
    model = _get(booster, "model", where_b)
    where_p = f"{source}: learner.learner_model_param"
    param = _get(learner, "learner_model_param", f"{source}: learner")
    n_features = _n_features(param, where_p)
    objective = str(_get(_get(learner, "objective", f"{source}: learner"), "name",
                         f"{source}: learner.objective"))
    base = _parse_base_score(_get(param, "base_score", where_p), f"{where_p}.base_score")
    link, margin = _link_and_margin(objective, base, f"{source}: learner.objective.name")
    trees = _parse_trees(model, n_features, f"{where_b}.model")
    return ForestIR(
        source="xgboost",
        objective=objective,
        n_features=n_features,
        feature_names=_feature_names(learner, n_features, f"{source}: learner"),
        trees=trees,
        link=link,
        sigmoid_scale=1.0,
        base_margin=margin,
        average_output=False,
        float32_input=True,
        float32_sum=True,
        lightgbm_zero=False,
        categorical_rule=CAT_XGBOOST,
    )
