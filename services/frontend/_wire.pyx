# cython: language_level=3
"""The creditauth.v1 wire format, decoded into and encoded from records, in C.

Python protobuf objects cost several microseconds per request and per response; for a
batch of a thousand that is most of the front end's time. This module reads
``AuthorizeRequest`` bytes straight into ``REQUEST_DTYPE`` records and writes
``AuthorizeResponse`` bytes straight from ``DECISION_DTYPE`` records. It knows no field
by name: ``services.frontend.wire`` compiles the declaration (``services.schema``) and
the proto's descriptors into the tables below, once per process, and this module
interprets them.

Protobuf rules honoured: unknown fields (and known fields with another wire type) are
skipped, a repeated scalar takes the last value, an embedded message seen twice is
merged, proto3 defaults are omitted on output, fields are written in field-number order.

Every entry point checks what it is given: table shapes, record sizes, indices into
string tables, nesting depth; a message it cannot read is a ``WireError``, an answer it
cannot encode an ``EncodeError`` (``INTERNAL``), never a read outside a buffer. What is
echoed back is bounded: an application id only when it is a valid id, error texts cut to
``MAX_TEXT`` characters.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.math cimport NAN
from libc.string cimport memcpy, memmove, memset

import numpy as np

from services.errors import InternalError

cimport numpy as cnp

cnp.import_array()

# Decoder route columns: message, field number, wire type, slot, child message (-1: none).
DEF R_COLS = 5
# Decoder column spec: slot, parent slot, rule, lo, hi, enum mask, optional, offset, width,
# kind, wire32 (an int32 on the wire: sign-extend from 32 bits).
DEF C_COLS = 11
# Encoder op: code, field, offset, stride, width, table, aux.
DEF O_COLS = 7
DEF MAX_SLOTS = 32
DEF MAX_MESSAGES = 8
DEF MAX_DEPTH = 4

# Rules (services.frontend.wire.RULES) and verdicts (VERDICTS).
DEF RULE_NONE = 0
DEF RULE_ID = 1
DEF RULE_RANGE = 2
DEF RULE_ENUM = 3
DEF RULE_CURRENCY = 4
DEF V_REQUIRED = 1
DEF V_PARENT = 2
DEF V_PATTERN = 3
DEF V_LOW = 4
DEF V_HIGH = 5
DEF V_ENUM = 6
DEF V_TABLE = 7
# How a column is stored: bytes, signed int, double (NaN when the optional field is absent).
DEF K_BYTES = 0
DEF K_INT = 1
DEF K_DOUBLE = 2
# Encoder op codes.
DEF OP_OPEN = 1
DEF OP_CLOSE = 2
DEF OP_VARINT = 3
DEF OP_BOOL = 4
DEF OP_DOUBLE = 5
DEF OP_STRING = 6
DEF OP_TABLE = 7
DEF OP_REPEAT = 8
DEF OP_END = 9
# Echo bounds: an application id echoed in an error (services.schema.columns.MAX_ID), the
# characters of an error's field and message, the bytes of an encoder table entry or message.
DEF ECHO_ID = 64
DEF TEXT_CHARS = 1024
DEF TEXT_BYTES = 4096
# Item statuses are google.rpc codes: 0 (decided) .. 16 (UNAUTHENTICATED).
DEF MAX_CODE = 16
DEF MAX_EXTRA = 16384  # bytes of an item error's own details (a BadRequest: a field and a message, bounded)
MAX_ID = ECHO_ID
MAX_TEXT = TEXT_CHARS


class WireError(ValueError):
    """The bytes are not a well-formed message of the expected type."""


class EncodeError(InternalError, ValueError):
    """Decision records, tables or positions that do not make a response (an inconsistent answer)."""


class Violation(ValueError):
    """A decoded request breaks a rule: ``column`` (index in the declaration), ``verdict``,
    the value (``number``, or ``text`` for strings) and the request's ``application_id``."""

    def __init__(self, int column, int verdict, long long number, bytes text, bytes app):
        super().__init__(column, verdict)
        self.column = column
        self.verdict = verdict
        self.number = number
        self.text = text
        self.app = app


cdef struct Reader:
    const uint8_t* p
    const uint8_t* end


cdef struct Slot:
    bint present
    int64_t value
    const uint8_t* ptr
    Py_ssize_t length


cdef inline int read_varint(Reader* r, uint64_t* out) noexcept nogil:
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t byte
    while r.p < r.end:
        byte = r.p[0]
        r.p += 1
        v |= (<uint64_t>(byte & 0x7F)) << shift
        shift += 7
        if (byte & 0x80) == 0:
            out[0] = v
            return 0
        if shift >= 70:
            return -1
    return -1


cdef inline int skip_field(Reader* r, uint32_t wire) noexcept nogil:
    cdef uint64_t n
    if wire == 0:
        return read_varint(r, &n)
    if wire == 1:
        if r.end - r.p < 8:
            return -1
        r.p += 8
        return 0
    if wire == 2:
        if read_varint(r, &n) < 0 or <uint64_t>(r.end - r.p) < n:
            return -1
        r.p += n
        return 0
    if wire == 5:
        if r.end - r.p < 4:
            return -1
        r.p += 4
        return 0
    return -1


cdef inline bint valid_id(const uint8_t* p, Py_ssize_t n, Py_ssize_t max_len) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint8_t c
    if n < 1 or n > max_len:
        return False
    for i in range(n):
        c = p[i]
        if not ((c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122)
                or c == 46 or c == 95 or c == 58 or c == 45):
            return False
    return True


cdef inline int lookup_code(const uint8_t* p, Py_ssize_t n, const uint8_t* table, int count) noexcept nogil:
    cdef int k
    if n != 3:
        return -1
    for k in range(count):
        if p[0] == table[3 * k] and p[1] == table[3 * k + 1] and p[2] == table[3 * k + 2]:
            return k
    return -1


cdef inline void store_int(uint8_t* dst, int width, int64_t v) noexcept nogil:
    cdef int8_t a
    cdef int16_t b
    cdef int32_t c
    if width == 1:
        a = <int8_t>v
        memcpy(dst, &a, 1)
    elif width == 2:
        b = <int16_t>v
        memcpy(dst, &b, 2)
    elif width == 4:
        c = <int32_t>v
        memcpy(dst, &c, 4)
    else:
        memcpy(dst, &v, 8)


cdef inline int64_t load_int(const uint8_t* src, int width) noexcept nogil:
    cdef int8_t a
    cdef int16_t b
    cdef int32_t c
    cdef int64_t d
    if width == 1:
        memcpy(&a, src, 1)
        return a
    if width == 2:
        memcpy(&b, src, 2)
        return b
    if width == 4:
        memcpy(&c, src, 4)
        return c
    memcpy(&d, src, 8)
    return d


cdef inline int64_t max_index(const uint8_t* p, int64_t stride, int width, int64_t count) noexcept nogil:
    """The largest of ``count`` indices ``stride`` bytes apart (one branch per call, not per element)."""
    cdef int64_t e, m = -1
    cdef int16_t h, hm = -1
    if width == 2 and stride == 2:  # the reason indices: a constant stride the compiler vectorizes
        for e in range(count):
            memcpy(&h, p + 2 * e, 2)
            hm = max(hm, h)
        return hm
    for e in range(count):
        m = max(m, load_int(p + e * stride, width))
    return m


cdef class RequestCodec:
    """Decodes ``AuthorizeRequest`` / ``AuthorizeBatchRequest`` bytes into request records."""

    cdef int64_t[:, ::1] routes
    cdef int64_t[:, ::1] cols
    cdef int n_slots, n_cols, itemsize, deadline_offset, caller_offset, max_id
    cdef bytes currencies
    cdef const uint8_t* cur
    cdef int n_cur
    cdef object dtype

    def __init__(self, routes, cols, int n_slots, bytes currencies, dtype, int deadline_offset,
                 int caller_offset, int max_id):
        routes = np.ascontiguousarray(routes, dtype=np.int64)
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        if routes.ndim != 2 or routes.shape[1] != R_COLS or cols.ndim != 2 or cols.shape[1] != C_COLS:
            raise ValueError("codec tables have the wrong shape")
        if not 0 < n_slots <= MAX_SLOTS or len(currencies) % 3:
            raise ValueError("codec tables out of range")
        self.itemsize = dtype.itemsize
        for row in routes:
            if not (0 <= row[0] < MAX_MESSAGES and 0 <= row[3] < n_slots and -1 <= row[4] < MAX_MESSAGES):
                raise ValueError(f"bad route {list(row)}")
        for row in cols:
            if not (0 <= row[0] < n_slots and -1 <= row[1] < n_slots and 0 <= row[7]
                    and row[7] + row[8] <= self.itemsize and row[8] in (1, 2, 4, 8, max_id)):
                raise ValueError(f"bad column spec {list(row)}")
        if not 0 <= deadline_offset <= self.itemsize - 8:
            raise ValueError("bad deadline offset")
        if not 0 <= caller_offset <= self.itemsize - max_id:
            raise ValueError("bad caller offset")
        self.caller_offset = caller_offset
        self.routes = routes
        self.cols = cols
        self.n_slots = n_slots
        self.n_cols = cols.shape[0]
        self.currencies = currencies  # keeps ``cur`` alive
        self.cur = <const uint8_t*>PyBytes_AS_STRING(currencies)
        self.n_cur = <int>(len(currencies) // 3)
        self.dtype = dtype
        self.deadline_offset = deadline_offset
        self.max_id = max_id

    cdef int parse(self, Reader* r, int msg, Slot* slots, int depth) noexcept nogil:
        cdef uint64_t key, v
        cdef uint32_t field, wire
        cdef Py_ssize_t k
        cdef int slot, child
        cdef Reader sub
        if depth > MAX_DEPTH:
            return -1
        while r.p < r.end:
            if read_varint(r, &key) < 0:
                return -1
            field = <uint32_t>(key >> 3)
            wire = <uint32_t>(key & 7)
            slot = -1
            for k in range(self.routes.shape[0]):
                if self.routes[k, 0] == msg and self.routes[k, 1] == field and self.routes[k, 2] == wire:
                    slot = <int>self.routes[k, 3]
                    child = <int>self.routes[k, 4]
                    break
            if slot < 0:
                if skip_field(r, wire) < 0:
                    return -1
                continue
            if wire == 0:
                if read_varint(r, &v) < 0:
                    return -1
                slots[slot].present = True
                slots[slot].value = <int64_t>v
            else:  # length-delimited: a string or an embedded message
                if read_varint(r, &v) < 0 or <uint64_t>(r.end - r.p) < v:
                    return -1
                slots[slot].present = True
                if child >= 0:
                    sub.p = r.p
                    sub.end = r.p + v
                    if self.parse(&sub, child, slots, depth + 1) < 0:
                        return -1
                else:
                    slots[slot].ptr = r.p
                    slots[slot].length = <Py_ssize_t>v
                r.p += v
        return 0

    cdef inline int64_t number(self, Py_ssize_t c, Slot* s) noexcept nogil:
        return <int64_t><int32_t>s.value if self.cols[c, 10] else s.value

    cdef int check(self, Slot* slots, int* verdict) noexcept nogil:
        """Index of the first column breaking its rule (its verdict set), or -1."""
        cdef Py_ssize_t c
        cdef Slot* s
        cdef int64_t v, rule
        cdef const uint8_t* table = self.cur
        cdef int count = self.n_cur
        for c in range(self.n_cols):
            if self.cols[c, 1] >= 0 and not slots[self.cols[c, 1]].present:
                verdict[0] = V_PARENT
                return <int>c
            s = &slots[self.cols[c, 0]]
            rule = self.cols[c, 2]
            if rule == RULE_ID:
                if s.length == 0:
                    verdict[0] = V_REQUIRED
                    return <int>c
                if not valid_id(s.ptr, s.length, self.max_id):
                    verdict[0] = V_PATTERN
                    return <int>c
            elif rule == RULE_RANGE:
                if self.cols[c, 6] and not s.present:
                    continue
                v = self.number(c, s)
                if v < self.cols[c, 3]:
                    verdict[0] = V_LOW
                    return <int>c
                if v > self.cols[c, 4]:
                    verdict[0] = V_HIGH
                    return <int>c
            elif rule == RULE_ENUM:
                v = <int64_t><int32_t>s.value
                if v < 0 or v > 63 or not ((self.cols[c, 5] >> v) & 1):
                    verdict[0] = V_ENUM
                    return <int>c
            elif rule == RULE_CURRENCY:
                if lookup_code(s.ptr, s.length, table, count) < 0:
                    verdict[0] = V_TABLE
                    return <int>c
        return -1

    cdef void store(self, Slot* slots, uint8_t* rec, double deadline, const Slot* caller) noexcept nogil:
        cdef Py_ssize_t c
        cdef Slot* s
        cdef int width, kind
        cdef int64_t v
        cdef double d
        cdef const uint8_t* table = self.cur
        cdef int count = self.n_cur
        for c in range(self.n_cols):
            s = &slots[self.cols[c, 0]]
            width = <int>self.cols[c, 8]
            kind = <int>self.cols[c, 9]
            if self.cols[c, 2] == RULE_CURRENCY:
                store_int(rec + self.cols[c, 7], width, lookup_code(s.ptr, s.length, table, count))
            elif kind == K_BYTES:
                memcpy(rec + self.cols[c, 7], s.ptr, s.length if s.length < width else width)
            elif kind == K_DOUBLE:
                d = <double>self.number(c, s) if (s.present or not self.cols[c, 6]) else NAN
                memcpy(rec + self.cols[c, 7], &d, 8)
            else:
                store_int(rec + self.cols[c, 7], width, self.number(c, s))
        memcpy(rec + self.deadline_offset, &deadline, 8)
        memcpy(rec + self.caller_offset, caller.ptr, caller.length)

    cdef int read_one(self, const uint8_t* p, Py_ssize_t n, uint8_t* rec, double deadline,
                      const Slot* caller, int* verdict, Slot* slots) noexcept nogil:
        """0: ``rec`` holds the request; -1: malformed; -2: a violation (``slots`` kept)."""
        cdef Reader r
        memset(slots, 0, sizeof(Slot) * MAX_SLOTS)
        r.p = p
        r.end = p + n
        if self.parse(&r, 0, slots, 0) < 0:
            return -1
        if self.check(slots, verdict) >= 0:
            return -2
        self.store(slots, rec, deadline, caller)
        return 0

    cdef object violation(self, Slot* slots, int verdict):
        cdef int c = self.check(slots, &verdict)
        cdef Slot* s = &slots[self.cols[c, 0]]
        cdef Slot* app = &slots[self.cols[0, 0]]
        text = PyBytes_FromStringAndSize(<const char*>s.ptr, s.length) if s.ptr != NULL else b""
        number = self.number(c, s)
        app_id = b""
        if app.ptr != NULL and self.cols[c, 0] != self.cols[0, 0]:  # an invalid id is not echoed
            app_id = PyBytes_FromStringAndSize(<const char*>app.ptr, app.length)
        return Violation(c, verdict, number, text, app_id)

    cdef Slot caller_slot(self, bytes caller) except *:
        """The caller's name as the record stores it (at most ``max_id`` bytes, checked)."""
        cdef Slot c
        if PyBytes_GET_SIZE(caller) > self.max_id:
            raise ValueError(f"caller name longer than {self.max_id} bytes")
        c.ptr = <const uint8_t*>PyBytes_AS_STRING(caller)
        c.length = PyBytes_GET_SIZE(caller)
        return c

    def decode_one(self, bytes data not None, double deadline, bytes caller not None=b""):
        """One ``AuthorizeRequest`` as a ``bytes`` record; raises ``Violation`` or ``WireError``."""
        cdef Slot slots[MAX_SLOTS]
        cdef int verdict = 0
        cdef Slot who = self.caller_slot(caller)
        out = PyBytes_FromStringAndSize(NULL, self.itemsize)
        cdef uint8_t* rec = <uint8_t*>PyBytes_AS_STRING(out)
        memset(rec, 0, self.itemsize)
        rc = self.read_one(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), rec, deadline,
                           &who, &verdict, slots)
        if rc == -1:
            raise WireError("malformed AuthorizeRequest")
        if rc == -2:
            raise self.violation(slots, verdict)
        return out

    def decode_batch(self, bytes data not None, double deadline, Py_ssize_t max_items,
                     bytes caller not None=b""):
        """An ``AuthorizeBatchRequest``: ``(total, index, rows, violations)``.

        ``rows`` holds the valid requests (``index[k]`` is the position of ``rows[k]`` in the
        call); ``violations`` lists ``(position, Violation)``. Items are counted before
        anything is allocated: more than ``max_items`` raises ``OverflowError`` with the count.
        """
        cdef const uint8_t* base = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef Reader r
        cdef uint64_t key, v
        cdef Py_ssize_t n = 0, i, k = 0
        cdef Slot slots[MAX_SLOTS]
        cdef int verdict, rc
        cdef Slot who = self.caller_slot(caller)
        r.p = base
        r.end = base + PyBytes_GET_SIZE(data)
        while r.p < r.end:  # count first: an oversized call allocates nothing
            if read_varint(&r, &key) < 0:
                raise WireError("truncated AuthorizeBatchRequest")
            if key == ((1 << 3) | 2):
                if read_varint(&r, &v) < 0 or <uint64_t>(r.end - r.p) < v:
                    raise WireError("truncated AuthorizeBatchRequest")
                r.p += v
                n += 1
            elif skip_field(&r, <uint32_t>(key & 7)) < 0:
                raise WireError("malformed AuthorizeBatchRequest")
        if n > max_items:
            raise OverflowError(n)
        rows = np.zeros(n, dtype=self.dtype)
        cdef cnp.ndarray[cnp.int32_t] index = np.empty(n, dtype=np.int32)
        cdef uint8_t* out = <uint8_t*>cnp.PyArray_DATA(rows)
        violations = []
        r.p = base
        i = 0
        while r.p < r.end:
            read_varint(&r, &key)
            if key != ((1 << 3) | 2):
                skip_field(&r, <uint32_t>(key & 7))
                continue
            read_varint(&r, &v)
            rc = self.read_one(r.p, <Py_ssize_t>v, out + k * self.itemsize, deadline, &who, &verdict, slots)
            r.p += v
            if rc == -1:
                raise WireError(f"malformed AuthorizeRequest at position {i}")
            if rc == -2:
                violations.append((i, self.violation(slots, verdict)))
                # The slot is reused by the next valid request: clear what this one wrote.
                memset(out + k * self.itemsize, 0, self.itemsize)
            else:
                index[k] = <int32_t>i
                k += 1
            i += 1
        return n, index[:k], rows[:k], violations


# -- encoding -------------------------------------------------------------------

cdef struct Buf:
    uint8_t* p
    Py_ssize_t n
    Py_ssize_t cap


cdef inline int grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t want = b.n + extra
    cdef uint8_t* q
    if want <= b.cap:
        return 0
    while b.cap < want:
        b.cap = b.cap * 2 if b.cap else 4096
    q = <uint8_t*>realloc(b.p, b.cap)
    if q == NULL:
        raise MemoryError()
    b.p = q
    return 0


cdef inline void put_varint(Buf* b, uint64_t v) noexcept:
    while v >= 0x80:
        b.p[b.n] = <uint8_t>((v & 0x7F) | 0x80)
        b.n += 1
        v >>= 7
    b.p[b.n] = <uint8_t>v
    b.n += 1


cdef inline int put_bytes(Buf* b, uint32_t field, const char* s, Py_ssize_t n) except -1:
    if n == 0:
        return 0
    grow(b, n + 16)
    put_varint(b, (field << 3) | 2)
    put_varint(b, <uint64_t>n)
    memcpy(b.p + b.n, s, n)
    b.n += n
    return 0


cdef inline int put_int(Buf* b, uint32_t field, int64_t v) except -1:
    if v == 0:
        return 0
    grow(b, 16)
    put_varint(b, field << 3)
    put_varint(b, <uint64_t>v)
    return 0


cdef inline int put_double(Buf* b, uint32_t field, double v) except -1:
    cdef uint64_t bits
    if v == 0.0:
        memcpy(&bits, &v, 8)
        if bits == 0:  # +0.0 is the proto3 default; -0.0 is not
            return 0
    grow(b, 16)
    put_varint(b, (field << 3) | 1)
    memcpy(b.p + b.n, &v, 8)
    b.n += 8
    return 0


cdef inline int open_message(Buf* b, uint32_t field, Py_ssize_t* mark) except -1:
    # A nested message: reserve 2 bytes for its length (enough below 16 KiB), fix up later.
    grow(b, 8)
    put_varint(b, (field << 3) | 2)
    mark[0] = b.n
    b.n += 2
    return 0


cdef int close_long(Buf* b, Py_ssize_t mark, Py_ssize_t body) except -1:
    """A body of 16 KiB or more (long texts): room for a longer length, so no answer is too large."""
    cdef Py_ssize_t width = 3, v = body >> 21
    while v:
        width += 1
        v >>= 7
    grow(b, width - 2)
    memmove(b.p + mark + width, b.p + mark + 2, body)
    b.n += width - 2
    v = body
    while v >= 0x80:
        b.p[mark] = <uint8_t>((v & 0x7F) | 0x80)
        mark += 1
        v >>= 7
    b.p[mark] = <uint8_t>v
    return 0


cdef inline int close_message(Buf* b, Py_ssize_t mark, bint keep_empty) except -1:
    cdef Py_ssize_t body = b.n - mark - 2
    if body == 0 and not keep_empty:
        b.n = mark - 1  # drop the tag too (tags below 16 take one byte: the program is checked)
        return 0
    if body < 128:
        # One length byte: shift the body left by one.
        b.p[mark] = <uint8_t>body
        memmove(b.p + mark + 1, b.p + mark + 2, body)
        b.n -= 1
        return 0
    if body < 16384:
        b.p[mark] = <uint8_t>((body & 0x7F) | 0x80)
        b.p[mark + 1] = <uint8_t>(body >> 7)
        return 0
    return close_long(b, mark, body)


cdef inline Py_ssize_t fixed_len(const uint8_t* p, Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t n = 0
    while n < width and p[n] != 0:
        n += 1
    return n


cdef inline bytes bounded(str s):
    """``s`` as UTF-8, cut to ``TEXT_CHARS`` characters (a quoted value can be anything)."""
    if len(s) > TEXT_CHARS:
        s = s[:TEXT_CHARS - 3] + "..."
    return s.encode("utf-8", "replace")


cdef inline Py_ssize_t text_len(const uint8_t* p, Py_ssize_t width) except -1:
    """A string column's length; one that is not UTF-8 is refused (no client could parse it)."""
    cdef Py_ssize_t n = 0
    cdef uint8_t high = 0
    while n < width and p[n] != 0:
        high |= p[n]
        n += 1
    if high & 0x80:
        try:
            PyBytes_FromStringAndSize(<const char*>p, n).decode()
        except UnicodeDecodeError:
            raise EncodeError("a decision record holds a string that is not UTF-8") from None
    return n


# Per status code, the ``ItemError.details`` entries every item error of that code carries
# (ErrorInfo, RetryInfo: ``services.frontend.details``), already framed as field 4; set
# once at import by ``services.frontend.wire``. Empty until then: no details, still valid.
cdef tuple CODE_DETAILS = (b"",) * (MAX_CODE + 1)


def set_code_details(tuple table not None):
    """Install the per-code ``ItemError.details`` bytes (a tuple of MAX_CODE + 1 bytes)."""
    global CODE_DETAILS
    if len(table) != MAX_CODE + 1 or not all(isinstance(x, bytes) for x in table):
        raise ValueError(f"code details: {MAX_CODE + 1} bytes values, one per status code")
    CODE_DETAILS = table


cdef inline int put_raw(Buf* b, bytes data) except -1:
    """Bytes already encoded as whole fields, appended as they are."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n:
        grow(b, n)
        memcpy(b.p + b.n, PyBytes_AS_STRING(data), n)
        b.n += n
    return 0


cdef int write_error(Buf* b, const char* app, Py_ssize_t app_len, int code, bytes field, bytes message,
                     bytes extra=b"") except -1:
    """An ``ItemError`` (field 13): code, field, message, the code's details, then ``extra``
    (more framed details: an item's ``BadRequest``)."""
    cdef Py_ssize_t mark
    if code < 1 or code > MAX_CODE:
        raise EncodeError(f"error code {code} is no google.rpc code")
    if valid_id(<const uint8_t*>app, app_len, ECHO_ID):  # anything else is not echoed
        put_bytes(b, 1, app, app_len)
    open_message(b, 13, &mark)
    put_int(b, 1, code)
    put_bytes(b, 2, PyBytes_AS_STRING(field), PyBytes_GET_SIZE(field))
    put_bytes(b, 3, PyBytes_AS_STRING(message), PyBytes_GET_SIZE(message))
    put_raw(b, <bytes>CODE_DETAILS[code])
    put_raw(b, extra)
    close_message(b, mark, True)
    return 0


cdef class Program:
    """The response encoder's op list, compiled once per process (``services.frontend.wire``)."""

    cdef object array  # keeps ``ops`` alive
    cdef const int64_t* ops  # n_ops x O_COLS, row-major
    cdef Py_ssize_t n_ops
    cdef int64_t[:, ::1] lookups  # per indexed column: offset, stride, width, tables (bit mask), count
    cdef int itemsize, status_offset, app_offset, app_width, n_tables, decision_offset

    def __init__(self, ops, int itemsize, int status_offset, int app_offset, int app_width, int n_tables,
                 int decision_offset):
        ops = np.ascontiguousarray(ops, dtype=np.int64)
        if ops.ndim != 2 or ops.shape[1] != O_COLS:
            raise ValueError("encoder program has the wrong shape")
        count, end, depth, lookups = 1, -1, 0, []
        for j, op in enumerate(ops.tolist()):
            code = op[0]
            if not 0 < op[1] < (16 if code in (OP_OPEN, OP_CLOSE) else 1 << 29) and code != OP_END:
                raise ValueError(f"encoder op {j} {op} has a bad field number")
            if code == OP_REPEAT:
                if count != 1 or not j < op[5] < len(ops) or ops[op[5], 0] != OP_END or op[6] < 1:
                    raise ValueError(f"encoder op {j} is a bad repeat")
                count, end = op[6], op[5]
            if code in (OP_VARINT, OP_BOOL, OP_DOUBLE, OP_STRING, OP_TABLE, OP_REPEAT) and not (
                op[4] in ((1, 2, 4, 8) if code != OP_STRING else range(1, itemsize + 1))
                and 0 <= op[2] and op[3] >= 0 and op[2] + (count - 1) * op[3] + op[4] <= itemsize
            ):
                raise ValueError(f"encoder op {j} {op} reads outside the record")
            if code == OP_TABLE and not 0 <= op[5] < n_tables:
                raise ValueError(f"encoder op {j} {op} names no table")
            if code == OP_TABLE:  # one check per indexed column, against its smallest table
                same = [x for x in lookups if x[:3] == op[2:5] and x[4] == count]
                if same:
                    same[0][3] |= 1 << op[5]
                else:
                    lookups.append([op[2], op[3], op[4], 1 << op[5], count])
            depth += (code == OP_OPEN) - (code == OP_CLOSE)
            if not 0 <= depth <= MAX_DEPTH:
                raise ValueError(f"encoder op {j} nests too deep or closes what it did not open")
            if j == end:
                count, end = 1, -1
        if depth:
            raise ValueError("encoder program leaves a message open")
        if not (0 <= status_offset < itemsize and 0 <= decision_offset < itemsize
                and 0 <= app_offset and app_offset + app_width <= itemsize):
            raise ValueError("bad record offsets")
        self.decision_offset = decision_offset
        if len(lookups) > 8 or n_tables > 8:
            raise ValueError("at most 8 encoder tables and indexed columns")
        self.lookups = np.asarray(lookups, dtype=np.int64).reshape(-1, 5)
        self.array = ops
        self.ops = <const int64_t*>cnp.PyArray_DATA(ops)
        self.n_ops = ops.shape[0]
        self.itemsize = itemsize
        self.status_offset = status_offset
        self.app_offset = app_offset
        self.app_width = app_width
        self.n_tables = n_tables


cdef struct Str:
    const char* p
    Py_ssize_t n


cdef class Encoder:
    """Encodes responses from one batch of decision records; built once per backend call.

    ``tables`` are lists of ``bytes`` (the program's ``OP_TABLE`` ops index them);
    ``message`` is what items with a non-zero status are answered with.
    """

    cdef Program prog
    cdef object rows
    cdef const uint8_t* base
    cdef Py_ssize_t n
    cdef list tables  # keeps the strings of ``strs`` alive
    cdef Str* strs  # every table's entries, one after another
    cdef Py_ssize_t starts[8]
    cdef Py_ssize_t sizes[8]
    cdef bytes message

    def __init__(self, Program prog not None, cnp.ndarray rows not None, list tables not None,
                 bytes message not None):
        if rows.dtype.itemsize != prog.itemsize or rows.ndim != 1 or not rows.flags.c_contiguous:
            raise EncodeError("decision records do not match the encoder's layout")
        if len(tables) != prog.n_tables or not all(
            isinstance(t, list) and all(isinstance(x, bytes) and len(x) <= TEXT_BYTES for x in t) for t in tables
        ):
            raise EncodeError(f"encoder tables must be lists of bytes of at most {TEXT_BYTES}")
        if prog.n_tables > 8 or len(message) > TEXT_BYTES:
            raise EncodeError(f"at most 8 encoder tables and a message of at most {TEXT_BYTES} bytes")
        self.prog = prog
        self.rows = rows  # keeps the buffer alive
        self.base = <const uint8_t*>cnp.PyArray_DATA(rows)
        self.n = rows.shape[0]
        self.tables = tables
        self.message = message
        total = sum(len(t) for t in tables)
        self.strs = <Str*>malloc(sizeof(Str) * (total + 1))
        if self.strs == NULL:
            raise MemoryError()
        cdef Py_ssize_t at = 0, t
        cdef bytes x
        for t in range(prog.n_tables):
            self.starts[t] = at
            self.sizes[t] = len(tables[t])
            for x in tables[t]:
                self.strs[at].p = PyBytes_AS_STRING(x)
                self.strs[at].n = PyBytes_GET_SIZE(x)
                at += 1
        self.check_rows()

    cdef int check_rows(self) except -1:
        """Once per answer, before any caller is given it: every status is a code and every
        table index of a decided row is inside its table (or negative: none)."""
        cdef Py_ssize_t i, j, t, nl = self.prog.lookups.shape[0], size = self.prog.itemsize
        cdef int64_t[:, ::1] lk = self.prog.lookups
        cdef int64_t limit[8]
        cdef const uint8_t* rec
        cdef int64_t idx
        cdef int8_t status
        for j in range(nl):
            limit[j] = min([self.sizes[t] for t in range(self.prog.n_tables) if (lk[j, 3] >> t) & 1])
        for i in range(self.n):
            rec = self.base + i * size
            status = <int8_t>rec[self.prog.status_offset]
            if status < 0 or status > MAX_CODE:
                raise EncodeError(f"row {i} has status {status}, no google.rpc code")
            if status:
                continue
            for j in range(nl):
                idx = max_index(rec + lk[j, 0], lk[j, 1], <int>lk[j, 2], lk[j, 4])
                if idx >= limit[j]:
                    raise EncodeError(f"row {i}: index {idx} outside a table of {limit[j]} entries")
        return 0

    def __dealloc__(self):
        free(self.strs)

    cdef int run(self, Buf* b, const uint8_t* rec) except -1:
        """Row ``rec`` through the program: straight-line ops, and each repeat's element ops
        once per present element (repeats do not nest: the program was checked for it)."""
        cdef Py_ssize_t j = 0, e, inner, stop = self.prog.n_ops
        cdef Py_ssize_t marks[MAX_DEPTH + 2]
        cdef int depth = 0
        cdef const int64_t* op
        cdef const int64_t* sub
        while j < stop:
            op = self.prog.ops + j * O_COLS  # code, field, offset, stride, width, table, aux
            if op[0] == OP_REPEAT:
                inner = op[5]
                for e in range(op[6]):
                    if load_int(rec + op[2] + e * op[3], <int>op[4]) >= 0:
                        sub = op + O_COLS
                        while sub < self.prog.ops + inner * O_COLS:
                            step(self, b, rec, sub, e, marks, &depth)
                            sub += O_COLS
                j = inner + 1
                continue
            step(self, b, rec, op, 0, marks, &depth)
            j += 1
        return 0

    cpdef int status(self, Py_ssize_t i) except? -1:
        """Row ``i``'s status (0: decided)."""
        if i < 0 or i >= self.n:
            raise EncodeError(f"row {i} outside a batch of {self.n}")
        return <int8_t>self.base[i * self.prog.itemsize + self.prog.status_offset]

    cpdef int decision(self, Py_ssize_t i) except? -1:
        """Row ``i``'s decision (a ``creditauth.v1.Decision`` value)."""
        if i < 0 or i >= self.n:
            raise EncodeError(f"row {i} outside a batch of {self.n}")
        return <int8_t>self.base[i * self.prog.itemsize + self.prog.decision_offset]

    cdef int write(self, Buf* b, Py_ssize_t i) except -1:
        cdef const uint8_t* rec
        cdef int status
        if i < 0 or i >= self.n:
            raise EncodeError(f"row {i} outside a batch of {self.n}")
        rec = self.base + i * self.prog.itemsize
        status = <int8_t>rec[self.prog.status_offset]
        if status != 0:  # write_error refuses a status that is no code
            write_error(b, <const char*>(rec + self.prog.app_offset),
                        fixed_len(rec + self.prog.app_offset, self.prog.app_width), status, b"", self.message)
            return 0
        self.run(b, rec)
        return 0


cdef inline int table_string(Str* strs, Py_ssize_t* starts, Py_ssize_t* sizes, Buf* b, uint32_t field,
                             int table, int64_t idx) except -1:
    cdef Str* s
    if idx < 0:
        return 0
    if idx >= sizes[table]:
        raise EncodeError(f"index {idx} outside table {table} of {sizes[table]} entries")
    s = &strs[starts[table] + idx]
    put_bytes(b, field, s.p, s.n)
    return 0


cdef inline int step(Encoder enc, Buf* b, const uint8_t* rec, const int64_t* op, Py_ssize_t k,
                     Py_ssize_t* marks, int* depth) except -1:
    """One op of the encoder program on row ``rec`` (element ``k`` of a repeat)."""
    cdef int64_t code = op[0]
    cdef int64_t off = op[2] + k * op[3]
    cdef int width = <int>op[4]
    cdef double d
    cdef float f
    if code == OP_STRING:
        put_bytes(b, <uint32_t>op[1], <const char*>(rec + off), text_len(rec + off, width))
    elif code == OP_VARINT:
        put_int(b, <uint32_t>op[1], load_int(rec + off, width))
    elif code == OP_TABLE:
        table_string(enc.strs, enc.starts, enc.sizes, b, <uint32_t>op[1], <int>op[5], load_int(rec + off, width))
    elif code == OP_DOUBLE:
        if width == 4:
            memcpy(&f, rec + off, 4)
            d = f
        else:
            memcpy(&d, rec + off, 8)
        if d != d and op[6]:
            d = 0.0
        put_double(b, <uint32_t>op[1], d)
    elif code == OP_OPEN:
        if depth[0] > MAX_DEPTH:
            raise ValueError("encoder program nests too deep")
        open_message(b, <uint32_t>op[1], &marks[depth[0]])
        depth[0] += 1
    elif code == OP_CLOSE:
        depth[0] -= 1
        close_message(b, marks[depth[0]], op[6] != 0)
    elif code == OP_BOOL:
        put_int(b, <uint32_t>op[1], 1 if rec[off] else 0)
    return 0


def encode_one(Encoder enc not None, Py_ssize_t i):
    """One ``AuthorizeResponse`` for row ``i``."""
    cdef Buf b
    b.p = NULL; b.n = 0; b.cap = 0
    try:
        enc.write(&b, i)
        return PyBytes_FromStringAndSize(<const char*>b.p, b.n)
    finally:
        free(b.p)


cdef int check_positions(Py_ssize_t total, Encoder enc, const int32_t[::1] index, Py_ssize_t offset) except -1:
    """Before anything is written: rows ``offset ..`` exist and ``index`` rises inside the call."""
    cdef Py_ssize_t k, nk = index.shape[0]
    cdef int32_t last = -1
    if total < 0 or offset < 0 or nk > total:
        raise EncodeError(f"{nk} rows from {offset} cannot answer {total} requests")
    if nk and (enc is None or offset + nk > enc.n):
        raise EncodeError(f"rows {offset}..{offset + nk} to encode, {enc.n if enc is not None else 0} answered")
    for k in range(nk):
        if index[k] <= last or index[k] >= total:
            raise EncodeError(f"position {index[k]} out of order or outside {total} requests")
        last = index[k]
    return 0


cdef int write_item_error(Buf* b, object item) except -1:
    """An ``(position, app_id, code, field, message, details)`` error: types checked, texts
    bounded; ``details``: framed ``ItemError.details`` entries beyond the code's own."""
    if not isinstance(item, tuple) or len(<tuple>item) != 6:
        raise EncodeError("an item error is (position, bytes, int, str, str, bytes of at most 16 KiB)")
    _, app, code, field, message, extra = item
    if (not isinstance(app, bytes) or not isinstance(field, str) or not isinstance(message, str)
            or not isinstance(extra, bytes) or len(extra) > MAX_EXTRA):
        raise EncodeError("an item error is (position, bytes, int, str, str, bytes of at most 16 KiB)")
    write_error(b, PyBytes_AS_STRING(app), PyBytes_GET_SIZE(app), code, bounded(field), bounded(message), extra)
    return 0


def encode_batch(Py_ssize_t total, Encoder enc, const int32_t[::1] index not None, list errors not None,
                 Py_ssize_t offset=0):
    """An ``AuthorizeBatchResponse`` answering ``total`` requests in order.

    Row ``offset + k`` of ``enc`` answers the request at ``index[k]`` (rising); ``errors`` are
    ``(position, app_id, code, field, message, details)`` (bytes app_id and details, str field and message) for
    the requests that were not sent to scoring. ``enc`` may be None when every item is an error.
    """
    cdef Buf b
    cdef Py_ssize_t pos, k = 0, e = 0, mark, ne = len(errors)
    cdef Py_ssize_t nk = index.shape[0]
    check_positions(total, enc, index, offset)
    b.p = NULL; b.n = 0; b.cap = 0
    errors = sorted(errors, key=lambda x: x[0])
    try:
        for pos in range(total):
            open_message(&b, 1, &mark)
            if k < nk and index[k] == pos:
                enc.write(&b, offset + k)
                k += 1
            elif e < ne and errors[e][0] == pos:
                write_item_error(&b, errors[e])
                e += 1
            else:
                raise EncodeError(f"no answer for request {pos}")
            close_message(&b, mark, True)
        if e < ne:
            raise EncodeError(f"{ne - e} item errors for no request of {total}")
        return PyBytes_FromStringAndSize(<const char*>b.p, b.n)
    finally:
        free(b.p)


def encode_error(bytes app not None, int code, str field not None, str message not None, bytes extra=b""):
    """An ``AuthorizeResponse`` carrying only ``error`` (for streams)."""
    cdef Buf b
    b.p = NULL; b.n = 0; b.cap = 0
    if len(extra) > MAX_EXTRA:
        raise EncodeError("an item error's details: at most 16 KiB")
    try:
        write_error(&b, PyBytes_AS_STRING(app), PyBytes_GET_SIZE(app), code, bounded(field), bounded(message),
                    extra)
        return PyBytes_FromStringAndSize(<const char*>b.p, b.n)
    finally:
        free(b.p)
