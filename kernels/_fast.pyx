# cython: language_level=3
"""Fast tree kernels over the column layout of ``_layout.py``.

Block kernel (batches, trees with <= 64 leaves): rows are processed in blocks
of BLOCK. Each block is first *ranked*: every column gets, per row, the number
of distinct thresholds of its feature below the value (missing-value rules
folded in). Then, tree by tree, every internal node is evaluated for all rows
at once with an integer compare and a bit-mask AND (QuickScorer's leaf
bit-vectors, evaluated tree-major and vectorised across rows by the C
compiler: the inner ``for r in range(BLOCK)`` loops have constant trip counts
and no branches). The exit leaf of a row is the lowest set bit.

Row kernel (single rows and tiny batches): the row's column views are
materialised as doubles and every tree is walked with a branch-free child
select; leaf values are then summed in tree order.

Both kernels sum leaf values per row in tree order, exactly like LightGBM
(double) and XGBoost (float32), so results are bit-identical to them.
"""

cimport cython
cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from kernels._common cimport (
    apply_link_d,
    apply_link_f,
    load_value_d,
    load_value_f,
    top_k_positive,
)

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    /* GCC -O3 loop interchange / unroll-and-jam would restructure the node and row loops of the block
       kernel and turn the contiguous row loads into gathers; keep our loop order. */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC optimize("no-loop-interchange", "no-loop-unroll-and-jam")
    #endif
    static inline int ca_ctz32(uint32_t v) { return __builtin_ctz(v); }
    static inline int ca_ctz64(uint64_t v) { return __builtin_ctzll(v); }
    """
    int ca_ctz32(uint32_t v) noexcept nogil
    int ca_ctz64(uint64_t v) noexcept nogil

cdef enum:
    BLOCK = 64
    VIEW_NAN_AS_ZERO = 0
    VIEW_NAN_RIGHT = 1
    VIEW_NAN_LEFT = 2
    VIEW_ZERO_RIGHT = 3
    VIEW_ZERO_LEFT = 4
    VIEW_CATEGORICAL = 5


cdef struct FModel:
    int n_features
    int n_cols
    int n_sets
    int n_trees
    int input_mode
    int link
    int sum_f32
    int wide               # 1: 64-bit leaf masks
    int lanes              # == BLOCK; a runtime value so the compiler vectorises the
                           # row loop instead of unrolling it and gathering across nodes
    double scale
    double base
    double avg_div
    const int32_t* col_feature
    const int32_t* col_kind
    const int32_t* col_cat_off
    const int32_t* col_cat_len
    const uint32_t* cat_words
    const int32_t* rs_feature
    const int32_t* rs_offset
    const int32_t* rs_count
    const int32_t* rs_pad
    const int32_t* rs_zero_rank
    const double* rs_thr
    const int32_t* set_col_off   # CSR: numerical columns of each rank set
    const int32_t* set_cols
    int n_cat_cols
    const int32_t* cat_cols
    const int32_t* node_col
    const int32_t* node_rank
    const double* node_thr
    const uint32_t* clear32
    const uint64_t* clear64
    const int32_t* kids          # 2 per node: [left, right]; leaf = ~global leaf
    const int32_t* tree_node_off
    const int32_t* tree_root
    const int32_t* tree_leaf_off
    const double* leaf
    const int32_t* path_off
    const int32_t* path_feature
    const double* path_delta


cdef inline double _x(const void* data, int is_f32, Py_ssize_t idx, int mode) noexcept nogil:
    if is_f32:
        return load_value_f((<const float*>data)[idx], mode)
    return load_value_d((<const double*>data)[idx], mode)


cdef inline int32_t _rank(const double* u, int32_t pad, double x) noexcept nogil:
    """Number of thresholds < x. u holds the sorted thresholds padded with +inf to
    ``pad`` (a power of two > count); the search is branch-free."""
    cdef int32_t pos = 0
    cdef int32_t step = pad >> 1
    while step > 0:
        pos += step & -(<int32_t>(u[pos + step - 1] < x))
        step >>= 1
    return pos


cdef inline bint _in_bitset(double x, const uint32_t* words, int32_t n) noexcept nogil:
    cdef int32_t c
    if not (x > -1.0 and x < 2147483648.0):
        return False
    c = <int32_t>x
    return (c >> 5) < n and ((words[c >> 5] >> (c & 31)) & 1)


cdef struct Scratch:
    double xs[BLOCK]      # transformed values of one feature for the block's rows
    int32_t pos[BLOCK]    # rank (count of thresholds < x)
    int32_t nan[BLOCK]    # 1 if NaN
    int32_t zero[BLOCK]   # 1 if NaN or 0.0 (zero-as-missing views)


cdef inline void _load_feature(const FModel* m, const void* data, int is_f32, Py_ssize_t row0,
                               int nrows, int32_t f, Scratch* sc) noexcept nogil:
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
                      int nrows, int32_t* bins, Scratch* sc) noexcept nogil:
    """Fill bins[col * BLOCK + r] for rows row0 .. row0 + nrows - 1 (padding lanes get
    valid ranks of 0.0, so every lane stays well defined)."""
    cdef int s, j, c, kind
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
            dst[r] = 0 if _in_bitset(sc.xs[r], words, nwords) else 1


cdef inline void _add_leaf(const FModel* m, int32_t leaf, int r, double* acc, float* facc,
                           double* contrib) noexcept nogil:
    """Row kernel: add one tree's leaf (and its Saabas path) to row r."""
    cdef int32_t p
    cdef double* cr
    if m.sum_f32:
        facc[r] = facc[r] + <float>m.leaf[leaf]
    else:
        acc[r] += m.leaf[leaf]
    if contrib != NULL:
        cr = contrib + r * m.n_features
        for p in range(m.path_off[leaf], m.path_off[leaf + 1]):
            cr[m.path_feature[p]] += m.path_delta[p]


cdef inline void _leaves_out(const FModel* m, const int32_t* leaf_idx, int nrows, double* acc,
                             float* facc, double* contrib) noexcept nogil:
    """Block kernel: add one tree's exit leaves for every row (summed in tree order)."""
    cdef Py_ssize_t r
    cdef int32_t p, leaf
    cdef double* cr
    if m.sum_f32:
        for r in range(nrows):
            facc[r] = facc[r] + <float>m.leaf[leaf_idx[r]]
    else:
        for r in range(nrows):
            acc[r] += m.leaf[leaf_idx[r]]
    if contrib != NULL:
        for r in range(nrows):
            leaf = leaf_idx[r]
            cr = contrib + r * m.n_features
            for p in range(m.path_off[leaf], m.path_off[leaf + 1]):
                cr[m.path_feature[p]] += m.path_delta[p]


cdef void _trees32(const FModel* m, const int32_t* bins, int nrows, Py_ssize_t lanes, double* acc,
                   float* facc, double* contrib) noexcept nogil:
    cdef uint32_t v[BLOCK]
    cdef int32_t leaf_idx[BLOCK]
    cdef int t
    # Py_ssize_t row index: with CPython's -fwrapv an int index is not provably
    # affine after widening, and GCC falls back to gathers.
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
            # Branch-free: clear the left subtree's leaves where the row goes right.
            for r in range(lanes):
                v[r] &= ~(clr & (<uint32_t>0 - <uint32_t>(bc[r] > k)))
        lbase = m.tree_leaf_off[t]
        for r in range(nrows):
            leaf_idx[r] = lbase + ca_ctz32(v[r])
        _leaves_out(m, leaf_idx, nrows, acc, facc, contrib)


cdef void _trees64(const FModel* m, const int32_t* bins, int nrows, Py_ssize_t lanes, double* acc,
                   float* facc, double* contrib) noexcept nogil:
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
            for r in range(lanes):
                v[r] &= ~(clr & (<uint64_t>0 - <uint64_t>(bc[r] > k)))
        lbase = m.tree_leaf_off[t]
        for r in range(nrows):
            leaf_idx[r] = lbase + ca_ctz64(v[r])
        _leaves_out(m, leaf_idx, nrows, acc, facc, contrib)


cdef inline double _finish(const FModel* m, double acc, float facc, bint raw) noexcept nogil:
    if m.sum_f32:
        if raw:
            return <double>facc
        return apply_link_f(facc, m.link)
    if raw:
        return acc
    if m.avg_div != 0.0:
        acc = acc / m.avg_div
    return apply_link_d(acc, m.link, m.scale)


cdef void _block_run(const FModel* m, const void* data, int is_f32, Py_ssize_t n, bint raw,
                     double* out, int top_k, int32_t* out_idx, double* out_val,
                     int32_t* bins, Scratch* sc, double* contrib) noexcept nogil:
    cdef double acc[BLOCK]
    cdef float facc[BLOCK]
    cdef Py_ssize_t b0
    cdef int r, nrows
    b0 = 0
    while b0 < n:
        nrows = BLOCK if n - b0 >= BLOCK else <int>(n - b0)
        _rank_block(m, data, is_f32, b0, nrows, bins, sc)
        for r in range(BLOCK):
            acc[r] = m.base
            facc[r] = <float>m.base
        if contrib != NULL:
            memset(contrib, 0, nrows * m.n_features * sizeof(double))
        if m.wide:
            _trees64(m, bins, nrows, m.lanes, acc, facc, contrib)
        else:
            _trees32(m, bins, nrows, m.lanes, acc, facc, contrib)
        for r in range(nrows):
            out[b0 + r] = _finish(m, acc[r], facc[r], raw)
            if contrib != NULL:
                top_k_positive(contrib + r * m.n_features, m.n_features, top_k,
                               out_idx + (b0 + r) * top_k, out_val + (b0 + r) * top_k)
        b0 += nrows


cdef inline void _row_views(const FModel* m, const void* data, int is_f32, Py_ssize_t row,
                            double* xv) noexcept nogil:
    """Materialise every column of one row as a double (see _layout.py)."""
    cdef int c, kind
    cdef double x
    cdef Py_ssize_t base = row * m.n_features
    for c in range(m.n_cols):
        x = _x(data, is_f32, base + m.col_feature[c], m.input_mode)
        kind = m.col_kind[c]
        if kind == VIEW_CATEGORICAL:
            xv[c] = 0.0 if _in_bitset(x, m.cat_words + m.col_cat_off[c], m.col_cat_len[c]) else 1.0
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


cdef inline double _row_run(const FModel* m, const double* xv, bint raw,
                            double* contrib) noexcept nogil:
    cdef int t
    cdef int32_t node
    cdef double acc[1]
    cdef float facc[1]
    acc[0] = m.base
    facc[0] = <float>m.base
    for t in range(m.n_trees):
        node = m.tree_root[t]
        while node >= 0:
            # Branch-free child select: kids[2n] left, kids[2n + 1] right.
            node = m.kids[2 * node + (xv[m.node_col[node]] > m.node_thr[node])]
        _add_leaf(m, ~node, 0, acc, facc, contrib)
    return _finish(m, acc[0], facc[0], raw)


@cython.final
cdef class FastKernel:
    """Block + row kernels. Methods assume inputs validated by the facade."""

    cdef FModel m
    cdef object _keep
    cdef readonly bint block_ok    # every tree has <= 64 leaves
    cdef readonly bint row_ok      # all thresholds finite

    def __init__(self, dict a, int n_features, int input_mode, int link, bint sum_f32,
                 double scale, double base, double avg_div, bint wide, bint block_ok,
                 bint row_ok) -> None:
        keep = {}
        for key, dtype in (
            ("col_feature", np.int32), ("col_kind", np.int32), ("col_cat_off", np.int32),
            ("col_cat_len", np.int32), ("cat_words", np.uint32), ("rs_feature", np.int32),
            ("rs_offset", np.int32), ("rs_count", np.int32), ("rs_pad", np.int32),
            ("rs_zero_rank", np.int32), ("rs_thr", np.float64), ("set_col_off", np.int32),
            ("set_cols", np.int32), ("cat_cols", np.int32), ("node_col", np.int32),
            ("node_rank", np.int32), ("node_thr", np.float64), ("clear32", np.uint32),
            ("clear64", np.uint64), ("kids", np.int32), ("tree_node_off", np.int32),
            ("tree_root", np.int32), ("tree_leaf_off", np.int32), ("leaf", np.float64),
            ("path_off", np.int32), ("path_feature", np.int32), ("path_delta", np.float64),
        ):
            arr = np.ascontiguousarray(a[key], dtype=dtype)
            if arr.shape[0] == 0:
                arr = np.zeros(1, dtype=dtype)  # never hand C a dangling pointer
            keep[key] = arr
        self._keep = keep
        m = &self.m
        m.n_features = n_features
        m.n_cols = a["col_feature"].shape[0]
        m.n_sets = a["rs_feature"].shape[0]
        m.n_trees = a["tree_root"].shape[0]
        m.n_cat_cols = a["cat_cols"].shape[0]
        m.input_mode = input_mode
        m.link = link
        m.sum_f32 = sum_f32
        m.wide = wide
        m.lanes = BLOCK
        m.scale = scale
        m.base = base
        m.avg_div = avg_div
        m.col_feature = <const int32_t*>cnp.PyArray_DATA(keep["col_feature"])
        m.col_kind = <const int32_t*>cnp.PyArray_DATA(keep["col_kind"])
        m.col_cat_off = <const int32_t*>cnp.PyArray_DATA(keep["col_cat_off"])
        m.col_cat_len = <const int32_t*>cnp.PyArray_DATA(keep["col_cat_len"])
        m.cat_words = <const uint32_t*>cnp.PyArray_DATA(keep["cat_words"])
        m.rs_feature = <const int32_t*>cnp.PyArray_DATA(keep["rs_feature"])
        m.rs_offset = <const int32_t*>cnp.PyArray_DATA(keep["rs_offset"])
        m.rs_count = <const int32_t*>cnp.PyArray_DATA(keep["rs_count"])
        m.rs_pad = <const int32_t*>cnp.PyArray_DATA(keep["rs_pad"])
        m.rs_zero_rank = <const int32_t*>cnp.PyArray_DATA(keep["rs_zero_rank"])
        m.rs_thr = <const double*>cnp.PyArray_DATA(keep["rs_thr"])
        m.set_col_off = <const int32_t*>cnp.PyArray_DATA(keep["set_col_off"])
        m.set_cols = <const int32_t*>cnp.PyArray_DATA(keep["set_cols"])
        m.cat_cols = <const int32_t*>cnp.PyArray_DATA(keep["cat_cols"])
        m.node_col = <const int32_t*>cnp.PyArray_DATA(keep["node_col"])
        m.node_rank = <const int32_t*>cnp.PyArray_DATA(keep["node_rank"])
        m.node_thr = <const double*>cnp.PyArray_DATA(keep["node_thr"])
        m.clear32 = <const uint32_t*>cnp.PyArray_DATA(keep["clear32"])
        m.clear64 = <const uint64_t*>cnp.PyArray_DATA(keep["clear64"])
        m.kids = <const int32_t*>cnp.PyArray_DATA(keep["kids"])
        m.tree_node_off = <const int32_t*>cnp.PyArray_DATA(keep["tree_node_off"])
        m.tree_root = <const int32_t*>cnp.PyArray_DATA(keep["tree_root"])
        m.tree_leaf_off = <const int32_t*>cnp.PyArray_DATA(keep["tree_leaf_off"])
        m.leaf = <const double*>cnp.PyArray_DATA(keep["leaf"])
        m.path_off = <const int32_t*>cnp.PyArray_DATA(keep["path_off"])
        m.path_feature = <const int32_t*>cnp.PyArray_DATA(keep["path_feature"])
        m.path_delta = <const double*>cnp.PyArray_DATA(keep["path_delta"])
        self.block_ok = block_ok
        self.row_ok = row_ok

    def predict_block(self, cnp.ndarray X, cnp.ndarray out, bint raw) -> None:
        self._run_block(X, out, raw, 0, None, None)

    def predict_block_reasons(self, cnp.ndarray X, int top_k, cnp.ndarray out,
                              cnp.ndarray idx, cnp.ndarray val, bint raw) -> None:
        self._run_block(X, out, raw, top_k, idx, val)

    cdef _run_block(self, cnp.ndarray X, cnp.ndarray out, bint raw, int top_k, object idx,
                    object val):
        cdef Py_ssize_t n = cnp.PyArray_DIM(X, 0)
        cdef int is_f32 = cnp.PyArray_TYPE(X) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(X)
        cdef double* po = <double*>cnp.PyArray_DATA(out)
        cdef int32_t* pi = NULL
        cdef double* pv = NULL
        cdef double* contrib = NULL
        # calloc: padding lanes of a partial block then read defined values.
        cdef int32_t* bins = <int32_t*>calloc((self.m.n_cols + 1) * BLOCK, sizeof(int32_t))
        cdef Scratch* sc = <Scratch*>calloc(1, sizeof(Scratch))
        if top_k > 0:
            pi = <int32_t*>cnp.PyArray_DATA(idx)
            pv = <double*>cnp.PyArray_DATA(val)
            contrib = <double*>calloc(BLOCK * self.m.n_features, sizeof(double))
        if bins == NULL or sc == NULL or (top_k > 0 and contrib == NULL):
            free(bins)
            free(sc)
            free(contrib)
            raise MemoryError()
        with nogil:
            _block_run(&self.m, data, is_f32, n, raw, po, top_k, pi, pv, bins, sc, contrib)
        free(bins)
        free(sc)
        free(contrib)

    def predict_rows(self, cnp.ndarray X, cnp.ndarray out, bint raw) -> None:
        """Row kernel over a (n, n_features) matrix (small n)."""
        self._run_rows(X, out, raw, 0, None, None)

    def predict_rows_reasons(self, cnp.ndarray X, int top_k, cnp.ndarray out,
                             cnp.ndarray idx, cnp.ndarray val, bint raw) -> None:
        self._run_rows(X, out, raw, top_k, idx, val)

    cdef _run_rows(self, cnp.ndarray X, cnp.ndarray out, bint raw, int top_k, object idx,
                   object val):
        cdef Py_ssize_t n = cnp.PyArray_DIM(X, 0)
        cdef Py_ssize_t i
        cdef int nf = self.m.n_features
        cdef int is_f32 = cnp.PyArray_TYPE(X) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(X)
        cdef double* po = <double*>cnp.PyArray_DATA(out)
        cdef int32_t* pi = NULL
        cdef double* pv = NULL
        cdef double* contrib = NULL
        cdef double* xv = <double*>PyMem_Malloc((self.m.n_cols + nf + 1) * sizeof(double))
        if xv == NULL:
            raise MemoryError()
        if top_k > 0:
            pi = <int32_t*>cnp.PyArray_DATA(idx)
            pv = <double*>cnp.PyArray_DATA(val)
            contrib = xv + self.m.n_cols
        with nogil:
            for i in range(n):
                _row_views(&self.m, data, is_f32, i, xv)
                if contrib != NULL:
                    memset(contrib, 0, nf * sizeof(double))
                po[i] = _row_run(&self.m, xv, raw, contrib)
                if contrib != NULL:
                    top_k_positive(contrib, nf, top_k, pi + i * top_k, pv + i * top_k)
        PyMem_Free(xv)

    def predict_one(self, cnp.ndarray row, bint raw) -> float:
        """Row kernel on one validated 1-D row; no heap allocation for <= 512 columns."""
        cdef double stackbuf[512]
        cdef double* xv = stackbuf
        cdef double result
        cdef int is_f32 = cnp.PyArray_TYPE(row) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(row)
        if self.m.n_cols > 512:
            xv = <double*>PyMem_Malloc(self.m.n_cols * sizeof(double))
            if xv == NULL:
                raise MemoryError()
        with nogil:
            _row_views(&self.m, data, is_f32, 0, xv)
            result = _row_run(&self.m, xv, raw, NULL)
        if xv != stackbuf:
            PyMem_Free(xv)
        return result
