/* The q-exponential row kernels for one storage type X (logits, probabilities and gradients).
 * Instantiated by qexp.c; see there for the mathematics. */

#define XT CAT(X, _t)

/* Forward of rows [r0, r1): buf holds C + VL doubles (the row's t, padded with −inf to a whole block). */
static int64_t CAT(qexp_fwd_rows_, X)(
    const XT *x, int64_t ldx, XT *p, int64_t ldp, int64_t r0, int64_t r1, int64_t C, const double *alpha,
    int64_t lda, double tol, int max_iter, int validate, double *tau_out, int64_t *iter_out, double *viol_out,
    double *buf) {
    const int64_t full = C - C % VL, tail = C - full, padded = full + (tail ? VL : 0);
    for (int64_t r = r0; r < r1; r++) {
        const XT *xr = x + r * ldx;
        XT *pr = p + r * ldp;

        /* Pass 1 (storage): the row into buf in double, its maximum, and whether it holds a NaN. */
        vd vmax = vdsplat(-INFINITY);
        vl nanv = (vl){0};
        for (int64_t j = 0; j < padded; j += VL) {
            vd a, b;
            if (j < full) CAT(ldb_, X)(xr + j, &a, &b);
            else CAT(ldbn_, X)(xr + j, tail, -INFINITY, &a, &b);
            nanv |= (a != a) | (b != b);
            vmax = vdselect(a > vmax, a, vmax);
            vmax = vdselect(b > vmax, b, vmax);
            memcpy(buf + j, &a, sizeof a);
            memcpy(buf + j + DL, &b, sizeof b);
        }
        double m = -INFINITY;
        int has_nan = 0;
        for (int l = 0; l < DL; l++) {
            m = vmax[l] > m ? vmax[l] : m;
            has_nan |= nanv[l] != 0;
        }
        const int broken = has_nan || m == INFINITY;
        if (broken && validate) return r;
        const double eps = alpha[r * lda] - 1.0;
        const int bad_alpha = !(eps > -1.0 && eps < INFINITY); /* unchecked (validate=False): a NaN row */
        if (broken || bad_alpha || m == -INFINITY) { /* a NaN row, or all zero (every class excluded) */
            const int nan_row = broken || bad_alpha;
            const vd fill = vdsplat(nan_row ? NAN : 0.0);
            for (int64_t j = 0; j < padded; j += VL) {
                if (j < full) CAT(stb_, X)(pr + j, fill, fill);
                else CAT(stbn_, X)(pr + j, fill, fill, tail);
            }
            tau_out[r] = !has_nan && m == -INFINITY ? INFINITY : NAN;
            iter_out[r] = 0;
            viol_out[r] = nan_row ? NAN : 0.0;
            continue;
        }

        /* Pass 2 (buf): t = z − max z, the finite count and log Σ exp t (the start). */
        const vd vm = vdsplat(m), ninf = vdsplat(-INFINITY);
        vdsum_t vsum = vdsum_zero();
        vl vcnt = (vl){0};
        for (int64_t i = 0; i < padded; i += SUM_LANES) {
            #pragma GCC unroll 2 /* NACC: the sums stay in registers */
            for (int h = 0; h < NACC; h++) {
                vd v;
                memcpy(&v, buf + i + h * DL, sizeof v);
                v = v - vm; /* −inf stays −inf: m is finite */
                memcpy(buf + i + h * DL, &v, sizeof v);
                vsum.part[h] += vexp_d(v);
                vcnt -= v > ninf;
            }
        }
        int64_t n = 0;
        for (int l = 0; l < DL; l++) n += vcnt[l];
        const double count = (double)n, lse = log(vdsum_total(vsum));

        /* Safeguarded Newton on log Σ p in μ − max z, bracket [0, −log_α(1/n)]. */
        const double inv_eps = eps == 0.0 ? 0.0 : 1.0 / eps;
        double lo = 0.0, hi = eps == 0.0 ? log(count) : -expm1(-eps * log(count)) / eps;
        double mu = lse > lo ? lse : lo;
        mu = mu < hi ? mu : hi;
        double mass, slope;
        qexp_sums(buf, padded, eps, inv_eps, mu, &mass, &slope);
        int64_t it = 0;
        while (!(fabs(mass - 1.0) <= tol) && it < max_iter) {
            if (mass > 1.0) lo = mu;
            if (mass < 1.0) hi = mu;
            const double newton = mu + log(mass) * mass / slope;
            mu = newton > lo && newton < hi ? newton : 0.5 * (lo + hi);
            it++;
            qexp_sums(buf, padded, eps, inv_eps, mu, &mass, &slope);
        }

        /* Pass 3: p / Σ p at the last μ, written once. */
        const vd vmu = vdsplat(mu), vmass = vdsplat(mass);
        for (int64_t j = 0; j < padded; j += VL) {
            vd ta, tb, pa, pb, sa, sb;
            memcpy(&ta, buf + j, sizeof ta);
            memcpy(&tb, buf + j + DL, sizeof tb);
            qexp_terms(ta, eps, inv_eps, vmu, &pa, &sa);
            qexp_terms(tb, eps, inv_eps, vmu, &pb, &sb);
            pa = pa / vmass;
            pb = pb / vmass;
            if (j < full) CAT(stb_, X)(pr + j, pa, pb);
            else CAT(stbn_, X)(pr + j, pa, pb, tail);
        }
        tau_out[r] = eps * (mu + m) - 1.0; /* in the logits' scale */
        iter_out[r] = it;
        viol_out[r] = fabs(mass - 1.0);
    }
    return -1;
}

/* Backward of rows [r0, r1): out = s ⊙ (g − c), and ∂L/∂α per row when grad_alpha != NULL;
 * buf holds C + VL doubles (s between the two passes). */
static void CAT(qexp_bwd_rows_, X)(
    const XT *g, int64_t ldg, const XT *p, int64_t ldp, XT *o, int64_t ldo, int64_t r0, int64_t r1, int64_t C,
    const double *alpha, int64_t lda, double *grad_alpha, double *buf) {
    const int64_t full = C - C % VL, tail = C - full, padded = full + (tail ? VL : 0);
    const vd zero = vdsplat(0.0), one = vdsplat(1.0), tiny = vdsplat(DBL_MIN);
    for (int64_t r = r0; r < r1; r++) {
        const XT *gr = g + r * ldg, *pr = p + r * ldp;
        XT *orow = o + r * ldo;
        const double eps = alpha[r * lda] - 1.0;
        const vd veps = vdsplat(eps), vexpo = vdsplat(1.0 - eps);

        /* Pass 1: s = p^{2−α} into buf; Σ s, Σ s g and, for α, Σ E and Σ E g over the support. */
        vdsum_t vs = vdsum_zero(), vsg = vdsum_zero(), ve = vdsum_zero(), veg = vdsum_zero();
        for (int64_t j = 0; j < padded; j += VL) {
            vd pv[2], gv[2];
            if (j < full) {
                CAT(ldb_, X)(pr + j, &pv[0], &pv[1]);
                CAT(ldb_, X)(gr + j, &gv[0], &gv[1]);
            } else {
                CAT(ldbn_, X)(pr + j, tail, 0.0, &pv[0], &pv[1]);
                CAT(ldbn_, X)(gr + j, tail, 0.0, &gv[0], &gv[1]);
            }
            #pragma GCC unroll 2
            for (int h = 0; h < 2; h++) { /* the half at element j + h DL: sum part h mod NACC */
                const int k = h % NACC;
                const vl pos = pv[h] > zero;
                vd pc = vdselect(pos, pv[h], one);
                pc = vdselect(pc < tiny, tiny, pc); /* as the torch path: log of p clamped at DBL_MIN */
                const vd lg = vdselect(pos, vlog_d(pc), zero);
                const vd s = vdselect(pos, vexp_d(vexpo * lg), zero);
                memcpy(buf + j + h * DL, &s, sizeof s);
                const vd gm = vdselect(pos, gv[h], zero); /* g off the support never enters the sums */
                vs.part[k] += s;
                vsg.part[k] += s * gm;
                if (grad_alpha != NULL) {
                    const vd e = vdselect(pos, -(pv[h] * lg * lg) * vh_d(veps * lg), zero);
                    ve.part[k] += e;
                    veg.part[k] += e * gm;
                }
            }
        }
        const double s_sum = vdsum_total(vs);
        const double c = s_sum > 0.0 ? vdsum_total(vsg) / s_sum : 0.0;
        if (grad_alpha != NULL) grad_alpha[r] = vdsum_total(veg) - c * vdsum_total(ve);

        /* Pass 2: the gradient, written once. */
        const vd vc = vdsplat(c);
        for (int64_t j = 0; j < padded; j += VL) {
            vd ga, gb, sa, sb;
            if (j < full) CAT(ldb_, X)(gr + j, &ga, &gb);
            else CAT(ldbn_, X)(gr + j, tail, 0.0, &ga, &gb);
            memcpy(&sa, buf + j, sizeof sa);
            memcpy(&sb, buf + j + DL, sizeof sb);
            const vd oa = sa * (ga - vc), ob = sb * (gb - vc);
            if (j < full) CAT(stb_, X)(orow + j, oa, ob);
            else CAT(stbn_, X)(orow + j, oa, ob, tail);
        }
    }
}

/* Forward over rows [0, n_rows) on `threads` OpenMP threads (rows.h), each with its own scratch row.
 * α: one per row (lda = 1) or one for all (lda = 0). τ, the steps and |Σ p − 1| per row.
 * Returns -1, the smallest row index holding NaN or +inf (validate), or -2 (out of memory). */
int64_t CAT(ll_qexp_fwd_, X)(
    const XT *x, int64_t ldx, XT *p, int64_t ldp, int64_t n_rows, int64_t C, const double *alpha, int64_t lda,
    double tol, int max_iter, int validate, double *tau_out, int64_t *iter_out, double *viol_out, int threads) {
    return LL_ROW_PARTS(n_rows, threads, (size_t)(C + VL) * sizeof(double),
                        CAT(qexp_fwd_rows_, X)(x, ldx, p, ldp, r0, r1, C, alpha, lda, tol, max_iter, validate,
                                               tau_out, iter_out, viol_out, (double *)scratch));
}

/* Backward over rows [0, n_rows) on `threads` OpenMP threads (rows.h); grad_alpha (n_rows doubles)
 * may be NULL. Returns 0, or -2 (out of memory). */
int64_t CAT(ll_qexp_bwd_, X)(
    const XT *g, int64_t ldg, const XT *p, int64_t ldp, XT *o, int64_t ldo, int64_t n_rows, int64_t C,
    const double *alpha, int64_t lda, double *grad_alpha, int threads) {
    const int64_t code = LL_ROW_PARTS(n_rows, threads, (size_t)(C + VL) * sizeof(double),
                                      (CAT(qexp_bwd_rows_, X)(g, ldg, p, ldp, o, ldo, r0, r1, C, alpha, lda, grad_alpha,
                                                              (double *)scratch),
                                       (int64_t)-1));
    return code == -2 ? -2 : 0;
}

#undef XT
