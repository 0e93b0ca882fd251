# cython: language_level=3
"""Block kernel: QuickScorer bit-vectors, tree-major, vectorised across rows.

Rows are processed in blocks of BLOCK (64). Each block is first *ranked*: for
every column, the number of the feature's distinct thresholds below each row's
value (missing-value rules folded in, see _layout.py). Then, tree by tree,
every internal node is evaluated for all rows at once with an integer compare
and an AND of the node's leaf mask into the row's bit-vector; the exit leaf is
the lowest surviving bit. The inner ``for r in ...`` loops are branch-free with
unit stride, so the C compiler turns them into AVX2 code and keeps a tree's 64
bit-vectors in registers. Leaf values are added per row in tree order, which
keeps sums bit-identical to LightGBM (double) and XGBoost (float32).

Reason codes (Saabas) are computed in the same pass, also for all rows of the
block at once: a row went left at node n iff its exit leaf (lowest bit) lies
in n's left-subtree mask, right iff it lies in the right-subtree mask, so every
node adds ``delta_left``, ``delta_right`` or 0 to its feature's column of a
feature-major contribution block, branch-free. These partial sums are float32
(8 rows per AVX2 instruction) and are flushed into float64 every FLUSH_TREES
trees; reported contributions are accurate to ~1e-7 relative.
"""

cimport cython
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memset

from kernels._common cimport load_value_d, load_value_f, top_k_positive
from kernels._fastmodel cimport (
    BLOCK,
    VIEW_NAN_AS_ZERO,
    VIEW_NAN_LEFT,
    VIEW_NAN_RIGHT,
    VIEW_ZERO_RIGHT,
    FModel,
    ca_ctz32,
    ca_ctz64,
    fm_finish,
    fm_in_bitset,
)

cdef enum:
    # float32 Saabas partial sums are flushed into doubles this often: a few
    # terms per flush keeps them within ~1e-7 relative, far below the spread
    # of the contributions reason codes rank.
    FLUSH_TREES = 16
    # Leaf-vector reasons: the most blocks per pass. (Trees per chunk, RCHUNK,
    # is CA_RCHUNK_TREES in the C below.)
    SUPER_BLOCKS = 8

cdef extern from *:
    """
    /* GCC's -O3 loop interchange and unroll-and-jam would restructure the node
       loop around the row loop and turn the contiguous row loads into gathers
       (3x slower); keep the loop nest as written. */

    /* Leaf-vector reasons: trees per chunk. Every row sums its chunk's leaf
       vectors in float32 registers, then adds them into its float64 row; 8 was
       fastest here (4, 12, 16 and 32 measured), and 8 float32 terms keep the
       sums within ~1e-7 relative. */
    #define CA_RCHUNK_TREES 8
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC optimize("no-loop-interchange", "no-loop-unroll-and-jam")
    #endif

    /* Saabas for one tree of <= 32 leaves, 64 rows at once (see _saabas32).
       q[r] = 31 - (position of row r's exit leaf), so (mask << q[r]) moves the
       exit leaf's bit of a node's subtree mask into the sign bit, which is
       what blendv selects on: per 8 rows and node, two shifts, two blends and
       one add into the feature's partial sums. */
    #if defined(__AVX2__)
    #include <immintrin.h>
    static inline void ca_saabas32(const uint32_t* lm, const uint32_t* rm, const float* dl,
                                   const float* dr, const int32_t* foff, int32_t n0,
                                   int32_t n1, const int32_t* leaf, int32_t qbase,
                                   float* contrib) {
        /* q = qbase - leaf = 31 - (exit leaf position), qbase = 31 + tree_leaf_off */
        const __m256i QB = _mm256_set1_epi32(qbase);
        __m256i q0 = _mm256_sub_epi32(QB, _mm256_loadu_si256((const __m256i*)(leaf + 0)));
        __m256i q1 = _mm256_sub_epi32(QB, _mm256_loadu_si256((const __m256i*)(leaf + 8)));
        __m256i q2 = _mm256_sub_epi32(QB, _mm256_loadu_si256((const __m256i*)(leaf + 16)));
        __m256i q3 = _mm256_sub_epi32(QB, _mm256_loadu_si256((const __m256i*)(leaf + 24)));
        __m256i q4 = _mm256_sub_epi32(QB, _mm256_loadu_si256((const __m256i*)(leaf + 32)));
        __m256i q5 = _mm256_sub_epi32(QB, _mm256_loadu_si256((const __m256i*)(leaf + 40)));
        __m256i q6 = _mm256_sub_epi32(QB, _mm256_loadu_si256((const __m256i*)(leaf + 48)));
        __m256i q7 = _mm256_sub_epi32(QB, _mm256_loadu_si256((const __m256i*)(leaf + 56)));
        const __m256 zero = _mm256_setzero_ps();
        for (int32_t n = n0; n < n1; n++) {
            const __m256i L = _mm256_set1_epi32((int)lm[n]);
            const __m256i R = _mm256_set1_epi32((int)rm[n]);
            const __m256 DL = _mm256_set1_ps(dl[n]);
            const __m256 DR = _mm256_set1_ps(dr[n]);
            float* d = contrib + foff[n];
    #define CA_SAABAS_LANE(k, qk) do { \
                __m256 x = _mm256_blendv_ps(zero, DL, \
                    _mm256_castsi256_ps(_mm256_sllv_epi32(L, qk))); \
                x = _mm256_blendv_ps(x, DR, _mm256_castsi256_ps(_mm256_sllv_epi32(R, qk))); \
                _mm256_storeu_ps(d + 8 * k, _mm256_add_ps(_mm256_loadu_ps(d + 8 * k), x)); \
            } while (0)
            CA_SAABAS_LANE(0, q0); CA_SAABAS_LANE(1, q1);
            CA_SAABAS_LANE(2, q2); CA_SAABAS_LANE(3, q3);
            CA_SAABAS_LANE(4, q4); CA_SAABAS_LANE(5, q5);
            CA_SAABAS_LANE(6, q6); CA_SAABAS_LANE(7, q7);
    #undef CA_SAABAS_LANE
        }
    }
    #else
    static inline void ca_saabas32(const uint32_t* lm, const uint32_t* rm, const float* dl,
                                   const float* dr, const int32_t* foff, int32_t n0,
                                   int32_t n1, const int32_t* leaf, int32_t qbase,
                                   float* contrib) {
        for (int32_t n = n0; n < n1; n++) {
            float* d = contrib + foff[n];
            for (int r = 0; r < 64; r++) {
                int32_t q = qbase - leaf[r];
                float x = ((int32_t)(lm[n] << q) < 0) ? dl[n] : 0.0f;
                x = ((int32_t)(rm[n] << q) < 0) ? dr[n] : x;
                d[r] += x;
            }
        }
    }
    #endif

    /* Reason codes from per-leaf contribution vectors (FModel.leaf_contrib):
       for a chunk of ntrees trees, every row adds its exit leaves' float32
       vectors (stride floats, a multiple of 8) in registers, then adds the
       chunk's sum into its float64 accumulator row. Row r's exit leaf in the
       chunk's c-th tree is toff[c] + lidx[c * lstride + r] (a tree's first leaf
       plus its local leaf, one byte). NV = stride / 8
       is a compile-time constant per variant so the accumulators stay in
       registers. */
    #if defined(__AVX__)
    #define CA_RFLUSH(d, a, j) do { \
            _mm256_storeu_pd((d) + 8 * (j), _mm256_add_pd(_mm256_loadu_pd((d) + 8 * (j)), \
                _mm256_cvtps_pd(_mm256_castps256_ps128(a)))); \
            _mm256_storeu_pd((d) + 8 * (j) + 4, _mm256_add_pd(_mm256_loadu_pd((d) + 8 * (j) + 4), \
                _mm256_cvtps_pd(_mm256_extractf128_ps((a), 1)))); \
        } while (0)
    /* Two rows per iteration when their accumulators fit the 16 registers
       (NV <= 6): twice the independent add chains for the same loads. */
    #define CA_RCHUNK(NV) \
    static void ca_rchunk_##NV(const float* tab, const int32_t* toff, const uint8_t* lidx, \
                               int lstride, int ntrees, int nrows, double* racc) { \
        const int stride = 8 * NV; \
        int r = 0; \
        if (NV <= 6) { \
            for (; r + 1 < nrows; r += 2) { \
                __m256 a[NV], b[NV]; \
                for (int j = 0; j < NV; j++) { a[j] = _mm256_setzero_ps(); b[j] = a[j]; } \
                for (int c = 0; c < ntrees; c++) { \
                    const uint8_t* l = lidx + (size_t)c * lstride + r; \
                    const float* ra = tab + (size_t)(toff[c] + l[0]) * stride; \
                    const float* rb = tab + (size_t)(toff[c] + l[1]) * stride; \
                    for (int j = 0; j < NV; j++) { \
                        a[j] = _mm256_add_ps(a[j], _mm256_loadu_ps(ra + 8 * j)); \
                        b[j] = _mm256_add_ps(b[j], _mm256_loadu_ps(rb + 8 * j)); \
                    } \
                } \
                double* d = racc + (size_t)r * stride; \
                for (int j = 0; j < NV; j++) { \
                    CA_RFLUSH(d, a[j], j); \
                    CA_RFLUSH(d + stride, b[j], j); \
                } \
            } \
        } \
        for (; r < nrows; r++) { \
            __m256 a[NV]; \
            for (int j = 0; j < NV; j++) a[j] = _mm256_setzero_ps(); \
            for (int c = 0; c < ntrees; c++) { \
                const float* row = tab + (size_t)(toff[c] + lidx[(size_t)c * lstride + r]) * stride; \
                for (int j = 0; j < NV; j++) \
                    a[j] = _mm256_add_ps(a[j], _mm256_loadu_ps(row + 8 * j)); \
            } \
            double* d = racc + (size_t)r * stride; \
            for (int j = 0; j < NV; j++) CA_RFLUSH(d, a[j], j); \
        } \
    }
    #else
    #define CA_RCHUNK(NV) \
    static void ca_rchunk_##NV(const float* tab, const int32_t* toff, const uint8_t* lidx, \
                               int lstride, int ntrees, int nrows, double* racc) { \
        const int stride = 8 * NV; \
        for (int r = 0; r < nrows; r++) { \
            float a[8 * NV]; \
            for (int j = 0; j < stride; j++) a[j] = 0.0f; \
            for (int c = 0; c < ntrees; c++) { \
                const float* row = tab + (size_t)(toff[c] + lidx[(size_t)c * lstride + r]) * stride; \
                for (int j = 0; j < stride; j++) a[j] += row[j]; \
            } \
            double* d = racc + (size_t)r * stride; \
            for (int j = 0; j < stride; j++) d[j] += (double)a[j]; \
        } \
    }
    #endif
    #if defined(__AVX__)
    #include <immintrin.h>
    #endif
    /* Call the NV-specialised variant name##_NV (NV = leaf vector floats / 8). */
    #define CA_NV_DISPATCH(name, nv, ...) do { \
            switch (nv) { \
                case 1: name##_1(__VA_ARGS__); break; \
                case 2: name##_2(__VA_ARGS__); break; \
                case 3: name##_3(__VA_ARGS__); break; \
                case 4: name##_4(__VA_ARGS__); break; \
                case 5: name##_5(__VA_ARGS__); break; \
                case 6: name##_6(__VA_ARGS__); break; \
                case 7: name##_7(__VA_ARGS__); break; \
                default: name##_8(__VA_ARGS__); break; \
            } \
        } while (0)
    CA_RCHUNK(1) CA_RCHUNK(2) CA_RCHUNK(3) CA_RCHUNK(4)
    CA_RCHUNK(5) CA_RCHUNK(6) CA_RCHUNK(7) CA_RCHUNK(8)
    /* One row, global leaf indices: the same sums as ca_rchunk (float32 per
       RCHUNK trees in tree order, then into float64), without the byte
       indices the block layout needs. A row's leaves are scattered over an
       L3-sized table, so each tree prefetches the vector CA_RROW_AHEAD trees
       on (24 measured ~25% faster than none, 16 or 32 in a C harness). */
    #define CA_RROW_AHEAD 24
    #if defined(__AVX__)
    #define CA_RROW(NV) \
    static void ca_rrow_##NV(const float* tab, const int32_t* leaf, int ntrees, \
                             double* racc) { \
        const int stride = 8 * NV; \
        for (int t0 = 0; t0 < ntrees; t0 += CA_RCHUNK_TREES) { \
            const int t1 = t0 + CA_RCHUNK_TREES < ntrees ? t0 + CA_RCHUNK_TREES : ntrees; \
            __m256 a[NV]; \
            for (int j = 0; j < NV; j++) a[j] = _mm256_setzero_ps(); \
            for (int t = t0; t < t1; t++) { \
                if (t + CA_RROW_AHEAD < ntrees) { \
                    const char* q = (const char*)(tab + (size_t)leaf[t + CA_RROW_AHEAD] * stride); \
                    for (int b = 0; b < 4 * stride; b += 64) __builtin_prefetch(q + b); \
                    __builtin_prefetch(q + 4 * stride - 1); \
                } \
                const float* row = tab + (size_t)leaf[t] * stride; \
                for (int j = 0; j < NV; j++) \
                    a[j] = _mm256_add_ps(a[j], _mm256_loadu_ps(row + 8 * j)); \
            } \
            for (int j = 0; j < NV; j++) CA_RFLUSH(racc, a[j], j); \
        } \
    }
    #else
    #define CA_RROW(NV) \
    static void ca_rrow_##NV(const float* tab, const int32_t* leaf, int ntrees, \
                             double* racc) { \
        const int stride = 8 * NV; \
        for (int t0 = 0; t0 < ntrees; t0 += CA_RCHUNK_TREES) { \
            const int t1 = t0 + CA_RCHUNK_TREES < ntrees ? t0 + CA_RCHUNK_TREES : ntrees; \
            float a[8 * NV]; \
            for (int j = 0; j < stride; j++) a[j] = 0.0f; \
            for (int t = t0; t < t1; t++) { \
                const float* row = tab + (size_t)leaf[t] * stride; \
                for (int j = 0; j < stride; j++) a[j] += row[j]; \
            } \
            for (int j = 0; j < stride; j++) racc[j] += (double)a[j]; \
        } \
    }
    #endif
    CA_RROW(1) CA_RROW(2) CA_RROW(3) CA_RROW(4)
    CA_RROW(5) CA_RROW(6) CA_RROW(7) CA_RROW(8)
    static inline void ca_rrow(int nv, const float* tab, const int32_t* leaf, int ntrees,
                               double* racc) {
        CA_NV_DISPATCH(ca_rrow, nv, tab, leaf, ntrees, racc);
    }
    static inline void ca_rchunk(int nv, const float* tab, const int32_t* toff,
                                 const uint8_t* lidx, int lstride, int ntrees, int nrows,
                                 double* racc) {
        CA_NV_DISPATCH(ca_rchunk, nv, tab, toff, lidx, lstride, ntrees, nrows, racc);
    }
    """
    int RCHUNK "CA_RCHUNK_TREES"
    void ca_rrow(int nv, const float* tab, const int32_t* leaf, int ntrees,
                 double* racc) noexcept nogil
    void ca_rchunk(int nv, const float* tab, const int32_t* toff, const uint8_t* lidx,
                   int lstride, int ntrees, int nrows, double* racc) noexcept nogil
    void ca_saabas32(const uint32_t* lm, const uint32_t* rm, const float* dl, const float* dr,
                     const int32_t* foff, int32_t n0, int32_t n1, const int32_t* leaf,
                     int32_t qbase, float* contrib) noexcept nogil


cdef inline void _load_feature(const FModel* m, const void* data, int is_f32, Py_ssize_t row0,
                               int nrows, int32_t f, BlockScratch* sc) noexcept nogil:
    cdef Py_ssize_t r
    cdef Py_ssize_t nf = m.n_features
    cdef const float* pf = <const float*>data + row0 * nf + f
    cdef const double* pd = <const double*>data + row0 * nf + f
    if is_f32:
        for r in range(nrows):
            sc.xs[r] = load_value_f(pf[r * nf], m.input_mode)
    else:
        for r in range(nrows):
            sc.xs[r] = load_value_d(pd[r * nf], m.input_mode)
    for r in range(nrows, BLOCK):
        sc.xs[r] = 0.0


cdef void _rank_block(const FModel* m, const void* data, int is_f32, Py_ssize_t row0,
                      int nrows, int32_t* bins, BlockScratch* sc) noexcept nogil:
    """Fill bins[col * BLOCK + r]. Padding lanes rank 0.0, so every lane is defined."""
    cdef int s, j, c, kind
    # Py_ssize_t loop indices throughout: with CPython's -fwrapv an int index is
    # not provably affine after widening, and GCC then emits gathers.
    cdef Py_ssize_t r
    cdef Py_ssize_t lanes = m.lanes
    cdef int32_t f, step, cnt, zr
    cdef const double* u
    cdef int32_t* dst
    cdef const uint32_t* words
    cdef int32_t nwords, rule
    for s in range(m.n_sets):
        f = m.rs_feature[s]
        u = m.rs_thr + m.rs_offset[s]
        cnt = m.rs_count[s]
        zr = m.rs_zero_rank[s]
        _load_feature(m, data, is_f32, row0, nrows, f, sc)
        for r in range(lanes):
            sc.pos[r] = 0
            sc.nan[r] = sc.xs[r] != sc.xs[r]
            sc.zero[r] = (sc.xs[r] != sc.xs[r]) | (sc.xs[r] == 0.0)
        # Branch-free binary search, one step for all rows at a time so the
        # independent searches overlap (NaN compares false and ranks 0).
        step = m.rs_pad[s] >> 1
        while step > 0:
            for r in range(lanes):
                sc.pos[r] += step & -(<int32_t>(u[sc.pos[r] + step - 1] < sc.xs[r]))
            step >>= 1
        for j in range(m.set_col_off[s], m.set_col_off[s + 1]):
            c = m.set_cols[j]
            kind = m.col_kind[c]
            dst = bins + c * BLOCK
            if kind == VIEW_NAN_AS_ZERO:
                for r in range(lanes):
                    dst[r] = zr if sc.nan[r] else sc.pos[r]
            elif kind == VIEW_NAN_RIGHT:
                for r in range(lanes):
                    dst[r] = cnt if sc.nan[r] else sc.pos[r]
            elif kind == VIEW_NAN_LEFT:
                for r in range(lanes):
                    dst[r] = 0 if sc.nan[r] else sc.pos[r]
            elif kind == VIEW_ZERO_RIGHT:
                for r in range(lanes):
                    dst[r] = cnt if sc.zero[r] else sc.pos[r]
            else:
                for r in range(lanes):
                    dst[r] = 0 if sc.zero[r] else sc.pos[r]
    for j in range(m.n_cat_cols):
        c = m.cat_cols[j]
        dst = bins + c * BLOCK
        words = m.cat_words + m.col_cat_off[c]
        nwords = m.col_cat_len[c]
        rule = m.col_cat_rule[c]
        _load_feature(m, data, is_f32, row0, nrows, m.col_feature[c], sc)
        for r in range(lanes):
            dst[r] = 0 if fm_in_bitset(sc.xs[r], words, nwords, rule) else 1


cdef inline void _leaves_out(const FModel* m, const int32_t* leaf_idx, int nrows,
                             double* acc, float* facc) noexcept nogil:
    """Add one tree's exit leaves for every row (so each row sums in tree order)."""
    cdef Py_ssize_t r
    if m.sum_f32:
        for r in range(nrows):
            facc[r] = facc[r] + <float>m.leaf[leaf_idx[r]]
    else:
        for r in range(nrows):
            acc[r] += m.leaf[leaf_idx[r]]


cdef inline void _saabas32(const FModel* m, int t, const int32_t* leaf_idx,
                           float* contrib) noexcept nogil:
    """Saabas for tree t, all rows at once: a row passes node n leftwards iff its
    exit leaf is in n's left-subtree mask, rightwards iff it is in the
    right-subtree mask, so every node adds dl, dr or 0 to its feature's row
    of the feature-major float32 block, without branches (ca_saabas32 above:
    6 AVX2 instructions per 8 rows and node). leaf_idx: every lane's global
    exit leaf. The partial sums are flushed into doubles every FLUSH_TREES
    trees."""
    ca_saabas32(m.clear32, m.rmask32, m.node_dl32, m.node_dr32, m.node_foff,
                m.tree_node_off[t], m.tree_node_off[t + 1], leaf_idx,
                31 + m.tree_leaf_off[t], contrib)


cdef inline void _flush(const FModel* m, float* cf, double* cd) noexcept nogil:
    """Move float32 partial contributions into the double sums."""
    cdef Py_ssize_t i
    for i in range(m.n_features * BLOCK):
        cd[i] += <double>cf[i]
        cf[i] = 0.0


cdef inline void _saabas64(const FModel* m, int t, const uint64_t* v,
                           float* contrib) noexcept nogil:
    cdef uint64_t e[BLOCK]
    cdef Py_ssize_t r
    cdef int32_t n
    cdef uint64_t lm, rm
    cdef float dl, dr
    cdef float* dst
    for r in range(BLOCK):
        e[r] = v[r] & (<uint64_t>0 - v[r])
    for n in range(m.tree_node_off[t], m.tree_node_off[t + 1]):
        lm = m.clear64[n]
        rm = m.rmask64[n]
        dl = <float>m.node_dl[n]
        dr = <float>m.node_dr[n]
        dst = contrib + m.node_feature[n] * BLOCK
        for r in range(BLOCK):
            dst[r] += (dl if (e[r] & lm) != 0 else <float>0.0) + \
                      (dr if (e[r] & rm) != 0 else <float>0.0)


cdef void _trees32(const FModel* m, const int32_t* bins, int nrows, double* acc, float* facc,
                   double* contrib, uint8_t* lout, Py_ssize_t lstride) noexcept nogil:
    # float32 partial contributions sit right after the double ones
    cdef float* cf = <float*>(contrib + (m.n_features + 1) * BLOCK) if contrib != NULL else NULL
    cdef uint32_t v[BLOCK]
    cdef int32_t leaf_idx[BLOCK]
    cdef uint8_t* lb
    cdef int t
    cdef Py_ssize_t r
    cdef int32_t n, k, lbase
    cdef uint32_t clr
    cdef const int32_t* bc
    for t in range(m.n_trees):
        for r in range(BLOCK):
            v[r] = 0xFFFFFFFFu
        for n in range(m.tree_node_off[t], m.tree_node_off[t + 1]):
            bc = bins + m.node_col[n] * BLOCK
            k = m.node_rank[n]
            clr = m.clear32[n]
            # Clear the left subtree's leaves where the row goes right.
            for r in range(BLOCK):
                v[r] &= ~(clr & (<uint32_t>0 - <uint32_t>(bc[r] > k)))
        lbase = m.tree_leaf_off[t]
        if lout != NULL:
            # Leaf-vector reasons: keep this tree's exit leaves (local, one byte)
            # for the reasons pass.
            # (Three loops: the narrowing store and the add vectorise apart.)
            lb = lout + t * lstride
            for r in range(nrows):
                leaf_idx[r] = ca_ctz32(v[r])
            for r in range(nrows):
                lb[r] = <uint8_t>leaf_idx[r]
            for r in range(nrows):
                leaf_idx[r] += lbase
            _leaves_out(m, leaf_idx, nrows, acc, facc)
            continue
        # With node reasons every lane needs its leaf (padding lanes are ranked too).
        for r in range(nrows if contrib == NULL else BLOCK):
            leaf_idx[r] = lbase + ca_ctz32(v[r])
        _leaves_out(m, leaf_idx, nrows, acc, facc)
        if contrib != NULL:
            _saabas32(m, t, leaf_idx, cf)
            if (t + 1) % FLUSH_TREES == 0 or t + 1 == m.n_trees:
                _flush(m, cf, contrib)


cdef void _trees64(const FModel* m, const int32_t* bins, int nrows, double* acc, float* facc,
                   double* contrib, uint8_t* lout, Py_ssize_t lstride) noexcept nogil:
    # float32 partial contributions sit right after the double ones
    cdef float* cf = <float*>(contrib + (m.n_features + 1) * BLOCK) if contrib != NULL else NULL
    cdef uint64_t v[BLOCK]
    cdef int32_t leaf_idx[BLOCK]
    cdef uint8_t* lb
    cdef int t
    cdef Py_ssize_t r
    cdef int32_t n, k, lbase
    cdef uint64_t clr
    cdef const int32_t* bc
    for t in range(m.n_trees):
        for r in range(BLOCK):
            v[r] = 0xFFFFFFFFFFFFFFFFu
        for n in range(m.tree_node_off[t], m.tree_node_off[t + 1]):
            bc = bins + m.node_col[n] * BLOCK
            k = m.node_rank[n]
            clr = m.clear64[n]
            for r in range(BLOCK):
                v[r] &= ~(clr & (<uint64_t>0 - <uint64_t>(bc[r] > k)))
        lbase = m.tree_leaf_off[t]
        if lout != NULL:
            # Leaf-vector reasons: keep this tree's exit leaves (local, one byte)
            # for the reasons pass.
            # (Three loops: the narrowing store and the add vectorise apart.)
            lb = lout + t * lstride
            for r in range(nrows):
                leaf_idx[r] = ca_ctz64(v[r])
            for r in range(nrows):
                lb[r] = <uint8_t>leaf_idx[r]
            for r in range(nrows):
                leaf_idx[r] += lbase
            _leaves_out(m, leaf_idx, nrows, acc, facc)
            continue
        for r in range(nrows):
            leaf_idx[r] = lbase + ca_ctz64(v[r])
        _leaves_out(m, leaf_idx, nrows, acc, facc)
        if contrib != NULL:
            _saabas64(m, t, v, cf)
            if (t + 1) % FLUSH_TREES == 0 or t + 1 == m.n_trees:
                _flush(m, cf, contrib)


cdef inline Py_ssize_t _super_rows(const FModel* m) noexcept nogil:
    """Rows per leaf-vector reasons pass: as many blocks as keep the buffered
    leaf indices (n_trees bytes per row) near 256 KB, at least one block, at
    most SUPER_BLOCKS. Every pass reads the whole leaf table once, so more rows
    per pass means less table traffic per row (it is L3-sized)."""
    cdef Py_ssize_t blocks = (1 << 18) // ((<Py_ssize_t>m.n_trees + 1) * BLOCK)
    if blocks < 1:
        blocks = 1
    if blocks > SUPER_BLOCKS:
        blocks = SUPER_BLOCKS
    return blocks * BLOCK


cdef void block_run(const FModel* m, const void* data, int is_f32, Py_ssize_t n, bint raw,
                    double* out, int top_k, int32_t* out_idx, double* out_val,
                    int32_t* bins, BlockScratch* sc, double* contrib) noexcept nogil:
    """Score rows [0, n). bins: (n_cols + 1) * BLOCK int32. With reasons (top_k > 0),
    contrib is block_reason_doubles(m) doubles of scratch."""
    if contrib != NULL and m.lc_nv:
        _run_leaf_reasons(m, data, is_f32, n, raw, out, top_k, out_idx, out_val, bins, sc,
                          contrib)
        return
    cdef double acc[BLOCK]
    cdef float facc[BLOCK]
    cdef Py_ssize_t b0 = 0
    cdef int r, nrows, f
    # The row being ranked sits after the float32 partials: it must not overlap them, and
    # n_features can exceed BLOCK (the old offset wrote into the next block's partials).
    cdef double* row = contrib + _reason_row_offset(m) if contrib != NULL else NULL
    while b0 < n:
        nrows = BLOCK if n - b0 >= BLOCK else <int>(n - b0)
        _rank_block(m, data, is_f32, b0, nrows, bins, sc)
        for r in range(BLOCK):
            acc[r] = m.base
            facc[r] = <float>m.base
        if contrib != NULL:
            memset(contrib, 0, m.n_features * BLOCK * sizeof(double))
        if m.wide:
            _trees64(m, bins, nrows, acc, facc, contrib, NULL, 0)
        else:
            _trees32(m, bins, nrows, acc, facc, contrib, NULL, 0)
        for r in range(nrows):
            out[b0 + r] = fm_finish(m, acc[r], facc[r], raw)
            if contrib != NULL:
                for f in range(m.n_features):
                    row[f] = contrib[f * BLOCK + r]
                top_k_positive(row, m.n_features, top_k,
                               out_idx + (b0 + r) * top_k, out_val + (b0 + r) * top_k)
        b0 += nrows


cdef void _run_leaf_reasons(const FModel* m, const void* data, int is_f32, Py_ssize_t n,
                            bint raw, double* out, int top_k, int32_t* out_idx,
                            double* out_val, int32_t* bins, BlockScratch* sc,
                            double* scratch) noexcept nogil:
    """block_run with leaf-vector reason codes. Rows go in passes of _super_rows:
    each block of the pass is scored as usual, keeping every tree's exit leaves
    (lidx, tree-major); then, RCHUNK trees at a time, every row of the pass adds
    its leaves' contribution vectors (ca_rchunk) into its float64 row of racc."""
    cdef double acc[BLOCK]
    cdef float facc[BLOCK]
    cdef Py_ssize_t sb = _super_rows(m)
    cdef Py_ssize_t stride = 8 * m.lc_nv
    cdef double* racc = scratch
    cdef uint8_t* lidx = <uint8_t*>(scratch + sb * stride)
    cdef Py_ssize_t p0 = 0
    cdef Py_ssize_t b0, prow, r
    cdef int nrows, t
    while p0 < n:
        prow = sb if n - p0 >= sb else n - p0
        b0 = 0
        while b0 < prow:
            nrows = BLOCK if prow - b0 >= BLOCK else <int>(prow - b0)
            _rank_block(m, data, is_f32, p0 + b0, nrows, bins, sc)
            for r in range(BLOCK):
                acc[r] = m.base
                facc[r] = <float>m.base
            if m.wide:
                _trees64(m, bins, nrows, acc, facc, NULL, lidx + b0, sb)
            else:
                _trees32(m, bins, nrows, acc, facc, NULL, lidx + b0, sb)
            for r in range(nrows):
                out[p0 + b0 + r] = fm_finish(m, acc[r], facc[r], raw)
            b0 += nrows
        memset(racc, 0, prow * stride * sizeof(double))
        t = 0
        while t < m.n_trees:
            ca_rchunk(m.lc_nv, m.leaf_contrib, m.tree_leaf_off + t, lidx + t * sb, <int>sb,
                      RCHUNK if m.n_trees - t >= RCHUNK else m.n_trees - t, <int>prow, racc)
            t += RCHUNK
        for r in range(prow):
            top_k_positive(racc + r * stride, m.n_features, top_k,
                           out_idx + (p0 + r) * top_k, out_val + (p0 + r) * top_k)
        p0 += prow


cdef void leaf_reasons_row(const FModel* m, const int32_t* leaf_idx,
                           double* racc) noexcept nogil:
    """Leaf-vector reasons of one row (m.lc_nv > 0): racc (8 * lc_nv doubles,
    zeroed) += the leaf vectors of the row's exit leaves (leaf_idx, global), in
    float32 per RCHUNK trees like the block kernel, so the values match it
    bit for bit. ~3x cheaper than adding padded float64 paths entry by entry
    (a load, an add and a store each, about 5 cycles apiece here)."""
    ca_rrow(m.lc_nv, m.leaf_contrib, leaf_idx, m.n_trees, racc)


cdef Py_ssize_t block_reason_doubles(const FModel* m) noexcept nogil:
    """Doubles of reason-code scratch block_run needs."""
    cdef Py_ssize_t sb
    if m.lc_nv:
        # racc (rows x features, double), then lidx (trees x rows, uint8)
        sb = _super_rows(m)
        return sb * 8 * m.lc_nv + (sb * (<Py_ssize_t>m.n_trees + 1)) // 8 + 1
    # doubles (n_features + 1) * BLOCK, then float32 partials n_features * BLOCK, then a row
    return _reason_row_offset(m) + m.n_features


cdef inline Py_ssize_t _reason_row_offset(const FModel* m) noexcept nogil:
    """Where block_run's ranked row starts in the reason scratch (after the partials)."""
    return (m.n_features + 1) * BLOCK + (m.n_features + 1) * BLOCK // 2 + 1
