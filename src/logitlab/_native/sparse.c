/* sparsemax, 1.5-entmax and α-entmax rows: the threshold τ without sorting, and the backward.
 *
 * Every map is p_i = [x_i − τ]_+^q with x = (α−1)(z − max z) (sparsemax: α = 2, x = z − max z;
 * 1.5-entmax: x = (z − max z)/2), q = 1/(α−1), and τ the unique root of
 * f(τ) = Σ_i [x_i − τ]_+^q = 1. Since max x = 0 and p ≤ 1, τ ≥ −1: only entries with x > −1
 * can be in the support. A row is read three times (the maximum; the candidates x > −1, copied
 * into a per-thread scratch buffer; the output), the two last from the cache. Candidates, τ and
 * the probabilities are computed in double (a float32 pre-test with a margin picks the entries
 * that need it), so p is the exact value rounded once to the output type; x − τ within TIE of 0
 * is a tie (p = 0), as in exact arithmetic.
 *
 * The candidate bound is tightened for free: the VL lane maxima of the max pass are entries of
 * the row, and any j entries ≥ y give f(y − j^{1−α}) ≥ 1, so τ ≥ lo = max_j (x_(j) − j^{1−α})
 * over them (at least −1); the candidates are the entries with x > lo (less a margin).
 *
 * sparsemax and 1.5-entmax (the closed-form kinds), on the candidates T:
 *   τ_0 = lo (a lower bound). At τ_k, one pass over T gives S = {x > τ_k}, |S|, Σ_S (x − τ_k),
 *   Σ_S (x − τ_k)², min_S x and the largest entry of T outside S. The closed form on S (sparsemax
 *   τ_S = τ_k + (Σu − 1)/|S|; 1.5-entmax the smaller root of Σ_S (u − δ)² = 1) is accepted when
 *   it certifies itself: every entry of S is ≥ τ_S and every other entry (in T, and every entry
 *   dropped earlier or never a candidate) is ≤ τ_S. Then Σ_all [x − τ_S]_+^q = 1 exactly as
 *   evaluated, so τ_S is the threshold (the root is unique) and the support is S: the answer of
 *   the sort-based algorithm, to rounding. Otherwise a Newton step on the convex f from the
 *   left, τ_{k+1} = τ_k + (f − 1)/|f'| (for sparsemax this is Michelot's projection step), which
 *   stays a lower bound; entries ≤ a lower bound can never be in the support and are dropped
 *   from T. The support is usually certified after 1-8 passes over a shrinking T. A row that
 *   does not certify within `max_passes` passes (64 from Python; 0 in the tests that force it)
 *   takes the sort-based algorithm on all its candidates and reports n_iter = −1.
 *
 * α-entmax (any α > 1): safeguarded Newton on f in double on the candidates, bracket
 *   [lo, hi] = [lo, −|T|^{1−α}], a bisection step whenever Newton leaves the bracket, until
 *   |f(τ) − 1| ≤ tol or max_iter steps; n_iter and the violation |f(τ) − 1| are reported (the
 *   caller raises ConvergenceError). Each τ with f(τ) > 1 raises lo, and the entries ≤ lo are
 *   dropped from T: they stay out of the support of every τ in the bracket. p is then
 *   normalized by its sum.
 *
 * Backward, one pass for the sums and one to write, per row: with w_i = p_i^{2−α} on the
 * support (sparsemax: 1, 1.5-entmax: √p), c = Σ w g / Σ w, ∂L/∂z_i = w_i (g_i − c); and for α,
 * with a_i = q p_i − p_i log p_i, ∂L/∂α = q (Σ a g − c Σ a).
 *
 * Rows: a NaN or +inf makes the forward return its row index (when `validate`) or a NaN row; an
 * all −inf row gives an all-zero row (τ = +inf) and a zero gradient.
 */
#define LL_NATIVE_WIDTH /* 8-float / 4-double vectors on AVX2 builds (vec.h, vecd.h): every vector below fits a register */
#include "vecd.h"
#include "rows.h"

#include <float.h>
#include <stdlib.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

enum { KIND_SPARSEMAX = 0, KIND_ENTMAX15 = 1, KIND_BISECT = 2 };
/* Slack of the float32 pre-tests that pick the entries computed in double (x is within ~1e-7 of
 * its double value where it matters, |x| <= 1). */
#define MARGIN 1e-4f
/* x − τ at or below this is a tie with τ (probability 0): τ carries a rounding error of a few
 * ulps of the sums it comes from (|x| <= 1), and an entry the exact τ equals must not come out
 * as a 1e-17 "probability" (a support entry the sort-based answer does not have). */
#define TIE (64.0 * DBL_EPSILON)

/* Candidates and thresholds are handled in double (vecd.h: DL = VL / 2 lanes, 8 on AVX-512, 4 on
 * AVX2), a float vector as its two halves. */
#define DL_BITS ((1u << DL) - 1u)

/* The lanes of a mask as bits (lane l -> bit l; dlane_bits for double lanes); the square root of each lane; the lanes of v
 * whose bits are set stored contiguously at dst (which must have room for DL values; returns
 * how many). AVX-512: one instruction each. AVX2: a movemask, a vsqrtps, and a permutation of
 * the 32-bit halves of the four doubles looked up from the 4-bit mask (AVX2 has no compress).
 * Elsewhere: loops over the lanes. */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline uint32_t lane_bits(vi mask) { return _mm512_test_epi32_mask((__m512i)mask, (__m512i)mask); }
static inline uint32_t dlane_bits(vl mask) { return _mm512_test_epi64_mask((__m512i)mask, (__m512i)mask); }
static inline vf vsqrt(vf a) { return (vf)_mm512_sqrt_ps((__m512)a); }
#define BRANCH_FREE 1
static inline int compress_store(double *dst, vd v, uint32_t bits) {
    _mm512_storeu_pd(dst, _mm512_maskz_compress_pd((__mmask8)bits, (__m512d)v));
    return __builtin_popcount(bits);
}
#elif defined(__AVX2__) && VL == 8
#include <immintrin.h>
static inline uint32_t lane_bits(vi mask) { return (uint32_t)_mm256_movemask_ps((__m256)mask); }
static inline uint32_t dlane_bits(vl mask) { return (uint32_t)_mm256_movemask_pd((__m256d)mask); }
static inline vf vsqrt(vf a) { return (vf)_mm256_sqrt_ps((__m256)a); }
#define BRANCH_FREE 1
/* COMPRESS4[bits]: the 32-bit lanes that move the doubles whose bits are set to the front. */
#define P1(a) 2 * (a), 2 * (a) + 1
static const int32_t COMPRESS4[16][8] __attribute__((aligned(32))) = {
    {P1(0), P1(0), P1(0), P1(0)}, {P1(0), P1(0), P1(0), P1(0)}, {P1(1), P1(0), P1(0), P1(0)},
    {P1(0), P1(1), P1(0), P1(0)}, {P1(2), P1(0), P1(0), P1(0)}, {P1(0), P1(2), P1(0), P1(0)},
    {P1(1), P1(2), P1(0), P1(0)}, {P1(0), P1(1), P1(2), P1(0)}, {P1(3), P1(0), P1(0), P1(0)},
    {P1(0), P1(3), P1(0), P1(0)}, {P1(1), P1(3), P1(0), P1(0)}, {P1(0), P1(1), P1(3), P1(0)},
    {P1(2), P1(3), P1(0), P1(0)}, {P1(0), P1(2), P1(3), P1(0)}, {P1(1), P1(2), P1(3), P1(0)},
    {P1(0), P1(1), P1(2), P1(3)},
};
#undef P1
static inline int compress_store(double *dst, vd v, uint32_t bits) {
    const __m256i perm = _mm256_load_si256((const __m256i *)COMPRESS4[bits & 15u]);
    _mm256_storeu_pd(dst, _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps((__m256d)v), perm)));
    return __builtin_popcount(bits & 15u);
}
#else
static inline uint32_t lane_bits(vi mask) {
    uint32_t bits = 0;
    for (int l = 0; l < VL; l++) bits |= (uint32_t)(mask[l] & 1) << l;
    return bits;
}
static inline uint32_t dlane_bits(vl mask) {
    uint32_t bits = 0;
    for (int l = 0; l < DL; l++) bits |= (uint32_t)(mask[l] & 1) << l;
    return bits;
}
static inline vf vsqrt(vf a) {
    for (int l = 0; l < VL; l++) a[l] = sqrtf(a[l]);
    return a;
}
#define BRANCH_FREE 0
static inline int compress_store(double *dst, vd v, uint32_t bits) {
    int n = 0;
    for (; bits; bits &= bits - 1) dst[n++] = v[__builtin_ctz(bits)];
    return n;
}
#endif

typedef struct {
    double tau;      /* threshold in the x scale */
    double mass;     /* Σ [x − τ]_+^q (bisect: the normalizer of p) */
    double violation;
    int64_t n_iter;
    int64_t kept;    /* bisect: candidates left in the buffer (a superset of the support) */
    int ok;          /* 0: not certified, take the sort-based fallback */
} solve_t;

/* Sums over the candidates above τ, DL doubles at a time (xs is padded with −inf to a
 * multiple of DL): |S|, Σ_S (x − τ), Σ_S (x − τ)², min_S x, and the largest x not in S. */

typedef struct {
    int64_t cnt;
    double su, suu, min_s, max_e;
} sums_t;

static sums_t sums_above(const double *xs, int64_t K, double tau) {
    const vd vt = vdsplat(tau), zero = vdsplat(0.0);
    vd vsu = zero, vsuu = zero, vmin = vdsplat(INFINITY), vmax = vdsplat(-INFINITY);
    vl vcnt = (vl){0};
    for (int64_t i = 0; i < K; i += DL) {
        vd v;
        memcpy(&v, xs + i, sizeof v);
        const vl in = v > vt;
        const vd u = vdselect(in, v - vt, zero);
        vcnt -= in;
        vsu += u;
        vsuu += u * u;
        vmin = vdselect(in & (v < vmin), v, vmin);
        vmax = vdselect(~in & (v > vmax), v, vmax);
    }
    sums_t out = {0, 0.0, 0.0, INFINITY, -INFINITY};
    for (int l = 0; l < DL; l++) {
        out.cnt += vcnt[l];
        out.su += vsu[l];
        out.suu += vsuu[l];
        out.min_s = vmin[l] < out.min_s ? vmin[l] : out.min_s;
        out.max_e = vmax[l] > out.max_e ? vmax[l] : out.max_e;
    }
    return out;
}

static inline void pad(double *xs, int64_t K) {
    for (int l = 0; l < DL; l++) xs[K + l] = -INFINITY;
}

/* Keep the entries > lo (in order, padded); *drop becomes the max of it and of those removed. */
static int64_t keep_above(double *xs, int64_t K, double lo, double *drop) {
    const vd vlo = vdsplat(lo);
    vd vdrop = vdsplat(*drop);
    int64_t kept = 0;
    for (int64_t i = 0; i < K; i += DL) { /* writes stay behind the reads: kept <= i */
        vd v;
        memcpy(&v, xs + i, sizeof v);
        const vl keep = v > vlo;
        vdrop = vdselect(~keep & (v > vdrop), v, vdrop);
        kept += compress_store(xs + kept, v, dlane_bits(keep));
    }
    pad(xs, kept);
    double d = *drop;
    for (int l = 0; l < DL; l++) d = vdrop[l] > d ? vdrop[l] : d;
    *drop = d;
    return kept;
}

/* Closed-form kinds on candidates xs[0, K) (padded); `drop` bounds every entry that is not a
 * candidate; tau0 is a lower bound on τ below every candidate worth keeping. */
static solve_t solve_closed(double *xs, int64_t K, double drop, int kind, int max_steps, double tau0) {
    solve_t out = {0.0, 1.0, 0.0, 0, 0, 0};
    double tau = tau0;
    for (int step = 0; step < max_steps; step++) {
        const sums_t t = sums_above(xs, K, tau);
        if (t.cnt == 0) return out;
        const double cnt = (double)t.cnt;
        double delta, newton, f;
        if (kind == KIND_SPARSEMAX) {
            delta = (t.su - 1.0) / cnt;
            newton = delta;
            f = t.su;
        } else {
            const double disc = t.su * t.su - cnt * (t.suu - 1.0);
            delta = disc >= 0.0 ? (t.su - sqrt(disc)) / cnt : NAN;
            newton = (t.suu - 1.0) / (2.0 * t.su);
            f = t.suu;
        }
        const double tau_s = tau + delta;
        out.n_iter = step + 1;
        if (tau_s <= t.min_s && tau_s >= t.max_e && tau_s >= drop) { /* false for NaN: no root on S */
            out.tau = tau_s;
            out.ok = 1;
            return out;
        }
        /* τ is a lower bound: entries ≤ τ are out of the support for good */
        if (f >= 1.0 && t.cnt < K) K = keep_above(xs, K, tau, &drop);
        const double next = tau + newton;
        if (!(next > tau)) return out; /* no progress (rounding): the fallback decides */
        tau = next;
    }
    return out;
}

/* A lower bound on τ from a few entries of the row (x[0, n), any order): with x_(j) the j-th
 * largest, those j entries alone give f(x_(j) − j^{1−α}) ≥ j (j^{1−α})^q = 1, so τ is at least
 * max_j x_(j) − j^{1−α}, and at least −1. rank[j] = j^{1−α}. */
static double rank_bound(double *x, int n, const double *rank) {
    for (int i = 1; i < n; i++) { /* insertion sort, descending: n <= VL */
        const double v = x[i];
        int k = i;
        for (; k > 0 && x[k - 1] < v; k--) x[k] = x[k - 1];
        x[k] = v;
    }
    double lo = -1.0;
    for (int j = 1; j <= n; j++) {
        const double b = x[j - 1] - rank[j];
        lo = b > lo ? b : lo;
    }
    return lo;
}

static int cmp_desc(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* The sort-based algorithm on all candidates (complete: every entry outside has x ≤ −1). */
static double solve_sorted(double *xs, int64_t K, int kind) {
    qsort(xs, (size_t)K, sizeof(double), cmp_desc);
    double total = 0.0, total_sq = 0.0, tau = -1.0;
    for (int64_t k = 1; k <= K; k++) {
        const double v = xs[k - 1];
        total += v;
        if (kind == KIND_SPARSEMAX) {
            if (1.0 + (double)k * v > total) tau = (total - 1.0) / (double)k;
        } else {
            total_sq += v * v;
            const double mean = total / (double)k;
            const double d = (1.0 - (total_sq - (double)k * mean * mean)) / (double)k;
            const double tau_k = mean - sqrt(d > 0.0 ? d : 0.0);
            if (tau_k <= v) tau = tau_k;
        }
    }
    return tau;
}


/* u^e for u > 0 (double lanes; other lanes give 0) in double precision (~1e-15 relative):
 * log u = k ln2 + 2 atanh(s), s = (m − 1)/(m + 1), m in [√½, √2), series to s²¹; then
 * exp(t) = 2^n exp(r), |r| ≤ ln2/2, Taylor to r¹³, 2^n built in the exponent bits (n below
 * −1022 gives 0). Replaces a libm pow per lane where a general α needs one. */
static inline vd vpow_pos(vd u, double e) {
    const vl ok = u > vdsplat(DBL_MIN);
    const vl bits = (vl)vdselect(ok, u, vdsplat(1.0));
    vl k = ((bits >> 52) & 0x7FF) - 1023;
    vd m = (vd)((bits & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL);
    const vl big = m > vdsplat(1.4142135623730951);
    m = vdselect(big, m * vdsplat(0.5), m);
    k -= big;
    const vd s = (m - vdsplat(1.0)) / (m + vdsplat(1.0)), s2 = s * s;
    vd p = vdsplat(2.0 / 21.0);
    for (int j = 19; j >= 1; j -= 2) p = p * s2 + vdsplat(2.0 / j);
    /* Integer <-> double lanes through vecd.h's magic constant (exact: |k| <= 1075 and |t| is
     * clamped). */
    const vd lg = vd_of_vl(k) * vdsplat(0.6931471805599453) + p * s;
    vd t = lg * vdsplat(e);
    t = vdselect(t < vdsplat(-1e5), vdsplat(-1e5), t); /* exp underflows to 0 far above this */
    const vd kn = t * vdsplat(1.4426950408889634) + vdsplat(ROUND_MAGIC);
    const vd n = kn - vdsplat(ROUND_MAGIC);
    const vd r = (t - n * vdsplat(6.93147180369123816490e-01)) - n * vdsplat(1.90821492927058770002e-10);
    vd ex = vdsplat(1.0 / 6227020800.0);
    const double inv_fact[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                                 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
                                 1.0 / 6.0, 0.5, 1.0, 1.0};
    for (int j = 0; j < 13; j++) ex = ex * r + vdsplat(inv_fact[j]);
    const vl ni = vl_of_rounded(kn);
    const vl in_range = (ni >= -1022) & (ni <= 1023) & ok;
    const vd scale = (vd)((ni + 1023) << 52);
    return vdselect(in_range, ex * scale, vdsplat(0.0));
}

/* α-entmax on candidates xs[0, K): safeguarded Newton from the lower bound lo0, as the torch
 * path does it. */
static solve_t solve_bisect(double *xs, int64_t K, double alpha, double tol, int max_iter, double lo0) {
    const double q = 1.0 / (alpha - 1.0);
    double lo = lo0, hi = -pow((double)K, 1.0 - alpha), tau = lo;
    solve_t out = {tau, 0.0, 0.0, 0, 0, 1};
    double value = 0.0, slope = 0.0;
    int64_t it = 0;
    for (;;) {
        double mass = 0.0, deriv = 0.0;
        if (q == 1.0 || q == 2.0) {
            const sums_t t = sums_above(xs, K, tau);
            mass = q == 1.0 ? t.su : t.suu;
            deriv = q == 1.0 ? (double)t.cnt : t.su;
        } else {
            const vd dt = vdsplat(tau), zero = vdsplat(0.0);
            vd vm = zero, vdv = zero;
            for (int64_t i = 0; i < K; i += DL) {
                vd v;
                memcpy(&v, xs + i, sizeof v);
                const vd u = vdselect(v - dt > zero, v - dt, zero); /* padding: −inf -> 0 */
                const vd w = vpow_pos(u, q - 1.0);
                vm += u * w;
                vdv += w;
            }
            for (int l = 0; l < DL; l++) mass += vm[l], deriv += vdv[l];
        }
        value = mass - 1.0;
        slope = -q * deriv;
        if (!(fabs(value) > tol) || it >= max_iter) break;
        if (value > 0.0) {
            lo = tau; /* entries ≤ lo stay out of the support of every τ ≥ lo */
            double unused = -INFINITY;
            K = keep_above(xs, K, lo, &unused);
        } else if (value < 0.0) {
            hi = tau;
        }
        const double newton = tau - value / slope;
        tau = (newton > lo && newton < hi) ? newton : 0.5 * (lo + hi);
        it++;
    }
    out.tau = tau;
    out.n_iter = it;
    out.violation = fabs(value);
    out.kept = K;
    return out;
}

#define X f32
#include "sparse_body.h"
#undef X
#define X bf16
#include "sparse_body.h"
#undef X
#define X f16
#include "sparse_body.h"
#undef X

/* Whether this build runs rows on OpenMP threads (1) or serially (0). */
int ll_sparse_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
