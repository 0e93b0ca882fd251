"""Library-neutral intermediate representation of a tree ensemble.

Both loaders (LightGBM text, XGBoost JSON) produce a :class:`ForestIR`; the
compilers in ``_compile.py`` turn it into the flat arrays the Cython kernels
walk. Keeping one normalised form means the kernels implement exactly one set
of decision semantics, spelled out here:

* Numerical node: after the model-level input transform (see
  :class:`ForestIR`), a value ``x`` goes left iff ``x <= threshold``, except
  for missing values, which follow ``missing``:

  - ``MISSING_NONE``: NaN is treated as 0.0 (LightGBM ``missing_type=None``).
  - ``MISSING_ZERO``: NaN and 0.0 take the default direction (LightGBM
    ``zero_as_missing``).
  - ``MISSING_NAN``:  NaN takes the default direction (LightGBM NaN, XGBoost).

* Categorical node (LightGBM only): NaN, values ``<= -1`` and values
  ``>= 2**31`` go right; otherwise ``c = trunc(x)`` goes left iff bit ``c`` of
  the node's bitset is set (bits past the end of the bitset are unset). This is
  what LightGBM's ``static_cast<int>`` + ``FindInBitset`` do on x86-64.

  Under ``CAT_XGBOOST`` (XGBoost models) a categorical node instead sends NaN
  its ``default_left`` way, values outside ``[0, 2**24)`` right, and
  ``c = trunc(x)`` left iff bit ``c`` is set (XGBoost's ``InvalidCat`` and
  ``Decision`` with the children swapped, see ``_xgboost.py``).

Children use LightGBM's encoding: ``>= 0`` is an internal node index, ``< 0`` is
``~leaf_index``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kernels.errors import ModelFormatError

MISSING_NONE = 0
MISSING_ZERO = 1
MISSING_NAN = 2

LINK_IDENTITY = "identity"
LINK_SIGMOID = "sigmoid"
LINK_EXP = "exp"
LINK_SQUARE = "signed_square"  # LightGBM regression with reg_sqrt
LINKS = (LINK_IDENTITY, LINK_SIGMOID, LINK_EXP, LINK_SQUARE)

# How categorical nodes treat NaN and out-of-range values (module docstring).
CAT_LIGHTGBM = "lightgbm"
CAT_XGBOOST = "xgboost"

I32 = npt.NDArray[np.int32]
U32 = npt.NDArray[np.uint32]
U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]
BoolArr = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class TreeIR:
    """One tree. Arrays over internal nodes have length ``n_leaves - 1``."""

    split_feature: I32
    threshold: F64  # numerical: left iff x <= threshold; categorical: unused
    is_categorical: BoolArr
    default_left: BoolArr
    missing: U8
    left: I32
    right: I32
    internal_value: F64  # node output used for Saabas attributions
    leaf_value: F64
    # Categorical bitsets: node i uses cat_words[cat_offset[i]:cat_offset[i]+cat_length[i]].
    cat_offset: I32
    cat_length: I32
    cat_words: U32

    @property
    def n_leaves(self) -> int:
        return int(self.leaf_value.shape[0])

    @property
    def n_internal(self) -> int:
        return int(self.split_feature.shape[0])

    def depth(self) -> int:
        """Maximum number of internal nodes on a root-to-leaf path."""
        if self.n_internal == 0:
            return 0
        best = 0
        stack = [(0, 1)]
        while stack:
            node, d = stack.pop()
            best = max(best, d)
            for child in (int(self.left[node]), int(self.right[node])):
                if child >= 0:
                    stack.append((child, d + 1))
        return best


@dataclass(frozen=True)
class ForestIR:
    """A whole ensemble plus how to turn the tree sum into a prediction.

    raw = base_margin + sum(tree outputs) [/ n_trees when average_output]
    prediction = link(raw)

    ``float32_input``: feature values are rounded to float32 before any
    comparison (XGBoost does this for every input). ``float32_sum``: the tree
    sum is accumulated in float32 starting from float32(base_margin), and the
    sigmoid is evaluated in float32, as XGBoost's CPU predictor does.
    ``lightgbm_zero``: values with ``|x| <= 1e-35`` are read as exactly 0.0, as
    LightGBM's dense-row reader drops them. ``categorical_rule``: ``CAT_LIGHTGBM``
    or ``CAT_XGBOOST`` (module docstring).
    """

    source: str
    objective: str
    n_features: int
    feature_names: tuple[str, ...]
    trees: tuple[TreeIR, ...]
    link: str
    sigmoid_scale: float
    base_margin: float
    average_output: bool
    float32_input: bool
    float32_sum: bool
    lightgbm_zero: bool
    categorical_rule: str = CAT_LIGHTGBM

    def max_leaves(self) -> int:
        return max((t.n_leaves for t in self.trees), default=1)


def validate_tree(tree: TreeIR, n_features: int, where: str) -> None:
    """Check structural invariants the C kernels rely on (they do no bounds checks).

    Every internal node and every leaf must be reached exactly once from the
    root, so the arrays form a proper binary tree; indices must be in range.
    """
    _check_shapes(tree, where)
    if tree.n_internal == 0:
        return
    _check_node_values(tree, n_features, where)
    _check_reachability(tree, where)


def _check_shapes(tree: TreeIR, where: str) -> None:
    n_int = tree.n_internal
    n_leaf = tree.n_leaves
    if n_leaf < 1:
        raise ModelFormatError(f"{where}: a tree needs at least one leaf")
    if n_int != n_leaf - 1:
        raise ModelFormatError(
            f"{where}: {n_int} internal nodes for {n_leaf} leaves (expected {n_leaf - 1})"
        )
    arrays = {
        "threshold": tree.threshold,
        "is_categorical": tree.is_categorical,
        "default_left": tree.default_left,
        "missing": tree.missing,
        "left": tree.left,
        "right": tree.right,
        "internal_value": tree.internal_value,
        "cat_offset": tree.cat_offset,
        "cat_length": tree.cat_length,
    }
    for name, arr in arrays.items():
        if arr.shape != (n_int,):
            raise ModelFormatError(f"{where}: {name} has shape {arr.shape}, expected ({n_int},)")


def _check_node_values(tree: TreeIR, n_features: int, where: str) -> None:
    """Split features, missing types, thresholds and categorical bitset ranges."""
    if np.any(tree.split_feature < 0) or np.any(tree.split_feature >= n_features):
        raise ModelFormatError(f"{where}: split feature index outside [0, {n_features})")
    if np.any(tree.missing > MISSING_NAN):
        raise ModelFormatError(f"{where}: unknown missing-value type")
    num = ~tree.is_categorical
    if np.any(np.isnan(tree.threshold[num])):
        raise ModelFormatError(f"{where}: NaN threshold")
    cat = tree.is_categorical
    if np.any(tree.cat_offset[cat] < 0) or np.any(tree.cat_length[cat] < 0):
        raise ModelFormatError(f"{where}: negative categorical bitset offset/length")
    if np.any(tree.cat_offset[cat] + tree.cat_length[cat] > tree.cat_words.shape[0]):
        raise ModelFormatError(f"{where}: categorical bitset runs past cat_threshold")


def _check_reachability(tree: TreeIR, where: str) -> None:
    """Every internal node and leaf is reached exactly once from the root."""
    n_int = tree.n_internal
    n_leaf = tree.n_leaves
    seen_node = np.zeros(n_int, dtype=np.int32)
    seen_leaf = np.zeros(n_leaf, dtype=np.int32)
    seen_node[0] = 1
    stack = [0]
    while stack:
        node = stack.pop()
        for child in (int(tree.left[node]), int(tree.right[node])):
            if child < 0:
                leaf = ~child
                if leaf >= n_leaf:
                    raise ModelFormatError(f"{where}: leaf index {leaf} out of range")
                seen_leaf[leaf] += 1
                continue
            if child >= n_int:
                raise ModelFormatError(f"{where}: child index {child} out of range")
            seen_node[child] += 1
            if seen_node[child] > 1:
                raise ModelFormatError(f"{where}: node {child} reached twice (not a tree)")
            stack.append(child)
    if not np.all(seen_node == 1) or not np.all(seen_leaf == 1):
        raise ModelFormatError(f"{where}: some nodes or leaves are unreachable or shared")


def single_leaf_tree(value: float) -> TreeIR:
    """A tree that is only a leaf (LightGBM ``num_leaves=1``)."""
    e_i = np.zeros(0, dtype=np.int32)
    return TreeIR(
        split_feature=e_i,
        threshold=np.zeros(0),
        is_categorical=np.zeros(0, dtype=np.bool_),
        default_left=np.zeros(0, dtype=np.bool_),
        missing=np.zeros(0, dtype=np.uint8),
        left=e_i,
        right=e_i,
        internal_value=np.zeros(0),
        leaf_value=np.array([value], dtype=np.float64),
        cat_offset=e_i,
        cat_length=e_i,
        cat_words=np.zeros(0, dtype=np.uint32),
    )
