# cython: language_level=3
"""Single-row kernels.

``row_qs_narrow`` (trees with <= 32 leaves) and ``row_quickscorer`` (<= 64):
the row is ranked (per feature: the number of distinct split thresholds below
the value), then exactly the nodes that go right are those whose threshold
rank is below the row's rank -- a prefix of a rank-sorted node list. Their
leaf masks are ANDed into their trees' bit-vectors with no comparisons at all
(QuickScorer), and each tree's exit leaf is its lowest set bit. Cost is
proportional to the number of right-going nodes (~7,500 of 15,000 for 500
trees of 31 leaves), at about 4 instructions each.

What made the narrow kernel fast is mostly branch prediction: every prefix
loop ends at a data-dependent point, and with 80 column loops per row their
exits (and 0-3-entry remainder loops) mispredicted ~150 times per row. The
narrow kernel walks one merged list per *feature* (all its numerical views
agree on the rank unless the value is substituted: NaN, or 0.0 under
zero-as-missing), and ends every prefix with a fixed 3-entry tail whose
entries past the end are masked to no-ops (the lists carry neutral padding).

``row_traverse`` (any tree size, finite thresholds): the row's column views
are materialised as doubles (NaN/zero substituted per view) and each tree is
walked with a branch-free child select.
"""

from libc.math cimport INFINITY
from libc.stdint cimport int32_t, uint32_t, uint64_t

from kernels._fastblock cimport leaf_reasons_row

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
    fm_view_rank,
    fm_x,
)


cdef inline void _positions(const FModel* m, const void* data, int is_f32, Py_ssize_t row,
                            double* xs, int32_t* pos) noexcept nogil:
    """xs[s] = the row's value of rank set s, pos[s] = its rank: the number of the
    feature's distinct thresholds below it (NaN compares false and ranks 0).

    The binary searches of all features advance in lockstep (one step for every
    feature, then the next step), so the independent searches overlap instead
    of each paying its chain of dependent loads (GCC vectorises the step over
    eight features). A search whose padded table is shorter than the current
    step clamps to its last slot, which holds +inf and therefore never moves it.
    (A 16-ary search with AVX compare-and-popcount per level was tried: more
    instructions and slower here.)
    """
    cdef int s
    cdef int32_t step, p, last
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


cdef void row_ranks(const FModel* m, const void* data, int is_f32, Py_ssize_t row,
                    int32_t* rk, double* xs, int32_t* pos) noexcept nogil:
    """rk[c] = rank of the row's value in column c. xs/pos: n_sets scratch."""
    cdef int s, j, c
    cdef double x
    cdef Py_ssize_t base = row * m.n_features
    _positions(m, data, is_f32, row, xs, pos)
    for s in range(m.n_sets):
        x = xs[s]
        for j in range(m.set_col_off[s], m.set_col_off[s + 1]):
            c = m.set_cols[j]
            rk[c] = fm_view_rank(m.col_kind[c], pos[s], x != x, x == 0.0, m.rs_count[s],
                                 m.rs_zero_rank[s])
    for j in range(m.n_cat_cols):
        c = m.cat_cols[j]
        x = fm_x(data, is_f32, base + m.col_feature[c], m.input_mode)
        rk[c] = 0 if fm_in_bitset(x, m.cat_words + m.col_cat_off[c], m.col_cat_len[c],
                                  m.col_cat_rule[c]) else 1


cdef inline void _and_tail(uint32_t* v32, const uint64_t* p, uint32_t r,
                           uint64_t sh) noexcept nogil:
    """AND the first r (< 8) packed entries at p into their trees' vectors, branch-free.

    Seven entries are always read; entry j is applied with its keep mask if
    j < r, otherwise with all ones (a no-op). The packed array ends with
    PACK_PAD neutral entries, so this never reads past it.
    """
    cdef uint64_t e0 = p[0]
    cdef uint64_t e1 = p[1]
    cdef uint64_t e2 = p[2]
    cdef uint64_t e3 = p[3]
    cdef uint64_t e4 = p[4]
    cdef uint64_t e5 = p[5]
    cdef uint64_t e6 = p[6]
    v32[e0 >> sh] &= <uint32_t>e0 | (<uint32_t>0 - <uint32_t>(r < 1))
    v32[e1 >> sh] &= <uint32_t>e1 | (<uint32_t>0 - <uint32_t>(r < 2))
    v32[e2 >> sh] &= <uint32_t>e2 | (<uint32_t>0 - <uint32_t>(r < 3))
    v32[e3 >> sh] &= <uint32_t>e3 | (<uint32_t>0 - <uint32_t>(r < 4))
    v32[e4 >> sh] &= <uint32_t>e4 | (<uint32_t>0 - <uint32_t>(r < 5))
    v32[e5 >> sh] &= <uint32_t>e5 | (<uint32_t>0 - <uint32_t>(r < 6))
    v32[e6 >> sh] &= <uint32_t>e6 | (<uint32_t>0 - <uint32_t>(r < 7))


cdef inline void _and_prefix(uint32_t* v32, const uint64_t* p, int32_t n,
                             uint64_t sh) noexcept nogil:
    """AND the first n packed entries (keep | tree << 32) into their trees' vectors.

    ``sh`` is always 32, passed at run time so that GCC emits one BMI2 ``shrx``
    for the tree index: with the keep mask in the low half each entry is then
    three instructions (load, shrx, and-to-memory). Eight entries per
    iteration, then the remainder with _and_tail (no branch).
    """
    cdef const uint64_t* pend = p + n
    cdef uint64_t e0, e1, e2, e3, e4, e5, e6, e7
    while pend - p >= 8:
        e0 = p[0]
        e1 = p[1]
        e2 = p[2]
        e3 = p[3]
        e4 = p[4]
        e5 = p[5]
        e6 = p[6]
        e7 = p[7]
        v32[e0 >> sh] &= <uint32_t>e0
        v32[e1 >> sh] &= <uint32_t>e1
        v32[e2 >> sh] &= <uint32_t>e2
        v32[e3 >> sh] &= <uint32_t>e3
        v32[e4 >> sh] &= <uint32_t>e4
        v32[e5 >> sh] &= <uint32_t>e5
        v32[e6 >> sh] &= <uint32_t>e6
        v32[e7 >> sh] &= <uint32_t>e7
        p += 8
    _and_tail(v32, p, <uint32_t>(pend - p), sh)


cdef inline double _sum_leaves32(const FModel* m, const uint32_t* v32, int32_t* leaf_idx,
                                 bint raw) noexcept nogil:
    """Exit leaves and their sum, in tree order (bit-exact with the source library):
    the adds form one dependent chain and the ctz/loads overlap with it.
    leaf_idx may alias v32 (each slot is read before it is written)."""
    cdef Py_ssize_t t
    cdef int32_t li
    cdef double acc = m.base
    cdef float facc = <float>m.base
    if m.sum_f32:
        for t in range(m.n_trees):
            li = m.tree_leaf_off[t] + ca_ctz32(v32[t])
            leaf_idx[t] = li
            facc = facc + <float>m.leaf[li]
    else:
        for t in range(m.n_trees):
            li = m.tree_leaf_off[t] + ca_ctz32(v32[t])
            leaf_idx[t] = li
            acc += m.leaf[li]
    return fm_finish(m, acc, facc, raw)


cdef inline void _add_reasons(const FModel* m, const int32_t* leaf_idx,
                              double* contrib) noexcept nogil:
    """Saabas contributions of one row from its exit leaves (global indices)."""
    cdef Py_ssize_t t
    if m.lc_nv:
        leaf_reasons_row(m, leaf_idx, contrib)
        return
    for t in range(m.n_trees):
        fm_add_path(m, <int>t, leaf_idx[t] - m.tree_leaf_off[t], contrib)


cdef double row_qs_narrow(const FModel* m, const void* data, int is_f32, Py_ssize_t row,
                          double* xs, int32_t* pos, uint32_t* v32, bint raw,
                          double* contrib) noexcept nogil:
    """Score one row of a model whose trees have <= 32 leaves.

    Scratch: xs (double) and pos (int32) n_sets each, v32 n_trees + 1. With
    contrib (contrib_stride doubles, zeroed) also adds the Saabas paths.
    """
    cdef int32_t* leaf_idx = <int32_t*>v32
    cdef const uint64_t* q = m.q_pack
    cdef Py_ssize_t t, s, j
    cdef int32_t c, r
    cdef double x, result
    cdef Py_ssize_t base = row * m.n_features
    cdef uint64_t sh = <uint64_t>m.pack_shift
    _positions(m, data, is_f32, row, xs, pos)
    for t in range(m.n_trees + 1):
        v32[t] = 0xFFFFFFFFu
    for s in range(m.n_sets):
        x = xs[s]
        if x == x and not (m.set_zero[s] and x == 0.0):
            # Every view of the feature has rank pos[s]: one merged prefix.
            _and_prefix(v32, q + m.qm_off[s], m.qm_cum[m.qm_cum_off[s] + pos[s]], sh)
        else:
            # Substituted value (NaN, or 0.0 under zero-as-missing): per view.
            for j in range(m.set_col_off[s], m.set_col_off[s + 1]):
                c = m.set_cols[j]
                r = fm_view_rank(m.col_kind[c], pos[s], x != x, x == 0.0, m.rs_count[s],
                                 m.rs_zero_rank[s])
                _and_prefix(v32, q + m.qs_base + m.qs_col_off[c],
                            m.qs_cum[m.qs_cum_off[c] + r], sh)
    for j in range(m.n_cat_cols):
        c = m.cat_cols[j]
        x = fm_x(data, is_f32, base + m.col_feature[c], m.input_mode)
        r = 0 if fm_in_bitset(x, m.cat_words + m.col_cat_off[c], m.col_cat_len[c],
                              m.col_cat_rule[c]) else 1
        _and_prefix(v32, q + m.qs_base + m.qs_col_off[c], m.qs_cum[m.qs_cum_off[c] + r], sh)
    result = _sum_leaves32(m, v32, leaf_idx, raw)
    if contrib != NULL:
        _add_reasons(m, leaf_idx, contrib)
    return result


cdef double row_qs_wide(const FModel* m, const int32_t* rk, uint64_t* v64, bint raw,
                        double* contrib) noexcept nogil:
    """Score one ranked row (rk from row_ranks) of a model with 33-64 leaves per
    tree. v64: n_trees + 1 scratch."""
    cdef int32_t* leaf_idx = <int32_t*>v64   # reused once the masks are read
    cdef Py_ssize_t t, c
    cdef Py_ssize_t nt = m.n_trees
    cdef int32_t i, e0, e1
    cdef double acc = m.base
    cdef float facc = <float>m.base
    for t in range(nt):
        v64[t] = 0xFFFFFFFFFFFFFFFFu
    for c in range(m.n_cols):
        e0 = m.qs_col_off[c]
        e1 = e0 + m.qs_cum[m.qs_cum_off[c] + rk[c]]
        for i in range(e0, e1):
            v64[m.qs_tree[i]] &= m.qs_keep64[i]
    for t in range(nt):
        # leaf_idx[t] overwrites bytes of v64[t // 2] only, already read.
        leaf_idx[t] = m.tree_leaf_off[t] + ca_ctz64(v64[t])
    if m.sum_f32:
        for t in range(nt):
            facc = facc + <float>m.leaf[leaf_idx[t]]
    else:
        for t in range(nt):
            acc += m.leaf[leaf_idx[t]]
    if contrib != NULL:
        _add_reasons(m, leaf_idx, contrib)
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
                                        m.col_cat_len[c], m.col_cat_rule[c]) else 1.0
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

