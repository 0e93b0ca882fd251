# cython: language_level=3
"""Feast's SQLite ``online_write_batch`` in C, for the bulk materializer (see ``_sqlite``)."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint8_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy

from features.stores.sqlite._sqlite cimport Database
from features.stores.sqlite._sqlite_api cimport (
    SQLITE_BUSY,
    SQLITE_DONE,
    ca_bind_blob,
    ca_bind_int64,
    ca_bind_null,
    ca_bind_text,
    ca_finalize,
    ca_load,
    ca_load_error,
    ca_reset,
    ca_step,
    ca_stmt,
)
from features.stores._value cimport encode_bytes_header, encode_float_value, encode_int64_value

from features.stores.sqlite._sqlite import AVAILABLE, LIBRARY, UNAVAILABLE_REASON, SqliteError

# This module's own copy of the API's function pointers (static in each C file).
if AVAILABLE and ca_load(LIBRARY[0].encode(), LIBRARY[1]) != 0:
    raise ImportError(f"sqlite3 C API: {(<bytes>ca_load_error).decode('utf8', 'replace')}")

cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype) except NULL
    int Py_DTSF_ADD_DOT_0


cdef enum:
    COL_FLOAT32 = 0
    COL_INT64 = 1
    COL_BYTES = 2


cdef class UpsertWriter:
    """Feast's SQLite ``online_write_batch`` for one view, in C.

    The same statement Feast runs (``INSERT ... ON CONFLICT(entity_key, feature_name) DO
    UPDATE``), the same values: the serialized Value, ``value_text`` = ``str()`` of the
    Python value (Python's own float repr, so text matches to the digit), NULL text for
    bytes and nulls, and whole-second event/created times.
    """

    cdef Database db
    cdef ca_stmt* stmt

    def __init__(self, Database db, str table):
        if not AVAILABLE:
            raise SqliteError(f"sqlite3 C API unavailable: {UNAVAILABLE_REASON}")
        self.db = db
        self.stmt = db.prepare(
            f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
        )

    def write(self, list keys, const int64_t[::1] order, list names, list columns,
              const int64_t[::1] event_s, const int64_t[::1] created_s, const uint8_t[::1] has_created):
        """Upsert ``names[j]`` = ``columns[j][row]`` for rows in ``order`` (row-major).

        ``columns[j]`` is ``("float32", values, valid)``, ``("int64", values, valid)`` or
        ``("bytes", list)``. Returns the number of rows written.
        """
        cdef Py_ssize_t nf = len(names), j, r, i, written = 0, m
        cdef int kind[256]
        cdef const float* fptr[256]
        cdef const int64_t* iptr[256]
        cdef const uint8_t* vptr[256]
        cdef const char* nptr[256]
        cdef int nlen[256]
        cdef const float[::1] fv
        cdef const int64_t[::1] iv
        cdef const uint8_t[::1] ok
        cdef list keep = []
        cdef list blists = [None] * nf
        cdef uint8_t val[16]
        cdef char text[32]
        cdef char* dtext
        cdef int vl, tl, rc
        cdef bytes k, b, nb
        cdef uint8_t* buf
        cdef const char* empty = ""
        if nf > 256:
            raise ValueError("at most 256 fields per view")
        for j in range(nf):
            nb = names[j].encode()
            keep.append(nb)
            nptr[j] = PyBytes_AS_STRING(nb)
            nlen[j] = PyBytes_GET_SIZE(nb)
            c = columns[j]
            if c[0] == "bytes":
                kind[j] = COL_BYTES
                blists[j] = c[1]
                continue
            ok = c[2]
            vptr[j] = &ok[0] if ok.shape[0] else NULL
            keep.append(ok)
            if c[0] == "float32":
                kind[j] = COL_FLOAT32
                fv = c[1]
                fptr[j] = &fv[0] if fv.shape[0] else NULL
                keep.append(fv)
            elif c[0] == "int64":
                kind[j] = COL_INT64
                iv = c[1]
                iptr[j] = &iv[0] if iv.shape[0] else NULL
                keep.append(iv)
            else:
                raise ValueError(f"unknown column kind {c[0]!r}")
        for r in range(order.shape[0]):
            i = order[r]
            k = keys[i]
            for j in range(nf):
                ca_bind_blob(self.stmt, 1, PyBytes_AS_STRING(k), <int>PyBytes_GET_SIZE(k), NULL)
                ca_bind_text(self.stmt, 2, nptr[j], nlen[j], NULL)
                dtext = NULL
                buf = NULL
                if kind[j] == COL_BYTES:
                    obj = (<list>blists[j])[i]
                    if obj is None:
                        ca_bind_blob(self.stmt, 3, empty, 0, NULL)  # non-NULL pointer: an empty blob, not NULL
                    else:
                        b = obj
                        m = PyBytes_GET_SIZE(b)
                        vl = encode_bytes_header(val, m)
                        buf = <uint8_t*>PyMem_Malloc(vl + m)  # freed after the step
                        memcpy(buf, val, vl)
                        memcpy(buf + vl, PyBytes_AS_STRING(b), m)
                        ca_bind_blob(self.stmt, 3, buf, <int>(vl + m), NULL)
                    ca_bind_null(self.stmt, 4)
                elif not vptr[j][i]:
                    ca_bind_blob(self.stmt, 3, empty, 0, NULL)
                    ca_bind_null(self.stmt, 4)
                elif kind[j] == COL_FLOAT32:
                    vl = encode_float_value(val, fptr[j][i])
                    ca_bind_blob(self.stmt, 3, val, vl, NULL)
                    dtext = PyOS_double_to_string(<double>fptr[j][i], c'r', 0, Py_DTSF_ADD_DOT_0, NULL)
                    ca_bind_text(self.stmt, 4, dtext, -1, NULL)
                else:
                    vl = encode_int64_value(val, iptr[j][i])
                    ca_bind_blob(self.stmt, 3, val, vl, NULL)
                    tl = snprintf(text, sizeof(text), "%lld", <long long>iptr[j][i])
                    ca_bind_text(self.stmt, 4, text, tl, NULL)
                ca_bind_int64(self.stmt, 5, event_s[i])
                if has_created[i]:
                    ca_bind_int64(self.stmt, 6, created_s[i])
                else:
                    ca_bind_null(self.stmt, 6)
                rc = ca_step(self.stmt)
                ca_reset(self.stmt)
                if dtext != NULL:
                    PyMem_Free(dtext)
                if buf != NULL:
                    PyMem_Free(buf)
                if rc != SQLITE_DONE:
                    raise SqliteError(f"upsert failed: {self.db._err()}", rc == SQLITE_BUSY)
                written += 1
        return written

    def __dealloc__(self):
        if self.stmt != NULL:
            ca_finalize(self.stmt)
