# cython: language_level=3
"""Block kernel: QuickScorer bit-vectors, tree-major, vectorised across rows.

Rows are processed in blocks of BLOCK (64). Each block is first *ranked*: for
every column, the number of the feature's distinct thresholds below each row's
value (missing-value rules folded in, see _layout.py). Then, tree by tree,
every internal node is evaluated for all rows at once with an integer compare
and an AND of the node's leaf mask into the row's bit-vector; the exit leaf is
the lowest surviving bit. The inner ``for r in ...`` loops are branch-free with
unit stride, so the C compiler turns them into AVX2 code and keeps a tree's 64
bit-vectors in registers. Leaf values are added per row in tree order, which
keeps sums bit-identical to LightGBM (double) and XGBoost (float32).

Reason codes (Saabas) are computed in the same pass, also for all rows of the
block at once: a row went left at node n iff its exit leaf (lowest bit) lies
in n's left-subtree mask, right iff it lies in the right-subtree mask, so every
node adds ``delta_left``, ``delta_right`` or 0 to its feature's column of a
feature-major contribution block, branch-free. These partial sums are float32
(8 rows per AVX2 instruction) and are flushed into float64 every FLUSH_TREES
trees; reported contributions are accurate to ~1e-7 relative.
"""

cimport cython
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memset

from kernels._common cimport load_value_d, load_value_f, top_k_positive
from kernels._fastmodel cimport (
    BLOCK,
    VIEW_NAN_AS_ZERO,
    VIEW_NAN_LEFT,
    VIEW_NAN_RIGHT,
    VIEW_ZERO_RIGHT,
    FModel,
    ca_ctz32,
    ca_ctz64,
    fm_finish,
    fm_in_bitset,
)

cdef enum:
    # float32 Saabas partial sums are flushed into doubles this often: a few
    # terms per flush keeps them within ~1e-7 relative, far below the spread
    # of the contributions reason codes rank.
    FLUSH_TREES = 16

cdef extern from *:
    """
    /* GCC's -O3 loop interchange and unroll-and-jam would restructure the node
       loop around the row loop and turn the contiguous row loads into gathers
       (3x slower); keep the loop nest as written. */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC optimize("no-loop-interchange", "no-loop-unroll-and-jam")
    #endif
    """


cdef inline void _load_feature(const FModel* m, const void* data, int is_f32, Py_ssize_t row0,
                               int nrows, int32_t f, BlockScratch* sc) noexcept nogil:
    cdef Py_ssize_t r
    cdef Py_ssize_t nf = m.n_features
    cdef const float* pf = <const float*>data + row0 * nf + f
    cdef const double* pd = <const double*>data + row0 * nf + f
    if is_f32:
        for r in range(nrows):
            sc.xs[r] = load_value_f(pf[r * nf], m.input_mode)
    else:
        for r in range(nrows):
            sc.xs[r] = load_value_d(pd[r * nf], m.input_mode)
    for r in range(nrows, BLOCK):
        sc.xs[r] = 0.0


cdef void _rank_block(const FModel* m, const void* data, int is_f32, Py_ssize_t row0,
                      int nrows, int32_t* bins, BlockScratch* sc) noexcept nogil:
    """Fill bins[col * BLOCK + r]. Padding lanes rank 0.0, so every lane is defined."""
    cdef int s, j, c, kind
    # Py_ssize_t loop indices throughout: with CPython's -fwrapv an int index is
    # not provably affine after widening, and GCC then emits gathers.
    cdef Py_ssize_t r
    cdef Py_ssize_t lanes = m.lanes
    cdef int32_t f, step, cnt, zr
    cdef const double* u
    cdef int32_t* dst
    cdef const uint32_t* words
    cdef int32_t nwords
    for s in range(m.n_sets):
        f = m.rs_feature[s]
        u = m.rs_thr + m.rs_offset[s]
        cnt = m.rs_count[s]
        zr = m.rs_zero_rank[s]
        _load_feature(m, data, is_f32, row0, nrows, f, sc)
        for r in range(lanes):
            sc.pos[r] = 0
            sc.nan[r] = sc.xs[r] != sc.xs[r]
            sc.zero[r] = (sc.xs[r] != sc.xs[r]) | (sc.xs[r] == 0.0)
        # Branch-free binary search, one step for all rows at a time so the
        # independent searches overlap (NaN compares false and ranks 0).
        step = m.rs_pad[s] >> 1
        while step > 0:
            for r in range(lanes):
                sc.pos[r] += step & -(<int32_t>(u[sc.pos[r] + step - 1] < sc.xs[r]))
            step >>= 1
        for j in range(m.set_col_off[s], m.set_col_off[s + 1]):
            c = m.set_cols[j]
            kind = m.col_kind[c]
            dst = bins + c * BLOCK
            if kind == VIEW_NAN_AS_ZERO:
                for r in range(lanes):
                    dst[r] = zr if sc.nan[r] else sc.pos[r]
            elif kind == VIEW_NAN_RIGHT:
                for r in range(lanes):
                    dst[r] = cnt if sc.nan[r] else sc.pos[r]
            elif kind == VIEW_NAN_LEFT:
                for r in range(lanes):
                    dst[r] = 0 if sc.nan[r] else sc.pos[r]
            elif kind == VIEW_ZERO_RIGHT:
                for r in range(lanes):
                    dst[r] = cnt if sc.zero[r] else sc.pos[r]
            else:
                for r in range(lanes):
                    dst[r] = 0 if sc.zero[r] else sc.pos[r]
    for j in range(m.n_cat_cols):
        c = m.cat_cols[j]
        dst = bins + c * BLOCK
        words = m.cat_words + m.col_cat_off[c]
        nwords = m.col_cat_len[c]
        _load_feature(m, data, is_f32, row0, nrows, m.col_feature[c], sc)
        for r in range(lanes):
            dst[r] = 0 if fm_in_bitset(sc.xs[r], words, nwords) else 1


cdef inline void _leaves_out(const FModel* m, const int32_t* leaf_idx, int nrows,
                             double* acc, float* facc) noexcept nogil:
    """Add one tree's exit leaves for every row (so each row sums in tree order)."""
    cdef Py_ssize_t r
    if m.sum_f32:
        for r in range(nrows):
            facc[r] = facc[r] + <float>m.leaf[leaf_idx[r]]
    else:
        for r in range(nrows):
            acc[r] += m.leaf[leaf_idx[r]]


cdef inline void _saabas32(const FModel* m, int t, const uint32_t* v,
                           float* contrib) noexcept nogil:
    """Saabas for tree t, all rows at once: a row passes node n leftwards iff its
    exit leaf (lowest bit of v) is in n's left-subtree mask, rightwards iff it is
    in the right-subtree mask. Every node is evaluated for all BLOCK rows
    without branches, so the compiler vectorises it like the node pass (8 rows
    per instruction in float32); contrib is feature-major (contrib[f * BLOCK + r])
    and is flushed into double sums every FLUSH_TREES trees."""
    cdef uint32_t e[BLOCK]
    cdef Py_ssize_t r
    cdef int32_t n
    cdef uint32_t lm, rm
    cdef float dl, dr
    cdef float* dst
    for r in range(BLOCK):
        e[r] = v[r] & (<uint32_t>0 - v[r])
    for n in range(m.tree_node_off[t], m.tree_node_off[t + 1]):
        lm = m.clear32[n]
        rm = m.rmask32[n]
        dl = <float>m.node_dl[n]
        dr = <float>m.node_dr[n]
        dst = contrib + m.node_feature[n] * BLOCK
        for r in range(BLOCK):
            dst[r] += (dl if (e[r] & lm) != 0 else <float>0.0) + \
                      (dr if (e[r] & rm) != 0 else <float>0.0)


cdef inline void _flush(const FModel* m, float* cf, double* cd) noexcept nogil:
    """Move float32 partial contributions into the double sums."""
    cdef Py_ssize_t i
    for i in range(m.n_features * BLOCK):
        cd[i] += <double>cf[i]
        cf[i] = 0.0


cdef inline void _saabas64(const FModel* m, int t, const uint64_t* v,
                           float* contrib) noexcept nogil:
    cdef uint64_t e[BLOCK]
    cdef Py_ssize_t r
    cdef int32_t n
    cdef uint64_t lm, rm
    cdef float dl, dr
    cdef float* dst
    for r in range(BLOCK):
        e[r] = v[r] & (<uint64_t>0 - v[r])
    for n in range(m.tree_node_off[t], m.tree_node_off[t + 1]):
        lm = m.clear64[n]
        rm = m.rmask64[n]
        dl = <float>m.node_dl[n]
        dr = <float>m.node_dr[n]
        dst = contrib + m.node_feature[n] * BLOCK
        for r in range(BLOCK):
            dst[r] += (dl if (e[r] & lm) != 0 else <float>0.0) + \
                      (dr if (e[r] & rm) != 0 else <float>0.0)


cdef void _trees32(const FModel* m, const int32_t* bins, int nrows, double* acc, float* facc,
                   double* contrib) noexcept nogil:
    # float32 partial contributions sit right after the double ones
    cdef float* cf = <float*>(contrib + (m.n_features + 1) * BLOCK) if contrib != NULL else NULL
    cdef uint32_t v[BLOCK]
    cdef int32_t leaf_idx[BLOCK]
    cdef int t
    cdef Py_ssize_t r
    cdef int32_t n, k, lbase
    cdef uint32_t clr
    cdef const int32_t* bc
    for t in range(m.n_trees):
        for r in range(BLOCK):
            v[r] = 0xFFFFFFFFu
        for n in range(m.tree_node_off[t], m.tree_node_off[t + 1]):
            bc = bins + m.node_col[n] * BLOCK
            k = m.node_rank[n]
            clr = m.clear32[n]
            # Clear the left subtree's leaves where the row goes right.
            for r in range(BLOCK):
                v[r] &= ~(clr & (<uint32_t>0 - <uint32_t>(bc[r] > k)))
        lbase = m.tree_leaf_off[t]
        for r in range(nrows):
            leaf_idx[r] = lbase + ca_ctz32(v[r])
        _leaves_out(m, leaf_idx, nrows, acc, facc)
        if contrib != NULL:
            _saabas32(m, t, v, cf)
            if (t + 1) % FLUSH_TREES == 0 or t + 1 == m.n_trees:
                _flush(m, cf, contrib)


cdef void _trees64(const FModel* m, const int32_t* bins, int nrows, double* acc, float* facc,
                   double* contrib) noexcept nogil:
    # float32 partial contributions sit right after the double ones
    cdef float* cf = <float*>(contrib + (m.n_features + 1) * BLOCK) if contrib != NULL else NULL
    cdef uint64_t v[BLOCK]
    cdef int32_t leaf_idx[BLOCK]
    cdef int t
    cdef Py_ssize_t r
    cdef int32_t n, k, lbase
    cdef uint64_t clr
    cdef const int32_t* bc
    for t in range(m.n_trees):
        for r in range(BLOCK):
            v[r] = 0xFFFFFFFFFFFFFFFFu
        for n in range(m.tree_node_off[t], m.tree_node_off[t + 1]):
            bc = bins + m.node_col[n] * BLOCK
            k = m.node_rank[n]
            clr = m.clear64[n]
            for r in range(BLOCK):
                v[r] &= ~(clr & (<uint64_t>0 - <uint64_t>(bc[r] > k)))
        lbase = m.tree_leaf_off[t]
        for r in range(nrows):
            leaf_idx[r] = lbase + ca_ctz64(v[r])
        _leaves_out(m, leaf_idx, nrows, acc, facc)
        if contrib != NULL:
            _saabas64(m, t, v, cf)
            if (t + 1) % FLUSH_TREES == 0 or t + 1 == m.n_trees:
                _flush(m, cf, contrib)


cdef void block_run(const FModel* m, const void* data, int is_f32, Py_ssize_t n, bint raw,
                    double* out, int top_k, int32_t* out_idx, double* out_val,
                    int32_t* bins, BlockScratch* sc, double* contrib) noexcept nogil:
    """Score rows [0, n). bins: (n_cols + 1) * BLOCK int32. With reasons (top_k > 0):
    contrib = (n_features + 1) * BLOCK doubles (feature-major, plus one row)."""
    cdef double acc[BLOCK]
    cdef float facc[BLOCK]
    cdef Py_ssize_t b0 = 0
    cdef int r, nrows, f
    cdef double* row = contrib + m.n_features * BLOCK if contrib != NULL else NULL
    while b0 < n:
        nrows = BLOCK if n - b0 >= BLOCK else <int>(n - b0)
        _rank_block(m, data, is_f32, b0, nrows, bins, sc)
        for r in range(BLOCK):
            acc[r] = m.base
            facc[r] = <float>m.base
        if contrib != NULL:
            memset(contrib, 0, m.n_features * BLOCK * sizeof(double))
        if m.wide:
            _trees64(m, bins, nrows, acc, facc, contrib)
        else:
            _trees32(m, bins, nrows, acc, facc, contrib)
        for r in range(nrows):
            out[b0 + r] = fm_finish(m, acc[r], facc[r], raw)
            if contrib != NULL:
                for f in range(m.n_features):
                    row[f] = contrib[f * BLOCK + r]
                top_k_positive(row, m.n_features, top_k,
                               out_idx + (b0 + r) * top_k, out_val + (b0 + r) * top_k)
        b0 += nrows
