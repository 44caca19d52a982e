/* α-entmax rows near and below α = 1, in the q-exponential form (normalizers/_qexp.py in C).
 *
 * For α > 0 and ε = α − 1, p_i = exp_α(z_i − μ) with exp_α(t) = [1 + ε t]_+^{1/ε} (exp(t) at
 * ε = 0), and μ the one number with Σ_i p_i = 1. exp_α is computed as exp(log1p(ε t)/ε): no
 * 1/ε factor is ever applied to a difference, so the map is continuous across α = 1 and valid
 * for every α in (0, 1.0625) the Python side sends here (α ≥ 1.0625 takes sparse.c).
 *
 * Forward, per row, the algorithm of the torch path step for step (so the convergence report
 * means the same): t = z − max z in double (−inf kept for excluded classes), n the finite
 * count; bracket [lo, hi] = [0, −log_α(1/n)] for μ − max z (log_α(y) = (y^ε − 1)/ε, log y at
 * ε = 0), where Σ p falls from ≥ 1 to ≤ 1; start at log Σ exp t (exact at α = 1) clamped into
 * it; then safeguarded Newton on log Σ p, whose derivative in μ is −Σ s / Σ p with
 * s = p^{2−α} = p / (1 + ε u) (u = t − μ: the exponent identity p^{−ε} = 1/(1 + ε u) saves a
 * second exp); a step that leaves the bracket is a bisection. It stops when |Σ p − 1| ≤ tol or
 * after max_iter steps, and reports the steps and |Σ p − 1|; p / Σ p is written once, rounded
 * once to the storage type (through float32 for the half types). τ = ε μ − 1 is reported in
 * the logits' scale.
 *
 * Backward, on the saved p: s = p^{2−α} (0 where p = 0), c = Σ s g / Σ s,
 * ∂L/∂z = s ⊙ (g − c); and ∂L/∂α = Σ_i (g_i − c) E_i with E_i = −p_i ℓ_i² h(ε ℓ_i), ℓ = log p,
 * h(w) = (expm1(−w) + w)/w² (½ at 0; its Taylor series for |w| < 1, where the closed form
 * cancels). Both in double; s is kept in a per-thread scratch row between the two passes.
 *
 * Rows: NaN or +inf makes the forward return the first such row index (validate) or a NaN row;
 * an α not in (0, ∞) gives a NaN row; an all −inf row is all zeros with τ = +inf.
 *
 * Vectors: the double ones of vecd.h (DL = VL / 2 lanes: 8 on AVX-512, 4 on AVX2, one register
 * either way), rows read in blocks of VL elements as two double halves; the sums over a row add
 * in the one order of vdsum_t, so the AVX2 and AVX-512 builds give the same bits. Defined here:
 * the doubles' log, exp and h, and the block loads and stores for the three storage types of
 * vec.h and for float64 (whose instantiation lets the kernel itself be gradchecked in float64).
 */
#define LL_NATIVE_WIDTH /* 8-float / 4-double vectors on AVX2 builds (vec.h, vecd.h) */
#include "vecd.h"
#include "rows.h"

#include <float.h>
#include <stdlib.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

typedef double f64_t;

/* fdlibm's split of ln 2: n * LN2_HI is exact for |n| < 2^11. */
#define LN2_HI 6.93147180369123816490e-01
#define LN2_LO 1.90821492927058770002e-10

/* log x for normal, finite x > 0 (~1 ulp): x = 2^k m, m in [√½, √2), log m = 2 atanh(s) with
 * s = (m − 1)/(m + 1), |s| < 0.172, its odd series to s²¹ (truncation below 1e-18). */
static inline vd vlog_d(vd x) {
    const vl bits = (vl)x;
    vl k = (vl)(((vul)bits >> 52) & 0x7FF) - 1023; /* a logical shift: AVX2 has no 64-bit arithmetic one */
    vd m = (vd)((bits & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL);
    const vl big = m > vdsplat(1.4142135623730951);
    m = vdselect(big, m * vdsplat(0.5), m);
    k -= big; /* a true lane is −1 */
    const vd s = (m - vdsplat(1.0)) / (m + vdsplat(1.0)), s2 = s * s;
    vd poly = vdsplat(2.0 / 21.0);
    for (int j = 19; j >= 1; j -= 2) poly = poly * s2 + vdsplat(2.0 / j);
    const vd kd = vd_of_vl(k);
    return kd * vdsplat(LN2_HI) + (poly * s + kd * vdsplat(LN2_LO));
}

/* exp t for t ≤ 709 (~1 ulp): t = n ln2 + r, |r| ≤ ln2/2, Taylor to r¹³, times 2^n built in
 * the exponent bits. Results below 2^−1022 (t < −708.4, and −inf) are 0. */
static inline vd vexp_d(vd t) {
    const vl low = t < vdsplat(-745.0);
    t = vdselect(low, vdsplat(-745.0), t);
    const vd kn = t * vdsplat(1.4426950408889634) + vdsplat(ROUND_MAGIC), n = kn - vdsplat(ROUND_MAGIC);
    const vd r = (t - n * vdsplat(LN2_HI)) - n * vdsplat(LN2_LO);
    static const double inv_fact[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                                        1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
                                        1.0 / 6.0, 0.5, 1.0, 1.0};
    vd ex = vdsplat(1.0 / 6227020800.0);
    for (int j = 0; j < 13; j++) ex = ex * r + vdsplat(inv_fact[j]);
    const vl ni = vl_of_rounded(kn);
    const vl in_range = (n > vdsplat(-1022.5)) & ~low;
    const vd scale = (vd)((ni + 1023) << 52); /* garbage outside the range, which is masked */
    return vdselect(in_range, ex * scale, vdsplat(0.0));
}

/* h(w) = (expm1(−w) + w) / w² = Σ_k (−w)^k / (k + 2)!: the series to k = 17 where |w| < 1
 * (error below 1e-18 there), the closed form elsewhere (no cancellation for |w| ≥ 1; w ≤ 709). */
static inline vd vh_d(vd w) {
    static const double c[18] = {1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
                                 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600,
                                 1.0 / 6227020800.0, 1.0 / 87178291200.0, 1.0 / 1307674368000.0,
                                 1.0 / 20922789888000.0, 1.0 / 355687428096000.0, 1.0 / 6402373705728000.0,
                                 1.0 / 121645100408832000.0};
    const vl small = (w < vdsplat(1.0)) & (w > vdsplat(-1.0));
    const vd v = vdselect(small, -w, vdsplat(0.0));
    vd series = vdsplat(c[17]);
    for (int k = 16; k >= 0; k--) series = series * v + vdsplat(c[k]);
    const vd ws = vdselect(small, vdsplat(1.0), w);
    const vd direct = ((vexp_d(-ws) - vdsplat(1.0)) + ws) / (ws * ws);
    return vdselect(small, series, direct);
}

/* p = exp_α(t − μ) and s = p^{2−α} for one vector of t (−inf: an excluded class, p = s = 0). */
static inline void qexp_terms(vd t, double eps, double inv_eps, vd vmu, vd *p_out, vd *s_out) {
    const vd zero = vdsplat(0.0), one = vdsplat(1.0);
    const vl finite = t > vdsplat(-INFINITY);
    const vd u = vdselect(finite, t - vmu, zero);
    if (eps == 0.0) {
        const vd p = vdselect(finite, vexp_d(u), zero);
        *p_out = p;
        *s_out = p;
        return;
    }
    const vd x = u * vdsplat(eps), y = one + x;
    const vl keep = finite & (y > vdsplat(DBL_MIN)); /* 1 + ε u ≤ 0 (ε > 0 only): outside the support */
    const vd ys = vdselect(keep, y, one), xs = vdselect(keep, x, zero);
    const vd r = one / ys;
    /* log1p x = log y + (x − (y − 1)) / y: the rounding of 1 + x put back (exact to ~1 ulp). */
    const vd log_p = (vlog_d(ys) + (xs - (ys - one)) * r) * vdsplat(inv_eps);
    const vd p = vdselect(keep, vexp_d(log_p), zero);
    *p_out = p;
    *s_out = p * r;
}

/* Σ p and Σ s over a padded row of t (length a multiple of VL, so of SUM_LANES). */
static inline void qexp_sums(const double *t, int64_t n, double eps, double inv_eps, double mu, double *mass,
                             double *slope) {
    const vd vmu = vdsplat(mu);
    vdsum_t vm = vdsum_zero(), vs = vdsum_zero();
    for (int64_t i = 0; i < n; i += SUM_LANES) {
        #pragma GCC unroll 2 /* NACC: the sums stay in registers */
        for (int h = 0; h < NACC; h++) {
            vd v, p, s;
            memcpy(&v, t + i + h * DL, sizeof v);
            qexp_terms(v, eps, inv_eps, vmu, &p, &s);
            vm.part[h] += p;
            vs.part[h] += s;
        }
    }
    *mass = vdsum_total(vm);
    *slope = vdsum_total(vs);
}

/* Loads and stores of a block of VL elements as two double halves (tails padded with `fill`). */
#define DEFINE_IO(T)                                                                          \
    static inline void ldb_##T(const T##_t *p, vd *a, vd *b) {                                \
        const vf v = load_##T(p);                                                             \
        *a = half_lo(v), *b = half_hi(v);                                                     \
    }                                                                                         \
    static inline void ldbn_##T(const T##_t *p, int64_t n, double fill, vd *a, vd *b) {      \
        const vf v = loadn_##T(p, n, (float)fill);                                            \
        *a = half_lo(v), *b = half_hi(v);                                                     \
    }                                                                                         \
    static inline void stb_##T(T##_t *p, vd a, vd b) { store_##T(p, join_halves(a, b)); }    \
    static inline void stbn_##T(T##_t *p, vd a, vd b, int64_t n) { storen_##T(p, join_halves(a, b), n); }
DEFINE_IO(f32)
DEFINE_IO(bf16)
DEFINE_IO(f16)

static inline void ldb_f64(const f64_t *p, vd *a, vd *b) {
    memcpy(a, p, sizeof *a);
    memcpy(b, p + DL, sizeof *b);
}
static inline void ldbn_f64(const f64_t *p, int64_t n, double fill, vd *a, vd *b) {
    double buf[VL];
    memcpy(buf, p, (size_t)n * sizeof(double));
    for (int64_t i = n; i < VL; i++) buf[i] = fill;
    ldb_f64(buf, a, b);
}
static inline void stb_f64(f64_t *p, vd a, vd b) {
    memcpy(p, &a, sizeof a);
    memcpy(p + DL, &b, sizeof b);
}
static inline void stbn_f64(f64_t *p, vd a, vd b, int64_t n) {
    double buf[VL];
    stb_f64(buf, a, b);
    memcpy(p, buf, (size_t)n * sizeof(double));
}

#define X f32
#include "qexp_body.h"
#undef X
#define X bf16
#include "qexp_body.h"
#undef X
#define X f16
#include "qexp_body.h"
#undef X
#define X f64
#include "qexp_body.h"
#undef X

/* Whether this build runs rows on OpenMP threads (1) or serially (0). */
int ll_qexp_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
