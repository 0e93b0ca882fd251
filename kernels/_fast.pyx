# cython: language_level=3
"""FastKernel: owns a compiled model (FModel) and dispatches to the fast kernels.

* batches of >= ROW_BATCH_MAX rows, trees with <= 64 leaves: block kernel
  (_fastblock.pyx);
* single rows and small batches, trees with <= 64 leaves: single-row
  QuickScorer (_fastrow.pyx);
* trees with more than 64 leaves: branch-free row traversal (_fastrow.pyx).

All entry points release the GIL and assume the facade validated the input
(dtype float32/float64, C-contiguous, right shape).
"""

cimport cython
cimport numpy as cnp
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from kernels._common cimport top_k_positive
from kernels._fastblock cimport BlockScratch, block_reason_doubles, block_run
from kernels._fastmodel cimport BLOCK, FModel
from kernels._fastrow cimport (
    row_qs_narrow,
    row_qs_wide,
    row_ranks,
    row_traverse,
    row_views,
)

import numpy as np

cnp.import_array()

# Below this many rows the single-row kernel beats a (mostly empty) block.
cdef int ROW_BATCH_MAX = 16

# predict_one keeps its scratch on the stack up to this size (bigger models
# fall back to malloc); ~5 KB for 500 trees of 31 leaves on 40 features.
cdef enum:
    STACK_SCRATCH_WORDS = 4096   # uint64 words: 32 KB


cdef enum:
    KIND_NARROW = 0    # <= 32 leaves per tree: row_qs_narrow
    KIND_WIDE = 1      # 33-64 leaves: row_qs_wide
    KIND_TRAVERSE = 2  # more: branch-free traversal (finite thresholds)


cdef struct RowScratch:
    double* xs         # n_cols + 1: rank-set values (QuickScorer) or column views
    uint64_t* vbuf     # n_trees + 1 tree bit-vectors (uint32 for narrow models)
    int32_t* pos       # n_sets + 1
    int32_t* rk        # n_cols + 1


cdef inline Py_ssize_t _scratch_words(const FModel* m) noexcept nogil:
    """uint64 words of single-row scratch (see _carve)."""
    return ((m.n_cols + 1) + (m.n_trees + 1)
            + (m.n_sets + 1 + m.n_cols + 1) // 2 + 1)


cdef inline void _carve(const FModel* m, uint64_t* buf, RowScratch* rs) noexcept nogil:
    rs.xs = <double*>buf
    rs.vbuf = buf + (m.n_cols + 1)
    rs.pos = <int32_t*>(rs.vbuf + (m.n_trees + 1))
    rs.rk = rs.pos + (m.n_sets + 1)


cdef inline double _score_row(const FModel* m, int kind, const void* data, int is_f32,
                              Py_ssize_t i, RowScratch* rs, bint raw,
                              double* contrib) noexcept nogil:
    """One row with the single-row kernel of this model (kind: KIND_*)."""
    if kind == KIND_NARROW:
        return row_qs_narrow(m, data, is_f32, i, rs.xs, rs.pos, <uint32_t*>rs.vbuf, raw,
                             contrib)
    if kind == KIND_WIDE:
        row_ranks(m, data, is_f32, i, rs.rk, rs.xs, rs.pos)
        return row_qs_wide(m, rs.rk, rs.vbuf, raw, contrib)
    row_views(m, data, is_f32, i, rs.xs)
    return row_traverse(m, rs.xs, raw, contrib)


_ARRAYS = (
    ("col_feature", np.int32), ("col_kind", np.int32), ("col_cat_off", np.int32),
    ("col_cat_len", np.int32), ("col_cat_rule", np.int32), ("cat_words", np.uint32), ("rs_feature", np.int32),
    ("rs_offset", np.int32), ("rs_count", np.int32), ("rs_pad", np.int32),
    ("rs_zero_rank", np.int32), ("rs_thr", np.float64), ("set_col_off", np.int32),
    ("set_cols", np.int32), ("cat_cols", np.int32), ("node_col", np.int32),
    ("node_rank", np.int32), ("node_thr", np.float64), ("clear32", np.uint32),
    ("clear64", np.uint64), ("rmask32", np.uint32), ("rmask64", np.uint64),
    ("node_feature", np.int32), ("node_dl", np.float64), ("node_dr", np.float64),
    ("node_dl32", np.float32), ("node_dr32", np.float32), ("node_foff", np.int32),
    ("leaf_contrib", np.float32),
    ("kids", np.int32), ("tree_node_off", np.int32),
    ("tree_root", np.int32), ("tree_leaf_off", np.int32), ("leaf", np.float64),
    ("qs_col_off", np.int32), ("qs_cum_off", np.int32), ("qs_cum", np.int32),
    ("qs_tree", np.int32), ("qs_keep64", np.uint64),
    ("q_pack", np.uint64), ("qs_base", np.int32), ("qm_off", np.int32),
    ("qm_cum_off", np.int32), ("qm_cum", np.int32), ("set_zero", np.int32),
    ("tree_path_off", np.int32), ("tree_path_width", np.int32),
    ("path_feature", np.int32), ("path_delta", np.float64),
)


def _aligned64(arr):
    """A copy of the 1-D array whose data starts on a 64-byte (cache line)
    boundary: numpy's allocations are 16-byte aligned, which makes the kernels'
    32-byte loads from the leaf table and the packed QuickScorer lists
    straddle cache lines."""
    if arr.ctypes.data % 64 == 0:
        return arr
    nbytes = arr.nbytes
    raw = np.empty(nbytes + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    out = raw[off:off + nbytes].view(arr.dtype)
    out[:] = arr
    return out


cdef inline const void* _ptr(dict keep, str key):
    return <const void*>cnp.PyArray_DATA(keep[key])


cdef inline bint _row_ok(object row, int n_features):
    """float32/float64, native byte order, 1-D of n_features, contiguous, aligned."""
    cdef cnp.ndarray a
    cdef int tn
    if not isinstance(row, cnp.ndarray):
        return False
    a = <cnp.ndarray>row
    tn = cnp.PyArray_TYPE(a)
    return ((tn == cnp.NPY_FLOAT64 or tn == cnp.NPY_FLOAT32)
            and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_NDIM(a) == 1
            and cnp.PyArray_DIM(a, 0) == n_features
            and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_ISALIGNED(a))


@cython.final
cdef class FastKernel:
    """Compiled fast kernels for one model (immutable, thread-safe)."""

    cdef FModel m
    cdef dict _keep
    cdef int kind                  # KIND_*: the single-row kernel
    cdef readonly bint block_ok    # every tree has <= 64 leaves
    cdef readonly bint row_ok      # all thresholds finite (row traversal usable)

    def __init__(self, dict a, int n_features, int input_mode, int link, bint sum_f32,
                 double scale, double base, double avg_div, bint wide, bint block_ok,
                 bint row_ok) -> None:
        if not (block_ok or row_ok):
            raise ValueError("FastKernel needs <= 64 leaves per tree or finite thresholds")
        a = dict(a)
        a["node_dl32"] = np.asarray(a["node_dl"], dtype=np.float32)
        a["node_dr32"] = np.asarray(a["node_dr"], dtype=np.float32)
        a["node_foff"] = np.asarray(a["node_feature"], dtype=np.int64) * BLOCK
        keep = {}
        for key, dtype in _ARRAYS:
            arr = np.ascontiguousarray(a[key], dtype=dtype)
            if arr.shape[0] == 0:
                arr = np.zeros(1, dtype=dtype)  # never hand C a dangling pointer
            keep[key] = _aligned64(arr)
        self._keep = keep
        cdef FModel* m = &self.m
        m.n_features = n_features
        # Padding entry j writes to dummy slot n_features + j (see _layout).
        # Single-row contributions: padded paths write up to n_features + width
        # slots, leaf vectors 8 * leaf_contrib_nv.
        m.contrib_stride = max(
            n_features + max(1, int(np.max(a["tree_path_width"], initial=0))),
            8 * int(a["leaf_contrib_nv"]),
        )
        m.n_cols = a["col_feature"].shape[0]
        m.n_sets = a["rs_feature"].shape[0]
        m.n_trees = a["tree_root"].shape[0]
        m.n_cat_cols = a["cat_cols"].shape[0]
        m.input_mode = input_mode
        m.link = link
        m.sum_f32 = sum_f32
        m.wide = wide
        m.lanes = BLOCK
        m.pack_shift = 32
        m.scale = scale
        m.base = base
        m.avg_div = avg_div
        m.col_feature = <const int32_t*>_ptr(keep, "col_feature")
        m.col_kind = <const int32_t*>_ptr(keep, "col_kind")
        m.col_cat_off = <const int32_t*>_ptr(keep, "col_cat_off")
        m.col_cat_len = <const int32_t*>_ptr(keep, "col_cat_len")
        m.col_cat_rule = <const int32_t*>_ptr(keep, "col_cat_rule")
        m.cat_words = <const uint32_t*>_ptr(keep, "cat_words")
        m.rs_feature = <const int32_t*>_ptr(keep, "rs_feature")
        m.rs_offset = <const int32_t*>_ptr(keep, "rs_offset")
        m.rs_count = <const int32_t*>_ptr(keep, "rs_count")
        m.rs_pad = <const int32_t*>_ptr(keep, "rs_pad")
        m.rs_zero_rank = <const int32_t*>_ptr(keep, "rs_zero_rank")
        m.rs_thr = <const double*>_ptr(keep, "rs_thr")
        m.set_col_off = <const int32_t*>_ptr(keep, "set_col_off")
        m.set_cols = <const int32_t*>_ptr(keep, "set_cols")
        m.cat_cols = <const int32_t*>_ptr(keep, "cat_cols")
        m.node_col = <const int32_t*>_ptr(keep, "node_col")
        m.node_rank = <const int32_t*>_ptr(keep, "node_rank")
        m.node_thr = <const double*>_ptr(keep, "node_thr")
        m.clear32 = <const uint32_t*>_ptr(keep, "clear32")
        m.clear64 = <const uint64_t*>_ptr(keep, "clear64")
        m.rmask32 = <const uint32_t*>_ptr(keep, "rmask32")
        m.rmask64 = <const uint64_t*>_ptr(keep, "rmask64")
        m.node_feature = <const int32_t*>_ptr(keep, "node_feature")
        m.node_dl = <const double*>_ptr(keep, "node_dl")
        m.node_dr = <const double*>_ptr(keep, "node_dr")
        m.node_dl32 = <const float*>_ptr(keep, "node_dl32")
        m.node_dr32 = <const float*>_ptr(keep, "node_dr32")
        m.node_foff = <const int32_t*>_ptr(keep, "node_foff")
        m.leaf_contrib = <const float*>_ptr(keep, "leaf_contrib")
        m.lc_nv = int(a["leaf_contrib_nv"])
        m.kids = <const int32_t*>_ptr(keep, "kids")
        m.tree_node_off = <const int32_t*>_ptr(keep, "tree_node_off")
        m.tree_root = <const int32_t*>_ptr(keep, "tree_root")
        m.tree_leaf_off = <const int32_t*>_ptr(keep, "tree_leaf_off")
        m.leaf = <const double*>_ptr(keep, "leaf")
        m.qs_col_off = <const int32_t*>_ptr(keep, "qs_col_off")
        m.qs_cum_off = <const int32_t*>_ptr(keep, "qs_cum_off")
        m.qs_cum = <const int32_t*>_ptr(keep, "qs_cum")
        m.qs_tree = <const int32_t*>_ptr(keep, "qs_tree")
        m.qs_keep64 = <const uint64_t*>_ptr(keep, "qs_keep64")
        m.q_pack = <const uint64_t*>_ptr(keep, "q_pack")
        m.qs_base = int(a["qs_base"][0])
        m.qm_off = <const int32_t*>_ptr(keep, "qm_off")
        m.qm_cum_off = <const int32_t*>_ptr(keep, "qm_cum_off")
        m.qm_cum = <const int32_t*>_ptr(keep, "qm_cum")
        m.set_zero = <const int32_t*>_ptr(keep, "set_zero")

        m.tree_path_off = <const int32_t*>_ptr(keep, "tree_path_off")
        m.tree_path_width = <const int32_t*>_ptr(keep, "tree_path_width")
        m.path_feature = <const int32_t*>_ptr(keep, "path_feature")
        m.path_delta = <const double*>_ptr(keep, "path_delta")
        self.block_ok = block_ok
        self.row_ok = row_ok
        self.kind = (KIND_TRAVERSE if not block_ok else KIND_WIDE if wide else KIND_NARROW)

    def predict(self, cnp.ndarray X, cnp.ndarray out, bint raw) -> None:
        """Scores for a validated (n, n_features) matrix into out (n,)."""
        self._run(X, out, raw, 0, None, None, 0)

    def predict_reasons(self, cnp.ndarray X, int top_k, cnp.ndarray out, cnp.ndarray idx,
                        cnp.ndarray val, bint raw) -> None:
        """Scores plus Saabas top-k reasons; idx int32 (n, k), val float64 (n, k)."""
        self._run(X, out, raw, top_k, idx, val, 0)

    def predict_path(self, cnp.ndarray X, cnp.ndarray out, bint raw, int path) -> None:
        """Force a kernel (1 block, 2 row) -- for tests and benchmarks."""
        self._run(X, out, raw, 0, None, None, path)

    cdef _run(self, cnp.ndarray X, cnp.ndarray out, bint raw, int top_k, object idx,
              object val, int path):
        cdef Py_ssize_t n = cnp.PyArray_DIM(X, 0)
        cdef Py_ssize_t i
        cdef int nf = self.m.n_features
        cdef int is_f32 = cnp.PyArray_TYPE(X) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(X)
        cdef double* po = <double*>cnp.PyArray_DATA(out)
        cdef int32_t* pi = NULL
        cdef double* pv = NULL
        cdef double* contrib = NULL
        cdef bint use_block = self.block_ok and (path == 1 or (path == 0 and n >= ROW_BATCH_MAX))
        cdef int32_t* bins = NULL
        cdef BlockScratch* sc = NULL
        cdef uint64_t* buf = NULL
        cdef RowScratch rs
        if n == 0:
            return
        if top_k > 0:
            pi = <int32_t*>cnp.PyArray_DATA(idx)
            pv = <double*>cnp.PyArray_DATA(val)
            if use_block:
                contrib = <double*>calloc(block_reason_doubles(&self.m), sizeof(double))
            else:
                contrib = <double*>calloc(self.m.contrib_stride, sizeof(double))
            if contrib == NULL:
                raise MemoryError()
        if use_block:
            bins = <int32_t*>calloc((self.m.n_cols + 1) * BLOCK, sizeof(int32_t))
            sc = <BlockScratch*>calloc(1, sizeof(BlockScratch))
            if bins == NULL or sc == NULL:
                free(bins)
                free(sc)
                free(contrib)
                raise MemoryError()
            with nogil:
                block_run(&self.m, data, is_f32, n, raw, po, top_k, pi, pv, bins, sc, contrib)
            free(bins)
            free(sc)
        else:
            buf = <uint64_t*>malloc(_scratch_words(&self.m) * sizeof(uint64_t))
            if buf == NULL:
                free(contrib)
                raise MemoryError()
            _carve(&self.m, buf, &rs)
            with nogil:
                for i in range(n):
                    if contrib != NULL:
                        memset(contrib, 0, self.m.contrib_stride * sizeof(double))
                    po[i] = _score_row(&self.m, self.kind, data, is_f32, i, &rs, raw, contrib)
                    if contrib != NULL:
                        top_k_positive(contrib, nf, top_k, pi + i * top_k, pv + i * top_k)
            free(buf)
        free(contrib)

    def predict_one(self, object row, bint raw) -> float:
        """One 1-D row, validated here in a few C-API calls (the Python checks cost
        as much as the kernel), without heap allocation for typical model sizes."""
        if not _row_ok(row, self.m.n_features):
            _raise_row_error(row, self.m.n_features)
        return self._score_one(cnp.PyArray_DATA(<cnp.ndarray>row),
                               cnp.PyArray_TYPE(<cnp.ndarray>row) == cnp.NPY_FLOAT32, 0, raw)

    cdef double _score_one(self, const void* data, int is_f32, Py_ssize_t i,
                           bint raw) except? -1.0:
        """Row i of a validated matrix (or a 1-D row, i = 0) with the single-row kernel."""
        cdef uint64_t stack[STACK_SCRATCH_WORDS]
        cdef uint64_t* buf = stack
        cdef RowScratch rs
        cdef double result
        cdef bint heap = _scratch_words(&self.m) > STACK_SCRATCH_WORDS
        if heap:
            buf = <uint64_t*>malloc(_scratch_words(&self.m) * sizeof(uint64_t))
            if buf == NULL:
                raise MemoryError()
        _carve(&self.m, buf, &rs)
        with nogil:
            result = _score_row(&self.m, self.kind, data, is_f32, i, &rs, raw, NULL)
        if heap:
            free(buf)
        return result


cdef inline bint _matrix_ok(object X, int n_features):
    """float32/float64, native byte order, (n, n_features), C-contiguous, aligned."""
    cdef cnp.ndarray a
    cdef int tn
    if not isinstance(X, cnp.ndarray):
        return False
    a = <cnp.ndarray>X
    tn = cnp.PyArray_TYPE(a)
    return ((tn == cnp.NPY_FLOAT64 or tn == cnp.NPY_FLOAT32)
            and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_NDIM(a) == 2
            and cnp.PyArray_DIM(a, 1) == n_features
            and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_ISALIGNED(a))


cdef void _raise_row_error(object row, int n_features) except *:
    from kernels._validate import check_row

    check_row(row, n_features)  # raises the descriptive error
    raise TypeError("row rejected")  # not reached: check_row raises


cdef void _raise_matrix_error(object X, int n_features) except *:
    from kernels._validate import check_matrix

    check_matrix(X, n_features)
    raise TypeError("X rejected")  # not reached


cdef class EnsembleBase:
    """The per-call entry points of ``kernels.ensemble.TreeEnsemble``, in C.

    TreeEnsemble subclasses this, so ``ens.predict_one(row)`` and
    ``ens.predict(X)`` reach the kernels without a Python frame: validation is a
    few C-API checks (the Python validators are only called to raise their
    descriptive errors) and the output array is allocated here. For one row
    this is most of the difference between ~0.2 us and ~1.2 us of overhead.
    """

    cdef FastKernel _fk        # None: the model needs the reference kernel
    cdef object _ref           # TraversalKernel
    cdef int _nf

    def _bind_kernels(self, FastKernel fast, object reference, int n_features) -> None:
        self._fk = fast
        self._ref = reference
        self._nf = n_features

    def predict(self, object X, bint raw_score=False):
        """Score a (n_rows, n_features) float32/float64 C-contiguous matrix.

        Returns float64 (n_rows,): probabilities for binary objectives (the
        library's transformed output in general), raw margins if ``raw_score``.
        """
        cdef cnp.npy_intp n
        cdef cnp.ndarray x
        cdef cnp.ndarray out
        if not _matrix_ok(X, self._nf):
            _raise_matrix_error(X, self._nf)
        x = <cnp.ndarray>X
        n = cnp.PyArray_DIM(x, 0)
        out = cnp.PyArray_EMPTY(1, &n, cnp.NPY_FLOAT64, 0)
        if self._fk is None:
            if n:
                self._ref.predict(x, out, raw_score)
        elif n == 1:
            (<double*>cnp.PyArray_DATA(out))[0] = self._fk._score_one(
                cnp.PyArray_DATA(x), cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32, 0, raw_score)
        elif n:
            self._fk._run(x, out, raw_score, 0, None, None, 0)
        return out

    def predict_with_reasons(self, object X, object top_k, bint raw_score=False):
        """Scores plus the top-k most adverse features per row (Saabas attribution).

        Returns ``(pred, feature_idx, contribution)``: ``pred`` as :meth:`predict`;
        ``feature_idx`` int32 (n, k), most adverse first, ``-1`` where fewer than
        k features pushed the raw score up; ``contribution`` float64 (n, k) in
        raw-score (log-odds) units, 0.0 in unused slots. Ties go to the lower
        feature index.

        Attribution is Saabas (path-dependent): each split on the row's path
        credits its feature with the change in node value (LightGBM
        ``internal_value``; XGBoost hessian-weighted node means, as its
        ``approx_contribs``). Models of up to 64 leaves per tree and 64
        features sum per-leaf contribution vectors in float32, a few trees at a
        time, into float64 (batches and single rows alike); wider models do the
        same per node in batches and add exact float64 paths for single rows.
        Values are exact to ~1e-7 relative; :meth:`contributions` gives the
        exact float64 matrix.
        """
        cdef cnp.npy_intp dims[2]
        cdef cnp.ndarray x, out, idx, val
        cdef int k
        if not _matrix_ok(X, self._nf):
            _raise_matrix_error(X, self._nf)
        if type(top_k) is int and 1 <= top_k <= self._nf:
            k = top_k
        else:
            from kernels._validate import check_top_k

            k = check_top_k(top_k, self._nf)
        x = <cnp.ndarray>X
        dims[0] = cnp.PyArray_DIM(x, 0)
        dims[1] = k
        out = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT64, 0)
        idx = cnp.PyArray_EMPTY(2, dims, cnp.NPY_INT32, 0)
        val = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT64, 0)
        if dims[0]:
            if self._fk is None:
                self._ref.predict_reasons(x, k, out, idx, val, raw_score)
            else:
                self._fk._run(x, out, raw_score, k, idx, val, 0)
        return out, idx, val

    def predict_one(self, object row, bint raw_score=False) -> float:
        """Score one 1-D float32/float64 row without batch set-up."""
        if not _row_ok(row, self._nf):
            _raise_row_error(row, self._nf)
        if self._fk is None:
            return self._ref.predict_one(row, raw_score)
        return self._fk._score_one(cnp.PyArray_DATA(<cnp.ndarray>row),
                                   cnp.PyArray_TYPE(<cnp.ndarray>row) == cnp.NPY_FLOAT32, 0,
                                   raw_score)
