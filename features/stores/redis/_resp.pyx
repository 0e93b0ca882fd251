# cython: language_level=3
"""Redis protocol (RESP2) replies, decoded in C for Feast's hash layout.

redis-py spends most of a pipelined read in Python: a list per reply, a bytes object
per value. Here replies are decoded straight from the receive buffer into the caller's
arrays (feature matrix, tag bitsets, timestamps) without a Python object per value.
Requests are built by ``_resp_build``.

Decoders are incremental: ``feed(buf, start, end)`` consumes every *complete* reply in
``buf[start:end]`` and returns where it stopped, so the caller can receive in pieces.
A reply cut by the end of the buffer is re-decoded from its start on the next call;
decoding writes each output cell from the reply alone, so that is idempotent. After an
incomplete reply ``need`` is a lower bound on the buffer index it ends at.

Replies come from the network and are not trusted: framing is scanned with the bounds
of ``_scan`` (bulk length, line length, nesting depth, element counts), and anything
outside them is ``RespProtocolError``, raised before any allocation the reply sizes.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.string cimport memcpy, memset

from features.stores._value cimport bytes_payload, decode_number, decode_timestamp
from features.stores.redis._scan cimport (
    BAD,
    BAD_VALUE,
    INCOMPLETE,
    MAX_ARRAY,
    MAX_BULK,
    MAX_DEPTH,
    MAX_LINE,
    OK,
    SERVER_ERROR,
    TOO_DEEP,
    TOO_LONG,
    TOO_MANY,
    bulk_end,
    header,
    line_end,
    skip,
)

cdef extern from "math.h":
    float NAN

# Field kinds of a decoded HMGET reply.
KIND_NUMBER = 0  # a number Value -> matrix[row, col] (NaN if missing or null)
KIND_TAGS = 1  # a bytes Value -> tags[row, :] (zero if missing or null)
KIND_TS_SECONDS = 2  # a Timestamp -> ts[row, col] seconds (0 if missing)
KIND_TS_NANOS = 3  # a Timestamp -> ts[row, col] seconds * 1e9 + nanos (0 if missing)

# Bounds every decoder enforces (see ``_scan``); the client adds its own buffer limit.
MAX_BULK_LEN = MAX_BULK
MAX_LINE_LEN = MAX_LINE
MAX_NESTING = MAX_DEPTH
MAX_ARRAY_LEN = MAX_ARRAY
# Elements a ReplyCollector accepts in one reply: it makes a Python object per element,
# so this bounds what a reply can cost beyond its own bytes.
MAX_COLLECTED = 1 << 20


class RespServerError(Exception):
    """Redis answered with an error reply (``-ERR ...``); the message is the reply text."""


class RespProtocolError(Exception):
    """The byte stream is not the RESP reply expected (wrong shape, bad framing, over a bound)."""


class RespValueError(Exception):
    """A reply's value is not the Feast Value shape its field needs."""


# --- shared -------------------------------------------------------------------------


cdef inline const uint8_t* _checked(const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t end) except? NULL:
    """The buffer's address, once ``start``/``end`` are known to lie within it."""
    if not 0 <= start <= end <= buf.shape[0]:
        raise ValueError(f"feed: start={start} end={end} outside a buffer of {buf.shape[0]} bytes")
    return &buf[0] if buf.shape[0] else NULL


cdef _refuse(int rc, Py_ssize_t pos, str what):
    """Raise the error for a refused scan (``rc < 0``) of the reply at ``pos``."""
    if rc == TOO_LONG:
        raise RespProtocolError(f"{what} at byte {pos}: a bulk string or line over the limit "
                                f"({MAX_BULK} bytes a bulk string, {MAX_LINE} a status line)")
    if rc == TOO_DEEP:
        raise RespProtocolError(f"{what} at byte {pos}: arrays nested deeper than {MAX_DEPTH}")
    if rc == TOO_MANY:
        raise RespProtocolError(f"{what} at byte {pos}: an array with more elements than this reader accepts")
    raise RespProtocolError(f"{what} at byte {pos}: malformed reply")


cdef _raise_error_reply(const uint8_t* b, Py_ssize_t pos, Py_ssize_t end):
    cdef Py_ssize_t e = 0
    line_end(b, pos + 1, end, MAX_LINE, &e)  # the scan found this line complete
    raise RespServerError((<const char*>b)[pos + 1 : e].decode("utf8", "replace"))


# --- any reply ----------------------------------------------------------------------


cdef class ReplyCounter:
    """Consumes ``expected`` replies of any kind, keeping none (bulk writes: HSET -> :n)."""

    cdef public Py_ssize_t expected, seen, need

    def __init__(self, Py_ssize_t expected):
        self.expected = expected
        self.seen = 0
        self.need = 0

    @property
    def done(self):
        return self.seen >= self.expected

    def feed(self, const uint8_t[::1] buf not None, Py_ssize_t start, Py_ssize_t end):
        cdef const uint8_t* b = _checked(buf, start, end)
        cdef Py_ssize_t pos = start, p, budget
        cdef int rc = OK
        self.need = 0
        with nogil:
            while self.seen < self.expected:
                p = pos
                budget = MAX_ARRAY
                rc = skip(b, end, &p, 0, True, &budget, &self.need)
                if rc != OK:
                    break
                pos = p
                self.seen += 1
        if rc == SERVER_ERROR:
            _raise_error_reply(b, pos, end)
        if rc < 0:
            _refuse(rc, pos, "reply")
        return pos


cdef object _value(const uint8_t* b, Py_ssize_t end, Py_ssize_t* pos):
    """One reply as a Python object. ``skip`` found it complete and within the bounds, so
    nothing here can fail, and the recursion is at most MAX_DEPTH deep."""
    cdef Py_ssize_t p = pos[0], e = 0, need = 0
    cdef int64_t n = 0
    cdef list items
    if b[p] == c'+' or b[p] == c'-':
        line_end(b, p + 1, end, MAX_LINE, &e)
        pos[0] = e + 2
        if b[p] == c'+':
            return (<const char*>b)[p + 1 : e]
        return RespServerError((<const char*>b)[p + 1 : e].decode("utf8", "replace"))
    header(b, p, end, &e, &n, &need)
    if b[p] == c':':
        pos[0] = e + 2
        return n
    if b[p] == c'$':
        bulk_end(b, e, n, end, pos, &need)
        return None if n < 0 else (<const char*>b)[e + 2 : e + 2 + n]
    pos[0] = e + 2
    if n < 0:
        return None
    items = []
    for _ in range(n):
        items.append(_value(b, end, pos))
    return items


cdef class ReplyCollector:
    """Decodes ``expected`` replies into Python objects (small control traffic only).

    Error replies become ``RespServerError`` instances in ``replies``, not exceptions, so
    a caller can retry just the command that failed (e.g. ``NOSCRIPT``). One reply holds
    at most ``max_items`` elements (each becomes an object).
    """

    cdef public Py_ssize_t expected, need, max_items
    cdef public list replies

    def __init__(self, Py_ssize_t expected, Py_ssize_t max_items=MAX_COLLECTED):
        self.expected = expected
        self.max_items = max_items
        self.replies = []
        self.need = 0

    @property
    def done(self):
        return len(self.replies) >= self.expected

    def feed(self, const uint8_t[::1] buf not None, Py_ssize_t start, Py_ssize_t end):
        cdef const uint8_t* b = _checked(buf, start, end)
        cdef Py_ssize_t pos = start, p, budget
        cdef int rc
        self.need = 0
        while len(self.replies) < self.expected:
            p = pos
            budget = self.max_items
            rc = skip(b, end, &p, 0, False, &budget, &self.need)
            if rc == INCOMPLETE:
                break
            if rc != OK:
                _refuse(rc, pos, "reply")
            self.replies.append(_value(b, end, &pos))
        return pos


# --- HMGET into arrays --------------------------------------------------------------


cdef _check_layout(const int32_t[::1] kinds, const int32_t[::1] cols, float[:, ::1] matrix,
                   uint8_t[:, ::1] tags, int64_t[:, ::1] ts):
    """Every cell a reply can write is inside the arrays (the decoder indexes unchecked)."""
    cdef Py_ssize_t f, rows = matrix.shape[0]
    if cols.shape[0] != kinds.shape[0]:
        raise ValueError(f"kinds has {kinds.shape[0]} fields, cols {cols.shape[0]}")
    for f in range(kinds.shape[0]):
        if kinds[f] == 0:
            if not 0 <= cols[f] < matrix.shape[1]:
                raise ValueError(f"field {f}: column {cols[f]} outside matrix of {matrix.shape[1]} columns")
        elif kinds[f] == 1:
            if tags.shape[0] < rows:
                raise ValueError(f"field {f}: tags has {tags.shape[0]} rows, matrix {rows}")
        elif kinds[f] == 2 or kinds[f] == 3:
            if not 0 <= cols[f] < ts.shape[1] or ts.shape[0] < rows:
                raise ValueError(f"field {f}: column {cols[f]} outside ts of shape "
                                 f"({ts.shape[0]}, {ts.shape[1]})")
        else:
            raise ValueError(f"field {f}: unknown kind {kinds[f]}")


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
    cdef public Py_ssize_t rows, row, need
    cdef Py_ssize_t nf

    def __init__(self, const int32_t[::1] kinds not None, const int32_t[::1] cols not None,
                 float[:, ::1] matrix not None, uint8_t[:, ::1] tags not None, int64_t[:, ::1] ts not None):
        _check_layout(kinds, cols, matrix, tags, ts)
        self.kinds = kinds
        self.cols = cols
        self.matrix = matrix
        self.tags = tags
        self.ts = ts
        self.rows = matrix.shape[0]
        self.row = 0
        self.need = 0
        self.nf = kinds.shape[0]

    @property
    def done(self):
        return self.row >= self.rows

    def feed(self, const uint8_t[::1] buf not None, Py_ssize_t start, Py_ssize_t end):
        cdef const uint8_t* b = _checked(buf, start, end)
        cdef Py_ssize_t pos = start
        cdef int rc = OK
        cdef Py_ssize_t bad_field = -1
        self.need = 0
        with nogil:
            while self.row < self.rows:
                rc = self._reply(b, end, &pos, &bad_field)
                if rc != OK:
                    break
                self.row += 1
        if rc == SERVER_ERROR:
            _raise_error_reply(b, pos, end)
        if rc == BAD_VALUE:
            raise RespValueError(f"row {self.row} field {bad_field}: not the Value kind the field needs")
        if rc == BAD:
            raise RespProtocolError(f"unexpected reply shape for row {self.row} at byte {pos}")
        if rc < 0:
            _refuse(rc, pos, f"row {self.row}")
        return pos

    cdef int _reply(self, const uint8_t* b, Py_ssize_t end, Py_ssize_t* pos, Py_ssize_t* bad_field) noexcept nogil:
        cdef Py_ssize_t p = pos[0], e = 0, f, after = 0
        cdef int64_t n = 0, ln = 0
        cdef int rc
        if p >= end:
            self.need = max(self.need, p + 4)
            return INCOMPLETE
        if b[p] == c'-':
            rc = line_end(b, p + 1, end, MAX_LINE, &e)
            if rc == INCOMPLETE:
                self.need = max(self.need, end + 1)
            return SERVER_ERROR if rc == OK else rc
        if b[p] != c'*':
            return BAD
        rc = header(b, p, end, &e, &n, &self.need)
        if rc != OK:
            return rc
        if n != self.nf:
            return BAD
        p = e + 2
        for f in range(self.nf):
            if p >= end:
                self.need = max(self.need, p + 5 * (self.nf - f))
                return INCOMPLETE
            if b[p] != c'$':
                return BAD
            rc = header(b, p, end, &e, &ln, &self.need)
            if rc == OK:
                rc = bulk_end(b, e, ln, end, &after, &self.need)
            if rc != OK:
                return rc
            rc = self._field(f, b + e + 2, ln)
            if rc != OK:
                bad_field[0] = f
                return rc
            p = after
        pos[0] = p
        return OK

    cdef int _field(self, Py_ssize_t f, const uint8_t* v, int64_t ln) noexcept nogil:
        """Field ``f`` of the current row from its value ``v[:ln]`` (``ln < 0``: missing)."""
        cdef int32_t kind = self.kinds[f], col = self.cols[f]
        cdef Py_ssize_t m = 0, off, width = self.tags.shape[1]
        cdef int64_t sec, ns
        cdef double d
        cdef int rc
        if kind == 1:
            if width:
                memset(&self.tags[self.row, 0], 0, width)
            if ln < 0:
                return OK
            off = bytes_payload(v, ln, &m)
            if off == -1:
                return BAD_VALUE
            if off >= 0 and width:
                memcpy(&self.tags[self.row, 0], v + off, min(m, width))
            return OK
        if kind == 0:
            if ln < 0:
                self.matrix[self.row, col] = NAN
                return OK
            rc = decode_number(v, ln, &d)
            if rc < 0:
                return BAD_VALUE
            self.matrix[self.row, col] = <float>d if rc == 0 else NAN
            return OK
        if ln < 0:  # the hash has no such field
            self.ts[self.row, col] = 0
            return OK
        if decode_timestamp(v, ln, &sec, &ns) < 0:
            return BAD_VALUE
        self.ts[self.row, col] = sec if kind == 2 else sec * 1000000000 + ns
        return OK
