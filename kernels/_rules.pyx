# cython: language_level=3
"""Policy-rule kernel: conjunctions of feature thresholds and tag-bitset tests.

Compiled form (see rules.py): every rule is a run of feature conditions
(column, op, value) and a run of tag conditions (op, word range of a mask).
A rule fires when all its conditions hold; evaluation stops at the first
condition that fails. Output is one bit per (row, rule), packed into uint64
words (rule j -> bit j % 64 of word j // 64), or a bool matrix.
"""

cimport cython
cimport numpy as cnp
from libc.stdint cimport int32_t, uint8_t, uint64_t

import numpy as np

cnp.import_array()

# Feature ops. A missing (NaN) value satisfies none of the comparisons, not
# even "!="; OP_MISSING / OP_PRESENT test for it explicitly.
cdef enum:
    OP_LT = 0
    OP_LE = 1
    OP_GT = 2
    OP_GE = 3
    OP_EQ = 4
    OP_NE = 5
    OP_MISSING = 6
    OP_PRESENT = 7

# Tag ops over a mask (words[w0:w1] against the row's words at the same index).
cdef enum:
    TAG_ALL = 0    # every masked bit set ("has" for one tag, "all of")
    TAG_ANY = 1    # at least one masked bit set ("any of")
    TAG_NONE = 2   # no masked bit set ("lacks" for one tag, "none of")


cdef struct RModel:
    int n_rules
    int n_features
    int n_words
    const int32_t* f_off      # rule r: feature conditions [f_off[r], f_off[r + 1])
    const int32_t* f_col
    const int32_t* f_op
    const double* f_val
    const int32_t* t_off      # rule r: tag conditions [t_off[r], t_off[r + 1])
    const int32_t* t_op
    const int32_t* t_word0    # condition's first word index
    const int32_t* t_nwords   # and how many words its mask spans
    const int32_t* t_mask_off # into masks
    const uint64_t* masks


cdef inline bint _feature_ok(double x, int op, double v) noexcept nogil:
    if op == OP_MISSING:
        return x != x
    if op == OP_PRESENT:
        return x == x
    if x != x:
        return False
    if op == OP_LT:
        return x < v
    if op == OP_LE:
        return x <= v
    if op == OP_GT:
        return x > v
    if op == OP_GE:
        return x >= v
    if op == OP_EQ:
        return x == v
    return x != v


cdef inline bint _tags_ok(const RModel* m, int j, const uint64_t* row) noexcept nogil:
    cdef int op = m.t_op[j]
    cdef int w0 = m.t_word0[j]
    cdef int nw = m.t_nwords[j]
    cdef const uint64_t* mask = m.masks + m.t_mask_off[j]
    cdef int w
    cdef uint64_t hit
    if op == TAG_ALL:
        for w in range(nw):
            if (row[w0 + w] & mask[w]) != mask[w]:
                return False
        return True
    hit = 0
    for w in range(nw):
        hit |= row[w0 + w] & mask[w]
    if op == TAG_ANY:
        return hit != 0
    return hit == 0


cdef inline bint _rule_fires(const RModel* m, int r, const double* xrow, const float* frow,
                             const uint64_t* trow) noexcept nogil:
    cdef int j
    cdef double x
    for j in range(m.f_off[r], m.f_off[r + 1]):
        x = <double>frow[m.f_col[j]] if frow != NULL else xrow[m.f_col[j]]
        if not _feature_ok(x, m.f_op[j], m.f_val[j]):
            return False
    for j in range(m.t_off[r], m.t_off[r + 1]):
        if not _tags_ok(m, j, trow):
            return False
    return True


@cython.final
cdef class RulesKernel:
    cdef RModel m
    cdef object _keep

    def __init__(self, dict a, int n_features, int n_words) -> None:
        keep = {}
        for key, dtype in (("f_off", np.int32), ("f_col", np.int32), ("f_op", np.int32),
                           ("f_val", np.float64), ("t_off", np.int32), ("t_op", np.int32),
                           ("t_word0", np.int32), ("t_nwords", np.int32),
                           ("t_mask_off", np.int32), ("masks", np.uint64)):
            arr = np.ascontiguousarray(a[key], dtype=dtype)
            if arr.shape[0] == 0:
                arr = np.zeros(1, dtype=dtype)
            keep[key] = arr
        self._keep = keep
        self.m.n_rules = a["f_off"].shape[0] - 1
        self.m.n_features = n_features
        self.m.n_words = n_words
        self.m.f_off = <const int32_t*>cnp.PyArray_DATA(keep["f_off"])
        self.m.f_col = <const int32_t*>cnp.PyArray_DATA(keep["f_col"])
        self.m.f_op = <const int32_t*>cnp.PyArray_DATA(keep["f_op"])
        self.m.f_val = <const double*>cnp.PyArray_DATA(keep["f_val"])
        self.m.t_off = <const int32_t*>cnp.PyArray_DATA(keep["t_off"])
        self.m.t_op = <const int32_t*>cnp.PyArray_DATA(keep["t_op"])
        self.m.t_word0 = <const int32_t*>cnp.PyArray_DATA(keep["t_word0"])
        self.m.t_nwords = <const int32_t*>cnp.PyArray_DATA(keep["t_nwords"])
        self.m.t_mask_off = <const int32_t*>cnp.PyArray_DATA(keep["t_mask_off"])
        self.m.masks = <const uint64_t*>cnp.PyArray_DATA(keep["masks"])

    def evaluate(self, object X, object tags, Py_ssize_t n, cnp.ndarray out,
                 bint packed) -> None:
        """X: (n, n_features) float32/float64 or None; tags: (n, n_words) uint64 or
        None; out: uint64 (n, ceil(n_rules/64)) if packed else bool (n, n_rules)."""
        cdef const double* pd = NULL
        cdef const float* pf = NULL
        cdef const uint64_t* pt = NULL
        cdef uint64_t zero_words[1]
        cdef uint64_t* po64 = NULL
        cdef uint8_t* po8 = NULL
        cdef Py_ssize_t i
        cdef int r
        cdef int nr = self.m.n_rules
        cdef int out_words = (nr + 63) >> 6
        cdef bint fired
        cdef const double* xrow = NULL
        cdef const float* frow = NULL
        cdef const uint64_t* trow = zero_words
        zero_words[0] = 0
        if X is not None:
            if cnp.PyArray_TYPE(<cnp.ndarray>X) == cnp.NPY_FLOAT32:
                pf = <const float*>cnp.PyArray_DATA(<cnp.ndarray>X)
            else:
                pd = <const double*>cnp.PyArray_DATA(<cnp.ndarray>X)
        if tags is not None:
            pt = <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>tags)
        if packed:
            po64 = <uint64_t*>cnp.PyArray_DATA(out)
        else:
            po8 = <uint8_t*>cnp.PyArray_DATA(out)
        with nogil:
            for i in range(n):
                if pf != NULL:
                    frow = pf + i * self.m.n_features
                elif pd != NULL:
                    xrow = pd + i * self.m.n_features
                if pt != NULL:
                    trow = pt + i * self.m.n_words
                if packed:
                    for r in range(out_words):
                        po64[i * out_words + r] = 0
                for r in range(nr):
                    fired = _rule_fires(&self.m, r, xrow, frow, trow)
                    if packed:
                        if fired:
                            po64[i * out_words + (r >> 6)] |= (<uint64_t>1) << (r & 63)
                    else:
                        po8[i * nr + r] = fired
