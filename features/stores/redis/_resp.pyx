# cython: language_level=3
"""Redis protocol (RESP2) replies, decoded in C for Feast's hash layout.

redis-py spends most of a pipelined read in Python: a list per reply, a bytes object
per value. Here replies are decoded straight from the receive buffer into the caller's
arrays (feature matrix, tag bitsets, timestamps) without a Python object per value.
Requests are built by ``_resp_build``.

Decoders are incremental: ``feed(buf, start, end)`` consumes every *complete* reply in
``buf[start:end]`` and returns where it stopped, so the caller can receive in pieces.
A reply cut by the end of the buffer is re-decoded from its start on the next call;
decoding writes each output cell from the reply alone, so that is idempotent.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.string cimport memchr, memcpy, memset

from features.stores._value cimport bytes_payload, decode_number, decode_timestamp

cdef extern from "math.h":
    float NAN

# Field kinds of a decoded HMGET reply.
KIND_NUMBER = 0  # a number Value -> matrix[row, col] (NaN if missing or null)
KIND_TAGS = 1  # a bytes Value -> tags[row, :] (zero if missing or null)
KIND_TS_SECONDS = 2  # a Timestamp -> ts[row, col] seconds (0 if missing)
KIND_TS_NANOS = 3  # a Timestamp -> ts[row, col] seconds * 1e9 + nanos (0 if missing)


class RespServerError(Exception):
    """Redis answered with an error reply (``-ERR ...``); the message is the reply text."""


class RespProtocolError(Exception):
    """The byte stream is not the RESP reply expected (wrong shape, bad framing)."""


class RespValueError(Exception):
    """A reply's value is not the Feast Value shape its field needs."""


# --- decoding replies ---------------------------------------------------------------


cdef inline Py_ssize_t _line(const uint8_t* b, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
    """Index of the ``\\r`` ending the line that starts at ``pos``, or -1 if not all here."""
    cdef const uint8_t* r
    while pos < end:
        r = <const uint8_t*>memchr(b + pos, c'\r', end - pos)
        if r == NULL:
            return -1
        pos = r - b
        if pos + 1 >= end:
            return -1
        if b[pos + 1] == c'\n':
            return pos
        pos += 1
    return -1


cdef inline int _int(const uint8_t* b, Py_ssize_t pos, Py_ssize_t stop, int64_t* out) noexcept nogil:
    """Parse a decimal integer in ``b[pos:stop]``; 0 ok, -1 malformed."""
    cdef int64_t v = 0
    cdef bint neg = False
    if pos < stop and b[pos] == c'-':
        neg = True
        pos += 1
    if pos >= stop:
        return -1
    while pos < stop:
        if b[pos] < c'0' or b[pos] > c'9':
            return -1
        v = v * 10 + (b[pos] - c'0')
        pos += 1
    out[0] = -v if neg else v
    return 0


# Status of a C-level scan.
cdef enum:
    OK = 0
    INCOMPLETE = 1
    BAD = -1
    SERVER_ERROR = -2


cdef int _skip(const uint8_t* b, Py_ssize_t end, Py_ssize_t* pos, int depth) noexcept nogil:
    """Step over one complete reply of any type; OK / INCOMPLETE / BAD / SERVER_ERROR
    (an error reply at the top level: ``pos`` is left at it)."""
    cdef Py_ssize_t p = pos[0], e
    cdef int64_t n, i
    cdef int rc
    if p >= end:
        return INCOMPLETE
    e = _line(b, p + 1, end)
    if e < 0:
        return INCOMPLETE
    if b[p] == c'+' or b[p] == c':':
        pos[0] = e + 2
        return OK
    if b[p] == c'-':
        if depth == 0:
            return SERVER_ERROR
        pos[0] = e + 2
        return OK
    if _int(b, p + 1, e, &n) < 0:
        return BAD
    if b[p] == c'$':
        if n < 0:
            pos[0] = e + 2
            return OK
        if e + 2 + n + 2 > end:
            return INCOMPLETE
        pos[0] = e + 2 + n + 2
        return OK
    if b[p] == c'*':
        p = e + 2
        for i in range(max(n, 0)):
            rc = _skip(b, end, &p, depth + 1)
            if rc != OK:
                return rc
        pos[0] = p
        return OK
    return BAD


cdef _raise_error_reply(const uint8_t* b, Py_ssize_t pos, Py_ssize_t end):
    cdef Py_ssize_t e = _line(b, pos, end)
    raise RespServerError((<const char*>b)[pos + 1 : e].decode("utf8", "replace"))


cdef class ReplyCounter:
    """Consumes ``expected`` replies of any kind, keeping none (bulk writes: HSET -> :n)."""

    cdef public Py_ssize_t expected, seen

    def __init__(self, Py_ssize_t expected):
        self.expected = expected
        self.seen = 0

    @property
    def done(self):
        return self.seen >= self.expected

    def feed(self, const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t end):
        cdef const uint8_t* b = &buf[0] if buf.shape[0] else NULL
        cdef Py_ssize_t pos = start
        cdef int rc = OK
        with nogil:
            while self.seen < self.expected:
                rc = _skip(b, end, &pos, 0)
                if rc != OK:
                    break
                self.seen += 1
        if rc == SERVER_ERROR:
            _raise_error_reply(b, pos, end)
        if rc == BAD:
            raise RespProtocolError(f"malformed reply at byte {pos}")
        return pos


cdef object _value(const uint8_t* b, Py_ssize_t end, Py_ssize_t* pos):
    """One complete reply as a Python object (the caller checked it is complete)."""
    cdef Py_ssize_t p = pos[0], e = _line(b, p + 1, end)
    cdef int64_t n = 0
    cdef list items
    if b[p] == c'+':
        pos[0] = e + 2
        return (<const char*>b)[p + 1 : e]
    if b[p] == c'-':
        pos[0] = e + 2
        return RespServerError((<const char*>b)[p + 1 : e].decode("utf8", "replace"))
    _int(b, p + 1, e, &n)
    if b[p] == c':':
        pos[0] = e + 2
        return n
    if b[p] == c'$':
        if n < 0:
            pos[0] = e + 2
            return None
        pos[0] = e + 2 + n + 2
        return (<const char*>b)[e + 2 : e + 2 + n]
    items = []
    pos[0] = e + 2
    for _ in range(max(n, 0)):
        items.append(_value(b, end, pos))
    return None if n < 0 else items


cdef class ReplyCollector:
    """Decodes ``expected`` replies into Python objects (small control traffic only).

    Error replies become ``RespServerError`` instances in ``replies``, not exceptions, so
    a caller can retry just the command that failed (e.g. ``NOSCRIPT``).
    """

    cdef public Py_ssize_t expected
    cdef public list replies

    def __init__(self, Py_ssize_t expected):
        self.expected = expected
        self.replies = []

    @property
    def done(self):
        return len(self.replies) >= self.expected

    def feed(self, const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t end):
        cdef const uint8_t* b = &buf[0] if buf.shape[0] else NULL
        cdef Py_ssize_t pos = start, p
        cdef int rc
        while len(self.replies) < self.expected:
            p = pos
            rc = _skip(b, end, &p, 1)  # depth 1: a top-level error reply is a value here
            if rc == INCOMPLETE:
                break
            if rc == BAD:
                raise RespProtocolError(f"malformed reply at byte {pos}")
            self.replies.append(_value(b, end, &pos))
        return pos


cdef class HmgetDecoder:
    """Decodes one HMGET reply per row into a float32 matrix, tag bitsets and timestamps.

    ``kinds[f]`` and ``cols[f]`` say where field ``f`` of each reply goes (see KIND_*).
    Outputs must be pre-filled: ``matrix`` with NaN, ``tags`` and ``ts`` with zeros.
    """

    cdef const int32_t[::1] kinds
    cdef const int32_t[::1] cols
    cdef float[:, ::1] matrix
    cdef uint8_t[:, ::1] tags
    cdef int64_t[:, ::1] ts
    cdef public Py_ssize_t rows, row
    cdef Py_ssize_t nf

    def __init__(self, const int32_t[::1] kinds, const int32_t[::1] cols, float[:, ::1] matrix,
                 uint8_t[:, ::1] tags, int64_t[:, ::1] ts):
        self.kinds = kinds
        self.cols = cols
        self.matrix = matrix
        self.tags = tags
        self.ts = ts
        self.rows = matrix.shape[0]
        self.row = 0
        self.nf = kinds.shape[0]

    @property
    def done(self):
        return self.row >= self.rows

    def feed(self, const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t end):
        cdef const uint8_t* b = &buf[0] if buf.shape[0] else NULL
        cdef Py_ssize_t pos = start
        cdef int rc = OK
        cdef Py_ssize_t bad_field = -1
        with nogil:
            while self.row < self.rows:
                rc = self._reply(b, end, &pos, &bad_field)
                if rc != OK:
                    break
                self.row += 1
        if rc == SERVER_ERROR:
            _raise_error_reply(b, pos, end)
        if rc == BAD:
            raise RespProtocolError(f"unexpected reply shape for row {self.row} at byte {pos}")
        if rc == 2:
            raise RespValueError(f"row {self.row} field {bad_field}: not the Value kind the field needs")
        return pos

    cdef int _reply(self, const uint8_t* b, Py_ssize_t end, Py_ssize_t* pos, Py_ssize_t* bad_field) noexcept nogil:
        cdef Py_ssize_t p = pos[0], e, f, m, off
        cdef int64_t n, ln, sec, ns
        cdef int32_t kind, col
        cdef double d
        cdef int rc
        if p >= end:
            return INCOMPLETE
        e = _line(b, p + 1, end)
        if e < 0:
            return INCOMPLETE
        if b[p] == c'-':
            return SERVER_ERROR
        if b[p] != c'*' or _int(b, p + 1, e, &n) < 0 or n != self.nf:
            return BAD
        p = e + 2
        for f in range(self.nf):
            if p >= end:
                return INCOMPLETE
            e = _line(b, p + 1, end)
            if e < 0:
                return INCOMPLETE
            if b[p] != c'$' or _int(b, p + 1, e, &ln) < 0:
                return BAD
            p = e + 2
            kind = self.kinds[f]
            col = self.cols[f]
            if ln < 0:  # the hash has no such field
                if kind == 0:
                    self.matrix[self.row, col] = NAN
                elif kind == 1:
                    memset(&self.tags[self.row, 0], 0, self.tags.shape[1])
                else:
                    self.ts[self.row, col] = 0
                continue
            if p + ln + 2 > end:
                return INCOMPLETE
            if kind == 0:
                rc = decode_number(b + p, ln, &d)
                if rc == 0:
                    self.matrix[self.row, col] = <float>d
                elif rc == 1:
                    self.matrix[self.row, col] = NAN
                else:
                    bad_field[0] = f
                    return 2
            elif kind == 1:
                memset(&self.tags[self.row, 0], 0, self.tags.shape[1])
                off = bytes_payload(b + p, ln, &m)
                if off == -1:
                    bad_field[0] = f
                    return 2
                if off >= 0:
                    memcpy(&self.tags[self.row, 0], b + p + off, min(m, self.tags.shape[1]))
            else:
                if decode_timestamp(b + p, ln, &sec, &ns) < 0:
                    bad_field[0] = f
                    return 2
                self.ts[self.row, col] = sec if kind == 2 else sec * 1000000000 + ns
            p += ln + 2
        pos[0] = p
        return OK
