# cython: language_level=3
"""The packed Redis layout's replies, decoded in C.

Layout (``features.stores.packed.layout``): key ``{<entity key>}:<project>:<view>``, value
``u8 version | u32 schema id | i64 event µs | RepeatedValue`` (each value ``0x0a len
Value``). A read is one ``MGET`` of a merchant's views per merchant (built by
``_packed_build``); the replies are decoded straight into the caller's matrix, tag bitsets
and view times, as ``_resp.HmgetDecoder`` does for Feast's hash layout. Replies come from
the network: the framing is scanned with ``_scan``'s bounds and every packed value is
checked (version, schema id, entry framing, number of values) before a cell is written.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from features.stores._value cimport bytes_payload, decode_number, get_varint
from features.stores.redis._scan cimport BAD, BAD_VALUE, INCOMPLETE, OK, SERVER_ERROR, bulk_end, header, line_end

from features.stores.redis._resp import RespProtocolError, RespServerError, RespValueError

cdef extern from "math.h":
    float NAN

# Where a view's value goes (``PackedDecoder``).
KIND_NUMBER = 0  # -> matrix[row, col]
KIND_TAGS = 1  # a bytes value -> tags[row, :]
KIND_SKIP = 2  # read past (e.g. the velocity window state)

DEF VERSION = 1
DEF HEADER = 13


cdef _raise_error_reply(const uint8_t* b, Py_ssize_t pos, Py_ssize_t end):
    cdef Py_ssize_t e = 0
    line_end(b, pos + 1, end, 65536, &e)
    raise RespServerError((<const char*>b)[pos + 1 : e].decode("utf8", "replace"))


cdef inline const uint8_t* _checked(const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t end) except? NULL:
    if not 0 <= start <= end <= buf.shape[0]:
        raise ValueError(f"feed: start={start} end={end} outside a buffer of {buf.shape[0]} bytes")
    return &buf[0] if buf.shape[0] else NULL


cdef class StampDecoder:
    """``GETRANGE`` replies of the event-time bytes: ``out[i]`` = stored µs (0: no value)."""

    cdef int64_t[::1] out
    cdef public Py_ssize_t rows, row, need

    def __init__(self, int64_t[::1] out not None):
        self.out = out
        self.rows = out.shape[0]
        self.row = 0
        self.need = 0

    @property
    def done(self):
        return self.row >= self.rows

    def feed(self, const uint8_t[::1] buf not None, Py_ssize_t start, Py_ssize_t end):
        cdef const uint8_t* b = _checked(buf, start, end)
        cdef Py_ssize_t pos = start, e = 0, after = 0
        cdef int64_t n = 0, v
        cdef int rc = OK
        self.need = 0
        while self.row < self.rows:
            if pos >= end:
                self.need = pos + 4
                rc = INCOMPLETE
                break
            if b[pos] == c'-':
                rc = SERVER_ERROR
                break
            if b[pos] != c'$':
                rc = BAD
                break
            rc = header(b, pos, end, &e, &n, &self.need)
            if rc == OK:
                rc = bulk_end(b, e, n, end, &after, &self.need)
            if rc != OK:
                break
            if n == 8:
                memcpy(&v, b + e + 2, 8)
                self.out[self.row] = v
            elif n == 0 or n == -1:
                self.out[self.row] = 0
            else:
                rc = BAD
                break
            pos = after
            self.row += 1
        if rc == SERVER_ERROR:
            _raise_error_reply(b, pos, end)
        if rc != OK and rc != INCOMPLETE:
            raise RespProtocolError(f"unexpected GETRANGE reply for row {self.row} at byte {pos}")
        return pos


cdef class PackedDecoder:
    """One ``MGET`` reply per row (one packed value per view) into matrix, tags and view times.

    ``schemas[v]`` is view ``v``'s schema id, ``first[v]``/``counts[v]`` its slice of the flat
    ``kinds``/``cols`` (one per value, see KIND_*); view ``v``'s time goes to ``ts[row, v]`` in
    seconds. Outputs must be pre-filled: ``matrix`` with NaN, ``tags`` and ``ts`` with zeros.
    """

    cdef const uint32_t[::1] schemas
    cdef const int32_t[::1] first
    cdef const int32_t[::1] counts
    cdef const int32_t[::1] kinds
    cdef const int32_t[::1] cols
    cdef float[:, ::1] matrix
    cdef uint8_t[:, ::1] tags
    cdef int64_t[:, ::1] ts
    cdef public Py_ssize_t rows, row, need
    cdef Py_ssize_t nv
    cdef Py_ssize_t bad_view

    def __init__(self, const uint32_t[::1] schemas not None, const int32_t[::1] first not None,
                 const int32_t[::1] counts not None, const int32_t[::1] kinds not None,
                 const int32_t[::1] cols not None, float[:, ::1] matrix not None,
                 uint8_t[:, ::1] tags not None, int64_t[:, ::1] ts not None):
        cdef Py_ssize_t v, f
        self.nv = schemas.shape[0]
        if first.shape[0] != self.nv or counts.shape[0] != self.nv or kinds.shape[0] != cols.shape[0]:
            raise ValueError("schemas, first and counts must have one entry a view; kinds and cols one a value")
        if ts.shape[1] < self.nv or ts.shape[0] < matrix.shape[0] or tags.shape[0] < matrix.shape[0]:
            raise ValueError("ts needs a column a view and every output a row a matrix row")
        for v in range(self.nv):
            if first[v] < 0 or counts[v] < 0 or first[v] + counts[v] > kinds.shape[0]:
                raise ValueError(f"view {v}: values {first[v]}..{first[v] + counts[v]} outside kinds")
        for f in range(kinds.shape[0]):
            if kinds[f] == 0 and not 0 <= cols[f] < matrix.shape[1]:
                raise ValueError(f"value {f}: column {cols[f]} outside a matrix of {matrix.shape[1]}")
            if not 0 <= kinds[f] <= 2:
                raise ValueError(f"value {f}: unknown kind {kinds[f]}")
        self.schemas, self.first, self.counts, self.kinds, self.cols = schemas, first, counts, kinds, cols
        self.matrix, self.tags, self.ts = matrix, tags, ts
        self.rows = matrix.shape[0]
        self.row = 0
        self.need = 0

    @property
    def done(self):
        return self.row >= self.rows

    def feed(self, const uint8_t[::1] buf not None, Py_ssize_t start, Py_ssize_t end):
        cdef const uint8_t* b = _checked(buf, start, end)
        cdef Py_ssize_t pos = start
        cdef int rc = OK
        self.need = 0
        with nogil:
            while self.row < self.rows:
                rc = self._reply(b, end, &pos)
                if rc != OK:
                    break
                self.row += 1
        if rc == SERVER_ERROR:
            _raise_error_reply(b, pos, end)
        if rc == BAD_VALUE:
            raise RespValueError(f"row {self.row} view {self.bad_view}: not a packed value of this view's schema")
        if rc != OK and rc != INCOMPLETE:
            raise RespProtocolError(f"unexpected MGET reply for row {self.row} at byte {pos}")
        return pos

    cdef int _reply(self, const uint8_t* b, Py_ssize_t end, Py_ssize_t* pos) noexcept nogil:
        cdef Py_ssize_t p = pos[0], e = 0, v, after = 0
        cdef int64_t n = 0, ln = 0
        cdef int rc
        if p >= end:
            self.need = max(self.need, p + 4)
            return INCOMPLETE
        if b[p] == c'-':
            rc = line_end(b, p + 1, end, 65536, &e)
            if rc == INCOMPLETE:
                self.need = max(self.need, end + 1)
            return SERVER_ERROR if rc == OK else rc
        if b[p] != c'*':
            return BAD
        rc = header(b, p, end, &e, &n, &self.need)
        if rc != OK:
            return rc
        if n != self.nv:
            return BAD
        p = e + 2
        for v in range(self.nv):
            if p >= end:
                self.need = max(self.need, p + 5 * (self.nv - v))
                return INCOMPLETE
            if b[p] != c'$':
                return BAD
            rc = header(b, p, end, &e, &ln, &self.need)
            if rc == OK:
                rc = bulk_end(b, e, ln, end, &after, &self.need)
            if rc != OK:
                return rc
            if ln >= 0 and self._view(v, b + e + 2, ln) != OK:
                self.bad_view = v
                return BAD_VALUE
            p = after
        pos[0] = p
        return OK

    cdef int _view(self, Py_ssize_t v, const uint8_t* s, Py_ssize_t n) noexcept nogil:
        """View ``v`` of the current row from its packed value ``s[:n]``."""
        cdef uint32_t schema
        cdef int64_t event_us
        cdef uint64_t ln = 0
        cdef Py_ssize_t i = HEADER, f, last = self.first[v] + self.counts[v], off, m = 0
        cdef Py_ssize_t width = self.tags.shape[1]
        cdef double d
        cdef int rc
        if n < HEADER or s[0] != VERSION:
            return BAD_VALUE
        memcpy(&schema, s + 1, 4)
        memcpy(&event_us, s + 5, 8)
        if schema != self.schemas[v]:
            return BAD_VALUE
        for f in range(self.first[v], last):
            if i >= n or s[i] != 0x0A:
                return BAD_VALUE
            i = get_varint(s, n, i + 1, &ln)
            if i < 0 or ln > <uint64_t>(n - i):
                return BAD_VALUE
            if self.kinds[f] == 0:
                rc = decode_number(s + i, <Py_ssize_t>ln, &d)
                if rc < 0:
                    return BAD_VALUE
                self.matrix[self.row, self.cols[f]] = <float>d if rc == 0 else NAN
            elif self.kinds[f] == 1:
                off = bytes_payload(s + i, <Py_ssize_t>ln, &m)
                if off == -1:
                    return BAD_VALUE
                if width:
                    memset(&self.tags[self.row, 0], 0, width)
                    if off >= 0:
                        memcpy(&self.tags[self.row, 0], s + i + off, min(m, width))
            i += <Py_ssize_t>ln
        if i != n:
            return BAD_VALUE  # more values than the schema has
        self.ts[self.row, v] = event_us // 1000000
        return OK


