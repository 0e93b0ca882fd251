# cython: language_level=3
"""Feast's value wire shapes, as inline C shared by the compiled modules.

Only a handful of ``feast.types.Value`` shapes occur for the types this project uses:

    float_val   field 6, fixed32   0x35 + 4 bytes LE
    double_val  field 5, fixed64   0x29 + 8 bytes LE
    int64_val   field 4, varint    0x20 + varint (two's complement, 10 bytes if negative)
    int32_val   field 3, varint    0x18 + varint
    bool_val    field 7, varint    0x38 + varint
    bytes_val   field 1, len-delim 0x0a + varint length + bytes
    null        empty message      b""

and ``google.protobuf.Timestamp``: 0x08 varint seconds, 0x10 varint nanos (each omitted
when zero).
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef inline int varint_len(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline int put_varint(uint8_t* p, uint64_t v) noexcept nogil:
    cdef int n = 0
    while v >= 0x80:
        p[n] = <uint8_t>((v & 0x7F) | 0x80)
        v >>= 7
        n += 1
    p[n] = <uint8_t>v
    return n + 1


cdef inline Py_ssize_t get_varint(const uint8_t* p, Py_ssize_t n, Py_ssize_t i, uint64_t* out) noexcept nogil:
    """Varint at ``p[i]``; returns the index after it, or -1 if truncated."""
    cdef uint64_t v = 0
    cdef int shift = 0
    while i < n and shift < 70:
        v |= (<uint64_t>(p[i] & 0x7F)) << shift
        shift += 7
        i += 1
        if (p[i - 1] & 0x80) == 0:
            out[0] = v
            return i
    return -1


cdef inline int decode_number(const uint8_t* p, Py_ssize_t n, double* out) noexcept nogil:
    """Decode one Value holding a number; 0 = ok, 1 = null, -1 = not a number Value."""
    cdef uint64_t v = 0
    cdef float f
    cdef double d
    if n == 0:
        return 1
    if p[0] == 0x35 and n == 5:
        memcpy(&f, p + 1, 4)
        out[0] = f
        return 0
    if p[0] == 0x29 and n == 9:
        memcpy(&d, p + 1, 8)
        out[0] = d
        return 0
    if p[0] == 0x20 or p[0] == 0x18 or p[0] == 0x38:
        if get_varint(p, n, 1, &v) != n:
            return -1
        if p[0] == 0x18:
            out[0] = <double><int32_t><uint32_t>v
        elif p[0] == 0x20:
            out[0] = <double><int64_t>v
        else:
            out[0] = 1.0 if v else 0.0
        return 0
    return -1


cdef inline Py_ssize_t bytes_payload(const uint8_t* p, Py_ssize_t n, Py_ssize_t* length) noexcept nogil:
    """Offset of a ``bytes_val`` Value's payload (its size in ``length``); -2 for null, -1 if not one."""
    cdef uint64_t m = 0
    cdef Py_ssize_t i
    if n == 0:
        return -2
    if p[0] != 0x0A:
        return -1
    i = get_varint(p, n, 1, &m)
    if i < 0 or <uint64_t>(n - i) != m:
        return -1
    length[0] = <Py_ssize_t>m
    return i


cdef inline int decode_timestamp(const uint8_t* p, Py_ssize_t n, int64_t* seconds, int64_t* nanos) noexcept nogil:
    """A serialized Timestamp; 0 = ok (absent fields are zero), -1 = malformed."""
    cdef Py_ssize_t i = 0
    cdef uint64_t v
    seconds[0] = 0
    nanos[0] = 0
    while i < n:
        if p[i] == 0x08:
            i = get_varint(p, n, i + 1, &v)
            seconds[0] = <int64_t>v
        elif p[i] == 0x10:
            i = get_varint(p, n, i + 1, &v)
            nanos[0] = <int64_t>v
        else:
            return -1
        if i < 0:
            return -1
    return 0


cdef inline int encode_timestamp(uint8_t* p, int64_t seconds, int64_t nanos) noexcept nogil:
    """Serialize a Timestamp into ``p`` (at most 22 bytes); returns its length."""
    cdef int k = 0
    if seconds != 0:
        p[0] = 0x08
        k = 1 + put_varint(p + 1, <uint64_t>seconds)
    if nanos != 0:
        p[k] = 0x10
        k += 1 + put_varint(p + k + 1, <uint64_t>nanos)
    return k


cdef inline int encode_float_value(uint8_t* p, float v) noexcept nogil:
    p[0] = 0x35
    memcpy(p + 1, &v, 4)
    return 5


cdef inline int encode_int64_value(uint8_t* p, int64_t v) noexcept nogil:
    p[0] = 0x20
    return 1 + put_varint(p + 1, <uint64_t>v)


cdef inline int encode_bytes_header(uint8_t* p, Py_ssize_t length) noexcept nogil:
    p[0] = 0x0A
    return 1 + put_varint(p + 1, <uint64_t>length)
