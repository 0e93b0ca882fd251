# cython: language_level=3
"""Bounded scanning of RESP2 framing, as inline C shared by the reply decoders.

Every reply byte comes from the network, so nothing here trusts it: a header line is at
most ``MAX_HEADER`` bytes, a status or error line at most ``MAX_LINE``, a bulk string at
most ``MAX_BULK`` (Redis's own ``proto-max-bulk-len`` default), an array nests at most
``MAX_DEPTH`` deep and holds no more elements than the decoder's item budget, and every
length is parsed with overflow checks. A violation is a status below zero, never an
out-of-bounds read, a deep C stack or an allocation sized by what the peer claims.

``need`` is a lower bound on the buffer index the incomplete reply ends at, so a caller
can refuse a reply that could never fit its buffer limit without waiting for it.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memchr

cdef extern from *:
    """
    #define CA_RESP_MAX_BULK ((Py_ssize_t)512 * 1024 * 1024)
    #define CA_RESP_MAX_LINE ((Py_ssize_t)64 * 1024)
    #define CA_RESP_MAX_HEADER ((Py_ssize_t)21)
    #define CA_RESP_MAX_DEPTH 32
    #define CA_RESP_MAX_ARRAY ((Py_ssize_t)512 * 1024 * 1024)
    """
    const Py_ssize_t MAX_BULK "CA_RESP_MAX_BULK"
    const Py_ssize_t MAX_LINE "CA_RESP_MAX_LINE"
    const Py_ssize_t MAX_HEADER "CA_RESP_MAX_HEADER"
    const int MAX_DEPTH "CA_RESP_MAX_DEPTH"
    const Py_ssize_t MAX_ARRAY "CA_RESP_MAX_ARRAY"


# Status of a scan (negative: the reply is refused and the stream cannot be resynced).
cdef enum:
    OK = 0
    INCOMPLETE = 1
    BAD = -1
    SERVER_ERROR = -2
    TOO_LONG = -3  # a bulk, line or header longer than its bound
    TOO_DEEP = -4  # arrays nested deeper than MAX_DEPTH
    TOO_MANY = -5  # more elements than the decoder's item budget
    BAD_VALUE = 2  # well framed, but not the Feast Value shape a field needs


cdef inline Py_ssize_t _max(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline int line_end(const uint8_t* b, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t limit,
                         Py_ssize_t* out) noexcept nogil:
    """``out`` = index of the ``\\r\\n`` ending the line from ``pos``, which must come within
    ``limit`` bytes; OK, INCOMPLETE (not all here yet) or TOO_LONG."""
    # A terminating \r may sit at pos .. pos + limit: look no further than that.
    cdef Py_ssize_t stop = end if end - pos <= limit + 1 else pos + limit + 1
    cdef Py_ssize_t p = pos
    cdef const uint8_t* r
    while p < stop:
        r = <const uint8_t*>memchr(b + p, c'\r', stop - p)
        if r == NULL:
            break
        p = r - b
        if p + 1 >= end:
            return INCOMPLETE
        if b[p + 1] == c'\n':
            out[0] = p
            return OK
        p += 1
    # Bytes past the window are here and none ended the line: it is longer than the limit.
    return TOO_LONG if stop < end else INCOMPLETE


cdef inline int parse_int(const uint8_t* b, Py_ssize_t pos, Py_ssize_t stop, int64_t* out) noexcept nogil:
    """A decimal integer in ``b[pos:stop]``: optional ``-``, 1-19 digits, within int64; 0 ok, -1 malformed."""
    cdef uint64_t v = 0
    cdef uint64_t limit = 0x7FFFFFFFFFFFFFFF
    cdef uint8_t d
    cdef bint neg = False
    if pos < stop and b[pos] == c'-':
        neg = True
        limit += 1
        pos += 1
    if pos >= stop or stop - pos > 19:
        return -1
    while pos < stop:
        d = <uint8_t>(b[pos] - c'0')  # wraps: every non-digit ends up above 9
        if d > 9 or v > (limit - d) // 10:
            return -1
        v = v * 10 + d
        pos += 1
    out[0] = <int64_t>(0 - v) if neg else <int64_t>v
    return 0


cdef inline int parse_len(const uint8_t* b, Py_ssize_t pos, Py_ssize_t stop, int64_t* out) noexcept nogil:
    """A bulk or array length: ``-1`` (null) or 0..2^63-1 digits; 0 ok, -1 malformed (``-0``, ``-2``...)."""
    if pos < stop and b[pos] == c'-':
        if stop - pos != 2 or b[pos + 1] != c'1':
            return -1
        out[0] = -1
        return 0
    return parse_int(b, pos, stop, out)


cdef inline int header(const uint8_t* b, Py_ssize_t p, Py_ssize_t end, Py_ssize_t* e, int64_t* n,
                       Py_ssize_t* need) noexcept nogil:
    """The ``:``, ``$`` or ``*`` header line at ``p``: its end in ``e``, its number in ``n``
    (``$``/``*``: a length, -1 for null)."""
    cdef int rc = line_end(b, p + 1, end, MAX_HEADER, e)
    if rc == INCOMPLETE:
        need[0] = _max(need[0], end + 1)
        return rc
    if rc != OK:
        return BAD  # a header longer than any number is not a header
    if b[p] == c':':
        return OK if parse_int(b, p + 1, e[0], n) == 0 else BAD
    return OK if parse_len(b, p + 1, e[0], n) == 0 else BAD


cdef inline int bulk_end(const uint8_t* b, Py_ssize_t e, int64_t n, Py_ssize_t end, Py_ssize_t* after,
                         Py_ssize_t* need) noexcept nogil:
    """A bulk string of length ``n`` whose header ends at ``e``: ``after`` = index past its ``\\r\\n``."""
    cdef Py_ssize_t stop
    if n < 0:
        after[0] = e + 2
        return OK
    if n > MAX_BULK:
        return TOO_LONG
    stop = e + 2 + <Py_ssize_t>n
    if stop + 2 > end:
        need[0] = _max(need[0], stop + 2)
        return INCOMPLETE
    if b[stop] != c'\r' or b[stop + 1] != c'\n':
        return BAD
    after[0] = stop + 2
    return OK


cdef inline int skip(const uint8_t* b, Py_ssize_t end, Py_ssize_t* pos, int depth, bint top_error,
                     Py_ssize_t* budget, Py_ssize_t* need) noexcept nogil:
    """Step over one complete reply of any type. With ``top_error`` an error reply at depth 0
    is SERVER_ERROR (``pos`` left at it); elsewhere it is a value. Recursion is bounded by
    MAX_DEPTH; each element spends one unit of ``budget``."""
    cdef Py_ssize_t p = pos[0], e = 0
    cdef int64_t n = 0, i
    cdef int rc
    cdef uint8_t t
    if depth > MAX_DEPTH:
        return TOO_DEEP
    if budget[0] <= 0:
        return TOO_MANY
    budget[0] -= 1
    if p >= end:
        need[0] = _max(need[0], p + 3)
        return INCOMPLETE
    t = b[p]
    if t == c'+' or t == c'-':
        rc = line_end(b, p + 1, end, MAX_LINE, &e)
        if rc == INCOMPLETE:
            need[0] = _max(need[0], end + 1)
        if rc != OK:
            return rc
        if t == c'-' and top_error and depth == 0:
            return SERVER_ERROR
        pos[0] = e + 2
        return OK
    if t != c':' and t != c'$' and t != c'*':
        return BAD  # RESP3 types included: this client never sends HELLO 3
    rc = header(b, p, end, &e, &n, need)
    if rc != OK:
        return rc
    if t == c':':
        pos[0] = e + 2
        return OK
    if t == c'$':
        return bulk_end(b, e, n, end, pos, need)
    if n > budget[0] or n > MAX_ARRAY:
        return TOO_MANY  # refused before a single element is looked at
    p = e + 2
    for i in range(n if n > 0 else 0):
        rc = skip(b, end, &p, depth + 1, top_error, budget, need)
        if rc == INCOMPLETE:
            # The rest needs at least 3 bytes an element ("+\r\n").
            need[0] = _max(need[0], end + 1 + 3 * <Py_ssize_t>(n - i - 1))
        if rc != OK:
            return rc
    pos[0] = p
    return OK
