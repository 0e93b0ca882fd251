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
from kernels._fastblock cimport BlockScratch, block_run
from kernels._fastmodel cimport BLOCK, FModel
from kernels._fastrow cimport (
    row_quickscorer,
    row_ranks,
    row_traverse,
    row_views,
)

import numpy as np

cnp.import_array()

# Below this many rows the single-row kernel beats a (mostly empty) block.
cdef int ROW_BATCH_MAX = 16

# Stack scratch for predict_one (bigger models fall back to malloc).
cdef enum:
    STACK_COLS = 1024
    STACK_TREES = 4096
    STACK_FEATURES = 1024

_ARRAYS = (
    ("col_feature", np.int32), ("col_kind", np.int32), ("col_cat_off", np.int32),
    ("col_cat_len", np.int32), ("cat_words", np.uint32), ("rs_feature", np.int32),
    ("rs_offset", np.int32), ("rs_count", np.int32), ("rs_pad", np.int32),
    ("rs_zero_rank", np.int32), ("rs_thr", np.float64), ("set_col_off", np.int32),
    ("set_cols", np.int32), ("cat_cols", np.int32), ("node_col", np.int32),
    ("node_rank", np.int32), ("node_thr", np.float64), ("clear32", np.uint32),
    ("clear64", np.uint64), ("rmask32", np.uint32), ("rmask64", np.uint64),
    ("node_feature", np.int32), ("node_dl", np.float64), ("node_dr", np.float64),
    ("kids", np.int32), ("tree_node_off", np.int32),
    ("tree_root", np.int32), ("tree_leaf_off", np.int32), ("leaf", np.float64),
    ("qs_col_off", np.int32), ("qs_cum_off", np.int32), ("qs_cum", np.int32),
    ("qs_tree", np.int32), ("qs_keep32", np.uint32), ("qs_keep64", np.uint64),
    ("qs_pack", np.uint64),
    ("tree_path_off", np.int32), ("tree_path_width", np.int32),
    ("path_feature", np.int32), ("path_delta", np.float64),
)


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
    cdef readonly bint block_ok    # every tree has <= 64 leaves
    cdef readonly bint row_ok      # all thresholds finite (row traversal usable)

    def __init__(self, dict a, int n_features, int input_mode, int link, bint sum_f32,
                 double scale, double base, double avg_div, bint wide, bint block_ok,
                 bint row_ok) -> None:
        if not (block_ok or row_ok):
            raise ValueError("FastKernel needs <= 64 leaves per tree or finite thresholds")
        keep = {}
        for key, dtype in _ARRAYS:
            arr = np.ascontiguousarray(a[key], dtype=dtype)
            if arr.shape[0] == 0:
                arr = np.zeros(1, dtype=dtype)  # never hand C a dangling pointer
            keep[key] = arr
        self._keep = keep
        cdef FModel* m = &self.m
        m.n_features = n_features
        # Padding entry j writes to dummy slot n_features + j (see _layout).
        m.contrib_stride = n_features + max(1, int(np.max(a["tree_path_width"], initial=0)))
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
        m.col_feature = <const int32_t*>_ptr(keep, "col_feature")
        m.col_kind = <const int32_t*>_ptr(keep, "col_kind")
        m.col_cat_off = <const int32_t*>_ptr(keep, "col_cat_off")
        m.col_cat_len = <const int32_t*>_ptr(keep, "col_cat_len")
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
        m.kids = <const int32_t*>_ptr(keep, "kids")
        m.tree_node_off = <const int32_t*>_ptr(keep, "tree_node_off")
        m.tree_root = <const int32_t*>_ptr(keep, "tree_root")
        m.tree_leaf_off = <const int32_t*>_ptr(keep, "tree_leaf_off")
        m.leaf = <const double*>_ptr(keep, "leaf")
        m.qs_col_off = <const int32_t*>_ptr(keep, "qs_col_off")
        m.qs_cum_off = <const int32_t*>_ptr(keep, "qs_cum_off")
        m.qs_cum = <const int32_t*>_ptr(keep, "qs_cum")
        m.qs_tree = <const int32_t*>_ptr(keep, "qs_tree")
        m.qs_keep32 = <const uint32_t*>_ptr(keep, "qs_keep32")
        m.qs_keep64 = <const uint64_t*>_ptr(keep, "qs_keep64")
        m.qs_pack = <const uint64_t*>_ptr(keep, "qs_pack")

        m.tree_path_off = <const int32_t*>_ptr(keep, "tree_path_off")
        m.tree_path_width = <const int32_t*>_ptr(keep, "tree_path_width")
        m.path_feature = <const int32_t*>_ptr(keep, "path_feature")
        m.path_delta = <const double*>_ptr(keep, "path_delta")
        self.block_ok = block_ok
        self.row_ok = row_ok

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
        cdef int32_t* rk = NULL
        cdef void* vbuf = NULL
        cdef double* xv = NULL
        if n == 0:
            return
        if top_k > 0:
            pi = <int32_t*>cnp.PyArray_DATA(idx)
            pv = <double*>cnp.PyArray_DATA(val)
            if use_block:
                # doubles (n_features + 1) * BLOCK, then float32 partials n_features * BLOCK
                contrib = <double*>calloc((nf + 1) * BLOCK + (nf + 1) * BLOCK // 2 + 1,
                                          sizeof(double))
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
        elif self.block_ok:
            rk = <int32_t*>malloc((self.m.n_cols + 1) * sizeof(int32_t))
            vbuf = malloc((self.m.n_trees + 1) * sizeof(uint64_t))
            xv = <double*>malloc((self.m.n_sets + 1) * (sizeof(double) + sizeof(int32_t)))
            if rk == NULL or vbuf == NULL or xv == NULL:
                free(rk)
                free(vbuf)
                free(xv)
                free(contrib)
                raise MemoryError()
            with nogil:
                for i in range(n):
                    row_ranks(&self.m, data, is_f32, i, rk, xv,
                              <int32_t*>(xv + self.m.n_sets + 1))
                    if contrib != NULL:
                        memset(contrib, 0, self.m.contrib_stride * sizeof(double))
                    po[i] = row_quickscorer(&self.m, rk, vbuf, raw, contrib)
                    if contrib != NULL:
                        top_k_positive(contrib, nf, top_k, pi + i * top_k, pv + i * top_k)
            free(rk)
            free(vbuf)
            free(xv)
            xv = NULL
        else:
            xv = <double*>malloc((self.m.n_cols + 1) * sizeof(double))
            if xv == NULL:
                free(contrib)
                raise MemoryError()
            with nogil:
                for i in range(n):
                    row_views(&self.m, data, is_f32, i, xv)
                    if contrib != NULL:
                        memset(contrib, 0, self.m.contrib_stride * sizeof(double))
                    po[i] = row_traverse(&self.m, xv, raw, contrib)
                    if contrib != NULL:
                        top_k_positive(contrib, nf, top_k, pi + i * top_k, pv + i * top_k)
            free(xv)
        free(contrib)

    def predict_one(self, object row, bint raw) -> float:
        """One 1-D row, validated here in a few C-API calls (the Python checks cost
        as much as the kernel), without heap allocation for typical model sizes."""
        if not _row_ok(row, self.m.n_features):
            from kernels._validate import check_row

            check_row(row, self.m.n_features)  # raises the descriptive error
            raise TypeError("row rejected")  # not reached: check_row raises
        return self._predict_one(<cnp.ndarray>row, raw)

    cdef double _predict_one(self, cnp.ndarray row, bint raw) except? -1.0:
        cdef int32_t rk_stack[STACK_COLS]
        cdef uint64_t v_stack[STACK_TREES]
        cdef double xv_stack[STACK_COLS]
        cdef int32_t pos_stack[STACK_COLS]
        cdef int32_t* rk = rk_stack
        cdef void* vbuf = v_stack
        cdef double* xv = xv_stack
        cdef double result
        cdef int is_f32 = cnp.PyArray_TYPE(row) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(row)
        cdef bint heap = self.m.n_cols > STACK_COLS or self.m.n_trees > STACK_TREES
        if heap:
            rk = <int32_t*>malloc((self.m.n_cols + 1) * sizeof(int32_t))
            vbuf = malloc((self.m.n_trees + 1) * sizeof(uint64_t))
            xv = <double*>malloc((self.m.n_cols + self.m.n_sets + 2) * 2 * sizeof(double))
            if rk == NULL or vbuf == NULL or xv == NULL:
                free(rk)
                free(vbuf)
                free(xv)
                raise MemoryError()
        with nogil:
            if self.block_ok:
                if heap:
                    row_ranks(&self.m, data, is_f32, 0, rk, xv, <int32_t*>(xv + self.m.n_sets + 1))
                else:
                    row_ranks(&self.m, data, is_f32, 0, rk, xv, pos_stack)
                result = row_quickscorer(&self.m, rk, vbuf, raw, NULL)
            else:
                row_views(&self.m, data, is_f32, 0, xv)
                result = row_traverse(&self.m, xv, raw, NULL)
        if heap:
            free(rk)
            free(vbuf)
            free(xv)
        return result
