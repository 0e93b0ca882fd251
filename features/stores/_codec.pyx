# cython: language_level=3
"""Feast's value and entity-key encodings, in C.

Feast stores every feature value as a serialized ``feast.types.Value``
protobuf. Only a handful of wire shapes occur for the types this project
uses (listed in ``_wire.pxd``), so they are encoded and decoded here directly
instead of through protobuf objects (one Python object per value is what made
the naive path slow).

Entity keys use Feast's serialization version 3 for one string join key:
``<I 1><I STRING=2><I len(name)> name <I STRING=2><I len(value)> value``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from features.stores._value cimport (
    bytes_payload,
    decode_number,
    decode_timestamp as _decode_ts,
    encode_timestamp as _encode_ts,
    put_varint as _put_varint,
)

import numpy as np

cdef extern from "math.h":
    float NAN


def encode_float32(const float[::1] values, const uint8_t[::1] valid):
    """``float_val`` Values for a float32 column; rows with ``valid == 0`` become null (b"")."""
    cdef Py_ssize_t i, n = values.shape[0]
    cdef uint8_t buf[5]
    cdef list out = [None] * n
    buf[0] = 0x35
    empty = b""
    for i in range(n):
        if valid[i]:
            memcpy(&buf[1], &values[i], 4)
            out[i] = PyBytes_FromStringAndSize(<char*>buf, 5)
        else:
            out[i] = empty
    return out


def encode_int64(const int64_t[::1] values, const uint8_t[::1] valid):
    """``int64_val`` Values for an int64 column; rows with ``valid == 0`` become null (b"")."""
    cdef Py_ssize_t i, n = values.shape[0]
    cdef uint8_t buf[11]
    cdef int k
    cdef list out = [None] * n
    buf[0] = 0x20
    empty = b""
    for i in range(n):
        if valid[i]:
            k = _put_varint(&buf[1], <uint64_t>values[i])
            out[i] = PyBytes_FromStringAndSize(<char*>buf, k + 1)
        else:
            out[i] = empty
    return out


def encode_bytes(list values):
    """``bytes_val`` Values for a list of ``bytes`` (``None`` becomes null)."""
    cdef Py_ssize_t i, n = len(values), m
    cdef uint8_t head[11]
    cdef int k
    cdef list out = [None] * n
    cdef bytes v, r
    for i in range(n):
        if values[i] is None:
            out[i] = b""
            continue
        v = values[i]
        m = PyBytes_GET_SIZE(v)
        head[0] = 0x0A
        k = _put_varint(&head[1], <uint64_t>m) + 1
        r = PyBytes_FromStringAndSize(NULL, k + m)
        memcpy(PyBytes_AS_STRING(r), head, k)
        memcpy(PyBytes_AS_STRING(r) + k, PyBytes_AS_STRING(v), m)
        out[i] = r
    return out


def entity_keys(str join_key, list ids):
    """Feast v3 serialized entity keys for one string join key."""
    cdef bytes name = join_key.encode("utf8")
    cdef Py_ssize_t nl = len(name), i, n = len(ids), vl
    cdef bytes prefix, v, r
    cdef uint32_t u
    cdef char* p
    prefix = (1).to_bytes(4, "little") + (2).to_bytes(4, "little") + nl.to_bytes(4, "little") + name
    cdef Py_ssize_t pl = len(prefix)
    cdef list out = [None] * n
    for i in range(n):
        v = ids[i].encode("utf8") if isinstance(ids[i], str) else ids[i]
        vl = PyBytes_GET_SIZE(v)
        r = PyBytes_FromStringAndSize(NULL, pl + 8 + vl)
        p = PyBytes_AS_STRING(r)
        memcpy(p, PyBytes_AS_STRING(prefix), pl)
        u = 2
        memcpy(p + pl, &u, 4)
        u = <uint32_t>vl
        memcpy(p + pl + 4, &u, 4)
        memcpy(p + pl + 8, PyBytes_AS_STRING(v), vl)
        out[i] = r
    return out


def decode_numbers(list values, const int32_t[::1] rows, const int32_t[::1] cols, float[:, ::1] out):
    """Decode ``values[i]`` into ``out[rows[i], cols[i]]`` (null -> NaN).

    ``None`` (a field the store does not have) also becomes NaN. Returns the index
    of the first value that is not a number Value, or -1.
    """
    cdef Py_ssize_t i, n = len(values)
    cdef double d
    cdef int rc
    cdef bytes v
    for i in range(n):
        o = values[i]
        if o is None:  # a field Redis does not have
            out[rows[i], cols[i]] = NAN
            continue
        v = o
        rc = decode_number(<const uint8_t*>PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), &d)
        if rc == 0:
            out[rows[i], cols[i]] = <float>d
        elif rc == 1:
            out[rows[i], cols[i]] = NAN
        else:
            return i
    return -1


def decode_bytes_value(bytes v):
    """Payload of a ``bytes_val`` Value, or None for null. Raises ValueError otherwise."""
    cdef Py_ssize_t m = 0
    cdef Py_ssize_t off = bytes_payload(<const uint8_t*>PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), &m)
    if off == -2:
        return None
    if off < 0:
        raise ValueError("not a bytes_val Value")
    return v[off:]


def decode_timestamp(object v):
    """Seconds of a serialized ``google.protobuf.Timestamp`` (Feast's Redis ``_ts:`` field), or 0."""
    if v is None:
        return 0
    cdef bytes b = v
    cdef int64_t s = 0, ns = 0
    if _decode_ts(<const uint8_t*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), &s, &ns) < 0:
        return 0
    return s


def encode_timestamp(int64_t seconds, int64_t nanos=0):
    """Serialized ``google.protobuf.Timestamp``."""
    cdef uint8_t buf[24]
    cdef int k = _encode_ts(buf, seconds, nanos)
    return PyBytes_FromStringAndSize(<char*>buf, k)
