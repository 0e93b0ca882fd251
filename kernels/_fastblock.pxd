from libc.stdint cimport int32_t

from kernels._fastmodel cimport FModel


cdef struct BlockScratch:
    double xs[64]      # transformed values of one feature for the block's rows
    int32_t pos[64]    # rank (count of thresholds < x)
    int32_t nan[64]    # 1 if NaN
    int32_t zero[64]   # 1 if NaN or 0.0 (zero-as-missing views)


cdef void block_run(const FModel* m, const void* data, int is_f32, Py_ssize_t n, bint raw,
                    double* out, int top_k, int32_t* out_idx, double* out_val,
                    int32_t* bins, BlockScratch* sc, double* contrib) noexcept nogil
cdef Py_ssize_t block_reason_doubles(const FModel* m) noexcept nogil
cdef void leaf_reasons_row(const FModel* m, const int32_t* leaf_idx,
                           double* racc) noexcept nogil
