# cython: language_level=3
"""Single-row kernels.

``row_quickscorer`` (trees with <= 64 leaves): the row is ranked per column,
then, per column, exactly the nodes that go right are the ones whose threshold
rank is below the row's rank -- a prefix of the column's rank-sorted node
list. Their leaf masks are ANDed into their trees' bit-vectors with no
comparisons at all (QuickScorer), and each tree's exit leaf is its lowest set
bit. Cost is proportional to the number of right-going nodes, with one
predictable loop per column.

``row_traverse`` (any tree size, finite thresholds): the row's column views
are materialised as doubles (NaN/zero substituted per view) and each tree is
walked with a branch-free child select.
"""

from libc.math cimport INFINITY
from libc.stdint cimport int32_t, uint32_t, uint64_t

from kernels._fastmodel cimport (
    VIEW_CATEGORICAL,
    VIEW_NAN_AS_ZERO,
    VIEW_NAN_RIGHT,
    VIEW_ZERO_LEFT,
    VIEW_ZERO_RIGHT,
    FModel,
    ca_ctz32,
    ca_ctz64,
    fm_add_path,
    fm_finish,
    fm_in_bitset,
    fm_rank,
    fm_view_rank,
    fm_x,
)


cdef void row_ranks(const FModel* m, const void* data, int is_f32, Py_ssize_t row,
                    int32_t* rk, double* xs, int32_t* pos) noexcept nogil:
    """rk[c] = rank of the row's value in column c. xs/pos: n_sets scratch.

    The binary searches of all features advance in lockstep (one step for every
    feature, then the next step), so the independent searches overlap instead
    of each paying its chain of dependent loads. A search whose padded table is
    shorter than the current step clamps to its last slot, which holds +inf and
    therefore never moves it.
    """
    cdef int s, j, c
    cdef int32_t step, p, last
    cdef double x
    cdef Py_ssize_t base = row * m.n_features
    cdef int32_t max_pad = 1
    for s in range(m.n_sets):
        xs[s] = fm_x(data, is_f32, base + m.rs_feature[s], m.input_mode)
        pos[s] = 0
        if m.rs_pad[s] > max_pad:
            max_pad = m.rs_pad[s]
    step = max_pad >> 1
    while step > 0:
        for s in range(m.n_sets):
            p = pos[s] + step - 1
            last = m.rs_pad[s] - 1
            if p > last:
                p = last
            pos[s] += step & -(<int32_t>(m.rs_thr[m.rs_offset[s] + p] < xs[s]))
        step >>= 1
    for s in range(m.n_sets):
        x = xs[s]
        for j in range(m.set_col_off[s], m.set_col_off[s + 1]):
            c = m.set_cols[j]
            rk[c] = fm_view_rank(m.col_kind[c], pos[s], x != x, x == 0.0, m.rs_count[s],
                                 m.rs_zero_rank[s])
    for j in range(m.n_cat_cols):
        c = m.cat_cols[j]
        x = fm_x(data, is_f32, base + m.col_feature[c], m.input_mode)
        rk[c] = 0 if fm_in_bitset(x, m.cat_words + m.col_cat_off[c], m.col_cat_len[c]) else 1


cdef double row_quickscorer(const FModel* m, const int32_t* rk, void* vbuf, bint raw,
                            double* contrib) noexcept nogil:
    """Score one ranked row. vbuf: n_trees uint32 (uint64 if m.wide) scratch."""
    cdef uint32_t* v32 = <uint32_t*>vbuf
    cdef uint64_t* v64 = <uint64_t*>vbuf
    cdef int32_t* leaf_idx = <int32_t*>vbuf   # reused once the masks are read
    cdef int t, c
    cdef int32_t i, e0, e1
    cdef uint64_t e, e2, e3, e4
    cdef double acc = m.base
    cdef float facc = <float>m.base
    if m.wide:
        for t in range(m.n_trees):
            v64[t] = 0xFFFFFFFFFFFFFFFFu
        for c in range(m.n_cols):
            e0 = m.qs_col_off[c]
            e1 = e0 + m.qs_cum[m.qs_cum_off[c] + rk[c]]
            for i in range(e0, e1):
                v64[m.qs_tree[i]] &= m.qs_keep64[i]
        for t in range(m.n_trees):
            # leaf_idx[t] overwrites bytes of v64[t // 2] only, already read.
            leaf_idx[t] = m.tree_leaf_off[t] + ca_ctz64(v64[t])
    else:
        for t in range(m.n_trees):
            v32[t] = 0xFFFFFFFFu
        for c in range(m.n_cols):
            e0 = m.qs_col_off[c]
            e1 = e0 + m.qs_cum[m.qs_cum_off[c] + rk[c]]
            # One 64-bit load per node: tree index low, kept leaf bits high.
            # Unrolled by 4 (GCC does not unroll at -O3): the loop is
            # instruction-bound and this removes most of its overhead.
            i = e0
            while i + 4 <= e1:
                e = m.qs_pack[i]
                e2 = m.qs_pack[i + 1]
                e3 = m.qs_pack[i + 2]
                e4 = m.qs_pack[i + 3]
                v32[<uint32_t>e] &= <uint32_t>(e >> 32)
                v32[<uint32_t>e2] &= <uint32_t>(e2 >> 32)
                v32[<uint32_t>e3] &= <uint32_t>(e3 >> 32)
                v32[<uint32_t>e4] &= <uint32_t>(e4 >> 32)
                i += 4
            while i < e1:
                e = m.qs_pack[i]
                v32[<uint32_t>e] &= <uint32_t>(e >> 32)
                i += 1
        for t in range(m.n_trees):
            leaf_idx[t] = m.tree_leaf_off[t] + ca_ctz32(v32[t])
    # Sum in tree order (bit-exact with the source library).
    if m.sum_f32:
        for t in range(m.n_trees):
            facc = facc + <float>m.leaf[leaf_idx[t]]
    else:
        for t in range(m.n_trees):
            acc += m.leaf[leaf_idx[t]]
    if contrib != NULL:
        for t in range(m.n_trees):
            fm_add_path(m, t, leaf_idx[t] - m.tree_leaf_off[t], contrib)
    return fm_finish(m, acc, facc, raw)


cdef void row_views(const FModel* m, const void* data, int is_f32, Py_ssize_t row,
                    double* xv) noexcept nogil:
    """Materialise every column of one row as a double (see _layout.py)."""
    cdef int c, kind
    cdef double x
    cdef Py_ssize_t base = row * m.n_features
    for c in range(m.n_cols):
        x = fm_x(data, is_f32, base + m.col_feature[c], m.input_mode)
        kind = m.col_kind[c]
        if kind == VIEW_CATEGORICAL:
            xv[c] = 0.0 if fm_in_bitset(x, m.cat_words + m.col_cat_off[c],
                                        m.col_cat_len[c]) else 1.0
        elif x != x:
            if kind == VIEW_NAN_AS_ZERO:
                xv[c] = 0.0
            elif kind == VIEW_NAN_RIGHT or kind == VIEW_ZERO_RIGHT:
                xv[c] = INFINITY
            else:
                xv[c] = -INFINITY
        elif x == 0.0 and kind == VIEW_ZERO_RIGHT:
            xv[c] = INFINITY
        elif x == 0.0 and kind == VIEW_ZERO_LEFT:
            xv[c] = -INFINITY
        else:
            xv[c] = x


cdef double row_traverse(const FModel* m, const double* xv, bint raw,
                         double* contrib) noexcept nogil:
    cdef int t
    cdef int32_t node
    cdef double acc = m.base
    cdef float facc = <float>m.base
    for t in range(m.n_trees):
        node = m.tree_root[t]
        while node >= 0:
            # Branch-free child select: kids[2n] left, kids[2n + 1] right.
            node = m.kids[2 * node + (xv[m.node_col[node]] > m.node_thr[node])]
        node = ~node
        if m.sum_f32:
            facc = facc + <float>m.leaf[node]
        else:
            acc += m.leaf[node]
        if contrib != NULL:
            fm_add_path(m, t, node - m.tree_leaf_off[t], contrib)
    return fm_finish(m, acc, facc, raw)

