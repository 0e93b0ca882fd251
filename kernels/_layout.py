"""Compile a ForestIR into "columns": the layout of the fast kernels.

Every numerical node's missing-value rule is folded into the column it reads,
so the kernels evaluate each node with one comparison and no branches:

* A *column* is a view of one input feature. Numerical views differ only in
  how NaN (and, for zero-as-missing nodes, 0.0) are substituted:

  ====================  ==============================  =========================
  view                  substitution                    nodes that read it
  ====================  ==============================  =========================
  ``VIEW_NAN_AS_ZERO``  NaN -> 0.0                      missing_type None
  ``VIEW_NAN_RIGHT``    NaN -> +inf                     missing NaN, default right
  ``VIEW_NAN_LEFT``     NaN -> -inf                     missing NaN, default left
  ``VIEW_ZERO_RIGHT``   NaN, 0.0 -> +inf                missing Zero, default right
  ``VIEW_ZERO_LEFT``    NaN, 0.0 -> -inf                missing Zero, default left
  ====================  ==============================  =========================

  A categorical column holds 0 when the value is in the node's bitset (left)
  and 1 otherwise, compared against 0.5 / rank 0. Its *rule* says how NaN
  and out-of-range values go (``CAT_RULE_*``, ForestIR's ``categorical_rule``):
  LightGBM's, or XGBoost's with NaN to the node's default side, so nodes
  with the same bitset but different NaN sides read different columns.

* Block kernel: each numerical column is *ranked*: ``rank(x)`` is the number of
  the feature's distinct thresholds strictly below ``x`` (special values map
  to 0 for "always left" or K for "always right"). A node with the j-th
  threshold goes right iff ``rank > j``, which is exactly ``x > threshold`` for
  every double, infinities included. Leaves are numbered left to right; a node
  that goes right clears the bits of its left subtree's leaves (QuickScorer),
  and the exit leaf is the lowest surviving bit.

* Row kernel (single rows): the same views hold substituted doubles and nodes
  are walked branch-free with ``x > threshold``; that needs finite thresholds
  (true for LightGBM/XGBoost models; otherwise the generic kernel is used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels._ir import CAT_XGBOOST, MISSING_NAN, MISSING_NONE, MISSING_ZERO, ForestIR, TreeIR

VIEW_NAN_AS_ZERO = 0
VIEW_NAN_RIGHT = 1
VIEW_NAN_LEFT = 2
VIEW_ZERO_RIGHT = 3
VIEW_ZERO_LEFT = 4
VIEW_CATEGORICAL = 5
# Categorical column rules; must match kernels/_fastmodel.pxd.
CAT_RULE_LIGHTGBM = 0
CAT_RULE_XGB_NAN_RIGHT = 1
CAT_RULE_XGB_NAN_LEFT = 2

MAX_BLOCK_LEAVES = 64
LEAF_CONTRIB_MAX_FEATURES = 64  # leaf-vector reason codes up to this many features
LEAF_CONTRIB_MAX_BYTES = 64 << 20  # ... and this much table
PACK_PAD = 8  # neutral entries after the packed QuickScorer lists (see _fastrow.pyx)


def _view_of(missing: int, default_left: bool) -> int:
    if missing == MISSING_NONE:
        return VIEW_NAN_AS_ZERO
    if missing == MISSING_NAN:
        return VIEW_NAN_LEFT if default_left else VIEW_NAN_RIGHT
    if missing == MISSING_ZERO:
        return VIEW_ZERO_LEFT if default_left else VIEW_ZERO_RIGHT
    raise AssertionError(missing)


def _inorder_leaves(tree: TreeIR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Left-to-right leaf order, and each internal node's subtree leaf ranges.

    Returns (position of each original leaf, lo, hi, end): the left subtree of
    node i covers positions [lo[i], hi[i]), the right one [hi[i], end[i]).
    """
    n_int = tree.n_internal
    pos = np.zeros(tree.n_leaves, dtype=np.int64)
    lo = np.zeros(n_int, dtype=np.int64)
    hi = np.zeros(n_int, dtype=np.int64)
    end = np.zeros(n_int, dtype=np.int64)
    if n_int == 0:
        return pos, lo, hi, end
    counter = 0
    # Iterative post-order-ish walk: (node, state) with state 0=enter, 1=after left.
    stack: list[tuple[int, int]] = [(0, 0)]
    while stack:
        node, state = stack.pop()
        if node < 0:
            pos[~node] = counter
            counter += 1
            continue
        if state == 0:
            lo[node] = counter
            stack.append((node, 1))
            stack.append((int(tree.left[node]), 0))
        elif state == 1:
            hi[node] = counter
            stack.append((node, 2))
            stack.append((int(tree.right[node]), 0))
        else:
            end[node] = counter
    return pos, lo, hi, end


@dataclass(frozen=True)
class ColumnLayout:
    """Columns shared by the block and row kernels."""

    col_feature: np.ndarray  # int32 (n_cols,)
    col_kind: np.ndarray  # int32 (n_cols,): VIEW_*
    col_rankset: np.ndarray  # int32 (n_cols,): numerical -> index into rank sets; cat -> -1
    col_cat_off: np.ndarray  # int32 (n_cols,)
    col_cat_len: np.ndarray  # int32 (n_cols,)
    col_cat_rule: np.ndarray  # int32 (n_cols,): CAT_RULE_* (0 for numerical columns)
    cat_words: np.ndarray  # uint32
    # Rank sets: one per feature with numerical splits.
    rs_feature: np.ndarray  # int32 (n_sets,)
    rs_offset: np.ndarray  # int32 (n_sets,): into rs_thresholds
    rs_count: np.ndarray  # int32 (n_sets,): K distinct thresholds
    rs_pad: np.ndarray  # int32 (n_sets,): power of two > K (padded with +inf)
    rs_zero_rank: np.ndarray  # int32 (n_sets,): rank of 0.0
    rs_thresholds: np.ndarray  # float64


@dataclass(frozen=True)
class Layout:
    columns: ColumnLayout
    n_trees: int
    # Per internal node (tree-major, trees contiguous).
    node_col: np.ndarray  # int32
    node_rank: np.ndarray  # int32: threshold index within its rank set (0 for cat)
    node_thr: np.ndarray  # float64: threshold (0.5 for categorical)
    node_clear: np.ndarray  # uint64: leaf bits of the left subtree (valid if leaves <= 64)
    node_rmask: np.ndarray  # uint64: leaf bits of the right subtree
    node_feature: np.ndarray  # int32: the node's input feature
    node_dl: np.ndarray  # float64: Saabas delta going left, value(left) - value(node)
    node_dr: np.ndarray  # float64: going right
    node_left: np.ndarray  # int32: child node (global) or ~leaf (global, left-to-right)
    node_right: np.ndarray  # int32
    tree_node_off: np.ndarray  # int32 (n_trees + 1,)
    tree_root: np.ndarray  # int32: global node or ~global leaf
    tree_leaf_off: np.ndarray  # int32 (n_trees + 1,)
    leaf_value: np.ndarray  # float64, left-to-right within each tree
    # Saabas path of every leaf, aggregated per feature: CSR over global leaves.
    path_off: np.ndarray  # int32 (n_leaves + 1,)
    path_feature: np.ndarray  # int32
    path_delta: np.ndarray  # float64
    max_leaves: int
    finite_thresholds: bool
    n_features: int


def _cat_bitset(tree: TreeIR, i: int) -> np.ndarray:
    """Categorical node ``i``'s bitset words, trailing zero words dropped."""
    words = tree.cat_words[tree.cat_offset[i] : tree.cat_offset[i] + tree.cat_length[i]]
    return np.trim_zeros(words.astype(np.uint32), "b")


def _cat_key(f: int, rule: int, words: np.ndarray) -> bytes:
    return f.to_bytes(4, "little") + rule.to_bytes(4, "little") + words.tobytes()


class _Columns:
    """Pass 1: the distinct columns and each feature's distinct thresholds.

    A numerical column is (feature, view); a categorical one is (feature, bitset),
    equal bitsets sharing their words.
    """

    def __init__(self, categorical_rule: str) -> None:
        self.xgb_cat = categorical_rule == CAT_XGBOOST
        self.col_key: dict[tuple[int, int, int], int] = {}  # (feature, kind, cat bitset id) -> column
        self.col_feature: list[int] = []
        self.col_kind: list[int] = []
        self.col_cat_off: list[int] = []
        self.col_cat_len: list[int] = []
        self.col_cat_rule: list[int] = []
        self.cat_words: list[np.ndarray] = []
        self.cat_ids: dict[bytes, tuple[int, int, int]] = {}  # key -> (id, word offset, words)
        self.n_words = 0
        self.thresholds: dict[int, set[float]] = {}

    def add_tree(self, tree: TreeIR) -> None:
        for i in range(tree.n_internal):
            f = int(tree.split_feature[i])
            if tree.is_categorical[i]:
                self._add_categorical(f, self.cat_rule(tree, i), _cat_bitset(tree, i))
            else:
                self.thresholds.setdefault(f, set()).add(float(tree.threshold[i]))
                kind = _view_of(int(tree.missing[i]), bool(tree.default_left[i]))
                self._add_column((f, kind, -1), 0, 0)

    def cat_rule(self, tree: TreeIR, i: int) -> int:
        if not self.xgb_cat:
            return CAT_RULE_LIGHTGBM
        return CAT_RULE_XGB_NAN_LEFT if tree.default_left[i] else CAT_RULE_XGB_NAN_RIGHT

    def _add_categorical(self, f: int, rule: int, words: np.ndarray) -> None:
        key_bytes = _cat_key(f, rule, words)
        if key_bytes not in self.cat_ids:
            self.cat_ids[key_bytes] = (len(self.cat_ids), self.n_words, int(words.shape[0]))
            self.cat_words.append(words)
            self.n_words += int(words.shape[0])
        cid, off, ln = self.cat_ids[key_bytes]
        self._add_column((f, VIEW_CATEGORICAL, cid), off, ln, rule)

    def _add_column(self, key: tuple[int, int, int], cat_off: int, cat_len: int,
                    rule: int = CAT_RULE_LIGHTGBM) -> None:
        if key not in self.col_key:
            self.col_key[key] = len(self.col_feature)
            self.col_feature.append(key[0])
            self.col_kind.append(key[1])
            self.col_cat_off.append(cat_off)
            self.col_cat_len.append(cat_len)
            self.col_cat_rule.append(rule)

    def column_of(self, tree: TreeIR, i: int) -> int:
        """The column internal node ``i`` of ``tree`` reads (after ``add_tree(tree)``)."""
        f = int(tree.split_feature[i])
        if tree.is_categorical[i]:
            cid = self.cat_ids[_cat_key(f, self.cat_rule(tree, i), _cat_bitset(tree, i))][0]
            return self.col_key[(f, VIEW_CATEGORICAL, cid)]
        kind = _view_of(int(tree.missing[i]), bool(tree.default_left[i]))
        return self.col_key[(f, kind, -1)]


@dataclass(frozen=True)
class _RankSets:
    """One rank set per feature with numerical splits: its sorted distinct thresholds, padded."""

    features: list[int]
    index: dict[int, int]  # feature -> rank set
    sorted_thr: dict[int, np.ndarray]  # feature -> distinct thresholds, ascending
    offset: list[int]
    count: list[int]
    pad: list[int]
    zero_rank: list[int]
    parts: list[np.ndarray]  # thresholds padded with +inf to ``pad``
    finite: bool


def _rank_sets(thresholds: dict[int, set[float]]) -> _RankSets:
    rs_feature = sorted(thresholds)
    sorted_thr = {f: np.array(sorted(thresholds[f]), dtype=np.float64) for f in rs_feature}
    rs_offset, rs_count, rs_pad, rs_zero_rank, rs_parts = [], [], [], [], []
    off = 0
    for f in rs_feature:
        u = sorted_thr[f]
        k = int(u.shape[0])
        pad = 1
        while pad <= k:
            pad *= 2
        rs_offset.append(off)
        rs_count.append(k)
        rs_pad.append(pad)
        rs_zero_rank.append(int(np.searchsorted(u, 0.0, side="left")))
        rs_parts.append(np.concatenate([u, np.full(pad - k, np.inf)]))
        off += pad
    return _RankSets(
        features=rs_feature,
        index={f: j for j, f in enumerate(rs_feature)},
        sorted_thr=sorted_thr,
        offset=rs_offset,
        count=rs_count,
        pad=rs_pad,
        zero_rank=rs_zero_rank,
        parts=rs_parts,
        finite=all(bool(np.all(np.isfinite(sorted_thr[f]))) for f in rs_feature),
    )


def _column_layout(cols: _Columns, rs: _RankSets) -> ColumnLayout:
    return ColumnLayout(
        col_feature=np.array(cols.col_feature, dtype=np.int32),
        col_kind=np.array(cols.col_kind, dtype=np.int32),
        col_rankset=np.array(
            [rs.index[f] if kd != VIEW_CATEGORICAL else -1
             for f, kd in zip(cols.col_feature, cols.col_kind, strict=True)],
            dtype=np.int32,
        ),
        col_cat_off=np.array(cols.col_cat_off, dtype=np.int32),
        col_cat_len=np.array(cols.col_cat_len, dtype=np.int32),
        col_cat_rule=np.array(cols.col_cat_rule, dtype=np.int32),
        cat_words=(np.concatenate(cols.cat_words).astype(np.uint32) if cols.cat_words
                   else np.zeros(0, dtype=np.uint32)),
        rs_feature=np.array(rs.features, dtype=np.int32),
        rs_offset=np.array(rs.offset, dtype=np.int32),
        rs_count=np.array(rs.count, dtype=np.int32),
        rs_pad=np.array(rs.pad, dtype=np.int32),
        rs_zero_rank=np.array(rs.zero_rank, dtype=np.int32),
        rs_thresholds=(np.concatenate(rs.parts) if rs.parts else np.zeros(0)),
    )


def _subtree_masks(n_leaf: int, lo: np.ndarray, hi: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QuickScorer masks: the leaf bits of each node's left and right subtrees (zero past 64 leaves)."""
    n_int = lo.shape[0]
    clear = np.zeros(n_int, dtype=np.uint64)
    rmask = np.zeros(n_int, dtype=np.uint64)
    if n_leaf <= MAX_BLOCK_LEAVES:
        for i in range(n_int):
            width = int(hi[i] - lo[i])
            clear[i] = np.uint64(((1 << width) - 1) << int(lo[i]))
            width = int(end[i] - hi[i])
            rmask[i] = np.uint64(((1 << width) - 1) << int(hi[i]))
    return clear, rmask


def _child_value(tree: TreeIR, child: np.ndarray) -> np.ndarray:
    """The node output (internal value or leaf value) of each child."""
    out: np.ndarray = np.where(
        child >= 0,
        tree.internal_value[np.maximum(child, 0)],
        tree.leaf_value[np.maximum(~child, 0)],
    )
    return out


def _global_child(child: np.ndarray, node_base: int, leaf_base: int, pos: np.ndarray) -> np.ndarray:
    """Children renumbered across the forest: global node, or ~global left-to-right leaf."""
    out: np.ndarray = np.where(
        child >= 0, child + node_base, ~(pos[np.maximum(~child, 0)] + leaf_base)
    ).astype(np.int32)
    return out


def _saabas_paths(tree: TreeIR, pos: np.ndarray) -> list[dict[int, float]]:
    """Per leaf (left-to-right), the root-to-leaf deltas accumulated per feature."""
    paths: list[dict[int, float]] = [dict() for _ in range(tree.n_leaves)]
    stack: list[tuple[int, dict[int, float]]] = [(0, {})]
    while stack:
        node, acc = stack.pop()
        f = int(tree.split_feature[node])
        for child in (int(tree.left[node]), int(tree.right[node])):
            cv = (tree.internal_value[child] if child >= 0
                  else tree.leaf_value[~child])
            d = dict(acc)
            d[f] = d.get(f, 0.0) + float(cv - tree.internal_value[node])
            if child >= 0:
                stack.append((child, d))
            else:
                paths[int(pos[~child])] = d
    return paths


class _Nodes:
    """Pass 2: every tree's nodes, leaves, masks and Saabas paths, numbered across the forest."""

    def __init__(self, cols: _Columns, rs: _RankSets) -> None:
        self._cols = cols
        self._sorted_thr = rs.sorted_thr
        self.node_col: list[np.ndarray] = []
        self.node_rank: list[np.ndarray] = []
        self.node_thr: list[np.ndarray] = []
        self.node_clear: list[np.ndarray] = []
        self.node_rmask: list[np.ndarray] = []
        self.node_feature: list[np.ndarray] = []
        self.node_dl: list[np.ndarray] = []
        self.node_dr: list[np.ndarray] = []
        self.node_left: list[np.ndarray] = []
        self.node_right: list[np.ndarray] = []
        self.tree_node_off = [0]
        self.tree_leaf_off = [0]
        self.tree_root: list[int] = []
        self.leaf_values: list[np.ndarray] = []
        self.path_off = [0]
        self.path_feature: list[int] = []
        self.path_delta: list[float] = []
        self.node_base = 0
        self.leaf_base = 0

    def add_tree(self, tree: TreeIR) -> None:
        n_int = tree.n_internal
        n_leaf = tree.n_leaves
        pos, lo, hi, end = _inorder_leaves(tree)
        ordered = np.empty(n_leaf)
        ordered[pos] = tree.leaf_value
        self.leaf_values.append(ordered)
        if n_int == 0:
            self.tree_root.append(~self.leaf_base)
            self.path_off.append(self.path_off[-1])
        else:
            self.tree_root.append(self.node_base)
            self._add_internal(tree, pos, lo, hi, end)
        self.node_base += n_int
        self.leaf_base += n_leaf
        self.tree_node_off.append(self.node_base)
        self.tree_leaf_off.append(self.leaf_base)

    def _split_columns(self, tree: TreeIR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per internal node: its column, its threshold's rank in the rank set, and its threshold."""
        n_int = tree.n_internal
        cols = np.empty(n_int, dtype=np.int32)
        ranks = np.zeros(n_int, dtype=np.int32)
        thr = np.empty(n_int)
        for i in range(n_int):
            cols[i] = self._cols.column_of(tree, i)
            if tree.is_categorical[i]:
                thr[i] = 0.5
            else:
                t = float(tree.threshold[i])
                ranks[i] = int(np.searchsorted(self._sorted_thr[int(tree.split_feature[i])], t, side="left"))
                thr[i] = t
        return cols, ranks, thr

    def _add_internal(self, tree: TreeIR, pos: np.ndarray, lo: np.ndarray, hi: np.ndarray, end: np.ndarray) -> None:
        cols, ranks, thr = self._split_columns(tree)
        clear, rmask = _subtree_masks(tree.n_leaves, lo, hi, end)
        self.node_rmask.append(rmask)
        self.node_feature.append(tree.split_feature.astype(np.int32))
        self.node_dl.append(_child_value(tree, tree.left) - tree.internal_value)
        self.node_dr.append(_child_value(tree, tree.right) - tree.internal_value)
        self.node_col.append(cols)
        self.node_rank.append(ranks)
        self.node_thr.append(thr)
        self.node_clear.append(clear)
        self.node_left.append(_global_child(tree.left, self.node_base, self.leaf_base, pos))
        self.node_right.append(_global_child(tree.right, self.node_base, self.leaf_base, pos))
        for p in _saabas_paths(tree, pos):
            for f, v in sorted(p.items()):
                self.path_feature.append(f)
                self.path_delta.append(v)
            self.path_off.append(len(self.path_feature))


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(0), dtype=dtype)


def build_layout(forest: ForestIR) -> Layout:
    # Pass 1: gather distinct thresholds per feature and the columns.
    cols = _Columns(forest.categorical_rule)
    for tree in forest.trees:
        cols.add_tree(tree)
    rs = _rank_sets(cols.thresholds)
    # Pass 2: nodes, leaves, masks, Saabas paths.
    nodes = _Nodes(cols, rs)
    for tree in forest.trees:
        nodes.add_tree(tree)
    return Layout(
        columns=_column_layout(cols, rs),
        n_trees=len(forest.trees),
        node_col=_cat(nodes.node_col, np.int32),
        node_rank=_cat(nodes.node_rank, np.int32),
        node_thr=_cat(nodes.node_thr, np.float64),
        node_clear=_cat(nodes.node_clear, np.uint64),
        node_rmask=_cat(nodes.node_rmask, np.uint64),
        node_feature=_cat(nodes.node_feature, np.int32),
        node_dl=_cat(nodes.node_dl, np.float64),
        node_dr=_cat(nodes.node_dr, np.float64),
        node_left=_cat(nodes.node_left, np.int32),
        node_right=_cat(nodes.node_right, np.int32),
        tree_node_off=np.array(nodes.tree_node_off, dtype=np.int32),
        tree_root=np.array(nodes.tree_root, dtype=np.int32),
        tree_leaf_off=np.array(nodes.tree_leaf_off, dtype=np.int32),
        leaf_value=_cat(nodes.leaf_values, np.float64),
        path_off=np.array(nodes.path_off, dtype=np.int32),
        path_feature=np.array(nodes.path_feature, dtype=np.int32),
        path_delta=np.array(nodes.path_delta, dtype=np.float64),
        max_leaves=forest.max_leaves(),
        finite_thresholds=rs.finite,
        n_features=forest.n_features,
    )


def _set_columns(cols: ColumnLayout) -> tuple[np.ndarray, np.ndarray]:
    """CSR of each rank set's columns: ``(set_col_off, set_cols)``."""
    n_sets = int(cols.rs_feature.shape[0])
    set_cols: list[int] = []
    set_col_off = [0]
    for s in range(n_sets):
        set_cols.extend(int(c) for c in np.flatnonzero(cols.col_rankset == s))
        set_col_off.append(len(set_cols))
    return np.array(set_col_off, dtype=np.int32), np.array(set_cols, dtype=np.int32)


def _padded_paths(layout: Layout) -> dict[str, np.ndarray]:
    """Saabas paths padded to a fixed width per tree.

    Padding entry j adds 0.0 to dummy slot n_features + j % 4: the kernels' inner
    loop then has a trip count that is constant for a tree, so it does not
    mispredict once per row and tree, and consecutive padding adds do not chain
    through one slot.
    """
    nf = layout.n_features
    widths = np.zeros(layout.n_trees, dtype=np.int32)
    path_offs = np.zeros(layout.n_trees + 1, dtype=np.int32)
    feat_parts: list[np.ndarray] = []
    delta_parts: list[np.ndarray] = []
    lengths = np.diff(layout.path_off)
    for t in range(layout.n_trees):
        l0, l1 = int(layout.tree_leaf_off[t]), int(layout.tree_leaf_off[t + 1])
        w = int(lengths[l0:l1].max()) if l1 > l0 else 0
        widths[t] = w
        pf = np.broadcast_to(nf + np.arange(w, dtype=np.int32), (l1 - l0, w)).copy()
        pdl = np.zeros((l1 - l0, w))
        for i in range(l1 - l0):
            a, b = int(layout.path_off[l0 + i]), int(layout.path_off[l0 + i + 1])
            pf[i, : b - a] = layout.path_feature[a:b]
            pdl[i, : b - a] = layout.path_delta[a:b]
        feat_parts.append(pf.ravel())
        delta_parts.append(pdl.ravel())
        path_offs[t + 1] = path_offs[t] + (l1 - l0) * w
    return {
        "tree_path_off": path_offs,
        "tree_path_width": widths,
        "path_feature": (np.concatenate(feat_parts) if feat_parts else np.zeros(0, np.int32)),
        "path_delta": (np.concatenate(delta_parts) if delta_parts else np.zeros(0)),
    }


@dataclass(frozen=True)
class _PrefixLists:
    """Nodes sorted into rank-ordered lists, and per list the count of nodes below each rank."""

    order: np.ndarray  # node indices, list after list
    list_off: np.ndarray  # int32: list j is order[list_off[j]:list_off[j + 1]]
    cum_off: np.ndarray  # int32: list j's counts start at cum[cum_off[j]]
    cum: np.ndarray  # int32


def _column_lists(layout: Layout) -> _PrefixLists:
    """Single-row QuickScorer: per column, nodes sorted by threshold rank.

    qs_cum[c][b] = number of the column's nodes with rank < b (those go right for
    a row of rank b). Categorical columns have ranks 0/1.
    """
    cols = layout.columns
    n_nodes = int(layout.node_col.shape[0])
    order = np.lexsort((layout.node_rank, layout.node_col)) if n_nodes else np.zeros(0, int)
    n_cols = int(cols.col_feature.shape[0])
    qs_col_off = np.zeros(n_cols + 1, dtype=np.int32)
    np.add.at(qs_col_off, layout.node_col.astype(np.int64) + 1, 1)
    qs_col_off = np.cumsum(qs_col_off).astype(np.int32)
    qs_cum_parts: list[np.ndarray] = []
    qs_cum_off = np.zeros(n_cols, dtype=np.int32)
    total = 0
    sorted_rank = layout.node_rank[order]
    for c in range(n_cols):
        ranks_c = sorted_rank[qs_col_off[c] : qs_col_off[c + 1]]
        is_cat = cols.col_kind[c] == VIEW_CATEGORICAL
        top = 1 if is_cat else int(cols.rs_count[cols.col_rankset[c]])
        cum = np.searchsorted(ranks_c, np.arange(top + 1), side="left").astype(np.int32)
        qs_cum_off[c] = total
        qs_cum_parts.append(cum)
        total += top + 1
    qs_cum = np.concatenate(qs_cum_parts) if qs_cum_parts else np.zeros(0, np.int32)
    return _PrefixLists(order=order, list_off=qs_col_off, cum_off=qs_cum_off, cum=qs_cum)


def _merged_lists(layout: Layout) -> _PrefixLists:
    """Narrow models, single rows: one rank-sorted list per rank set (qm_*).

    A value that no view substitutes (not NaN, and not 0.0 when the feature has
    zero-as-missing views) has the same rank in every numerical view of its
    feature, so the nodes of all those views form one rank-sorted list per rank
    set: one prefix per feature instead of one per view, which halves the loops
    whose exits mispredict (each costs ~30-40 cycles here, the next list's first
    loads included).
    """
    cols = layout.columns
    n_sets = int(cols.rs_feature.shape[0])
    node_set = np.where(cols.col_kind[layout.node_col] == VIEW_CATEGORICAL, -1,
                        cols.col_rankset[layout.node_col]).astype(np.int64)
    numerical = np.flatnonzero(node_set >= 0)
    morder = numerical[np.lexsort((layout.node_rank[numerical], node_set[numerical]))]
    set_sizes = np.bincount(node_set[numerical], minlength=n_sets)
    qm_off = np.concatenate([[0], np.cumsum(set_sizes)]).astype(np.int32)
    qm_cum_parts: list[np.ndarray] = []
    qm_cum_off = np.zeros(n_sets, dtype=np.int32)
    total = 0
    m_rank = layout.node_rank[morder]
    for s in range(n_sets):
        ranks_s = m_rank[qm_off[s] : qm_off[s + 1]]
        below = np.searchsorted(ranks_s, np.arange(int(cols.rs_count[s]) + 1), side="left")
        qm_cum_off[s] = total
        qm_cum_parts.append(below.astype(np.int32))
        total += int(cols.rs_count[s]) + 1
    qm_cum = np.concatenate(qm_cum_parts) if qm_cum_parts else np.zeros(0, np.int32)
    return _PrefixLists(order=morder, list_off=qm_off, cum_off=qm_cum_off, cum=qm_cum)


def _set_zero(cols: ColumnLayout) -> np.ndarray:
    """1 for the rank sets whose feature has zero-as-missing views."""
    set_zero = np.zeros(int(cols.rs_feature.shape[0]), dtype=np.int32)
    for c in range(int(cols.col_feature.shape[0])):
        if cols.col_kind[c] in (VIEW_ZERO_LEFT, VIEW_ZERO_RIGHT):
            set_zero[cols.col_rankset[c]] = 1
    return set_zero


def _leaf_contrib(layout: Layout) -> tuple[int, np.ndarray]:
    """Block-kernel reason codes: ``(nv, table)``; ``nv == 0`` when not built.

    Per leaf, its Saabas path summed per feature (paths are already one entry
    per feature), float32, features padded to a multiple of 8. A row's reasons
    are then one vector add per tree. Built for up to LEAF_CONTRIB_MAX_FEATURES
    features and LEAF_CONTRIB_MAX_BYTES of table; otherwise the kernel walks the
    nodes.
    """
    n_leaves = int(layout.leaf_value.shape[0])
    nv = (layout.n_features + 7) // 8
    if nv <= LEAF_CONTRIB_MAX_FEATURES // 8 and n_leaves * nv * 32 <= LEAF_CONTRIB_MAX_BYTES:
        lc = np.zeros((n_leaves, 8 * nv))
        leaf_of_entry = np.repeat(np.arange(n_leaves), np.diff(layout.path_off))
        lc[leaf_of_entry, layout.path_feature] = layout.path_delta
        return nv, lc.astype(np.float32).ravel()
    return 0, np.zeros(0, dtype=np.float32)


def fast_kernel_arrays(layout: Layout) -> dict[str, np.ndarray]:
    """Arrays for ``_fast.FastKernel`` (names match its constructor)."""
    cols = layout.columns
    set_col_off, set_cols = _set_columns(cols)
    paths = _padded_paths(layout)
    node_tree = np.repeat(
        np.arange(layout.n_trees, dtype=np.int32), np.diff(layout.tree_node_off)
    )
    qs = _column_lists(layout)
    qm = _merged_lists(layout)
    keep64 = ~layout.node_clear
    keep32 = keep64 & np.uint64(0xFFFFFFFF)

    # Narrow models' packed entries, keep32 | (tree << 32): the merged lists,
    # then the per-column lists (from index qs_base), then PACK_PAD neutral
    # entries (tree 0, keep every bit) -- the kernel always reads a fixed-size
    # tail after a prefix and masks the entries past its end instead of
    # branching on the remainder.
    def packed(idx: np.ndarray) -> np.ndarray:
        out: np.ndarray = keep32[idx] | (node_tree[idx].astype(np.uint64) << np.uint64(32))
        return out

    q_pack = np.concatenate(
        [packed(qm.order), packed(qs.order), np.full(PACK_PAD, np.uint64(0xFFFFFFFF), np.uint64)])
    nv, leaf_contrib = _leaf_contrib(layout)
    kids = np.empty(2 * layout.node_col.shape[0], dtype=np.int32)
    kids[0::2] = layout.node_left
    kids[1::2] = layout.node_right
    return {
        "col_feature": cols.col_feature,
        "col_kind": cols.col_kind,
        "col_cat_off": cols.col_cat_off,
        "col_cat_len": cols.col_cat_len,
        "col_cat_rule": cols.col_cat_rule,
        "cat_words": cols.cat_words,
        "rs_feature": cols.rs_feature,
        "rs_offset": cols.rs_offset,
        "rs_count": cols.rs_count,
        "rs_pad": cols.rs_pad,
        "rs_zero_rank": cols.rs_zero_rank,
        "rs_thr": cols.rs_thresholds,
        "set_col_off": set_col_off,
        "set_cols": set_cols,
        "cat_cols": np.flatnonzero(cols.col_kind == VIEW_CATEGORICAL).astype(np.int32),
        "node_col": layout.node_col,
        "node_rank": layout.node_rank,
        "node_thr": layout.node_thr,
        "clear32": (layout.node_clear & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        "clear64": layout.node_clear,
        "rmask32": (layout.node_rmask & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        "rmask64": layout.node_rmask,
        "node_feature": layout.node_feature,
        "node_dl": layout.node_dl,
        "node_dr": layout.node_dr,
        "kids": kids,
        "tree_node_off": layout.tree_node_off,
        "tree_root": layout.tree_root,
        "tree_leaf_off": layout.tree_leaf_off,
        "leaf": layout.leaf_value,
        "qs_col_off": qs.list_off,
        "qs_cum_off": qs.cum_off,
        "qs_cum": qs.cum,
        "qs_tree": node_tree[qs.order],
        "qs_keep64": keep64[qs.order],
        "q_pack": q_pack,
        "qs_base": np.array([qm.order.shape[0]], dtype=np.int32),
        "qm_off": qm.list_off,
        "qm_cum_off": qm.cum_off,
        "qm_cum": qm.cum,
        "set_zero": _set_zero(cols),
        "leaf_contrib": leaf_contrib,
        "leaf_contrib_nv": np.array(nv, dtype=np.int32),
        **paths,
    }
