# cython: language_level=3
"""Scorecard kernel: binned points tables, adverse-action reasons.

Per characteristic c (see scorecard.py for the spec):
  edges e[0] < ... < e[m], m bins: bin i covers [e[i], e[i+1]), the last bin
  also e[m]. NaN -> missing_points. x < e[0] or x > e[m] -> clamp to the end bin,
  or oor_points when the characteristic has an out-of-range value.
"""

cimport cython
cimport numpy as cnp
from libc.stdint cimport int32_t

from kernels._common cimport top_k_positive

import numpy as np

cnp.import_array()


cdef struct SCard:
    int n_chars
    double base
    const int32_t* feature
    const int32_t* edge_off      # edges of c: edges[edge_off[c] : edge_off[c + 1]]
    const double* edges
    const int32_t* pts_off       # points of c: points[pts_off[c] : pts_off[c] + n_bins]
    const double* points
    const double* missing
    const double* oor            # out-of-range points (used if oor_mode[c] == 1)
    const int32_t* oor_mode      # 0 clamp, 1 fixed points
    const double* max_points


cdef inline double _points(const SCard* s, int c, double x) noexcept nogil:
    cdef int32_t e0 = s.edge_off[c]
    cdef int32_t m = s.edge_off[c + 1] - e0 - 1     # number of bins
    cdef const double* e = s.edges + e0
    cdef int32_t lo, hi, mid
    if x != x:
        return s.missing[c]
    if x < e[0]:
        return s.oor[c] if s.oor_mode[c] else s.points[s.pts_off[c]]
    if x > e[m]:
        return s.oor[c] if s.oor_mode[c] else s.points[s.pts_off[c] + m - 1]
    # Largest i in [0, m-1] with e[i] <= x (the last bin is closed on the right).
    lo = 0
    hi = m - 1
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if e[mid] <= x:
            lo = mid
        else:
            hi = mid - 1
    return s.points[s.pts_off[c] + lo]


cdef inline double _x(const void* data, int is_f32, Py_ssize_t idx) noexcept nogil:
    if is_f32:
        return <double>(<const float*>data)[idx]
    return (<const double*>data)[idx]


@cython.final
cdef class ScorecardKernel:
    cdef SCard s
    cdef object _keep

    def __init__(self, dict a, double base) -> None:
        keep = {}
        for key, dtype in (("feature", np.int32), ("edge_off", np.int32), ("edges", np.float64),
                           ("pts_off", np.int32), ("points", np.float64),
                           ("missing", np.float64), ("oor", np.float64),
                           ("oor_mode", np.int32), ("max_points", np.float64)):
            arr = np.ascontiguousarray(a[key], dtype=dtype)
            if arr.shape[0] == 0:
                arr = np.zeros(1, dtype=dtype)
            keep[key] = arr
        self._keep = keep
        self.s.n_chars = a["feature"].shape[0]
        self.s.base = base
        self.s.feature = <const int32_t*>cnp.PyArray_DATA(keep["feature"])
        self.s.edge_off = <const int32_t*>cnp.PyArray_DATA(keep["edge_off"])
        self.s.edges = <const double*>cnp.PyArray_DATA(keep["edges"])
        self.s.pts_off = <const int32_t*>cnp.PyArray_DATA(keep["pts_off"])
        self.s.points = <const double*>cnp.PyArray_DATA(keep["points"])
        self.s.missing = <const double*>cnp.PyArray_DATA(keep["missing"])
        self.s.oor = <const double*>cnp.PyArray_DATA(keep["oor"])
        self.s.oor_mode = <const int32_t*>cnp.PyArray_DATA(keep["oor_mode"])
        self.s.max_points = <const double*>cnp.PyArray_DATA(keep["max_points"])

    def score(self, cnp.ndarray X, cnp.ndarray out, object points_out, int top_k,
              object idx, object lost) -> None:
        """Scores into out (n,); optionally per-characteristic points (n, n_chars)
        and top-k reasons (idx int32 (n, k), lost float64 (n, k))."""
        cdef Py_ssize_t n = cnp.PyArray_DIM(X, 0)
        cdef Py_ssize_t width = cnp.PyArray_DIM(X, 1)   # row stride (validated >= needed)
        cdef Py_ssize_t i
        cdef int c
        cdef int nc = self.s.n_chars
        cdef int is_f32 = cnp.PyArray_TYPE(X) == cnp.NPY_FLOAT32
        cdef const void* data = cnp.PyArray_DATA(X)
        cdef double* po = <double*>cnp.PyArray_DATA(out)
        cdef double* pp = NULL
        cdef int32_t* pi = NULL
        cdef double* pl = NULL
        cdef double total, p
        cdef double[::1] lost_row = np.zeros(max(nc, 1))
        cdef double* lr = &lost_row[0]
        if points_out is not None:
            pp = <double*>cnp.PyArray_DATA(points_out)
        if top_k > 0:
            pi = <int32_t*>cnp.PyArray_DATA(idx)
            pl = <double*>cnp.PyArray_DATA(lost)
        with nogil:
            for i in range(n):
                total = self.s.base
                for c in range(nc):
                    p = _points(&self.s, c, _x(data, is_f32, i * width + self.s.feature[c]))
                    total += p
                    if pp != NULL:
                        pp[i * nc + c] = p
                    lr[c] = self.s.max_points[c] - p
                po[i] = total
                if pi != NULL:
                    top_k_positive(lr, nc, top_k, pi + i * top_k, pl + i * top_k)
