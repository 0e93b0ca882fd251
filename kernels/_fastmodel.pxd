# The compiled-model struct shared by the fast kernels (_fastblock, _fastrow,
# _fast) and the small inline helpers they all use. Header-only: everything is
# inlined into each module. See _layout.py for what the arrays mean.

from libc.stdint cimport int32_t, uint32_t, uint64_t

from kernels._common cimport apply_link_d, apply_link_f, load_value_d, load_value_f

cdef extern from *:
    """
    static inline int ca_ctz32(uint32_t v) { return __builtin_ctz(v); }
    static inline int ca_ctz64(uint64_t v) { return __builtin_ctzll(v); }
    """
    int ca_ctz32(uint32_t v) noexcept nogil
    int ca_ctz64(uint64_t v) noexcept nogil

cdef enum:
    BLOCK = 64
    VIEW_NAN_AS_ZERO = 0
    VIEW_NAN_RIGHT = 1
    VIEW_NAN_LEFT = 2
    VIEW_ZERO_RIGHT = 3
    VIEW_ZERO_LEFT = 4
    VIEW_CATEGORICAL = 5
    # Categorical column rules (col_cat_rule), see _layout.py.
    CAT_RULE_LIGHTGBM = 0
    CAT_RULE_XGB_NAN_RIGHT = 1
    CAT_RULE_XGB_NAN_LEFT = 2


cdef struct FModel:
    int n_features
    int n_cols
    int n_sets
    int n_trees
    int input_mode
    int link
    int sum_f32
    int wide               # 1: 64-bit leaf masks
    int lanes              # == BLOCK, kept as a runtime value (see _fastblock.pyx)
    int contrib_stride     # doubles per row of contribution scratch (features + dummies)
    int pack_shift         # always 32: the tree index's position in qs_pack/qm_pack entries
    double scale
    double base
    double avg_div
    # Columns and rank sets.
    const int32_t* col_feature
    const int32_t* col_kind
    const int32_t* col_cat_off
    const int32_t* col_cat_len
    const int32_t* col_cat_rule    # CAT_RULE_*: how NaN and out-of-range values go
    const uint32_t* cat_words
    const int32_t* rs_feature
    const int32_t* rs_offset
    const int32_t* rs_count
    const int32_t* rs_pad
    const int32_t* rs_zero_rank
    const double* rs_thr
    const int32_t* set_col_off     # CSR: numerical columns of each rank set
    const int32_t* set_cols
    int n_cat_cols
    const int32_t* cat_cols
    # Nodes, tree-major.
    const int32_t* node_col
    const int32_t* node_rank
    const double* node_thr
    const uint32_t* clear32        # leaf bits of the left subtree
    const uint64_t* clear64
    const uint32_t* rmask32        # leaf bits of the right subtree (Saabas)
    const uint64_t* rmask64
    const int32_t* node_feature    # input feature of each node (Saabas)
    const double* node_dl          # value(left child) - value(node)
    const double* node_dr          # value(right child) - value(node)
    const float* node_dl32         # the same, rounded to float32 (block kernel)
    const float* node_dr32
    const int32_t* node_foff       # node_feature * BLOCK (block kernel's contribution rows)
    # Leaf-vector reason codes (block kernel): per global leaf, its Saabas path
    # summed per feature, float32, lc_nv * 8 floats per leaf (features padded
    # with zeros). lc_nv == 0: not built (too many features), use the nodes.
    const float* leaf_contrib
    int lc_nv
    const int32_t* kids            # 2 per node: [left, right]; leaf = ~global leaf
    const int32_t* tree_node_off
    const int32_t* tree_root
    const int32_t* tree_leaf_off
    const double* leaf
    # Single-row QuickScorer: per column, node entries sorted by rank.
    const int32_t* qs_col_off      # entries of column c: [qs_col_off[c], qs_col_off[c+1])
    const int32_t* qs_cum_off      # column c, rank b: qs_cum[qs_cum_off[c] + b] entries < b
    const int32_t* qs_cum
    const int32_t* qs_tree
    const uint64_t* qs_keep64      # ~clear (bits kept when the node goes right)
    # Narrow models (<= 32 leaves): packed entries keep32 | (tree << 32). First,
    # per rank set, the nodes of all its numerical views merged into one
    # rank-sorted list (used when no view substitutes the value); then the
    # per-column lists of qs_col_off, from index qs_base; then PACK_PAD
    # neutral entries.
    const uint64_t* q_pack
    int qs_base
    const int32_t* qm_off          # merged list of set s: q_pack[qm_off[s] : qm_off[s + 1]]
    const int32_t* qm_cum_off      # set s, rank b: qm_cum[qm_cum_off[s] + b] entries < b
    const int32_t* qm_cum
    const int32_t* set_zero        # 1 if the set has zero-as-missing views
    # Saabas paths padded per tree: tree t, local leaf i starts at
    # tree_path_off[t] + i * tree_path_width[t]; padding entry j targets the dummy
    # slot n_features + j % 4.
    const int32_t* tree_path_off
    const int32_t* tree_path_width
    const int32_t* path_feature
    const double* path_delta


cdef inline double fm_x(const void* data, int is_f32, Py_ssize_t idx, int mode) noexcept nogil:
    if is_f32:
        return load_value_f((<const float*>data)[idx], mode)
    return load_value_d((<const double*>data)[idx], mode)


cdef inline int32_t fm_rank(const double* u, int32_t pad, double x) noexcept nogil:
    """Number of thresholds < x. u holds the sorted thresholds padded with +inf to
    ``pad`` (a power of two > count); branch-free. NaN ranks 0."""
    cdef int32_t pos = 0
    cdef int32_t step = pad >> 1
    while step > 0:
        pos += step & -(<int32_t>(u[pos + step - 1] < x))
        step >>= 1
    return pos


cdef inline bint fm_in_bitset(double x, const uint32_t* words, int32_t n,
                              int32_t rule) noexcept nogil:
    """Whether a categorical column's value goes left (see _ir.py for the rules)."""
    cdef int32_t c
    if rule == CAT_RULE_LIGHTGBM:
        if not (x > -1.0 and x < 2147483648.0):
            return False
    else:
        # XGBoost: NaN is missing; InvalidCat (x < 0, x >= 2**24) goes right.
        if x != x:
            return rule == CAT_RULE_XGB_NAN_LEFT
        if not (x >= 0.0 and x < 16777216.0):
            return False
    c = <int32_t>x
    return (c >> 5) < n and ((words[c >> 5] >> (c & 31)) & 1)


cdef inline int32_t fm_view_rank(int kind, int32_t rk, bint is_nan, bint is_zero,
                                 int32_t cnt, int32_t zero_rank) noexcept nogil:
    """Rank of a value in one numerical column view (missing rules folded in)."""
    if kind == VIEW_NAN_AS_ZERO:
        return zero_rank if is_nan else rk
    if kind == VIEW_NAN_RIGHT:
        return cnt if is_nan else rk
    if kind == VIEW_NAN_LEFT:
        return 0 if is_nan else rk
    if kind == VIEW_ZERO_RIGHT:
        return cnt if (is_nan or is_zero) else rk
    return 0 if (is_nan or is_zero) else rk


cdef inline double fm_finish(const FModel* m, double acc, float facc, bint raw) noexcept nogil:
    if m.sum_f32:
        if raw:
            return <double>facc
        return apply_link_f(facc, m.link)
    if raw:
        # LightGBM's raw score of an average_output (rf) model is the plain sum.
        return acc
    if m.avg_div != 0.0:
        acc = acc / m.avg_div
    return apply_link_d(acc, m.link, m.scale)


cdef inline void fm_add_path(const FModel* m, int t, int32_t local_leaf,
                             double* cr) noexcept nogil:
    """Add the Saabas path of tree t's leaf to one row's contributions ``cr``."""
    # Local pointers: cr could alias *m as far as the compiler knows, so
    # indexing through m reloaded both array pointers on every entry.
    cdef Py_ssize_t w = m.tree_path_width[t]
    cdef Py_ssize_t p0 = m.tree_path_off[t] + <Py_ssize_t>local_leaf * w
    cdef const int32_t* pf = m.path_feature + p0
    cdef const double* pd = m.path_delta + p0
    cdef Py_ssize_t j
    for j in range(w):
        cr[pf[j]] += pd[j]
