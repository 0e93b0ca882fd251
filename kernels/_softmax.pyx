# cython: language_level=3
"""LightGBM's multiclass softmax, row by row, with libm's exp.

``Common::Softmax``: subtract the row maximum, exponentiate, sum in class
order, divide. numpy's vectorised exp may differ from libm's in the last bit;
this keeps probabilities bit-identical to LightGBM's.
"""

cimport cython
cimport numpy as cnp
from libc.math cimport exp

cnp.import_array()


@cython.boundscheck(False)
@cython.wraparound(False)
def softmax_rows(cnp.ndarray raw, cnp.ndarray out) -> None:
    """``out[i] = softmax(raw[i])`` for float64 C-contiguous (n, k) arrays of one shape."""
    if (cnp.PyArray_TYPE(raw) != cnp.NPY_FLOAT64 or cnp.PyArray_TYPE(out) != cnp.NPY_FLOAT64
            or cnp.PyArray_NDIM(raw) != 2 or cnp.PyArray_NDIM(out) != 2
            or not cnp.PyArray_IS_C_CONTIGUOUS(raw) or not cnp.PyArray_IS_C_CONTIGUOUS(out)
            or cnp.PyArray_DIM(raw, 0) != cnp.PyArray_DIM(out, 0)
            or cnp.PyArray_DIM(raw, 1) != cnp.PyArray_DIM(out, 1)
            or cnp.PyArray_DIM(raw, 1) < 1):
        raise ValueError("softmax_rows needs two float64 C-contiguous (n, k>=1) arrays of one shape")
    cdef Py_ssize_t n = cnp.PyArray_DIM(raw, 0)
    cdef Py_ssize_t k = cnp.PyArray_DIM(raw, 1)
    cdef const double* src = <const double*>cnp.PyArray_DATA(raw)
    cdef double* dst = <double*>cnp.PyArray_DATA(out)
    cdef Py_ssize_t i, j
    cdef double wmax, wsum
    with nogil:
        for i in range(n):
            wmax = src[i * k]
            for j in range(1, k):
                if src[i * k + j] > wmax:
                    wmax = src[i * k + j]
            wsum = 0.0
            for j in range(k):
                dst[i * k + j] = exp(src[i * k + j] - wmax)
                wsum += dst[i * k + j]
            for j in range(k):
                dst[i * k + j] = dst[i * k + j] / wsum
