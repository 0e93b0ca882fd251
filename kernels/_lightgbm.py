"""Parse LightGBM's text model format (``Booster.model_to_string()``) into ForestIRs.

Only the parts that matter at prediction time are read. Anything that would
change predictions and is not implemented raises UnsupportedModelError.
Older files load as LightGBM loads them (``_lgbtext.py``): a tree without
``decision_type`` is numerical with missing type None, one without
``internal_value`` gets node values computed from its leaves (they only feed
reason codes, never the score).

A multiclass model (``num_class`` > 1) is ``num_class`` interleaved forests,
tree ``i`` adding to class ``i % num_tree_per_iteration``;
:func:`parse_lightgbm_classes` returns one raw-score forest per class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kernels._ir import (
    LINK_EXP,
    LINK_IDENTITY,
    LINK_SIGMOID,
    LINK_SQUARE,
    ForestIR,
    TreeIR,
    single_leaf_tree,
    validate_tree,
)
from kernels._lgbtext import Block, read_model_text
from kernels.errors import ModelFormatError, UnsupportedModelError

# decision_type bit layout (LightGBM include/LightGBM/tree.h).
_CATEGORICAL_MASK = 1
_DEFAULT_LEFT_MASK = 2

# Objectives whose prediction-time transform we implement, by link.
_IDENTITY_OBJECTIVES = frozenset(
    {"regression", "regression_l1", "huber", "fair", "quantile", "mape", "lambdarank",
     "rank_xendcg", "custom", "none"}
)
_EXP_OBJECTIVES = frozenset({"poisson", "gamma", "tweedie"})
SOFTMAX = "softmax"
ONE_VS_REST = "ova"
_MULTICLASS = {"multiclass": SOFTMAX, "softmax": SOFTMAX, "multiclassova": ONE_VS_REST,
               "multiclass_ova": ONE_VS_REST, "ova": ONE_VS_REST, "ovr": ONE_VS_REST}
_VERSIONS = ("v2", "v3", "v4")
DEFAULT_SOURCE = "<LightGBM model text>"


@dataclass(frozen=True)
class _Objective:
    name: str
    link: str
    scale: float
    multiclass: str = ""  # SOFTMAX or ONE_VS_REST for multiclass objectives


def _floats(text: str, where: str) -> np.ndarray:
    if not text.strip():
        return np.zeros(0, dtype=np.float64)
    try:
        # float() parses LightGBM's %.17g output exactly, plus "inf"/"nan".
        return np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError as exc:
        raise ModelFormatError(f"{where}: bad number: {exc}") from None


def _ints(text: str, where: str) -> np.ndarray:
    if not text.strip():
        return np.zeros(0, dtype=np.int64)
    try:
        return np.array([int(v) for v in text.split()], dtype=np.int64)
    except ValueError as exc:
        raise ModelFormatError(f"{where}: bad integer: {exc}") from None


def _int(block: Block, key: str, default: str | None = None) -> int:
    text = block.values.get(key, default) if default is not None else block.need(key)
    try:
        return int(str(text).strip())
    except ValueError:
        raise ModelFormatError(f"{block.where(key)}: bad integer {text!r}") from None


def _parse_objective(header: Block) -> _Objective:
    """The objective's name, link and sigmoid scale (absent: raw output, as LightGBM)."""
    line = header.values.get("objective", "")
    parts = line.split()
    if not parts:
        return _Objective("custom", LINK_IDENTITY, 1.0)
    name = parts[0]
    params = {k: v for k, v in (p.split(":", 1) for p in parts[1:] if ":" in p)}
    flags = {p for p in parts[1:] if ":" not in p}
    where = header.where("objective")
    if name in _MULTICLASS:
        kind = _MULTICLASS[name]
        if kind == ONE_VS_REST:
            return _Objective(name, LINK_SIGMOID, _sigmoid(params, where), kind)
        return _Objective(name, LINK_IDENTITY, 1.0, kind)
    if name == "binary":
        return _Objective(name, LINK_SIGMOID, _sigmoid(params, where))
    if name in ("cross_entropy", "xentropy"):
        return _Objective("cross_entropy", LINK_SIGMOID, 1.0)
    if name in _IDENTITY_OBJECTIVES:
        return _Objective(name, LINK_SQUARE if "sqrt" in flags else LINK_IDENTITY, 1.0)
    if name in _EXP_OBJECTIVES:
        return _Objective(name, LINK_EXP, 1.0)
    raise UnsupportedModelError(f"{where}: LightGBM objective '{line}' is not supported")


def _sigmoid(params: dict[str, str], where: str) -> float:
    try:
        scale = float(params.get("sigmoid", "1"))
    except ValueError:
        scale = math.nan
    if not math.isfinite(scale) or scale <= 0:
        raise ModelFormatError(f"{where}: bad sigmoid parameter {params.get('sigmoid')!r}")
    return scale


# The per-node arrays every tree with splits has: (key, parser); decision_type
# is optional (older files), as in LightGBM's loader.
_NODE_ARRAYS = (
    ("split_feature", _ints),
    ("threshold", _floats),
    ("left_child", _ints),
    ("right_child", _ints),
)


def _node_arrays(block: Block, n_int: int) -> dict[str, np.ndarray]:
    arrays = {key: parse(block.need(key), block.where(key)) for key, parse in _NODE_ARRAYS}
    if "decision_type" in block.values:
        arrays["decision_type"] = _ints(block.values["decision_type"], block.where("decision_type"))
    else:
        arrays["decision_type"] = np.zeros(n_int, dtype=np.int64)
    for name, arr in arrays.items():
        if arr.shape[0] != n_int:
            raise ModelFormatError(
                f"{block.where(name)}: {arr.shape[0]} entries, expected {n_int} (num_leaves - 1)"
            )
    if np.any(arrays["decision_type"] < 0) or np.any(arrays["decision_type"] > 0xFF):
        raise ModelFormatError(f"{block.where('decision_type')}: values outside 0..255")
    return arrays


def _parse_tree(block: Block, n_features: int) -> TreeIR:
    if block.values.get("is_linear", "0").strip() not in ("0", ""):
        raise UnsupportedModelError(
            f"{block.where('is_linear')}: linear_tree models (is_linear=1) are not supported"
        )
    num_leaves = _int(block, "num_leaves")
    num_cat = _int(block, "num_cat", "0")
    leaf_value = _floats(block.need("leaf_value"), block.where("leaf_value"))
    if num_leaves < 1 or leaf_value.shape[0] != num_leaves:
        raise ModelFormatError(
            f"{block.where('leaf_value')}: {leaf_value.shape[0]} leaf values for num_leaves={num_leaves}"
        )
    if num_leaves == 1:
        return single_leaf_tree(float(leaf_value[0]))
    n_int = num_leaves - 1
    arrays = _node_arrays(block, n_int)
    decision_type = arrays["decision_type"]
    is_cat = (decision_type & _CATEGORICAL_MASK) != 0
    threshold = arrays["threshold"]
    cat_offset, cat_length, cat_words = _cat_bitsets(block, is_cat, threshold, num_cat)
    left = arrays["left_child"].astype(np.int32)
    right = arrays["right_child"].astype(np.int32)
    tree = TreeIR(
        split_feature=arrays["split_feature"].astype(np.int32),
        threshold=np.where(is_cat, 0.0, threshold) if np.any(is_cat) else threshold,
        is_categorical=is_cat,
        default_left=(decision_type & _DEFAULT_LEFT_MASK) != 0,
        missing=((decision_type >> 2) & 3).astype(np.uint8),
        left=left,
        right=right,
        internal_value=_internal_values(block, n_int, left, right, leaf_value),
        leaf_value=leaf_value,
        cat_offset=cat_offset,
        cat_length=cat_length,
        cat_words=cat_words,
    )
    validate_tree(tree, n_features, block.where())
    return tree


def _internal_values(block: Block, n_int: int, left: np.ndarray, right: np.ndarray,
                     leaf_value: np.ndarray) -> np.ndarray:
    """``internal_value``, or (older files) each node's leaf mean weighted by hessian or count.

    Only Saabas reason codes read node values. A file without them gets the
    weighted mean of the leaves below each node: the value the node would have
    as a leaf without regularisation, which is what LightGBM writes.
    """
    if "internal_value" in block.values:
        values = _floats(block.values["internal_value"], block.where("internal_value"))
        if values.shape[0] != n_int:
            raise ModelFormatError(
                f"{block.where('internal_value')}: {values.shape[0]} entries, expected {n_int}"
            )
        return values
    weights = np.ones(n_int + 1)
    for key in ("leaf_weight", "leaf_count"):
        if key in block.values:
            w = _floats(block.values[key], block.where(key))
            if w.shape[0] == n_int + 1 and np.all(w > 0):
                weights = w
                break
    return _leaf_means(left, right, leaf_value, weights, block.where())


def _leaf_means(left: np.ndarray, right: np.ndarray, leaf_value: np.ndarray,
                weights: np.ndarray, where: str) -> np.ndarray:
    n_int = left.shape[0]
    total = np.zeros(n_int)
    mass = np.zeros(n_int)
    order: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        if node >= n_int or len(order) > n_int:
            raise ModelFormatError(f"{where}: child indices do not form a tree")
        order.append(node)
        stack.extend(int(c) for c in (left[node], right[node]) if c >= 0)
    for node in reversed(order):
        for child in (int(left[node]), int(right[node])):
            leaf = ~child
            if child >= 0:
                total[node] += total[child]
                mass[node] += mass[child]
            elif leaf < leaf_value.shape[0]:
                total[node] += leaf_value[leaf] * weights[leaf]
                mass[node] += weights[leaf]
    out: np.ndarray = np.divide(total, mass, out=np.zeros(n_int), where=mass > 0)
    return out


def _cat_bitsets(
    block: Block, is_cat: np.ndarray, threshold: np.ndarray, num_cat: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cat_offset, cat_length, cat_words)`` of a tree's nodes; all zero/empty without categorical splits.

    A categorical node's threshold is the index of its bitset in ``cat_boundaries``.
    """
    n_int = is_cat.shape[0]
    cat_offset = np.zeros(n_int, dtype=np.int32)
    cat_length = np.zeros(n_int, dtype=np.int32)
    if not np.any(is_cat):
        return cat_offset, cat_length, np.zeros(0, dtype=np.uint32)
    if num_cat <= 0:
        raise ModelFormatError(f"{block.where('num_cat')}: categorical split but num_cat=0")
    bounds = _ints(block.need("cat_boundaries"), block.where("cat_boundaries"))
    words = _ints(block.need("cat_threshold"), block.where("cat_threshold"))
    if bounds.shape[0] != num_cat + 1 or bounds[0] != 0 or np.any(np.diff(bounds) < 0):
        raise ModelFormatError(
            f"{block.where('cat_boundaries')}: expected {num_cat + 1} ascending offsets from 0"
        )
    if bounds[-1] != words.shape[0] or np.any(words < 0) or np.any(words > 0xFFFFFFFF):
        raise ModelFormatError(f"{block.where('cat_threshold')}: does not match cat_boundaries")
    for i in np.flatnonzero(is_cat):
        t = threshold[i]
        if not (t >= 0 and t == int(t) and int(t) < num_cat):
            raise ModelFormatError(
                f"{block.where('threshold')}: categorical node {i} has bad bitset index {t}"
            )
        ci = int(t)
        cat_offset[i] = bounds[ci]
        cat_length[i] = bounds[ci + 1] - bounds[ci]
    return cat_offset, cat_length, words.astype(np.uint32)


@dataclass(frozen=True)
class _Shape:
    n_features: int
    n_classes: int
    per_iteration: int


def _shape(header: Block) -> _Shape:
    version = header.values.get("version")
    if version is not None and version.strip() not in _VERSIONS:
        raise UnsupportedModelError(
            f"{header.where('version')}: LightGBM model version '{version}' is not supported "
            f"(supported: {', '.join(_VERSIONS)}, or no version line as in older files)"
        )
    n_features = _int(header, "max_feature_idx") + 1
    if n_features < 1:
        raise ModelFormatError(f"{header.where('max_feature_idx')}: the model has no features")
    n_classes = _int(header, "num_class", "1")
    # LightGBM: num_tree_per_iteration defaults to num_class (older files lack it).
    per_iter = _int(header, "num_tree_per_iteration", str(n_classes))
    if n_classes < 1 or per_iter not in (1, n_classes):
        raise ModelFormatError(
            f"{header.where('num_tree_per_iteration')}: {per_iter} trees per iteration "
            f"for num_class={n_classes}"
        )
    return _Shape(n_features, n_classes, per_iter)


def _feature_names(header: Block, n_features: int) -> tuple[str, ...]:
    names = tuple(header.values.get("feature_names", "").split())
    if len(names) != n_features:
        return tuple(f"Column_{j}" for j in range(n_features))
    return names


def _forest(header: Block, objective: _Objective, trees: list[TreeIR], n_features: int,
            link: str) -> ForestIR:
    return ForestIR(
        source="lightgbm",
        objective=objective.name,
        n_features=n_features,
        feature_names=_feature_names(header, n_features),
        trees=tuple(trees),
        link=link,
        sigmoid_scale=objective.scale,
        base_margin=0.0,
        average_output="average_output" in header.flags,
        float32_input=False,
        float32_sum=False,
        lightgbm_zero=True,
    )


def parse_lightgbm(text: str, source: str = DEFAULT_SOURCE) -> ForestIR:
    """Parse a single-output LightGBM text model. Raises ModelFormatError / UnsupportedModelError."""
    doc = read_model_text(text, source)
    shape = _shape(doc.header)
    objective = _parse_objective(doc.header)
    if shape.per_iteration != 1 or objective.multiclass:
        raise UnsupportedModelError(
            f"{doc.header.where('num_class')}: LightGBM multiclass model "
            f"(num_class={shape.n_classes}, objective '{objective.name}'): TreeEnsemble scores "
            "one output per row (binary, regression); load a multiclass model with "
            "MulticlassEnsemble.from_lightgbm, which returns class probabilities"
        )
    trees = [_parse_tree(block, shape.n_features) for block in doc.trees]
    return _forest(doc.header, objective, trees, shape.n_features, objective.link)


def parse_lightgbm_classes(text: str, source: str = DEFAULT_SOURCE) -> tuple[tuple[ForestIR, ...], str]:
    """Parse a multiclass LightGBM model into one raw-score forest per class.

    Returns ``(forests, kind)``: ``kind`` is ``"softmax"`` (probabilities are
    the softmax of the raw scores) or ``"ova"`` (each forest carries its own
    sigmoid link).
    """
    doc = read_model_text(text, source)
    shape = _shape(doc.header)
    objective = _parse_objective(doc.header)
    k = shape.per_iteration
    if k < 2 or not objective.multiclass:
        raise UnsupportedModelError(
            f"{doc.header.where('num_class')}: not a multiclass model (num_class="
            f"{shape.n_classes}, objective '{objective.name}'); load it with TreeEnsemble.from_lightgbm"
        )
    if len(doc.trees) % k:
        last = doc.trees[-1]
        raise ModelFormatError(
            f"{last.where()}: {len(doc.trees)} trees is not a whole number of iterations of {k} "
            "(truncated?)"
        )
    trees = [_parse_tree(block, shape.n_features) for block in doc.trees]
    forests = tuple(
        _forest(doc.header, objective, trees[c::k], shape.n_features, objective.link)
        for c in range(k)
    )
    return forests, objective.multiclass
