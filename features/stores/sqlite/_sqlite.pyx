# cython: language_level=3
"""Feast's SQLite online-store tables through the sqlite3 C API: connections and batch reads
(bulk writes: ``_sqlite_write``).

Python's ``sqlite3`` module builds a tuple and a bytes object per row; a read of 1,000
merchants is ~100,000 rows (one per feature value), so that is where the time went.
Here rows are stepped in C, with the GIL released, and decoded straight into the
caller's arrays.

Linking: no sqlite3 header or library is needed at build time. The API is resolved at
import with ``dlopen``/``dlsym``, preferably from the library Python's own ``_sqlite3``
module already loaded (same SQLite, same file-locking rules as the Feast SDK in the
same process). ``AVAILABLE`` is False, with ``UNAVAILABLE_REASON``, where that fails
(e.g. a Python with SQLite linked statically and not exported); callers then fall
back to the Python implementation.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.string cimport memcmp, memcpy, memset

from features.stores._value cimport bytes_payload, decode_number

cdef extern from "math.h":
    float NAN

from features.stores.sqlite._sqlite_api cimport (
    SQLITE_BUSY,
    SQLITE_DONE,
    SQLITE_FLOAT,
    SQLITE_INTEGER,
    SQLITE_OK,
    SQLITE_ROW,
    OPEN_NOMUTEX,
    OPEN_READONLY,
    OPEN_READWRITE,
    ca_bind_blob,
    ca_bind_int64,
    ca_bind_null,
    ca_bind_text,
    ca_busy_timeout,
    ca_close_v2,
    ca_column_blob,
    ca_column_bytes,
    ca_column_double,
    ca_column_int64,
    ca_column_text,
    ca_column_type,
    ca_db,
    ca_errmsg,
    ca_exec,
    ca_finalize,
    ca_free,
    ca_load,
    ca_load_error,
    ca_open_v2,
    ca_prepare_v2,
    ca_reset,
    ca_step,
    ca_stmt,
)

# Field kinds (same numbering as _resp's).
cdef enum:
    K_NUMBER = 0
    K_TAGS = 1
KIND_NUMBER = K_NUMBER
KIND_TAGS = K_TAGS


class SqliteError(Exception):
    """An sqlite3 C API call failed; ``busy`` says the database was locked past the timeout."""

    def __init__(self, message, busy=False):
        super().__init__(message)
        self.busy = busy


def _load():
    import ctypes.util
    import sqlite3  # noqa: F401  (loads _sqlite3 and, with it, the SQLite library)
    import _sqlite3

    tried = []
    for path, noload in ((getattr(_sqlite3, "__file__", None), 1),
                         (ctypes.util.find_library("sqlite3"), 0),
                         ("libsqlite3.so.0", 0)):
        if not path:
            continue
        if ca_load(path.encode(), noload) == 0:
            return True, "", (path, noload)
        tried.append((<bytes>ca_load_error).decode("utf8", "replace"))
    return False, "; ".join(tried) or "no candidate library", None


# LIBRARY: what to pass to ca_load; every module cimporting _sqlite_api has its own
# function pointers and loads them from the same library (see _sqlite_write).
AVAILABLE, UNAVAILABLE_REASON, LIBRARY = _load()


cdef class Database:
    """One SQLite connection (``sqlite3_open_v2``); use it from one thread at a time."""

    def __cinit__(self, str path, bint readonly=True, int busy_timeout_ms=500):
        if not AVAILABLE:
            raise SqliteError(f"sqlite3 C API unavailable: {UNAVAILABLE_REASON}")
        self.path = path
        cdef bytes p = path.encode()
        cdef int flags = OPEN_NOMUTEX | (OPEN_READONLY if readonly else OPEN_READWRITE)
        cdef int rc = ca_open_v2(p, &self.db, flags, NULL)
        if rc != SQLITE_OK:
            msg = self._err() if self.db != NULL else f"code {rc}"
            if self.db != NULL:
                ca_close_v2(self.db)
                self.db = NULL
            raise SqliteError(f"cannot open {path}: {msg}")
        ca_busy_timeout(self.db, busy_timeout_ms)

    cdef str _err(self):
        return (<bytes>ca_errmsg(self.db)).decode("utf8", "replace")

    def execute(self, str sql):
        """Run SQL that returns no rows (PRAGMA, BEGIN, COMMIT, CREATE INDEX ...)."""
        self._check_open()
        cdef bytes s = sql.encode()
        cdef const char* cs = s
        cdef char* err = NULL
        cdef int rc
        with nogil:
            rc = ca_exec(self.db, cs, NULL, NULL, &err)
        if rc != SQLITE_OK:
            msg = (<bytes>err).decode("utf8", "replace") if err != NULL else self._err()
            if err != NULL:
                ca_free(err)
            raise SqliteError(f"{sql.split()[0]} failed: {msg}", rc == SQLITE_BUSY)

    cdef int _check_open(self) except -1:
        if self.db == NULL:
            raise SqliteError("database is closed")
        return 0

    cdef ca_stmt* prepare(self, str sql) except NULL:
        self._check_open()
        cdef ca_stmt* st = NULL
        cdef bytes s = sql.encode()
        if ca_prepare_v2(self.db, s, -1, &st, NULL) != SQLITE_OK:
            raise SqliteError(f"cannot prepare {sql!r}: {self._err()}")
        return st

    def close(self):
        if self.db != NULL:
            ca_close_v2(self.db)  # _v2: deferred until statements are finalized
            self.db = NULL

    def __dealloc__(self):
        self.close()


cdef struct ViewLayout:
    ca_stmt* stmt
    int n
    const char** names
    int* name_len
    int* kind
    int* col
    int last


cdef class BatchReader:
    """Reads Feast's per-view tables for a batch of entity keys into dense arrays.

    One prepared ``SELECT feature_name, value, event_ts ... WHERE entity_key = ?`` per
    view, stepped for every key with the GIL released.
    """

    cdef Database db
    cdef ViewLayout* views
    cdef int n_views
    cdef list keep

    def __init__(self, Database db, list tables, list layouts):
        """``layouts[v]`` is a list of ``(feature_name, kind, col)`` for view ``v``."""
        cdef int v, j
        self.db = db
        self.keep = []
        self.n_views = len(tables)
        self.views = <ViewLayout*>PyMem_Malloc(self.n_views * sizeof(ViewLayout))
        memset(self.views, 0, self.n_views * sizeof(ViewLayout))
        for v in range(self.n_views):
            fields = sorted(layouts[v])
            self.views[v].stmt = db.prepare(
                f'SELECT feature_name, value, event_ts FROM "{tables[v]}" WHERE entity_key = ?1'
            )
            n = len(fields)
            self.views[v].n = n
            self.views[v].names = <const char**>PyMem_Malloc(max(n, 1) * sizeof(char*))
            self.views[v].name_len = <int*>PyMem_Malloc(max(n, 1) * sizeof(int))
            self.views[v].kind = <int*>PyMem_Malloc(max(n, 1) * sizeof(int))
            self.views[v].col = <int*>PyMem_Malloc(max(n, 1) * sizeof(int))
            for j, (name, kind, col) in enumerate(fields):
                b = name.encode()
                self.keep.append(b)
                self.views[v].names[j] = PyBytes_AS_STRING(b)
                self.views[v].name_len[j] = PyBytes_GET_SIZE(b)
                self.views[v].kind[j] = kind
                self.views[v].col[j] = col

    def read(self, list keys, float[:, ::1] matrix, uint8_t[:, ::1] tags, int64_t[:, ::1] view_ts):
        """Fill row ``i`` of the outputs for ``keys[i]``; outputs pre-filled with NaN / 0.

        Returns -1, or the flat index ``row * n_views + view`` of a value that is not
        the Value kind its field needs.
        """
        cdef Py_ssize_t n = len(keys), i
        cdef const char** kp = <const char**>PyMem_Malloc(max(n, 1) * sizeof(char*))
        cdef int* kl = <int*>PyMem_Malloc(max(n, 1) * sizeof(int))
        cdef int rc = 0, v
        cdef Py_ssize_t bad = -1
        cdef bytes k
        try:
            for i in range(n):
                k = keys[i]
                kp[i] = PyBytes_AS_STRING(k)
                kl[i] = PyBytes_GET_SIZE(k)
            # One read transaction for the batch: one snapshot across every view, and one
            # WAL-index lookup instead of one per statement.
            self.db.execute("BEGIN")
            try:
                with nogil:
                    for i in range(n):
                        for v in range(self.n_views):
                            rc = self._read_one(&self.views[v], v, kp[i], kl[i], i, matrix, tags, view_ts)
                            if rc != 0:
                                bad = i * self.n_views + v
                                break
                        if rc != 0:
                            break
            finally:
                self.db.execute("COMMIT")
        finally:
            PyMem_Free(kp)
            PyMem_Free(kl)
        if rc == 1:
            raise SqliteError(f"online read failed: {self.db._err()}", True)
        return bad

    cdef int _read_one(self, ViewLayout* L, int v, const char* key, int klen, Py_ssize_t row,
                       float[:, ::1] matrix, uint8_t[:, ::1] tags, int64_t[:, ::1] view_ts) noexcept nogil:
        """0 ok, 1 SQLite error (statement reset), 2 a value of the wrong kind."""
        cdef int rc, j, nl, k, t
        cdef const char* name
        cdef const uint8_t* val
        cdef int vl
        cdef double d
        cdef int64_t ts
        cdef Py_ssize_t off, m
        ca_bind_blob(L.stmt, 1, key, klen, NULL)
        while True:
            rc = ca_step(L.stmt)
            if rc != SQLITE_ROW:
                break
            name = <const char*>ca_column_text(L.stmt, 0)
            nl = ca_column_bytes(L.stmt, 0)
            # Rows arrive in primary-key (feature_name) order and the layout is sorted,
            # so the next field is almost always the one after the last match.
            j = -1
            for k in range(L.n):
                t = (L.last + 1 + k) % L.n
                if L.name_len[t] == nl and memcmp(L.names[t], name, nl) == 0:
                    j = t
                    break
            t = ca_column_type(L.stmt, 2)
            if t == SQLITE_INTEGER:
                ts = ca_column_int64(L.stmt, 2)
            elif t == SQLITE_FLOAT:
                ts = <int64_t>ca_column_double(L.stmt, 2)
            else:
                ts = 0
            if ts > 0 and (view_ts[row, v] == 0 or ts < view_ts[row, v]):
                view_ts[row, v] = ts
            if j < 0:
                continue  # a feature the matrix does not serve (e.g. velocity's window state)
            L.last = j
            val = <const uint8_t*>ca_column_blob(L.stmt, 1)
            vl = ca_column_bytes(L.stmt, 1)
            if L.kind[j] == K_NUMBER:
                rc = decode_number(val, vl, &d)
                if rc == 0:
                    matrix[row, L.col[j]] = <float>d
                elif rc < 0:
                    ca_reset(L.stmt)
                    return 2
            else:
                off = bytes_payload(val, vl, &m)
                if off == -1:
                    ca_reset(L.stmt)
                    return 2
                if off >= 0:
                    memcpy(&tags[row, 0], val + off, min(m, tags.shape[1]))
        ca_reset(L.stmt)
        return 0 if rc == SQLITE_DONE else 1

    def __dealloc__(self):
        cdef int v
        if self.views != NULL:
            for v in range(self.n_views):
                if self.views[v].stmt != NULL:
                    ca_finalize(self.views[v].stmt)
                PyMem_Free(self.views[v].names)
                PyMem_Free(self.views[v].name_len)
                PyMem_Free(self.views[v].kind)
                PyMem_Free(self.views[v].col)
            PyMem_Free(self.views)
