# cython: language_level=3
"""The slice of the sqlite3 C API that ``_sqlite`` and ``_sqlite_write`` use, as function
pointers filled at run time by ``ca_load`` (``dlopen``/``dlsym``): building needs neither
``sqlite3.h`` nor a library to link, and the process uses the same SQLite as Python's
``sqlite3`` module. The pointers are static: each module that cimports this calls
``ca_load`` itself before using them.
"""

cdef extern from *:
    """
    #ifndef _WIN32
    #include <dlfcn.h>
    #endif
    typedef struct ca_db ca_db;
    typedef struct ca_stmt ca_stmt;
    typedef long long ca_i64;
    static int (*ca_open_v2)(const char*, ca_db**, int, const char*);
    static int (*ca_close_v2)(ca_db*);
    static int (*ca_prepare_v2)(ca_db*, const char*, int, ca_stmt**, const char**);
    static int (*ca_finalize)(ca_stmt*);
    static int (*ca_reset)(ca_stmt*);
    static int (*ca_step)(ca_stmt*);
    static int (*ca_bind_blob)(ca_stmt*, int, const void*, int, void (*)(void*));
    static int (*ca_bind_text)(ca_stmt*, int, const char*, int, void (*)(void*));
    static int (*ca_bind_int64)(ca_stmt*, int, ca_i64);
    static int (*ca_bind_null)(ca_stmt*, int);
    static const void* (*ca_column_blob)(ca_stmt*, int);
    static int (*ca_column_bytes)(ca_stmt*, int);
    static const unsigned char* (*ca_column_text)(ca_stmt*, int);
    static ca_i64 (*ca_column_int64)(ca_stmt*, int);
    static double (*ca_column_double)(ca_stmt*, int);
    static int (*ca_column_type)(ca_stmt*, int);
    static const char* (*ca_errmsg)(ca_db*);
    static int (*ca_busy_timeout)(ca_db*, int);
    static int (*ca_exec)(ca_db*, const char*, void*, void*, char**);
    static void (*ca_free)(void*);
    static char ca_load_error[512] = "not loaded";

    #define CA_SYM(var, name) do { *(void**)(&var) = dlsym(h, name); \
        if (!var) { snprintf(ca_load_error, sizeof ca_load_error, "%s has no %s", path, name); return -1; } } while (0)

    static int ca_load(const char* path, int noload) {
    #ifdef _WIN32
        snprintf(ca_load_error, sizeof ca_load_error, "dlopen is not available on Windows");
        return -1;
    #else
        void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL | (noload ? RTLD_NOLOAD : 0));
        if (!h) { const char* e = dlerror(); snprintf(ca_load_error, sizeof ca_load_error, "%s", e ? e : path); return -1; }
        CA_SYM(ca_open_v2, "sqlite3_open_v2");
        CA_SYM(ca_close_v2, "sqlite3_close_v2");
        CA_SYM(ca_prepare_v2, "sqlite3_prepare_v2");
        CA_SYM(ca_finalize, "sqlite3_finalize");
        CA_SYM(ca_reset, "sqlite3_reset");
        CA_SYM(ca_step, "sqlite3_step");
        CA_SYM(ca_bind_blob, "sqlite3_bind_blob");
        CA_SYM(ca_bind_text, "sqlite3_bind_text");
        CA_SYM(ca_bind_int64, "sqlite3_bind_int64");
        CA_SYM(ca_bind_null, "sqlite3_bind_null");
        CA_SYM(ca_column_blob, "sqlite3_column_blob");
        CA_SYM(ca_column_bytes, "sqlite3_column_bytes");
        CA_SYM(ca_column_text, "sqlite3_column_text");
        CA_SYM(ca_column_int64, "sqlite3_column_int64");
        CA_SYM(ca_column_double, "sqlite3_column_double");
        CA_SYM(ca_column_type, "sqlite3_column_type");
        CA_SYM(ca_errmsg, "sqlite3_errmsg");
        CA_SYM(ca_busy_timeout, "sqlite3_busy_timeout");
        CA_SYM(ca_exec, "sqlite3_exec");
        CA_SYM(ca_free, "sqlite3_free");
        return 0;
    #endif
    }
    """
    ctypedef struct ca_db
    ctypedef struct ca_stmt
    ctypedef long long ca_i64
    int ca_open_v2(const char*, ca_db**, int, const char*) nogil
    int ca_close_v2(ca_db*) nogil
    int ca_prepare_v2(ca_db*, const char*, int, ca_stmt**, const char**) nogil
    int ca_finalize(ca_stmt*) nogil
    int ca_reset(ca_stmt*) nogil
    int ca_step(ca_stmt*) nogil
    int ca_bind_blob(ca_stmt*, int, const void*, int, void (*)(void*)) nogil
    int ca_bind_text(ca_stmt*, int, const char*, int, void (*)(void*)) nogil
    int ca_bind_int64(ca_stmt*, int, ca_i64) nogil
    int ca_bind_null(ca_stmt*, int) nogil
    const void* ca_column_blob(ca_stmt*, int) nogil
    int ca_column_bytes(ca_stmt*, int) nogil
    const unsigned char* ca_column_text(ca_stmt*, int) nogil
    ca_i64 ca_column_int64(ca_stmt*, int) nogil
    double ca_column_double(ca_stmt*, int) nogil
    int ca_column_type(ca_stmt*, int) nogil
    const char* ca_errmsg(ca_db*) nogil
    int ca_busy_timeout(ca_db*, int) nogil
    int ca_exec(ca_db*, const char*, void*, void*, char**) nogil
    void ca_free(void*) nogil
    char* ca_load_error
    int ca_load(const char* path, int noload)

cdef enum:
    SQLITE_OK = 0
    SQLITE_BUSY = 5
    SQLITE_ROW = 100
    SQLITE_DONE = 101
    SQLITE_INTEGER = 1
    SQLITE_FLOAT = 2
    SQLITE_BLOB = 4
    SQLITE_NULL = 5
    OPEN_READONLY = 0x1
    OPEN_READWRITE = 0x2
    OPEN_URI = 0x40
    OPEN_NOMUTEX = 0x8000
