# cython: language_level=3
"""Exact node-array traversal kernel (any tree size, any split kind).

This is the reference-grade kernel: it follows ForestIR's decision semantics
node by node. The faster block kernel (``_blocked.pyx``) is used for batches
when every tree has at most 64 leaves; this one serves single rows, tiny
batches, trees with more than 64 leaves, and reason codes for large trees.

Feature values of one row are first copied into a double buffer through the
model's input transform (LightGBM tiny->0, XGBoost float32 rounding), so the
per-node work is a plain double comparison.
"""

cimport cython
cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport isnan, logf
from libc.stdint cimport int32_t, uint8_t, uint32_t
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

# TNode.flags bits.
cdef enum:
    F_CATEGORICAL = 1
    F_DEFAULT_LEFT = 2
    F_MISSING_SHIFT = 2   # bits 2..3 hold the ForestIR missing type
    F_CAT_XGBOOST = 16    # categorical node under ForestIR's CAT_XGBOOST rule
    MISS_NONE = 0
    MISS_ZERO = 1
    MISS_NAN = 2


cdef struct TNode:
    double thr
    int32_t feat
    int32_t left
    int32_t right
    int32_t cat_off
    int32_t cat_len
    uint32_t flags


cdef struct TModel:
    const TNode* nodes
    const int32_t* root          # per tree: node index, or ~leaf for single-leaf trees
    const double* leaf
    const uint32_t* cat
    const double* delta_left     # Saabas: value(left child) - value(node)
    const double* delta_right
    double bias                  # sum of root values (Saabas expected value)
    int n_features
    int n_trees
    int input_mode
    int link
    int sum_f32
    double scale
    double base
    double avg_div               # 0: no averaging


cdef inline int32_t _step(const TNode* nd, double x, const uint32_t* cat) noexcept nogil:
    cdef uint32_t fl = nd.flags
    cdef uint32_t mt
    cdef int32_t c
    if fl & F_CATEGORICAL:
        if fl & F_CAT_XGBOOST:
            # XGBoost: NaN is missing (default child); InvalidCat (x < 0,
            # x >= 2**24, +-inf) takes the non-member side.
            if isnan(x):
                return nd.left if fl & F_DEFAULT_LEFT else nd.right
            if not (x >= 0.0 and x < 16777216.0):
                return nd.right
        elif not (x > -1.0 and x < 2147483648.0):
            # NaN fails both comparisons; the bounds mirror static_cast<int> on
            # x86-64 (out-of-range -> INT_MIN, negative -> right).
            return nd.right
        c = <int32_t>x
        if (c >> 5) < nd.cat_len and (cat[nd.cat_off + (c >> 5)] >> (c & 31)) & 1:
            return nd.left
        return nd.right
    mt = (fl >> F_MISSING_SHIFT) & 3
    if isnan(x):
        if mt != MISS_NONE:
            return nd.left if fl & F_DEFAULT_LEFT else nd.right
        x = 0.0
    elif mt == MISS_ZERO and x == 0.0:
        return nd.left if fl & F_DEFAULT_LEFT else nd.right
    return nd.left if x <= nd.thr else nd.right


cdef inline double _finish(const TModel* m, double acc, float facc, bint raw) noexcept nogil:
    if m.sum_f32:
        if raw:
            return <double>facc
        return apply_link_f(facc, m.link)
    if raw:
        # LightGBM's raw score of an average_output (rf) model is the plain sum;
        # only the transformed prediction is averaged. Match it.
        return acc
    if m.avg_div != 0.0:
        acc = acc / m.avg_div
    return apply_link_d(acc, m.link, m.scale)


cdef inline double _row_score(const TModel* m, const double* x, bint raw) noexcept nogil:
    cdef int t
    cdef int32_t node
    cdef const TNode* nd
    cdef double acc = m.base
    cdef float facc = <float>m.base
    for t in range(m.n_trees):
        node = m.root[t]
        while node >= 0:
            nd = &m.nodes[node]
            node = _step(nd, x[nd.feat], m.cat)
        if m.sum_f32:
            facc = facc + <float>m.leaf[~node]
        else:
            acc += m.leaf[~node]
    return _finish(m, acc, facc, raw)


cdef inline double _row_reasons(const TModel* m, const double* x, double* contrib,
                                bint raw) noexcept nogil:
    cdef int t
    cdef int32_t node, nxt
    cdef const TNode* nd
    cdef double acc = m.base
    cdef float facc = <float>m.base
    memset(contrib, 0, m.n_features * sizeof(double))
    for t in range(m.n_trees):
        node = m.root[t]
        while node >= 0:
            nd = &m.nodes[node]
            nxt = _step(nd, x[nd.feat], m.cat)
            if nxt == nd.left:
                contrib[nd.feat] += m.delta_left[node]
            else:
                contrib[nd.feat] += m.delta_right[node]
            node = nxt
        if m.sum_f32:
            facc = facc + <float>m.leaf[~node]
        else:
            acc += m.leaf[~node]
    return _finish(m, acc, facc, raw)


cdef inline void _load_row(const void* data, int is_f32, Py_ssize_t row, int nf, int mode,
                           double* xbuf) noexcept nogil:
    cdef int j
    cdef const float* pf
    cdef const double* pd
    if is_f32:
        pf = <const float*>data + row * nf
        for j in range(nf):
            xbuf[j] = load_value_f(pf[j], mode)
    else:
        pd = <const double*>data + row * nf
        for j in range(nf):
            xbuf[j] = load_value_d(pd[j], mode)


@cython.final
cdef class TraversalKernel:
    """Owns the flattened node arrays; methods assume validated inputs."""

    cdef TModel m
    cdef TNode* _nodes
    cdef object _keep

    def __cinit__(self) -> None:
        self._nodes = NULL

    def __dealloc__(self) -> None:
        if self._nodes != NULL:
            PyMem_Free(self._nodes)
            self._nodes = NULL

    def __init__(self, dict arrays, int n_features, int input_mode, int link, bint sum_f32,
                 double scale, double base, double avg_div, double bias) -> None:
        feat = np.ascontiguousarray(arrays["feat"], dtype=np.int32)
        thr = np.ascontiguousarray(arrays["thr"], dtype=np.float64)
        flags = np.ascontiguousarray(arrays["flags"], dtype=np.uint32)
        left = np.ascontiguousarray(arrays["left"], dtype=np.int32)
        right = np.ascontiguousarray(arrays["right"], dtype=np.int32)
        cat_off = np.ascontiguousarray(arrays["cat_off"], dtype=np.int32)
        cat_len = np.ascontiguousarray(arrays["cat_len"], dtype=np.int32)
        root = np.ascontiguousarray(arrays["root"], dtype=np.int32)
        leaf = np.ascontiguousarray(arrays["leaf"], dtype=np.float64)
        # Never hand C a NULL pointer for an empty array.
        cat = np.ascontiguousarray(arrays["cat_words"], dtype=np.uint32)
        if cat.shape[0] == 0:
            cat = np.zeros(1, dtype=np.uint32)
        dl = np.ascontiguousarray(arrays["delta_left"], dtype=np.float64)
        dr = np.ascontiguousarray(arrays["delta_right"], dtype=np.float64)
        cdef Py_ssize_t n = feat.shape[0]
        cdef Py_ssize_t i
        cdef int32_t[::1] v_feat = feat
        cdef double[::1] v_thr = thr
        cdef uint32_t[::1] v_flags = flags
        cdef int32_t[::1] v_left = left
        cdef int32_t[::1] v_right = right
        cdef int32_t[::1] v_off = cat_off
        cdef int32_t[::1] v_len = cat_len
        self._nodes = <TNode*>PyMem_Malloc(max(n, 1) * sizeof(TNode))
        if self._nodes == NULL:
            raise MemoryError()
        for i in range(n):
            self._nodes[i].thr = v_thr[i]
            self._nodes[i].feat = v_feat[i]
            self._nodes[i].left = v_left[i]
            self._nodes[i].right = v_right[i]
            self._nodes[i].cat_off = v_off[i]
            self._nodes[i].cat_len = v_len[i]
            self._nodes[i].flags = v_flags[i]
        if n == 0:
            dl = np.zeros(1)
            dr = np.zeros(1)
        self._keep = (root, leaf, cat, dl, dr)
        self.m.nodes = self._nodes
        self.m.root = <const int32_t*>cnp.PyArray_DATA(root)
        self.m.leaf = <const double*>cnp.PyArray_DATA(leaf)
        self.m.cat = <const uint32_t*>cnp.PyArray_DATA(cat)
        self.m.delta_left = <const double*>cnp.PyArray_DATA(dl)
        self.m.delta_right = <const double*>cnp.PyArray_DATA(dr)
        self.m.bias = bias
        self.m.n_features = n_features
        self.m.n_trees = root.shape[0]
        self.m.input_mode = input_mode
        self.m.link = link
        self.m.sum_f32 = sum_f32
        self.m.scale = scale
        self.m.base = base
        self.m.avg_div = avg_div

    def predict(self, cnp.ndarray X, cnp.ndarray out, bint raw) -> None:
        """X: validated C-contiguous (n, n_features) float32/float64; out: float64 (n,)."""
        cdef Py_ssize_t n = cnp.PyArray_DIM(X, 0)
        cdef Py_ssize_t i
        cdef int is_f32 = cnp.PyArray_TYPE(X) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(X)
        cdef double* po = <double*>cnp.PyArray_DATA(out)
        cdef double* xbuf = <double*>PyMem_Malloc(self.m.n_features * sizeof(double))
        if xbuf == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n):
                _load_row(data, is_f32, i, self.m.n_features, self.m.input_mode, xbuf)
                po[i] = _row_score(&self.m, xbuf, raw)
        PyMem_Free(xbuf)

    def predict_one(self, cnp.ndarray row, bint raw) -> float:
        """row: validated C-contiguous (n_features,) float32/float64."""
        cdef double stackbuf[256]
        cdef double* xbuf = stackbuf
        cdef double result
        cdef int is_f32 = cnp.PyArray_TYPE(row) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(row)
        if self.m.n_features > 256:
            xbuf = <double*>PyMem_Malloc(self.m.n_features * sizeof(double))
            if xbuf == NULL:
                raise MemoryError()
        with nogil:
            _load_row(data, is_f32, 0, self.m.n_features, self.m.input_mode, xbuf)
            result = _row_score(&self.m, xbuf, raw)
        if xbuf != stackbuf:
            PyMem_Free(xbuf)
        return result

    def predict_reasons(self, cnp.ndarray X, int top_k, cnp.ndarray out, cnp.ndarray idx,
                        cnp.ndarray val, bint raw) -> None:
        """Scores plus Saabas top-k; idx int32 (n, k), val float64 (n, k)."""
        cdef Py_ssize_t n = cnp.PyArray_DIM(X, 0)
        cdef Py_ssize_t i
        cdef int nf = self.m.n_features
        cdef int is_f32 = cnp.PyArray_TYPE(X) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(X)
        cdef double* po = <double*>cnp.PyArray_DATA(out)
        cdef int32_t* pi = <int32_t*>cnp.PyArray_DATA(idx)
        cdef double* pv = <double*>cnp.PyArray_DATA(val)
        cdef double* xbuf = <double*>PyMem_Malloc(2 * nf * sizeof(double))
        cdef double* contrib
        if xbuf == NULL:
            raise MemoryError()
        contrib = xbuf + nf
        with nogil:
            for i in range(n):
                _load_row(data, is_f32, i, nf, self.m.input_mode, xbuf)
                po[i] = _row_reasons(&self.m, xbuf, contrib, raw)
                top_k_positive(contrib, nf, top_k, pi + i * top_k, pv + i * top_k)
        PyMem_Free(xbuf)

    def contributions(self, cnp.ndarray X, cnp.ndarray out) -> None:
        """Full Saabas matrix: out float64 (n, n_features + 1), last column = bias."""
        cdef Py_ssize_t n = cnp.PyArray_DIM(X, 0)
        cdef Py_ssize_t i
        cdef int nf = self.m.n_features
        cdef int is_f32 = cnp.PyArray_TYPE(X) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(X)
        cdef double* po = <double*>cnp.PyArray_DATA(out)
        cdef double* xbuf = <double*>PyMem_Malloc(nf * sizeof(double))
        cdef double* row_out
        if xbuf == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n):
                row_out = po + i * (nf + 1)
                _load_row(data, is_f32, i, nf, self.m.input_mode, xbuf)
                _row_reasons(&self.m, xbuf, row_out, True)
                row_out[nf] = self.m.bias
        PyMem_Free(xbuf)


def xgb_base_margin(double base_score, int kind) -> float:
    """XGBoost's ProbToMargin evaluated in float32 with libm, as XGBoost does.

    kind 1: logistic, ``-log(1/p - 1)``; kind 2: log link, ``log(p)``.
    """
    cdef float b = <float>base_score
    if kind == 1:
        return <double>(-logf(<float>1.0 / b - <float>1.0))
    return <double>logf(b)
