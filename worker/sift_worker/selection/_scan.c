/* The k-center step as one pass over memory: similarity to the new centre, fused
 * with the min-distance update (float32) or with the "might this row move" filter
 * (int8). torch has no fused op for either, and its separate gemv, compare and
 * masked writes re-read the per-row state several times per step; here each row
 * is read once, eight rows at a time (AVX2 + FMA when the CPU has them, chosen at
 * run time; plain C otherwise). Callers split row ranges across threads: every
 * function releases the GIL and touches only rows p0..p1.
 *
 * Exactness is settled by the Python side (docs/kcenter.md): the float32 sums
 * differ from numpy's only in summation order, and int8 results are a filter
 * whose rounding is covered by a per-row bound.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SIFT_AVX2 1
#include <immintrin.h>
#endif

/* ---- plain C ---------------------------------------------------------------- */

static void f32_update_c(const float *x, Py_ssize_t ld, Py_ssize_t dim, const float *q,
                         const float *norms, float *maxsim, int32_t *assign, int32_t aid,
                         Py_ssize_t p0, Py_ssize_t p1) {
    for (Py_ssize_t i = p0; i < p1; i++) {
        const float *r = x + i * ld;
        float s = 0.0f;
        for (Py_ssize_t j = 0; j < dim; j++) s += r[j] * q[j];
        if (norms) s = s / norms[i];
        if (s > maxsim[i]) {
            maxsim[i] = s;
            if (assign) assign[i] = aid;
        }
    }
}

static float dot_c(const float *r, const float *q, Py_ssize_t dim) {
    float s = 0.0f;
    for (Py_ssize_t j = 0; j < dim; j++) s += r[j] * q[j];
    return s;
}

typedef float (*dot_fn)(const float *, const float *, Py_ssize_t);

/* Flagged rows re-measured exactly: positions pos[k] hold input rows rows[k]. */
static Py_ssize_t f32_recheck_c(dot_fn dot, const float *x, Py_ssize_t ld, Py_ssize_t dim,
                                const float *q, const float *norms, const int64_t *rows,
                                const int64_t *pos, Py_ssize_t count, float *maxsim,
                                int32_t *assign, int32_t aid, const float *thr, float *lowbar) {
    Py_ssize_t changed = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        int64_t r = rows[k], p = pos[k];
        float s = dot(x + r * ld, q, dim) / norms[r];
        if (s > maxsim[p]) {
            maxsim[p] = s;
            assign[p] = aid;
            if (lowbar) lowbar[p] = s - thr[p];
            changed++;
        }
    }
    return changed;
}

static void tile_min_c(const float *values, Py_ssize_t tile, float *out, Py_ssize_t t0,
                       Py_ssize_t t1) {
    for (Py_ssize_t t = t0; t < t1; t++) {
        const float *r = values + t * tile;
        float m = r[0];
        for (Py_ssize_t i = 1; i < tile; i++) m = r[i] < m ? r[i] : m;
        out[t] = m;
    }
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* int8 rows times an int16 query; out != NULL: write similarities, else flag rows
 * whose similarity reaches lowbar into pos[] and return how many. */
static Py_ssize_t i8_scan_c(const int8_t *x, Py_ssize_t ld, const int16_t *q, float qscale,
                            const uint16_t *scale, const float *lowbar, float *out,
                            int64_t *pos, Py_ssize_t p0, Py_ssize_t p1) {
    Py_ssize_t count = 0;
    for (Py_ssize_t i = p0; i < p1; i++) {
        const int8_t *r = x + i * ld;
        int32_t acc = 0;
        for (Py_ssize_t j = 0; j < ld; j++) acc += (int32_t)r[j] * (int32_t)q[j];
        float s = (float)acc * (bf16_to_f32(scale[i]) * qscale);
        if (out)
            out[i - p0] = s;
        else if (s >= lowbar[i])
            pos[count++] = i;
    }
    return count;
}

/* float32 -> bfloat16 bits, round to nearest even (as torch's .to(torch.bfloat16)). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* The build pass, one read of the input: unit = x / norm (IEEE division: the same
 * floats as numpy's), the column sums of the unit rows in double (for the mean
 * direction), and the stored copy: the unit row itself (store_i8 NULL), or int8 with
 * a per-row bfloat16 scale s >= amax / 127 (the (1 + 2^-7) margin survives rounding
 * to bfloat16), q = round_half_even(u / s) and err = |u - q s|, the bound the scan's
 * filter relies on, measured rather than assumed. */
/* Columns j0..dim of one row: u = x / norm, column sums, running |u| maximum. */
static inline float unit_tail(const float *r, float *u, double *colsum, float norm, Py_ssize_t j0,
                              Py_ssize_t dim, float amax) {
    for (Py_ssize_t j = j0; j < dim; j++) {
        u[j] = r[j] / norm;
        colsum[j] += u[j];
        float a = fabsf(u[j]);
        amax = a > amax ? a : amax;
    }
    return amax;
}

/* A row's bfloat16 scale: >= amax / 127 after rounding (1 for a zero row). */
static inline uint16_t row_scale(float amax) {
    return amax > 0.0f ? f32_to_bf16(amax / 127.0f * (1.0f + 0x1p-7f)) : 0x3f80u;
}

/* Columns j0..dim of one row quantised with scale s; returns the added squared error. */
static inline double quantise_tail(const float *u, int8_t *o, float s, Py_ssize_t j0,
                                   Py_ssize_t dim) {
    double e2 = 0.0;
    for (Py_ssize_t j = j0; j < dim; j++) {
        float q = nearbyintf(u[j] / s);
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        o[j] = (int8_t)q;
        double d = (double)u[j] - (double)q * (double)s;
        e2 += d * d;
    }
    return e2;
}

static void unit_rows_c(const float *x, Py_ssize_t rows, Py_ssize_t dim, const float *norms,
                        double *colsum, float *store_f32, int8_t *store_i8, Py_ssize_t ld,
                        uint16_t *scale, float *err, float *tmp) {
    for (Py_ssize_t i = 0; i < rows; i++) {
        const float *r = x + i * dim;
        float *u = store_f32 ? store_f32 + i * ld : tmp;
        float amax = unit_tail(r, u, colsum, norms[i], 0, dim, 0.0f);
        if (!store_i8) continue;
        int8_t *o = store_i8 + i * ld;
        uint16_t sb = row_scale(amax);
        double e2 = quantise_tail(u, o, bf16_to_f32(sb), 0, dim);
        for (Py_ssize_t j = dim; j < ld; j++) o[j] = 0;
        scale[i] = sb;
        err[i] = (float)sqrt(e2);
    }
}

/* ---- AVX2 ------------------------------------------------------------------- */

#ifdef SIFT_AVX2
#define AVX2 __attribute__((target("avx2,fma")))

/* Eight vectors -> one vector of their eight horizontal sums. */
AVX2 static inline __m256 hsum8_ps(const __m256 *v) {
    __m256 s01 = _mm256_hadd_ps(v[0], v[1]), s23 = _mm256_hadd_ps(v[2], v[3]);
    __m256 s45 = _mm256_hadd_ps(v[4], v[5]), s67 = _mm256_hadd_ps(v[6], v[7]);
    __m256 a = _mm256_hadd_ps(s01, s23), b = _mm256_hadd_ps(s45, s67);
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

AVX2 static inline __m256i hsum8_epi32(const __m256i *v) {
    __m256i s01 = _mm256_hadd_epi32(v[0], v[1]), s23 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i s45 = _mm256_hadd_epi32(v[4], v[5]), s67 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i a = _mm256_hadd_epi32(s01, s23), b = _mm256_hadd_epi32(s45, s67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                            _mm256_permute2x128_si256(a, b, 0x31));
}

/* Rows are read in memory order (each row whole, eight rows per block) with a
 * software prefetch a few kilobytes ahead: the 2-3x faster pattern on the CPUs
 * measured (an interleaved row order defeats the hardware prefetcher). */
AVX2 static void f32_update_avx2(const float *x, Py_ssize_t ld, Py_ssize_t dim, const float *q,
                                 const float *norms, float *maxsim, int32_t *assign, int32_t aid,
                                 Py_ssize_t p0, Py_ssize_t p1) {
    Py_ssize_t full8 = dim & ~(Py_ssize_t)7, i = p0, ahead = 16 * ld;
    int tail = (int)(dim - full8);
    __m256i tail_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 qt = _mm256_maskload_ps(q + full8, tail_mask);
    __m256i aidv = _mm256_set1_epi32(aid);
    for (; i + 8 <= p1; i += 8) {
        const float *r = x + i * ld;
        __m256 acc[8];
        for (Py_ssize_t b = 0; b < 8 * ld; b += 16) _mm_prefetch((const char *)(r + ahead + b), _MM_HINT_T0);
        for (int k = 0; k < 8; k++) {
            const float *rk = r + k * ld;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            Py_ssize_t j = 0;
            for (; j + 16 <= dim; j += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(rk + j), _mm256_loadu_ps(q + j), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(rk + j + 8), _mm256_loadu_ps(q + j + 8), a1);
            }
            if (j < full8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(rk + j), _mm256_loadu_ps(q + j), a0);
            if (tail) a1 = _mm256_fmadd_ps(_mm256_maskload_ps(rk + full8, tail_mask), qt, a1);
            acc[k] = _mm256_add_ps(a0, a1);
        }
        __m256 s = hsum8_ps(acc);
        if (norms) s = _mm256_div_ps(s, _mm256_loadu_ps(norms + i));
        __m256 cur = _mm256_loadu_ps(maxsim + i);
        __m256 gt = _mm256_cmp_ps(s, cur, _CMP_GT_OQ);
        if (_mm256_movemask_ps(gt)) {
            _mm256_storeu_ps(maxsim + i, _mm256_blendv_ps(cur, s, gt));
            if (assign) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(assign + i));
                a = _mm256_blendv_epi8(a, aidv, _mm256_castps_si256(gt));
                _mm256_storeu_si256((__m256i *)(assign + i), a);
            }
        }
    }
    f32_update_c(x, ld, dim, q, norms, maxsim, assign, aid, i, p1);
}

AVX2 static Py_ssize_t i8_scan_avx2(const int8_t *x, Py_ssize_t ld, const int16_t *q,
                                    float qscale, const uint16_t *scale, const float *lowbar,
                                    float *out, int64_t *pos, Py_ssize_t p0, Py_ssize_t p1) {
    Py_ssize_t count = 0, i = p0, ahead = 64 * ld;
    __m256 qs = _mm256_set1_ps(qscale);
    if (ld % 16) return i8_scan_c(x, ld, q, qscale, scale, lowbar, out, pos, p0, p1);
    for (; i + 8 <= p1; i += 8) {
        const int8_t *r = x + i * ld;
        __m256i acc[8];
        for (Py_ssize_t b = 0; b < 8 * ld; b += 64) _mm_prefetch((const char *)(r + ahead + b), _MM_HINT_T0);
        for (int k = 0; k < 8; k++) {
            const int8_t *rk = r + k * ld;
            __m256i a = _mm256_setzero_si256();
            for (Py_ssize_t j = 0; j < ld; j += 16) {
                __m256i xv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(rk + j)));
                a = _mm256_add_epi32(a, _mm256_madd_epi16(xv, _mm256_loadu_si256((const __m256i *)(q + j))));
            }
            acc[k] = a;
        }
        __m256i sc16 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(scale + i)));
        __m256 sc = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(sc16, 16)), qs);
        __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(hsum8_epi32(acc)), sc);
        if (out) {
            _mm256_storeu_ps(out + (i - p0), s);
            continue;
        }
        int m = _mm256_movemask_ps(_mm256_cmp_ps(s, _mm256_loadu_ps(lowbar + i), _CMP_GE_OQ));
        while (m) {
            int b = __builtin_ctz((unsigned)m);
            pos[count++] = i + b;
            m &= m - 1;
        }
    }
    return count + i8_scan_c(x, ld, q, qscale, scale, lowbar, out ? out + (i - p0) : NULL,
                             pos + count, i, p1);
}

AVX2 static float dot_avx2(const float *r, const float *q, Py_ssize_t dim) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    Py_ssize_t j = 0;
    for (; j + 16 <= dim; j += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + j), _mm256_loadu_ps(q + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + j + 8), _mm256_loadu_ps(q + j + 8), a1);
    }
    a0 = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float s = _mm_cvtss_f32(h);
    for (; j < dim; j++) s += r[j] * q[j];
    return s;
}

AVX2 static void unit_rows_avx2(const float *x, Py_ssize_t rows, Py_ssize_t dim,
                                const float *norms, double *colsum, float *store_f32,
                                int8_t *store_i8, Py_ssize_t ld, uint16_t *scale, float *err,
                                float *tmp) {
    Py_ssize_t full = dim & ~(Py_ssize_t)7;
    const __m256 sign = _mm256_set1_ps(-0.0f), lim = _mm256_set1_ps(127.0f);
    for (Py_ssize_t i = 0; i < rows; i++) {
        const float *r = x + i * dim;
        float *u = store_f32 ? store_f32 + i * ld : tmp;
        __m256 nv = _mm256_set1_ps(norms[i]), mx = _mm256_setzero_ps();
        for (Py_ssize_t j = 0; j < full; j += 8) {
            __m256 v = _mm256_div_ps(_mm256_loadu_ps(r + j), nv);
            _mm256_storeu_ps(u + j, v);
            __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
            _mm256_storeu_pd(colsum + j, _mm256_add_pd(_mm256_loadu_pd(colsum + j), lo));
            _mm256_storeu_pd(colsum + j + 4, _mm256_add_pd(_mm256_loadu_pd(colsum + j + 4), hi));
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v));
        }
        float m8[8], amax = 0.0f;
        _mm256_storeu_ps(m8, mx);
        for (int k = 0; k < 8; k++) amax = m8[k] > amax ? m8[k] : amax;
        amax = unit_tail(r, u, colsum, norms[i], full, dim, amax);
        if (!store_i8) continue;
        int8_t *o = store_i8 + i * ld;
        uint16_t sb = row_scale(amax);
        float s = bf16_to_f32(sb);
        __m256 sv = _mm256_set1_ps(s), e2 = _mm256_setzero_ps();
        for (Py_ssize_t j = 0; j < full; j += 8) {
            __m256 v = _mm256_loadu_ps(u + j);
            __m256 q = _mm256_round_ps(_mm256_div_ps(v, sv),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q = _mm256_max_ps(_mm256_min_ps(q, lim), _mm256_sub_ps(_mm256_setzero_ps(), lim));
            __m256 d = _mm256_fnmadd_ps(q, sv, v);
            e2 = _mm256_fmadd_ps(d, d, e2);
            int32_t qi[8];
            _mm256_storeu_si256((__m256i *)qi, _mm256_cvtps_epi32(q));
            for (int k = 0; k < 8; k++) o[j + k] = (int8_t)qi[k];
        }
        float e8[8];
        _mm256_storeu_ps(e8, e2);
        double acc = 0.0;
        for (int k = 0; k < 8; k++) acc += e8[k];
        acc += quantise_tail(u, o, s, full, dim);
        for (Py_ssize_t j = dim; j < ld; j++) o[j] = 0;
        scale[i] = sb;
        err[i] = (float)sqrt(acc);
    }
}

AVX2 static void tile_min_avx2(const float *values, Py_ssize_t tile, float *out, Py_ssize_t t0,
                               Py_ssize_t t1) {
    for (Py_ssize_t t = t0; t < t1; t++) {
        const float *r = values + t * tile;
        Py_ssize_t i = 0;
        float m = r[0];
        if (tile >= 8) {
            __m256 v = _mm256_loadu_ps(r);
            for (i = 8; i + 8 <= tile; i += 8) v = _mm256_min_ps(v, _mm256_loadu_ps(r + i));
            __m128 h = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            h = _mm_min_ps(h, _mm_movehl_ps(h, h));
            h = _mm_min_ss(h, _mm_movehdup_ps(h));
            m = _mm_cvtss_f32(h);
        }
        for (; i < tile; i++) m = r[i] < m ? r[i] : m;
        out[t] = m;
    }
}

static int have_avx2(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
}
#else
static int have_avx2(void) { return 0; }
#endif

/* ---- Python glue -------------------------------------------------------------- */

/* A contiguous buffer of at least `need` bytes (or NULL for None when allowed). */
static int get_buf(PyObject *obj, int writable, Py_ssize_t need, const char *name,
                   Py_buffer *view, int optional) {
    view->obj = NULL;
    view->buf = NULL;
    if (optional && obj == Py_None) return 0;
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, need at least %zd", name, view->len, need);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

static void release(Py_buffer *views, int n) {
    for (int k = 0; k < n; k++)
        if (views[k].obj) PyBuffer_Release(&views[k]);
}

static int check_range(Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t ld, Py_ssize_t dim) {
    if (p0 < 0 || p1 < p0 || dim < 0 || ld < dim) {
        PyErr_SetString(PyExc_ValueError, "bad row range or shape");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(f32_update_doc,
             "f32_update(x, ld, dim, q, norms, maxsim, assign, aid, p0, p1)\n"
             "For rows p0..p1 of x (float32, row stride ld): s = x.q (/ norms[i]); where s > "
             "maxsim[i], set maxsim[i] = s and (assign not None) assign[i] = aid.");

static PyObject *f32_update(PyObject *self, PyObject *args) {
    PyObject *xo, *qo, *no, *mo, *ao;
    Py_ssize_t ld, dim, p0, p1;
    int aid;
    Py_buffer v[5];
    if (!PyArg_ParseTuple(args, "OnnOOOOinn", &xo, &ld, &dim, &qo, &no, &mo, &ao, &aid, &p0, &p1))
        return NULL;
    if (check_range(p0, p1, ld, dim) < 0) return NULL;
    Py_ssize_t rows = p1 > p0 ? p1 : 0;
    Py_ssize_t xneed = rows ? ((rows - 1) * ld + dim) * 4 : 0;
    memset(v, 0, sizeof v);
    if (get_buf(xo, 0, xneed, "x", &v[0], 0) < 0 || get_buf(qo, 0, dim * 4, "q", &v[1], 0) < 0 ||
        get_buf(no, 0, rows * 4, "norms", &v[2], 1) < 0 ||
        get_buf(mo, 1, rows * 4, "maxsim", &v[3], 0) < 0 ||
        get_buf(ao, 1, rows * 4, "assign", &v[4], 1) < 0) {
        release(v, 5);
        return NULL;
    }
    const float *x = v[0].buf, *q = v[1].buf, *norms = v[2].buf;
    float *maxsim = v[3].buf;
    int32_t *assign = v[4].buf;
    Py_BEGIN_ALLOW_THREADS
#ifdef SIFT_AVX2
    if (have_avx2())
        f32_update_avx2(x, ld, dim, q, norms, maxsim, assign, aid, p0, p1);
    else
#endif
        f32_update_c(x, ld, dim, q, norms, maxsim, assign, aid, p0, p1);
    Py_END_ALLOW_THREADS
    release(v, 5);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(i8_scan_doc,
             "i8_scan(x, ld, q, qscale, scale, lowbar, out, pos, p0, p1) -> int\n"
             "s = scale[i] (bfloat16) * qscale * (x[i] . q) for int8 rows of width ld and an "
             "int16 query. With out (float32, p1 - p0) set: write s there and return 0. "
             "Otherwise write the rows with s >= lowbar[i] into pos (int64) and return how many.");

static PyObject *i8_scan(PyObject *self, PyObject *args) {
    PyObject *xo, *qo, *so, *lo, *oo, *po;
    Py_ssize_t ld, p0, p1;
    float qscale;
    Py_buffer v[6];
    if (!PyArg_ParseTuple(args, "OnOfOOOOnn", &xo, &ld, &qo, &qscale, &so, &lo, &oo, &po, &p0, &p1))
        return NULL;
    if (check_range(p0, p1, ld, ld) < 0) return NULL;
    Py_ssize_t rows = p1 > p0 ? p1 : 0, span = p1 - p0;
    memset(v, 0, sizeof v);
    int flagging = oo == Py_None;
    if (get_buf(xo, 0, rows * ld, "x", &v[0], 0) < 0 ||
        get_buf(qo, 0, ld * 2, "q", &v[1], 0) < 0 ||
        get_buf(so, 0, rows * 2, "scale", &v[2], 0) < 0 ||
        get_buf(lo, 0, flagging ? rows * 4 : 0, "lowbar", &v[3], !flagging) < 0 ||
        get_buf(oo, 1, span * 4, "out", &v[4], 1) < 0 ||
        get_buf(po, 1, flagging ? span * 8 : 0, "pos", &v[5], !flagging) < 0) {
        release(v, 6);
        return NULL;
    }
    Py_ssize_t count;
    const int8_t *x = v[0].buf;
    const int16_t *q = v[1].buf;
    const uint16_t *scale = v[2].buf;
    const float *lowbar = v[3].buf;
    float *out = v[4].buf;
    int64_t *pos = v[5].buf;
    Py_BEGIN_ALLOW_THREADS
#ifdef SIFT_AVX2
    if (have_avx2())
        count = i8_scan_avx2(x, ld, q, qscale, scale, lowbar, out, pos, p0, p1);
    else
#endif
        count = i8_scan_c(x, ld, q, qscale, scale, lowbar, out, pos, p0, p1);
    Py_END_ALLOW_THREADS
    release(v, 6);
    return PyLong_FromSsize_t(count);
}

PyDoc_STRVAR(f32_recheck_doc,
             "f32_recheck(x, ld, dim, q, norms, rows, pos, maxsim, assign, aid, thr, lowbar) -> int\n"
             "For each k: s = x[rows[k]].q / norms[rows[k]]; where s > maxsim[pos[k]], set it, "
             "assign[pos[k]] = aid and (lowbar given) lowbar[pos[k]] = s - thr[pos[k]]. Returns "
             "how many rows changed.");

static PyObject *f32_recheck(PyObject *self, PyObject *args) {
    PyObject *xo, *qo, *no, *ro, *po, *mo, *ao, *to, *lo;
    Py_ssize_t ld, dim;
    int aid;
    Py_buffer v[9];
    if (!PyArg_ParseTuple(args, "OnnOOOOOOiOO", &xo, &ld, &dim, &qo, &no, &ro, &po, &mo, &ao,
                          &aid, &to, &lo))
        return NULL;
    if (check_range(0, 0, ld, dim) < 0) return NULL;
    memset(v, 0, sizeof v);
    int with_bar = lo != Py_None;
    if (get_buf(xo, 0, 0, "x", &v[0], 0) < 0 || get_buf(qo, 0, dim * 4, "q", &v[1], 0) < 0 ||
        get_buf(no, 0, 0, "norms", &v[2], 0) < 0 || get_buf(ro, 0, 0, "rows", &v[3], 0) < 0 ||
        get_buf(po, 0, v[3].len, "pos", &v[4], 0) < 0 ||
        get_buf(mo, 1, 0, "maxsim", &v[5], 0) < 0 ||
        get_buf(ao, 1, v[5].len, "assign", &v[6], 0) < 0 ||
        get_buf(to, 0, with_bar ? v[5].len : 0, "thr", &v[7], !with_bar) < 0 ||
        get_buf(lo, 1, v[5].len, "lowbar", &v[8], 1) < 0) {
        release(v, 9);
        return NULL;
    }
    Py_ssize_t count = v[3].len / 8, n_rows = dim ? (v[0].len / 4 - dim) / ld + 1 : 0;
    Py_ssize_t n_pos = v[5].len / 4;
    if (n_rows > v[2].len / 4) n_rows = v[2].len / 4;
    const int64_t *rows = v[3].buf, *pos = v[4].buf;
    for (Py_ssize_t k = 0; k < count; k++)
        if (rows[k] < 0 || rows[k] >= n_rows || pos[k] < 0 || pos[k] >= n_pos) {
            release(v, 9);
            PyErr_Format(PyExc_IndexError, "rows/pos entry %zd out of range", k);
            return NULL;
        }
    dot_fn dot = dot_c;
#ifdef SIFT_AVX2
    if (have_avx2()) dot = dot_avx2;
#endif
    Py_ssize_t changed;
    Py_BEGIN_ALLOW_THREADS
    changed = f32_recheck_c(dot, v[0].buf, ld, dim, v[1].buf, v[2].buf, rows, pos, count,
                            v[5].buf, v[6].buf, aid, v[7].buf, v[8].buf);
    Py_END_ALLOW_THREADS
    release(v, 9);
    return PyLong_FromSsize_t(changed);
}

PyDoc_STRVAR(tile_min_doc,
             "tile_min(values, tile, out, t0, t1)\n"
             "out[t] = min(values[t * tile : (t + 1) * tile]) for tiles t0..t1 (float32).");

static PyObject *tile_min(PyObject *self, PyObject *args) {
    PyObject *vo, *oo;
    Py_ssize_t tile, t0, t1;
    Py_buffer v[2];
    if (!PyArg_ParseTuple(args, "OnOnn", &vo, &tile, &oo, &t0, &t1)) return NULL;
    if (tile < 1 || t0 < 0 || t1 < t0) {
        PyErr_SetString(PyExc_ValueError, "bad tile range");
        return NULL;
    }
    memset(v, 0, sizeof v);
    if (get_buf(vo, 0, t1 * tile * 4, "values", &v[0], 0) < 0 ||
        get_buf(oo, 1, t1 * 4, "out", &v[1], 0) < 0) {
        release(v, 2);
        return NULL;
    }
    const float *values = v[0].buf;
    float *out = v[1].buf;
    Py_BEGIN_ALLOW_THREADS
#ifdef SIFT_AVX2
    if (have_avx2())
        tile_min_avx2(values, tile, out, t0, t1);
    else
#endif
        tile_min_c(values, tile, out, t0, t1);
    Py_END_ALLOW_THREADS
    release(v, 2);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(unit_rows_doc,
             "unit_rows(x, dim, norms, colsum, store, ld, row0, scale, err)\n"
             "For the float32 rows x (rows x dim): u = x / norms, colsum += the column sums of u "
             "(float64), and u stored at rows row0.. of store (width ld): as float32 when scale "
             "is None, else as int8 (padding zeroed) with bfloat16 scales (uint16 bits) in "
             "scale[row0..] and |u - q s| in err[0..rows).");

static PyObject *unit_rows(PyObject *self, PyObject *args) {
    PyObject *xo, *no, *co, *so, *sco, *eo;
    Py_ssize_t dim, ld, row0;
    Py_buffer v[6];
    if (!PyArg_ParseTuple(args, "OnOOOnnOO", &xo, &dim, &no, &co, &so, &ld, &row0, &sco, &eo))
        return NULL;
    if (dim < 1 || ld < dim || row0 < 0) {
        PyErr_SetString(PyExc_ValueError, "bad shape");
        return NULL;
    }
    memset(v, 0, sizeof v);
    if (get_buf(xo, 0, 0, "x", &v[0], 0) < 0) return NULL;
    Py_ssize_t rows = v[0].len / 4 / dim;
    int quantise = sco != Py_None;
    Py_ssize_t item = quantise ? 1 : 4;
    if (get_buf(no, 0, rows * 4, "norms", &v[1], 0) < 0 ||
        get_buf(co, 1, dim * 8, "colsum", &v[2], 0) < 0 ||
        get_buf(so, 1, (row0 + rows) * ld * item, "store", &v[3], 0) < 0 ||
        get_buf(sco, 1, (row0 + rows) * 2, "scale", &v[4], 1) < 0 ||
        get_buf(eo, 1, quantise ? rows * 4 : 0, "err", &v[5], !quantise) < 0) {
        release(v, 6);
        return NULL;
    }
    float *tmp = PyMem_RawMalloc((size_t)dim * sizeof(float));
    if (!tmp) {
        release(v, 6);
        return PyErr_NoMemory();
    }
    float *store_f32 = quantise ? NULL : (float *)v[3].buf + row0 * ld;
    int8_t *store_i8 = quantise ? (int8_t *)v[3].buf + row0 * ld : NULL;
    uint16_t *scale = quantise ? (uint16_t *)v[4].buf + row0 : NULL;
    Py_BEGIN_ALLOW_THREADS
#ifdef SIFT_AVX2
    if (have_avx2())
        unit_rows_avx2(v[0].buf, rows, dim, v[1].buf, v[2].buf, store_f32, store_i8, ld, scale,
                       v[5].buf, tmp);
    else
#endif
        unit_rows_c(v[0].buf, rows, dim, v[1].buf, v[2].buf, store_f32, store_i8, ld, scale,
                    v[5].buf, tmp);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(tmp);
    release(v, 6);
    Py_RETURN_NONE;
}

static PyObject *simd(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(have_avx2() ? "avx2" : "none");
}

static PyMethodDef methods[] = {
    {"f32_update", f32_update, METH_VARARGS, f32_update_doc},
    {"i8_scan", i8_scan, METH_VARARGS, i8_scan_doc},
    {"f32_recheck", f32_recheck, METH_VARARGS, f32_recheck_doc},
    {"tile_min", tile_min, METH_VARARGS, tile_min_doc},
    {"unit_rows", unit_rows, METH_VARARGS, unit_rows_doc},
    {"simd", simd, METH_NOARGS, "The instruction set the kernels use here: 'avx2' or 'none'."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "Fused k-center scan kernels (see docs/kcenter.md).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
