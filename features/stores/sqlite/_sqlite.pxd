# cython: language_level=3
from features.stores.sqlite._sqlite_api cimport ca_db, ca_stmt


cdef class Database:
    cdef ca_db* db
    cdef readonly str path
    cdef str _err(self)
    cdef int _check_open(self) except -1
    cdef ca_stmt* prepare(self, str sql) except NULL
