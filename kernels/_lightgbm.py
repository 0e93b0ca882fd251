"""Parse LightGBM's text model format (``Booster.model_to_string()``) into a ForestIR.

Only the parts that matter at prediction time are read. Anything that would
change predictions and is not implemented raises UnsupportedModelError.
"""

from __future__ import annotations

import math

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


def _floats(text: str, key: str, where: str) -> np.ndarray:
    if not text.strip():
        return np.zeros(0, dtype=np.float64)
    try:
        # float() parses LightGBM's %.17g output exactly, plus "inf"/"nan".
        return np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError as exc:
        raise ModelFormatError(f"{where}: bad number in {key}: {exc}") from None


def _ints(text: str, key: str, where: str) -> np.ndarray:
    if not text.strip():
        return np.zeros(0, dtype=np.int64)
    try:
        return np.array([int(v) for v in text.split()], dtype=np.int64)
    except ValueError as exc:
        raise ModelFormatError(f"{where}: bad integer in {key}: {exc}") from None


def _parse_objective(line: str) -> tuple[str, str, float]:
    """Return (objective name, link, sigmoid scale) for an ``objective=`` value."""
    parts = line.split()
    if not parts:
        return "custom", LINK_IDENTITY, 1.0
    name = parts[0]
    params: dict[str, str] = {}
    flags: set[str] = set()
    for p in parts[1:]:
        if ":" in p:
            k, v = p.split(":", 1)
            params[k] = v
        else:
            flags.add(p)
    if name in ("multiclass", "multiclassova", "softmax", "ovr"):
        raise UnsupportedModelError(
            f"LightGBM objective '{line}': multiclass models are not supported"
        )
    if name == "binary":
        scale = float(params.get("sigmoid", "1"))
        if not math.isfinite(scale) or scale <= 0:
            raise ModelFormatError(f"LightGBM objective '{line}': bad sigmoid parameter")
        return name, LINK_SIGMOID, scale
    if name in ("cross_entropy", "xentropy"):
        return "cross_entropy", LINK_SIGMOID, 1.0
    if name in _IDENTITY_OBJECTIVES:
        if "sqrt" in flags:
            return name, LINK_SQUARE, 1.0
        return name, LINK_IDENTITY, 1.0
    if name in _EXP_OBJECTIVES:
        return name, LINK_EXP, 1.0
    raise UnsupportedModelError(f"LightGBM objective '{line}' is not supported")


def _need(fields: dict[str, str], key: str, where: str) -> str:
    if key not in fields:
        raise ModelFormatError(f"{where}: missing '{key}'")
    return fields[key]


# The per-node arrays every tree with splits has: (key, parser).
_NODE_ARRAYS = (
    ("split_feature", _ints),
    ("threshold", _floats),
    ("decision_type", _ints),
    ("left_child", _ints),
    ("right_child", _ints),
)


def _parse_tree(fields: dict[str, str], n_features: int, where: str) -> TreeIR:
    if fields.get("is_linear", "0").strip() not in ("0", ""):
        raise UnsupportedModelError(f"{where}: linear_tree models (is_linear=1) are not supported")
    try:
        num_leaves = int(_need(fields, "num_leaves", where))
        num_cat = int(fields.get("num_cat", "0") or "0")
    except ValueError:
        raise ModelFormatError(f"{where}: bad num_leaves/num_cat") from None
    leaf_value = _floats(_need(fields, "leaf_value", where), "leaf_value", where)
    if num_leaves < 1 or leaf_value.shape[0] != num_leaves:
        raise ModelFormatError(
            f"{where}: num_leaves={num_leaves} but {leaf_value.shape[0]} leaf values"
        )
    if num_leaves == 1:
        return single_leaf_tree(float(leaf_value[0]))
    n_int = num_leaves - 1
    arrays = {key: parse(_need(fields, key, where), key, where) for key, parse in _NODE_ARRAYS}
    internal_value = _floats(fields.get("internal_value", ""), "internal_value", where)
    for name, arr in arrays.items():
        if arr.shape[0] != n_int:
            raise ModelFormatError(f"{where}: {name} has {arr.shape[0]} entries, expected {n_int}")
    if internal_value.shape[0] != n_int:
        # Saabas reasons need it; predictions do not. Old files always have it.
        raise ModelFormatError(f"{where}: internal_value missing or wrong length")
    decision_type = arrays["decision_type"]
    if np.any(decision_type < 0) or np.any(decision_type > 0xFF):
        raise ModelFormatError(f"{where}: bad decision_type")
    is_cat = (decision_type & _CATEGORICAL_MASK) != 0
    threshold = arrays["threshold"]
    cat_offset, cat_length, cat_words = _cat_bitsets(fields, is_cat, threshold, num_cat=num_cat, where=where)
    if np.any(is_cat):
        threshold = np.where(is_cat, 0.0, threshold)
    tree = TreeIR(
        split_feature=arrays["split_feature"].astype(np.int32),
        threshold=threshold,
        is_categorical=is_cat,
        default_left=(decision_type & _DEFAULT_LEFT_MASK) != 0,
        missing=((decision_type >> 2) & 3).astype(np.uint8),
        left=arrays["left_child"].astype(np.int32),
        right=arrays["right_child"].astype(np.int32),
        internal_value=internal_value,
        leaf_value=leaf_value,
        cat_offset=cat_offset,
        cat_length=cat_length,
        cat_words=cat_words,
    )
    validate_tree(tree, n_features, where)
    return tree


def _cat_bitsets(
    fields: dict[str, str], is_cat: np.ndarray, threshold: np.ndarray, *, num_cat: int, where: str
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
        raise ModelFormatError(f"{where}: categorical split but num_cat=0")
    bounds = _ints(_need(fields, "cat_boundaries", where), "cat_boundaries", where)
    words = _ints(_need(fields, "cat_threshold", where), "cat_threshold", where)
    if bounds.shape[0] != num_cat + 1 or bounds[0] != 0 or np.any(np.diff(bounds) < 0):
        raise ModelFormatError(f"{where}: bad cat_boundaries")
    if bounds[-1] != words.shape[0] or np.any(words < 0) or np.any(words > 0xFFFFFFFF):
        raise ModelFormatError(f"{where}: cat_threshold does not match cat_boundaries")
    for i in np.flatnonzero(is_cat):
        t = threshold[i]
        if not (t >= 0 and t == int(t) and int(t) < num_cat):
            raise ModelFormatError(f"{where}: categorical node {i} has bad bitset index {t}")
        ci = int(t)
        cat_offset[i] = bounds[ci]
        cat_length[i] = bounds[ci + 1] - bounds[ci]
    return cat_offset, cat_length, words.astype(np.uint32)


def _read_header(lines: list[str]) -> tuple[dict[str, str], set[str], int]:
    """The ``key=value`` header lines and bare flags before the first tree, and where the trees start."""
    header: dict[str, str] = {}
    flags: set[str] = set()
    i = 1
    while i < len(lines) and not lines[i].startswith("Tree="):
        line = lines[i].strip()
        if line == "end of trees":
            break
        i += 1
        if not line:
            continue
        if "=" in line:
            k, v = line.split("=", 1)
            header[k] = v
        else:
            flags.add(line)
    return header, flags, i


def _n_features(header: dict[str, str]) -> int:
    """The model's feature count, once the header is known to describe a supported model."""
    version = header.get("version", "")
    if version not in ("v2", "v3", "v4"):
        raise UnsupportedModelError(f"LightGBM model version '{version}' is not supported")
    num_class = int(header.get("num_class", "1"))
    per_iter = int(header.get("num_tree_per_iteration", "1"))
    if num_class != 1 or per_iter != 1:
        raise UnsupportedModelError(
            f"LightGBM multiclass models (num_class={num_class}, "
            f"num_tree_per_iteration={per_iter}) are not supported"
        )
    if "max_feature_idx" not in header:
        raise ModelFormatError("LightGBM model has no max_feature_idx")
    n_features = int(header["max_feature_idx"]) + 1
    if n_features < 1:
        raise ModelFormatError("LightGBM model has no features")
    return n_features


def _read_trees(lines: list[str], i: int, n_features: int) -> list[TreeIR]:
    """Every ``Tree=`` block from line ``i`` up to ``end of trees``."""
    trees: list[TreeIR] = []
    while i < len(lines):
        line = lines[i].strip()
        if line == "end of trees":
            break
        if not line.startswith("Tree="):
            i += 1
            continue
        where = f"LightGBM {line}"
        fields: dict[str, str] = {}
        i += 1
        while i < len(lines) and lines[i].strip():
            if "=" in lines[i]:
                k, v = lines[i].split("=", 1)
                fields[k.strip()] = v
            i += 1
        trees.append(_parse_tree(fields, n_features, where))
    else:
        raise ModelFormatError("LightGBM model text is truncated (no 'end of trees')")
    if not trees:
        raise ModelFormatError("LightGBM model has no trees")
    return trees


def parse_lightgbm(text: str) -> ForestIR:
    """Parse a LightGBM text model. Raises ModelFormatError / UnsupportedModelError."""
    if not isinstance(text, str):
        raise ModelFormatError("LightGBM model must be given as text (Booster.model_to_string())")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "tree":
        raise ModelFormatError("not a LightGBM text model (first line is not 'tree')")
    header, flags, first_tree = _read_header(lines)
    n_features = _n_features(header)
    objective, link, scale = _parse_objective(header.get("objective", ""))
    names = tuple(header.get("feature_names", "").split())
    if len(names) != n_features:
        names = tuple(f"Column_{j}" for j in range(n_features))
    trees = _read_trees(lines, first_tree, n_features)
    return ForestIR(
        source="lightgbm",
        objective=objective,
        n_features=n_features,
        feature_names=names,
        trees=tuple(trees),
        link=link,
        sigmoid_scale=scale,
        base_margin=0.0,
        average_output="average_output" in flags,
        float32_input=False,
        float32_sum=False,
        lightgbm_zero=True,
    )
