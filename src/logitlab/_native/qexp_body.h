/* The q-exponential row kernels for one storage type X (logits, probabilities and gradients).
 * Instantiated by qexp.c; see there for the mathematics. */

#define XT CAT(X, _t)

/* Forward of rows [r0, r1): buf holds C + BLOCK doubles (the row's t, padded with −inf). */
static int64_t CAT(qexp_fwd_rows_, X)(
    const XT *x, int64_t ldx, XT *p, int64_t ldp, int64_t r0, int64_t r1, int64_t C, const double *alpha,
    int64_t lda, double tol, int max_iter, int validate, double *tau_out, int64_t *iter_out, double *viol_out,
    double *buf) {
    const int64_t full = C - C % BLOCK, tail = C - full, padded = full + (tail ? BLOCK : 0);
    for (int64_t r = r0; r < r1; r++) {
        const XT *xr = x + r * ldx;
        XT *pr = p + r * ldp;

        /* Pass 1 (storage): the row into buf in double, its maximum, and whether it holds a NaN. */
        vd vmax = vdsplat(-INFINITY);
        vl nanv = (vl){0};
        for (int64_t j = 0; j < padded; j += BLOCK) {
            vd a, b;
            if (j < full) CAT(ld16_, X)(xr + j, &a, &b);
            else CAT(ld16n_, X)(xr + j, tail, -INFINITY, &a, &b);
            nanv |= dne(a, a) | dne(b, b);
            vmax = vdselect(dgt(a, vmax), a, vmax);
            vmax = vdselect(dgt(b, vmax), b, vmax);
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
            for (int64_t j = 0; j < padded; j += BLOCK) {
                if (j < full) CAT(st16_, X)(pr + j, fill, fill);
                else CAT(st16n_, X)(pr + j, fill, fill, tail);
            }
            tau_out[r] = !has_nan && m == -INFINITY ? INFINITY : NAN;
            iter_out[r] = 0;
            viol_out[r] = nan_row ? NAN : 0.0;
            continue;
        }

        /* Pass 2 (buf): t = z − max z, the finite count and log Σ exp t (the start). */
        const vd vm = vdsplat(m), ninf = vdsplat(-INFINITY);
        vd vsum = vdsplat(0.0);
        vl vcnt = (vl){0};
        for (int64_t i = 0; i < padded; i += DL) {
            vd v;
            memcpy(&v, buf + i, sizeof v);
            v = v - vm; /* −inf stays −inf: m is finite */
            memcpy(buf + i, &v, sizeof v);
            vsum += vexp_d(v);
            vcnt -= dgt(v, ninf);
        }
        int64_t n = 0;
        for (int l = 0; l < DL; l++) n += vcnt[l];
        const double count = (double)n, lse = log(dsum(vsum));

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
        for (int64_t j = 0; j < padded; j += BLOCK) {
            vd ta, tb, pa, pb, sa, sb;
            memcpy(&ta, buf + j, sizeof ta);
            memcpy(&tb, buf + j + DL, sizeof tb);
            qexp_terms(ta, eps, inv_eps, vmu, &pa, &sa);
            qexp_terms(tb, eps, inv_eps, vmu, &pb, &sb);
            pa = pa / vmass;
            pb = pb / vmass;
            if (j < full) CAT(st16_, X)(pr + j, pa, pb);
            else CAT(st16n_, X)(pr + j, pa, pb, tail);
        }
        tau_out[r] = eps * (mu + m) - 1.0; /* in the logits' scale */
        iter_out[r] = it;
        viol_out[r] = fabs(mass - 1.0);
    }
    return -1;
}

/* Backward of rows [r0, r1): out = s ⊙ (g − c), and ∂L/∂α per row when grad_alpha != NULL;
 * buf holds C + BLOCK doubles (s between the two passes). */
static void CAT(qexp_bwd_rows_, X)(
    const XT *g, int64_t ldg, const XT *p, int64_t ldp, XT *o, int64_t ldo, int64_t r0, int64_t r1, int64_t C,
    const double *alpha, int64_t lda, double *grad_alpha, double *buf) {
    const int64_t full = C - C % BLOCK, tail = C - full, padded = full + (tail ? BLOCK : 0);
    const vd zero = vdsplat(0.0), one = vdsplat(1.0), tiny = vdsplat(DBL_MIN);
    for (int64_t r = r0; r < r1; r++) {
        const XT *gr = g + r * ldg, *pr = p + r * ldp;
        XT *orow = o + r * ldo;
        const double eps = alpha[r * lda] - 1.0;
        const vd veps = vdsplat(eps), vexpo = vdsplat(1.0 - eps);

        /* Pass 1: s = p^{2−α} into buf; Σ s, Σ s g and, for α, Σ E and Σ E g over the support. */
        vd vs = zero, vsg = zero, ve = zero, veg = zero;
        for (int64_t j = 0; j < padded; j += BLOCK) {
            vd pv[2], gv[2];
            if (j < full) {
                CAT(ld16_, X)(pr + j, &pv[0], &pv[1]);
                CAT(ld16_, X)(gr + j, &gv[0], &gv[1]);
            } else {
                CAT(ld16n_, X)(pr + j, tail, 0.0, &pv[0], &pv[1]);
                CAT(ld16n_, X)(gr + j, tail, 0.0, &gv[0], &gv[1]);
            }
            for (int h = 0; h < 2; h++) {
                const vl pos = dgt(pv[h], zero);
                vd pc = vdselect(pos, pv[h], one);
                pc = vdselect(dlt(pc, tiny), tiny, pc); /* as the torch path: log of p clamped at DBL_MIN */
                const vd lg = vdselect(pos, vlog_d(pc), zero);
                const vd s = vdselect(pos, vexp_d(vexpo * lg), zero);
                memcpy(buf + j + h * DL, &s, sizeof s);
                const vd gm = vdselect(pos, gv[h], zero); /* g off the support never enters the sums */
                vs += s;
                vsg += s * gm;
                if (grad_alpha != NULL) {
                    const vd e = vdselect(pos, -(pv[h] * lg * lg) * vh_d(veps * lg), zero);
                    ve += e;
                    veg += e * gm;
                }
            }
        }
        const double s_sum = dsum(vs);
        const double c = s_sum > 0.0 ? dsum(vsg) / s_sum : 0.0;
        if (grad_alpha != NULL) grad_alpha[r] = dsum(veg) - c * dsum(ve);

        /* Pass 2: the gradient, written once. */
        const vd vc = vdsplat(c);
        for (int64_t j = 0; j < padded; j += BLOCK) {
            vd ga, gb, sa, sb;
            if (j < full) CAT(ld16_, X)(gr + j, &ga, &gb);
            else CAT(ld16n_, X)(gr + j, tail, 0.0, &ga, &gb);
            memcpy(&sa, buf + j, sizeof sa);
            memcpy(&sb, buf + j + DL, sizeof sb);
            const vd oa = sa * (ga - vc), ob = sb * (gb - vc);
            if (j < full) CAT(st16_, X)(orow + j, oa, ob);
            else CAT(st16n_, X)(orow + j, oa, ob, tail);
        }
    }
}

/* Forward over rows [0, n_rows) on `threads` OpenMP threads, each with its own scratch row.
 * α: one per row (lda = 1) or one for all (lda = 0). τ, the steps and |Σ p − 1| per row.
 * Returns -1, the smallest row index holding NaN or +inf (validate), or -2 (out of memory). */
int64_t CAT(ll_qexp_fwd_, X)(
    const XT *x, int64_t ldx, XT *p, int64_t ldp, int64_t n_rows, int64_t C, const double *alpha, int64_t lda,
    double tol, int max_iter, int validate, double *tau_out, int64_t *iter_out, double *viol_out, int threads) {
    const int64_t parts = n_rows < 8 * (int64_t)threads ? n_rows : 8 * (int64_t)threads;
    if (threads <= 1 || parts <= 1) {
        double *buf = malloc((size_t)(C + BLOCK) * sizeof(double));
        if (buf == NULL) return -2;
        const int64_t code = CAT(qexp_fwd_rows_, X)(x, ldx, p, ldp, 0, n_rows, C, alpha, lda, tol, max_iter,
                                                    validate, tau_out, iter_out, viol_out, buf);
        free(buf);
        return code;
    }
    int64_t best = INT64_MAX;
    int oom = 0;
#pragma omp parallel num_threads(threads) reduction(min : best) reduction(| : oom)
    {
        double *buf = malloc((size_t)(C + BLOCK) * sizeof(double));
        if (buf == NULL) oom = 1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < parts; i++) {
            if (buf == NULL) continue;
            const int64_t a = n_rows * i / parts, b = n_rows * (i + 1) / parts;
            const int64_t code = CAT(qexp_fwd_rows_, X)(x, ldx, p, ldp, a, b, C, alpha, lda, tol, max_iter,
                                                        validate, tau_out, iter_out, viol_out, buf);
            if (code >= 0 && code < best) best = code;
        }
        free(buf);
    }
    if (oom) return -2;
    return best == INT64_MAX ? -1 : best;
}

/* Backward over rows [0, n_rows) on `threads` OpenMP threads; grad_alpha (n_rows doubles) may be
 * NULL. Returns 0, or -2 (out of memory). */
int64_t CAT(ll_qexp_bwd_, X)(
    const XT *g, int64_t ldg, const XT *p, int64_t ldp, XT *o, int64_t ldo, int64_t n_rows, int64_t C,
    const double *alpha, int64_t lda, double *grad_alpha, int threads) {
    const int64_t parts = n_rows < 8 * (int64_t)threads ? n_rows : 8 * (int64_t)threads;
    if (threads <= 1 || parts <= 1) {
        double *buf = malloc((size_t)(C + BLOCK) * sizeof(double));
        if (buf == NULL) return -2;
        CAT(qexp_bwd_rows_, X)(g, ldg, p, ldp, o, ldo, 0, n_rows, C, alpha, lda, grad_alpha, buf);
        free(buf);
        return 0;
    }
    int oom = 0;
#pragma omp parallel num_threads(threads) reduction(| : oom)
    {
        double *buf = malloc((size_t)(C + BLOCK) * sizeof(double));
        if (buf == NULL) oom = 1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < parts; i++) {
            if (buf == NULL) continue;
            const int64_t a = n_rows * i / parts, b = n_rows * (i + 1) / parts;
            CAT(qexp_bwd_rows_, X)(g, ldg, p, ldp, o, ldo, a, b, C, alpha, lda, grad_alpha, buf);
        }
        free(buf);
    }
    return oom ? -2 : 0;
}

#undef XT
