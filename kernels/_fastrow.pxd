from libc.stdint cimport int32_t, uint32_t, uint64_t

from kernels._fastmodel cimport FModel


cdef void row_ranks(const FModel* m, const void* data, int is_f32, Py_ssize_t row,
                    int32_t* rk, double* xs, int32_t* pos) noexcept nogil
cdef double row_qs_narrow(const FModel* m, const void* data, int is_f32, Py_ssize_t row,
                          double* xs, int32_t* pos, uint32_t* v32, bint raw,
                          double* contrib) noexcept nogil
cdef double row_qs_wide(const FModel* m, const int32_t* rk, uint64_t* v64, bint raw,
                        double* contrib) noexcept nogil
cdef void row_views(const FModel* m, const void* data, int is_f32, Py_ssize_t row,
                    double* xv) noexcept nogil
cdef double row_traverse(const FModel* m, const double* xv, bint raw,
                         double* contrib) noexcept nogil
