# Shared inline helpers for the tree kernels: input transforms, link functions
# and top-k reason selection. Header-only (.pxd inline functions) so every
# kernel module gets them inlined without a cross-module call.

from libc.math cimport exp, expf, fabs, isnan
from libc.stdint cimport int32_t

# Input transforms (ForestIR flags).
cdef enum:
    INPUT_PLAIN = 0
    INPUT_LGB_ZERO = 1   # |x| <= 1e-35 reads as 0.0 (LightGBM dense row reader)
    INPUT_F32 = 2        # round to float32 first (XGBoost)

# Link functions.
cdef enum:
    LINK_IDENTITY = 0
    LINK_SIGMOID = 1
    LINK_EXP = 2
    LINK_SQUARE = 3

# LightGBM's kZeroThreshold is the float literal 1e-35f, compared as double:
# (double)1e-35f == 1.0000000180025095e-35 exactly (checked in the tests).
cdef inline double lgb_zero_threshold() noexcept nogil:
    return 1.0000000180025095e-35


cdef inline double load_value_d(double v, int mode) noexcept nogil:
    if mode == INPUT_LGB_ZERO:
        if fabs(v) <= lgb_zero_threshold():
            return 0.0
        return v
    if mode == INPUT_F32:
        return <double>(<float>v)
    return v


cdef inline double load_value_f(float v, int mode) noexcept nogil:
    cdef double d = <double>v
    if mode == INPUT_LGB_ZERO and fabs(d) <= lgb_zero_threshold():
        return 0.0
    return d


cdef inline double apply_link_d(double raw, int link, double scale) noexcept nogil:
    # Same expressions as LightGBM's ConvertOutput (double precision, libm exp).
    if link == LINK_SIGMOID:
        return 1.0 / (1.0 + exp(-scale * raw))
    if link == LINK_EXP:
        return exp(raw)
    if link == LINK_SQUARE:
        if raw > 0:
            return raw * raw
        if raw < 0:
            return -(raw * raw)
        return 0.0
    return raw


cdef inline double apply_link_f(float raw, int link) noexcept nogil:
    # XGBoost's common::Sigmoid(float): clamp the exponent, evaluate in float.
    cdef float x
    cdef float denom
    if link == LINK_SIGMOID:
        x = -raw
        if x > <float>88.7:
            x = <float>88.7
        denom = expf(x) + <float>1.0 + <float>1e-16
        return <double>(<float>1.0 / denom)
    if link == LINK_EXP:
        return <double>expf(raw)
    return <double>raw


cdef inline void top_k_positive(const double* contrib, int n_features, int k,
                                int32_t* out_idx, double* out_val) noexcept nogil:
    """Select the k largest strictly positive entries, descending.

    Ties keep the lower feature index first, so the result is deterministic.
    Unused slots get index -1 and value 0.0. O(n_features * k) worst case, but
    most features fail the first comparison.
    """
    cdef int filled = 0
    cdef int f, p, q
    cdef double c
    for p in range(k):
        out_idx[p] = -1
        out_val[p] = 0.0
    for f in range(n_features):
        c = contrib[f]
        if not (c > 0.0):
            continue
        if filled == k and not (c > out_val[k - 1]):
            continue
        p = filled if filled < k else k - 1
        # Shift smaller entries down; strict '>' keeps earlier equal entries first.
        while p > 0 and c > out_val[p - 1]:
            if p < k:
                out_val[p] = out_val[p - 1]
                out_idx[p] = out_idx[p - 1]
            p -= 1
        out_val[p] = c
        out_idx[p] = f
        if filled < k:
            filled += 1
