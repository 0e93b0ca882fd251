# cython: language_level=3
"""The creditauth.v1 wire format, decoded and encoded in C.

Python protobuf objects cost several microseconds per request and per
response (allocation, nested messages, per-field setters); for a batch of a
thousand that is most of the front end's time. This module reads
``AuthorizeRequest`` messages straight from the request bytes into column
arrays, applying exactly the validation of ``services.frontend.codec.validate``
(same fields, same messages; a test checks both on generated inputs), and
writes ``AuthorizeResponse`` messages straight from the replica's column
arrays into response bytes.

Protobuf rules honoured: unknown fields are skipped, a repeated scalar takes
the last value, an embedded message seen twice is merged, proto3 defaults are
omitted on output, fields are written in field-number order.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

import numpy as np

cimport numpy as cnp

cnp.import_array()

cdef Py_ssize_t MAX_ID = 64
cdef int64_t MAX_AMOUNT = 1000000000000
cdef int MAX_TERM = 60

# Field names in error messages: proto paths, as codec.validate reports them.
F_APP = "application_id"
F_MERCHANT = "merchant_id"
F_AMOUNT = "requested_amount"
F_AMOUNT_MINOR = "requested_amount.amount_minor"
F_CURRENCY = "requested_amount.currency"
F_TERM = "term_months"
F_PRODUCT = "product"
F_CHANNEL = "channel"
F_DECLARED = "declared_monthly_revenue_minor"


class WireError(ValueError):
    """The bytes are not a well-formed message of the expected type."""


cdef struct Reader:
    const uint8_t* p
    const uint8_t* end


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


cdef struct Req:
    const uint8_t* app
    Py_ssize_t app_len
    const uint8_t* merchant
    Py_ssize_t merchant_len
    bint has_amount
    int64_t amount
    const uint8_t* currency
    Py_ssize_t currency_len
    int64_t term
    int64_t product
    int64_t channel
    bint has_declared
    int64_t declared


cdef int parse_money(Reader* r, Req* q) noexcept nogil:
    cdef uint64_t key, v
    cdef uint32_t field, wire
    q.has_amount = True
    while r.p < r.end:
        if read_varint(r, &key) < 0:
            return -1
        field = <uint32_t>(key >> 3)
        wire = <uint32_t>(key & 7)
        if field == 1 and wire == 0:
            if read_varint(r, &v) < 0:
                return -1
            q.amount = <int64_t>v
        elif field == 2 and wire == 2:
            if read_varint(r, &v) < 0 or <uint64_t>(r.end - r.p) < v:
                return -1
            q.currency = r.p
            q.currency_len = <Py_ssize_t>v
            r.p += v
        elif skip_field(r, wire) < 0:
            return -1
    return 0


cdef int parse_request(const uint8_t* p, Py_ssize_t n, Req* q) noexcept nogil:
    cdef Reader r
    cdef Reader sub
    cdef uint64_t key, v
    cdef uint32_t field, wire
    r.p = p
    r.end = p + n
    q.app = NULL; q.app_len = 0; q.merchant = NULL; q.merchant_len = 0
    q.has_amount = False; q.amount = 0; q.currency = NULL; q.currency_len = 0
    q.term = 0; q.product = 0; q.channel = 0; q.has_declared = False; q.declared = 0
    while r.p < r.end:
        if read_varint(&r, &key) < 0:
            return -1
        field = <uint32_t>(key >> 3)
        wire = <uint32_t>(key & 7)
        if wire == 2 and (field == 1 or field == 2 or field == 3):
            if read_varint(&r, &v) < 0 or <uint64_t>(r.end - r.p) < v:
                return -1
            if field == 1:
                q.app = r.p
                q.app_len = <Py_ssize_t>v
            elif field == 2:
                q.merchant = r.p
                q.merchant_len = <Py_ssize_t>v
            else:
                sub.p = r.p
                sub.end = r.p + v
                if parse_money(&sub, q) < 0:
                    return -1
            r.p += v
        elif wire == 0 and 4 <= field <= 7:
            if read_varint(&r, &v) < 0:
                return -1
            if field == 4:
                q.term = <int64_t><int32_t>v  # int32 on the wire: sign-extended 64-bit
            elif field == 5:
                q.product = <int64_t><int32_t>v
            elif field == 6:
                q.channel = <int64_t><int32_t>v
            else:
                q.has_declared = True
                q.declared = <int64_t>v
        elif skip_field(&r, wire) < 0:
            return -1
    return 0


cdef inline bint valid_id(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint8_t c
    if n < 1 or n > MAX_ID:
        return False
    for i in range(n):
        c = p[i]
        if not ((c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122)
                or c == 46 or c == 95 or c == 58 or c == 45):
            return False
    return True


cdef inline int currency_of(const uint8_t* p, Py_ssize_t n, const uint8_t* table, int count) noexcept nogil:
    cdef int k
    if n != 3:
        return -1
    for k in range(count):
        if p[0] == table[3 * k] and p[1] == table[3 * k + 1] and p[2] == table[3 * k + 2]:
            return k
    return -1


cdef inline bint known_enum(int64_t v, int64_t hi) noexcept nogil:
    return 1 <= v <= hi


cdef object _text(const uint8_t* p, Py_ssize_t n):
    return PyBytes_FromStringAndSize(<const char*>p, n).decode("utf-8", "replace")


cdef tuple _check(Req* q, const uint8_t* table, int count, int64_t products, int64_t channels):
    """(field, message) of the first bad field, as codec.validate words it; None when valid."""
    if q.app_len == 0:
        return (F_APP, "is required")
    if not valid_id(q.app, q.app_len):
        return (F_APP, "must be 1-64 characters of [A-Za-z0-9._:-]")
    if q.merchant_len == 0:
        return (F_MERCHANT, "is required")
    if not valid_id(q.merchant, q.merchant_len):
        return (F_MERCHANT, "must be 1-64 characters of [A-Za-z0-9._:-]")
    if not q.has_amount:
        return (F_AMOUNT, "is required")
    if q.amount <= 0:
        return (F_AMOUNT_MINOR, f"must be positive, got {q.amount}")
    if q.amount > MAX_AMOUNT:
        return (F_AMOUNT_MINOR, f"must be at most {MAX_AMOUNT}, got {q.amount}")
    if currency_of(q.currency, q.currency_len, table, count) < 0:
        code = _text(q.currency, q.currency_len)
        return (F_CURRENCY, f"unknown or unsupported currency {code!r}")
    if not (1 <= q.term <= MAX_TERM):
        return (F_TERM, f"must be 1-{MAX_TERM}, got {q.term}")
    if not known_enum(q.product, products):
        return (F_PRODUCT, f"must be a known product, got {q.product}")
    if not known_enum(q.channel, channels):
        return (F_CHANNEL, f"must be a known channel, got {q.channel}")
    if q.has_declared and (q.declared < 0 or q.declared > MAX_AMOUNT):
        return (F_DECLARED, f"must be 0-{MAX_AMOUNT}, got {q.declared}")
    return None


cdef class Decoded:
    """Requests decoded to columns: valid ones in ``RequestBatch`` form, bad ones as errors.

    ``index[k]`` is the position in the call of the k-th valid request;
    ``errors`` lists ``(position, application_id, field, message)``.
    """

    cdef public int total
    cdef public object index, amount, currency, term, product, channel, declared
    cdef public bytes application_ids, merchant_ids
    cdef public list errors, app_list


def decode(bytes data, bint batch, bytes currency_table, int products, int channels):
    """Decode an ``AuthorizeBatchRequest`` (``batch``) or one ``AuthorizeRequest``.

    ``currency_table`` is the booked currencies' codes concatenated (3 bytes each,
    index order); ``products``/``channels`` are the highest valid enum values.
    Raises ``WireError`` when the bytes are not a message of that type.
    """
    cdef const uint8_t* base = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef const uint8_t* table = <const uint8_t*>PyBytes_AS_STRING(currency_table)
    cdef int count = <int>(PyBytes_GET_SIZE(currency_table) // 3)
    cdef Reader r
    cdef uint64_t key, v
    cdef list spans = []
    cdef Py_ssize_t i, n
    cdef Req q
    if batch:
        r.p = base
        r.end = base + size
        while r.p < r.end:
            if read_varint(&r, &key) < 0:
                raise WireError("truncated AuthorizeBatchRequest")
            if key == ((1 << 3) | 2):
                if read_varint(&r, &v) < 0 or <uint64_t>(r.end - r.p) < v:
                    raise WireError("truncated AuthorizeBatchRequest")
                spans.append((r.p - base, <Py_ssize_t>v))
                r.p += v
            elif skip_field(&r, <uint32_t>(key & 7)) < 0:
                raise WireError("malformed AuthorizeBatchRequest")
    else:
        spans.append((0, size))
    n = len(spans)
    out = Decoded()
    out.total = n
    cdef cnp.ndarray[cnp.int32_t] index = np.empty(n, dtype=np.int32)
    cdef cnp.ndarray[cnp.int64_t] amount = np.empty(n, dtype=np.int64)
    cdef cnp.ndarray[cnp.int8_t] currency = np.empty(n, dtype=np.int8)
    cdef cnp.ndarray[cnp.int16_t] term = np.empty(n, dtype=np.int16)
    cdef cnp.ndarray[cnp.int8_t] product = np.empty(n, dtype=np.int8)
    cdef cnp.ndarray[cnp.int8_t] channel = np.empty(n, dtype=np.int8)
    cdef cnp.ndarray[cnp.float64_t] declared = np.empty(n, dtype=np.float64)
    cdef list apps = []
    cdef list merchants = []
    cdef list errors = []
    cdef Py_ssize_t k = 0, off, length
    for i in range(n):
        off, length = spans[i]
        if parse_request(base + off, length, &q) < 0:
            raise WireError(f"malformed AuthorizeRequest at position {i}")
        bad = _check(&q, table, count, products, channels)
        if bad is not None:
            errors.append((i, _text(q.app, q.app_len), bad[0], bad[1]))
            continue
        index[k] = <int32_t>i
        amount[k] = q.amount
        currency[k] = <int8_t>currency_of(q.currency, q.currency_len, table, count)
        term[k] = <int16_t>q.term
        product[k] = <int8_t>q.product
        channel[k] = <int8_t>q.channel
        declared[k] = <double>q.declared if q.has_declared else float("nan")
        apps.append(PyBytes_FromStringAndSize(<const char*>q.app, q.app_len))
        merchants.append(PyBytes_FromStringAndSize(<const char*>q.merchant, q.merchant_len))
        k += 1
    out.index = index[:k]
    out.amount = amount[:k]
    out.currency = currency[:k]
    out.term = term[:k]
    out.product = product[:k]
    out.channel = channel[:k]
    out.declared = declared[:k]
    out.app_list = apps
    out.application_ids = b"\n".join(apps)
    out.merchant_ids = b"\n".join(merchants)
    out.errors = errors
    return out


def decode_one(bytes data, bytes currency_table, int products, int channels):
    """One ``AuthorizeRequest``: ``(True, app, merchant, amount, currency, term, product, channel, declared)``
    when valid, ``(False, app, field, message)`` when not. Raises ``WireError`` on malformed bytes.
    """
    cdef Req q
    cdef const uint8_t* table = <const uint8_t*>PyBytes_AS_STRING(currency_table)
    cdef int count = <int>(PyBytes_GET_SIZE(currency_table) // 3)
    if parse_request(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &q) < 0:
        raise WireError("malformed AuthorizeRequest")
    bad = _check(&q, table, count, products, channels)
    app = _text(q.app, q.app_len)
    if bad is not None:
        return (False, app, bad[0], bad[1])
    return (
        True, app, _text(q.merchant, q.merchant_len), q.amount,
        currency_of(q.currency, q.currency_len, table, count), q.term, q.product, q.channel,
        <double>q.declared if q.has_declared else float("nan"),
    )


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


cdef inline int close_message(Buf* b, Py_ssize_t mark, bint keep_empty) except -1:
    cdef Py_ssize_t body = b.n - mark - 2
    if body == 0 and not keep_empty:
        b.n = mark - 1  # drop the tag too (tags below 16 take one byte)
        return 0
    if body < 128:
        # One length byte: shift the body left by one.
        b.p[mark] = <uint8_t>body
        memmove(b.p + mark + 1, b.p + mark + 2, body)
        b.n -= 1
    elif body < 16384:
        b.p[mark] = <uint8_t>((body & 0x7F) | 0x80)
        b.p[mark + 1] = <uint8_t>(body >> 7)
    else:
        raise ValueError("nested message too large")
    return 0


cdef int write_error(Buf* b, bytes app, int code, bytes field, bytes message) except -1:
    cdef Py_ssize_t mark
    put_bytes(b, 1, PyBytes_AS_STRING(app), PyBytes_GET_SIZE(app))
    open_message(b, 13, &mark)
    put_int(b, 1, code)
    put_bytes(b, 2, PyBytes_AS_STRING(field), PyBytes_GET_SIZE(field))
    put_bytes(b, 3, PyBytes_AS_STRING(message), PyBytes_GET_SIZE(message))
    close_message(b, mark, True)
    return 0


cdef class Encoder:
    """Encodes responses from a ``ResponseBatch``'s columns; built once per response batch."""

    cdef const int8_t[::1] status, decision, grade, version
    cdef const int64_t[::1] approved
    cdef const int32_t[::1] apr
    cdef const double[::1] pd
    cdef const int16_t[:, ::1] reason
    cdef const float[:, ::1] contrib
    cdef const float[::1] age
    cdef const uint8_t[::1] stale, degraded
    cdef list ids, letters, codes, descs, models, policies, currencies
    cdef bytes message

    def __init__(self, resp, list currency_codes):
        c = np.ascontiguousarray  # replica columns are often strided record fields
        self.status = c(resp.status)
        self.decision = c(resp.decision)
        self.grade = c(resp.grade)
        self.version = c(resp.version)
        self.approved = c(resp.approved_minor)
        self.apr = c(resp.apr_bps)
        self.pd = c(resp.pd)
        self.reason = c(resp.reason)
        self.contrib = c(resp.reason_contrib)
        self.age = c(resp.feature_age_s)
        self.stale = c(resp.stale).view(np.uint8)
        self.degraded = c(resp.degraded).view(np.uint8)
        self.ids = resp.decision_ids.split(b"\n") if len(resp.status) else []
        self.letters = [g.encode() for g in resp.grade_letters]
        self.codes = [c.encode() for c, _ in resp.reason_table]
        self.descs = [d.encode() for _, d in resp.reason_table]
        self.models = [m.encode() for m, _ in resp.versions]
        self.policies = [p.encode() for _, p in resp.versions]
        self.currencies = currency_codes
        self.message = (resp.message or "not decided").encode()

    cdef int write(self, Buf* b, Py_ssize_t i, bytes app, int cur) except -1:
        cdef Py_ssize_t mark, rmark
        cdef Py_ssize_t k
        cdef int16_t r
        cdef double age
        cdef bytes s
        if self.status[i] != 0:
            write_error(b, app, self.status[i], b"", self.message)
            return 0
        put_bytes(b, 1, PyBytes_AS_STRING(app), PyBytes_GET_SIZE(app))
        s = self.ids[i]
        put_bytes(b, 2, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
        put_int(b, 3, self.decision[i])
        open_message(b, 4, &mark)
        put_int(b, 1, self.approved[i])
        s = self.currencies[cur]
        put_bytes(b, 2, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
        close_message(b, mark, True)
        put_int(b, 5, self.apr[i])
        if self.grade[i] >= 0:
            s = self.letters[self.grade[i]]
            put_bytes(b, 6, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
        put_double(b, 7, self.pd[i])
        for k in range(self.reason.shape[1]):
            r = self.reason[i, k]
            if r < 0:
                continue
            open_message(b, 8, &rmark)
            s = self.codes[r]
            put_bytes(b, 1, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
            s = self.descs[r]
            put_bytes(b, 2, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
            put_double(b, 3, <double>self.contrib[i, k])
            close_message(b, rmark, True)
        s = self.models[self.version[i]]
        put_bytes(b, 9, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
        s = self.policies[self.version[i]]
        put_bytes(b, 10, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
        open_message(b, 11, &mark)
        age = self.age[i]
        put_double(b, 1, age if age == age else 0.0)
        put_int(b, 2, 1 if self.stale[i] else 0)
        close_message(b, mark, True)
        put_int(b, 12, 1 if self.degraded[i] else 0)
        return 0


def encode_one(Encoder enc, Py_ssize_t i, bytes app, int currency):
    """One ``AuthorizeResponse`` for row ``i``."""
    cdef Buf b
    b.p = NULL; b.n = 0; b.cap = 0
    try:
        enc.write(&b, i, app, currency)
        return PyBytes_FromStringAndSize(<const char*>b.p, b.n)
    finally:
        free(b.p)


def encode_batch(int total, Encoder enc, const int32_t[::1] index, list apps,
                 const int8_t[::1] currency, list errors, Py_ssize_t offset=0):
    """An ``AuthorizeBatchResponse`` answering ``total`` requests in order.

    Row ``offset + k`` of ``enc`` answers the request at ``index[k]`` (application
    id ``apps[k]``, currency ``currency[k]``); ``errors`` are ``(position, app_id,
    code, field, message)`` for the requests that were not sent to scoring.
    """
    cdef Buf b
    cdef Py_ssize_t pos, k = 0, e = 0, mark, ne = len(errors)
    cdef Py_ssize_t nk = index.shape[0]
    b.p = NULL; b.n = 0; b.cap = 0
    errors = sorted(errors)
    try:
        for pos in range(total):
            grow(&b, 8)
            # Each response is a nested message of at most a few hundred bytes,
            # so the reserved two-byte length always fits.
            open_message(&b, 1, &mark)
            if k < nk and index[k] == pos:
                enc.write(&b, offset + k, apps[k], currency[k])
                k += 1
            elif e < ne and errors[e][0] == pos:
                _, app, code, field, message = errors[e]
                write_error(&b, app.encode() if isinstance(app, str) else app, code, field.encode(), message.encode())
                e += 1
            else:
                raise ValueError(f"no answer for request {pos}")
            close_message(&b, mark, True)
        return PyBytes_FromStringAndSize(<const char*>b.p, b.n)
    finally:
        free(b.p)


def encode_error(bytes app, int code, str field, str message):
    """An ``AuthorizeResponse`` carrying only ``error`` (for streams)."""
    cdef Buf b
    b.p = NULL; b.n = 0; b.cap = 0
    try:
        write_error(&b, app, code, field.encode(), message.encode())
        return PyBytes_FromStringAndSize(<const char*>b.p, b.n)
    finally:
        free(b.p)
