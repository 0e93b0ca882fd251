"""Flatten a ForestIR into the arrays the traversal kernel walks.

All trees are concatenated: node indices become global, leaves become global
leaf indices (encoded ``~leaf`` in child slots, LightGBM style), and
categorical bitsets are appended to one word array. The Saabas deltas
(value(child) - value(node)) are precomputed per node so the reasons pass adds
one number per visited node.
"""

from __future__ import annotations

import numpy as np

from kernels._ir import (
    CAT_XGBOOST,
    LINK_EXP,
    LINK_IDENTITY,
    LINK_SIGMOID,
    LINK_SQUARE,
    ForestIR,
    TreeIR,
)

# Must match kernels/_common.pxd and kernels/_traverse.pyx.
INPUT_PLAIN = 0
INPUT_LGB_ZERO = 1
INPUT_F32 = 2
LINK_CODES = {LINK_IDENTITY: 0, LINK_SIGMOID: 1, LINK_EXP: 2, LINK_SQUARE: 3}
F_CATEGORICAL = 1
F_DEFAULT_LEFT = 2
F_MISSING_SHIFT = 2
F_CAT_XGBOOST = 16  # categorical node under CAT_XGBOOST (bit 4)


def input_mode(forest: ForestIR) -> int:
    if forest.float32_input:
        return INPUT_F32
    if forest.lightgbm_zero:
        return INPUT_LGB_ZERO
    return INPUT_PLAIN


def flatten_for_traversal(forest: ForestIR) -> dict[str, np.ndarray]:
    feats, thrs, flags, lefts, rights, offs, lens, words = [], [], [], [], [], [], [], []
    dls, drs, leaves = [], [], []
    roots = np.empty(len(forest.trees), dtype=np.int32)
    node_base = 0
    leaf_base = 0
    word_base = 0
    xgb_cat = np.uint32(F_CAT_XGBOOST if forest.categorical_rule == CAT_XGBOOST else 0)
    for t, tree in enumerate(forest.trees):
        n_int = tree.n_internal
        if n_int == 0:
            roots[t] = ~leaf_base
        else:
            roots[t] = node_base

            def glob(child: np.ndarray, nb: int = node_base, lb: int = leaf_base) -> np.ndarray:
                return np.where(child >= 0, child + nb, ~((~child) + lb)).astype(np.int32)

            left = glob(tree.left)
            right = glob(tree.right)
            fl = (
                tree.is_categorical.astype(np.uint32) * F_CATEGORICAL
                | tree.default_left.astype(np.uint32) * F_DEFAULT_LEFT
                | (tree.missing.astype(np.uint32) << (F_MISSING_SHIFT))
                | tree.is_categorical.astype(np.uint32) * xgb_cat
            )
            # missing occupies bits 2..3; F_DEFAULT_LEFT is bit 1, F_CATEGORICAL bit 0,
            # F_CAT_XGBOOST bit 4.
            feats.append(tree.split_feature)
            thrs.append(tree.threshold)
            flags.append(fl)
            lefts.append(left)
            rights.append(right)
            offs.append(np.where(tree.is_categorical, tree.cat_offset + word_base, 0))
            lens.append(np.where(tree.is_categorical, tree.cat_length, 0))
            words.append(tree.cat_words)

            def value(child: np.ndarray, tr: TreeIR = tree) -> np.ndarray:
                out: np.ndarray = np.where(
                    child >= 0,
                    tr.internal_value[np.maximum(child, 0)],
                    tr.leaf_value[np.maximum(~child, 0)],
                )
                return out

            dls.append(value(tree.left) - tree.internal_value)
            drs.append(value(tree.right) - tree.internal_value)
        leaves.append(tree.leaf_value)
        node_base += n_int
        leaf_base += tree.n_leaves
        word_base += int(tree.cat_words.shape[0])

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        if not parts:
            return np.zeros(0, dtype=dtype)
        return np.ascontiguousarray(np.concatenate(parts), dtype=dtype)

    return {
        "feat": cat(feats, np.int32),
        "thr": cat(thrs, np.float64),
        "flags": cat(flags, np.uint32),
        "left": cat(lefts, np.int32),
        "right": cat(rights, np.int32),
        "cat_off": cat(offs, np.int32),
        "cat_len": cat(lens, np.int32),
        "cat_words": cat(words, np.uint32),
        "root": roots,
        "leaf": cat(leaves, np.float64),
        "delta_left": cat(dls, np.float64),
        "delta_right": cat(drs, np.float64),
    }


def saabas_bias(forest: ForestIR) -> float:
    """Expected value: base margin plus every tree's root value (not averaged)."""
    total = forest.base_margin
    for tree in forest.trees:
        total += float(tree.internal_value[0]) if tree.n_internal else float(tree.leaf_value[0])
    return total
