# cython: language_level=3
"""The packed Redis layout's requests, built in C: whole batches in one buffer.

``MGET`` of a merchant's views (reads), ``GETRANGE`` of the stored event times (the
writer's dedup) and ``MSET`` of a merchant's packed rows (materialization), each batch one
bytearray written from C. Values are encoded as Feast's ``Value`` protobufs straight from
numpy columns. The C indexes without bounds checks, so every entry point checks what it
is given first (arguments are ``bytes``, columns as long as the keys).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from features.stores._value cimport encode_float_value, encode_int64_value, put_varint, varint_len

DEF VERSION = 1
DEF HEADER = 13
DEF MAX_VIEWS = 16
DEF MAX_FIELDS = 512


cdef class _Out:
    """A growable bytearray written from C."""

    cdef bytearray data
    cdef Py_ssize_t n

    def __cinit__(self, Py_ssize_t cap):
        self.data = PyByteArray_FromStringAndSize(NULL, max(cap, 64))
        self.n = 0

    cdef inline char* reserve(self, Py_ssize_t k) except NULL:
        cdef Py_ssize_t cap = len(self.data)
        if self.n + k > cap:
            while self.n + k > cap:
                cap *= 2
            PyByteArray_Resize(self.data, cap)
        return PyByteArray_AS_STRING(self.data) + self.n

    cdef inline int put(self, const char* s, Py_ssize_t k) except -1:
        memcpy(self.reserve(k), s, k)
        self.n += k
        return 0

    cdef inline int put_len(self, char prefix, Py_ssize_t v) except -1:
        """``<prefix><v>\\r\\n`` (v >= 0)."""
        cdef char tmp[24]
        cdef int i = 22
        tmp[23] = c'\n'
        tmp[22] = c'\r'
        while True:
            i -= 1
            tmp[i] = <char>(c'0' + v % 10)
            v //= 10
            if v == 0:
                break
        i -= 1
        tmp[i] = prefix
        return self.put(tmp + i, 24 - i)

    cdef inline int put_key(self, const char* ek, Py_ssize_t el, const char* sfx, Py_ssize_t sl) except -1:
        """The bulk string ``{ek}:sfx``."""
        cdef char* o
        self.put_len(c'$', el + sl + 3)
        o = self.reserve(el + sl + 5)
        o[0] = c'{'
        memcpy(o + 1, ek, el)
        o[el + 1] = c'}'
        o[el + 2] = c':'
        memcpy(o + el + 3, sfx, sl)
        o[el + sl + 3] = c'\r'
        o[el + sl + 4] = c'\n'
        self.n += el + sl + 5
        return 0

    cdef bytearray finish(self):
        PyByteArray_Resize(self.data, self.n)
        return self.data


cdef inline bytes _arg(object a, str what):
    if type(a) is not bytes:
        raise TypeError(f"{what} must be bytes, got {type(a).__name__}")
    return <bytes>a


def encode_mget(list keys not None, list suffixes not None):
    """``MGET {key}:<suffix>...`` (every suffix) for every entity key, as one buffer."""
    cdef Py_ssize_t ns = len(suffixes), j, el, total = 0
    cdef bytes k
    cdef list sfx = [_arg(s, "a key suffix") for s in suffixes]
    if ns < 1:
        raise ValueError("at least one view")
    for s in sfx:
        total += len(<bytes>s) + 24
    cdef _Out out = _Out(len(keys) * (total + 16 + ns * 40))
    for x in keys:
        k = _arg(x, "an entity key")
        el = PyBytes_GET_SIZE(k)
        out.put_len(c'*', ns + 1)
        out.put("$4\r\nMGET\r\n", 10)
        for j in range(ns):
            out.put_key(PyBytes_AS_STRING(k), el, PyBytes_AS_STRING(sfx[j]), PyBytes_GET_SIZE(sfx[j]))
    return out.finish()


def encode_getrange(list keys not None, list suffixes not None, Py_ssize_t start, Py_ssize_t end):
    """``GETRANGE {key}:<suffix> start end`` for every entity key and suffix (key-major)."""
    cdef bytes k, s
    cdef Py_ssize_t el
    cdef bytes tail = (f"${len(str(start))}\r\n{start}\r\n${len(str(end))}\r\n{end}\r\n").encode()
    cdef _Out out = _Out(len(keys) * len(suffixes) * 96)
    for x in keys:
        k = _arg(x, "an entity key")
        el = PyBytes_GET_SIZE(k)
        for y in suffixes:
            s = _arg(y, "a key suffix")
            out.put("*4\r\n$8\r\nGETRANGE\r\n", 18)
            out.put_key(PyBytes_AS_STRING(k), el, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
            out.put(PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail))
    return out.finish()


cdef enum:
    COL_FLOAT32 = 0
    COL_INT64 = 1
    COL_BYTES = 2


cdef struct _View:
    const uint8_t* write
    const int64_t* event_us
    const char* suffix
    Py_ssize_t suffix_len
    uint32_t schema
    int nf
    int first


cdef class _Columns:
    """Every view's columns as C pointers (the Python objects kept alive in ``keep``)."""

    cdef _View views[MAX_VIEWS]
    cdef int kind[MAX_FIELDS]
    cdef const float* fptr[MAX_FIELDS]
    cdef const int64_t* iptr[MAX_FIELDS]
    cdef const uint8_t* vptr[MAX_FIELDS]
    cdef list blists
    cdef list keep
    cdef Py_ssize_t nv, n

    def __init__(self, Py_ssize_t n, list views):
        cdef const uint8_t[::1] w
        cdef const int64_t[::1] ev
        cdef const float[::1] fv
        cdef const int64_t[::1] iv
        cdef const uint8_t[::1] ok
        cdef int total = 0, v
        if len(views) > MAX_VIEWS:
            raise ValueError(f"at most {MAX_VIEWS} views")
        self.n, self.nv, self.blists, self.keep = n, len(views), [], []
        for v, (write, suffix, schema, event_us, columns) in enumerate(views):
            w, ev = write, event_us
            if w.shape[0] != n or ev.shape[0] != n:
                raise ValueError("view arrays must align with keys")
            self.keep += [w, ev, _arg(suffix, "a key suffix")]
            self.views[v].write = &w[0] if n else NULL
            self.views[v].event_us = &ev[0] if n else NULL
            self.views[v].suffix = PyBytes_AS_STRING(suffix)
            self.views[v].suffix_len = PyBytes_GET_SIZE(suffix)
            self.views[v].schema = <uint32_t>schema
            self.views[v].nf = len(columns)
            self.views[v].first = total
            for c in columns:
                if total >= MAX_FIELDS:
                    raise ValueError(f"at most {MAX_FIELDS} values")
                self.blists.append(None)
                if c[0] == "bytes":
                    if type(c[1]) is not list or len(c[1]) != n:
                        raise ValueError("a bytes column must be a list as long as the keys")
                    self.kind[total] = COL_BYTES
                    self.blists[total] = c[1]
                else:
                    ok = c[2]
                    if ok.shape[0] != n:
                        raise ValueError("column length differs from keys")
                    self.vptr[total] = &ok[0] if n else NULL
                    self.keep.append(ok)
                    if c[0] == "float32":
                        fv = c[1]
                        if fv.shape[0] != n:
                            raise ValueError("column length differs from keys")
                        self.kind[total] = COL_FLOAT32
                        self.fptr[total] = &fv[0] if n else NULL
                        self.keep.append(fv)
                    elif c[0] == "int64":
                        iv = c[1]
                        if iv.shape[0] != n:
                            raise ValueError("column length differs from keys")
                        self.kind[total] = COL_INT64
                        self.iptr[total] = &iv[0] if n else NULL
                        self.keep.append(iv)
                    else:
                        raise ValueError(f"unknown column kind {c[0]!r}")
                total += 1

    cdef Py_ssize_t value_len(self, int j, Py_ssize_t i) except -1:
        """Bytes of field ``j``'s Value for row ``i`` (0: null)."""
        cdef Py_ssize_t m
        if self.kind[j] == COL_BYTES:
            obj = (<list>self.blists[j])[i]
            if obj is None:
                return 0
            m = PyBytes_GET_SIZE(_arg(obj, "a bytes value"))
            return 1 + varint_len(<uint64_t>m) + m
        if not self.vptr[j][i]:
            return 0
        if self.kind[j] == COL_FLOAT32:
            return 5
        return 1 + varint_len(<uint64_t>self.iptr[j][i])

    cdef int put_value(self, _Out out, int j, Py_ssize_t i, Py_ssize_t vl) except -1:
        """``0x0a len Value`` of field ``j`` for row ``i`` (``vl``: the Value's length)."""
        cdef uint8_t tmp[24]
        cdef int k = 1 + put_varint(tmp + 1, <uint64_t>vl)
        cdef bytes b
        tmp[0] = 0x0A
        if vl == 0:
            return out.put(<char*>tmp, k)
        if self.kind[j] == COL_BYTES:
            b = (<list>self.blists[j])[i]
            tmp[k] = 0x0A
            k += 1 + put_varint(tmp + k + 1, <uint64_t>PyBytes_GET_SIZE(b))
            out.put(<char*>tmp, k)
            return out.put(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        if self.kind[j] == COL_FLOAT32:
            k += encode_float_value(tmp + k, self.fptr[j][i])
        else:
            k += encode_int64_value(tmp + k, self.iptr[j][i])
        return out.put(<char*>tmp, k)

    cdef int put_packed(self, _Out out, int v, Py_ssize_t i) except -1:
        """The bulk string of view ``v``'s packed value for row ``i``."""
        cdef _View* view = &self.views[v]
        cdef Py_ssize_t total = HEADER, j, vl
        cdef uint8_t head[HEADER]
        for j in range(view.first, view.first + view.nf):
            vl = self.value_len(j, i)
            total += 1 + varint_len(<uint64_t>vl) + vl
        out.put_len(c'$', total)
        head[0] = VERSION
        memcpy(head + 1, &view.schema, 4)
        memcpy(head + 5, &view.event_us[i], 8)
        out.put(<char*>head, HEADER)
        for j in range(view.first, view.first + view.nf):
            self.put_value(out, j, i, self.value_len(j, i))
        return out.put("\r\n", 2)


def encode_mset_entities(list keys not None, list views not None):
    """One ``MSET`` per entity of every view that has a row to write for it.

    ``views[v]`` is ``(write, suffix, schema, event_us, columns)`` aligned to ``keys``
    (``write[i] == 0``: nothing for entity ``i``; ``columns`` as ``frames.columns`` gives
    them). The keys of one MSET share the entity's hash tag, so one slot on a cluster.
    Returns ``(buffer, commands)``.
    """
    cdef Py_ssize_t n = len(keys), i, el, commands = 0
    cdef int v, present
    cdef _Columns cols = _Columns(n, views)
    cdef _Out out = _Out(n * 512)
    cdef bytes k
    for i in range(n):
        present = 0
        for v in range(cols.nv):
            present += cols.views[v].write[i] != 0
        if present == 0:
            continue
        commands += 1
        k = _arg(keys[i], "an entity key")
        el = PyBytes_GET_SIZE(k)
        out.put_len(c'*', 1 + 2 * present)
        out.put("$4\r\nMSET\r\n", 10)
        for v in range(cols.nv):
            if cols.views[v].write[i]:
                out.put_key(PyBytes_AS_STRING(k), el, cols.views[v].suffix, cols.views[v].suffix_len)
                cols.put_packed(out, v, i)
    return out.finish(), commands
