/* The sparse-map row kernels for one storage type X (logits, probabilities and gradients).
 * Instantiated by sparse.c; see there for the mathematics. */

#define XT CAT(X, _t)

/* Copy the candidates x > lo of a row into buf (x in double: x = (z − m) s; padded with DL
 * times −inf, so buf holds C + DL doubles); returns their
 * count and sets *rest to a bound on the x of every other entry. The test runs in float32 with a
 * margin (so the set is a superset); a kept lane is recomputed in double. */
static int64_t CAT(candidates_, X)(const XT *xr, int64_t C, float m, double s, double lo, int dense,
                                   double *buf, double *rest) {
    const int64_t full = C - C % VL, tail = C - full;
    const vf vm = vsplat(m), vs = vsplat((float)s), floor = vsplat((float)(lo - MARGIN)), ninf = vsplat(-INFINITY);
    const vd dm = vdsplat((double)m), ds = vdsplat(s);
    vf vrest = ninf;
    int64_t K = 0;
    for (int64_t j = 0; j < C; j += VL) {
        const int last = j == full;
        if (last && !tail) break;
        vf v = last ? CAT(loadn_, X)(xr + j, tail, -INFINITY) : CAT(load_, X)(xr + j);
        vf x = (v - vm) * vs;
        vi keep = x > floor;
        vrest = vmax(vrest, vselect(keep, ninf, x));
        const uint32_t bits = lane_bits(keep);
        if (dense || bits) { /* dense: a block holds candidates about as often as not */
            K += compress_store(buf + K, (half_lo(v) - dm) * ds, bits & DL_BITS);
            K += compress_store(buf + K, (half_hi(v) - dm) * ds, bits >> DL);
        }
        if (last) break;
    }
    /* A float32 x ≤ lo − MARGIN is below lo − MARGIN / 2 in double (its error is far smaller). */
    *rest = hmax(vrest) == -INFINITY ? -INFINITY : lo - 0.5 * MARGIN;
    pad(buf, K);
    return K;
}

static int64_t CAT(sparse_fwd_rows_, X)(
    const XT *x, int64_t ldx, XT *p, int64_t ldp, int64_t r0, int64_t r1, int64_t C, int kind,
    const double *alpha, int64_t lda, double tol, int max_iter, int max_passes, int validate,
    float *tau_out, int64_t *support_out, int64_t *iter_out, float *viol_out, double *buf) {
    const int64_t full = C - C % VL, tail = C - full;
    double rank[VL + 1], rank_alpha = NAN;
    int64_t k_prev = 0;
    for (int64_t r = r0; r < r1; r++) {
        const XT *xr = x + r * ldx;
        XT *pr = p + r * ldp;

        /* Pass 1: the row maximum, and whether the row holds a NaN. */
        int has_nan;
        const vf vmx = CAT(lanemax_, X)(xr, C, &has_nan);
        const float m = hmax(vmx);
        const int broken = has_nan || m == INFINITY;
        if (broken && validate) return r;
        const double a = kind == KIND_BISECT ? alpha[r * lda] : (kind == KIND_SPARSEMAX ? 2.0 : 1.5);
        const int bad_alpha = !(a > 1.0 && a < INFINITY); /* unchecked (validate=False): a NaN row */
        if (broken || bad_alpha || m == -INFINITY) { /* a NaN row, or all zero (every class excluded) */
            const int nan_row = broken || bad_alpha;
            const vf fill = vsplat(nan_row ? NAN : 0.0f);
            for (int64_t j = 0; j < full; j += VL) CAT(store_, X)(pr + j, fill);
            if (tail) CAT(storen_, X)(pr + full, fill, tail);
            tau_out[r] = nan_row ? NAN : INFINITY;
            support_out[r] = 0;
            iter_out[r] = 0;
            viol_out[r] = nan_row ? NAN : 0.0f;
            continue;
        }

        /* A lower bound on τ from the lane maxima, then pass 2: the candidates above it, in the
         * scale x = (α−1)(z − max z). */
        const double s = a - 1.0, q = 1.0 / s;
        if (a != rank_alpha) { /* rank[j] = j^{1−α}, recomputed when α changes */
            for (int j = 1; j <= VL; j++)
                rank[j] = kind == KIND_SPARSEMAX ? 1.0 / j : kind == KIND_ENTMAX15 ? 1.0 / sqrt((double)j)
                                                                                : pow((double)j, 1.0 - a);
            rank_alpha = a;
        }
        double tops[VL];
        int n_tops = 0;
        for (int l = 0; l < VL; l++)
            if (vmx[l] > -INFINITY) tops[n_tops++] = ((double)vmx[l] - (double)m) * s;
        const double lo = rank_bound(tops, n_tops, rank), tau0 = lo - 0.5 * MARGIN;
        double rest;
        /* Branch-free compaction when the previous row had candidates in a quarter of its blocks
         * or more (a branch per block would mispredict), where compaction is one instruction. */
        const int dense = BRANCH_FREE && 64 * k_prev > C;
        int64_t K = CAT(candidates_, X)(xr, C, m, s, lo, dense, buf, &rest);
        k_prev = K;

        solve_t sol;
        if (kind == KIND_BISECT) {
            sol = solve_bisect(buf, K, a, tol, max_iter, tau0);
        } else {
            sol = solve_closed(buf, K, rest, kind, max_passes, tau0);
            if (!sol.ok) { /* every entry with x > −1 (the buffer was thinned), sorted */
                K = CAT(candidates_, X)(xr, C, m, s, -1.0, dense, buf, &rest);
                sol.tau = solve_sorted(buf, K, kind);
                sol.n_iter = -1; /* reported: the row took the sorted fallback */
            }
        }
        const double tau = sol.tau;
        double inv_mass = 1.0;
        if (kind == KIND_BISECT) { /* the normalizer, from the same u as the output */
            const vd dt = vdsplat(tau), dtie = vdsplat(TIE), zero = vdsplat(0.0);
            vd vmass = zero;
            for (int64_t i = 0; i < sol.kept; i += DL) { /* padded with −inf */
                vd v;
                memcpy(&v, buf + i, sizeof v);
                const vd u = v - dt;
                vmass += vdselect(u > dtie, q == 1.0 ? u : q == 2.0 ? u * u : vpow_pos(u, q), zero);
            }
            double mass = 0.0;
            for (int l = 0; l < DL; l++) mass += vmass[l];
            inv_mass = 1.0 / mass;
        }

        /* Pass 3: p = [x − τ]_+^q, written once; a block with no entry near τ (float32 test with
         * a margin) is all zeros, the others are computed in double. */
        const vf vm = vsplat(m), vs = vsplat((float)s), vlow = vsplat((float)(tau - MARGIN)), zero = vsplat(0.0f);
        const vd dm = vdsplat((double)m), ds = vdsplat(s), dtau = vdsplat(tau), dtie = vdsplat(TIE),
                 dzero = vdsplat(0.0), dscale = vdsplat(kind == KIND_BISECT ? inv_mass : 1.0);
        int64_t support = 0;
        for (int64_t j = 0; j < C; j += VL) {
            const int last = j == full;
            if (last && !tail) break;
            vf v = last ? CAT(loadn_, X)(xr + j, tail, -INFINITY) : CAT(load_, X)(xr + j);
            vi near = (v - vm) * vs > vlow;
            vf out = zero;
            const uint32_t bits = lane_bits(near);
            if (bits) {
                const vd u_lo = (half_lo(v) - dm) * ds - dtau, u_hi = (half_hi(v) - dm) * ds - dtau;
                const vl in_lo = u_lo > dtie, in_hi = u_hi > dtie;
                vd p_lo, p_hi;
                if (kind == KIND_SPARSEMAX) {
                    p_lo = u_lo, p_hi = u_hi;
                } else if (kind == KIND_ENTMAX15 || q == 2.0) {
                    p_lo = u_lo * u_lo * dscale, p_hi = u_hi * u_hi * dscale;
                } else if (q == 1.0) {
                    p_lo = u_lo * dscale, p_hi = u_hi * dscale;
                } else {
                    p_lo = vpow_pos(u_lo, q) * dscale, p_hi = vpow_pos(u_hi, q) * dscale;
                }
                out = join_halves(vdselect(in_lo, p_lo, dzero), vdselect(in_hi, p_hi, dzero));
                for (int l = 0; l < DL; l++) support += (in_lo[l] != 0) + (in_hi[l] != 0);
            }
            if (last) CAT(storen_, X)(pr + j, out, tail);
            else CAT(store_, X)(pr + j, out);
            if (last) break;
        }
        tau_out[r] = (float)(s * (double)m + tau); /* in the logits' scale */
        support_out[r] = support;
        iter_out[r] = sol.n_iter;
        viol_out[r] = (float)sol.violation;
    }
    return -1;
}

/* w = p^{2−α} on the support (p > 0), 0 elsewhere; sparsemax 1, 1.5-entmax √p (vectorized). */
static inline vf CAT(weights_, X)(vf pv, vi pos, int kind, float expo) {
    const vf zero = vsplat(0.0f);
    if (kind == KIND_SPARSEMAX) return vselect(pos, vsplat(1.0f), zero);
    if (kind == KIND_ENTMAX15) return vsqrt(vselect(pos, pv, zero));
    vf w = zero;
    for (uint32_t bits = lane_bits(pos); bits; bits &= bits - 1) {
        const int l = __builtin_ctz(bits);
        w[l] = powf(pv[l], expo);
    }
    return w;
}

/* Backward of rows [r0, r1): out = w ⊙ (g − c), and ∂L/∂α per row when grad_alpha != NULL. */
static void CAT(sparse_bwd_rows_, X)(
    const XT *g, int64_t ldg, const XT *p, int64_t ldp, XT *o, int64_t ldo, int64_t r0, int64_t r1,
    int64_t C, int kind, const double *alpha, int64_t lda, float *grad_alpha) {
    const int64_t full = C - C % VL, tail = C - full;
    const vf zero = vsplat(0.0f);
    int64_t blocks_prev = 0;
    for (int64_t r = r0; r < r1; r++) {
        const XT *gr = g + r * ldg, *pr = p + r * ldp;
        XT *orow = o + r * ldo;
        const double a = kind == KIND_BISECT ? alpha[r * lda] : (kind == KIND_SPARSEMAX ? 2.0 : 1.5);
        const float expo = (float)(2.0 - a);
        const double q = 1.0 / (a - 1.0);

        /* Pass 1: Σ w, Σ w g (in double) and, for α, Σ a g and Σ a over the support. Blocks are
         * computed without a test when the previous row had support in a quarter of its blocks
         * or more (the test would mispredict), except for a general α (powf per lane). */
        const int dense = kind != KIND_BISECT && 4 * VL * blocks_prev > C;
        int64_t blocks = 0;
        vd sw = vdsplat(0.0), swg = vdsplat(0.0);
        double sag = 0.0, sa = 0.0;
        for (int64_t j = 0; j < C; j += VL) {
            const int last = j == full;
            if (last && !tail) break;
            vf pv = last ? CAT(loadn_, X)(pr + j, tail, 0.0f) : CAT(load_, X)(pr + j);
            vi pos = pv > zero;
            uint32_t bits = lane_bits(pos);
            blocks += bits != 0;
            if (dense || bits) {
                vf gv = last ? CAT(loadn_, X)(gr + j, tail, 0.0f) : CAT(load_, X)(gr + j);
                gv = vselect(pos, gv, zero); /* g off the support never enters the sums */
                const vf w = CAT(weights_, X)(pv, pos, kind, expo), wg = w * gv;
                sw += half_lo(w) + half_hi(w);
                swg += half_lo(wg) + half_hi(wg);
                if (grad_alpha != NULL) {
                    for (; bits; bits &= bits - 1) {
                        const int l = __builtin_ctz(bits);
                        const double pl = pv[l], al = q * pl - pl * log(pl);
                        sag += al * (double)gv[l];
                        sa += al;
                    }
                }
            }
            if (last) break;
        }
        double sw_t = 0.0, swg_t = 0.0;
        for (int l = 0; l < DL; l++) sw_t += sw[l], swg_t += swg[l];
        const double c = sw_t > 0.0 ? swg_t / sw_t : 0.0;
        blocks_prev = blocks;
        if (grad_alpha != NULL) grad_alpha[r] = (float)(q * (sag - c * sa));

        /* Pass 2: the gradient, written once. */
        const vf vc = vsplat((float)c);
        for (int64_t j = 0; j < C; j += VL) {
            const int last = j == full;
            if (last && !tail) break;
            vf pv = last ? CAT(loadn_, X)(pr + j, tail, 0.0f) : CAT(load_, X)(pr + j);
            vi pos = pv > zero;
            vf out = zero;
            if (dense || lane_bits(pos)) {
                vf gv = last ? CAT(loadn_, X)(gr + j, tail, 0.0f) : CAT(load_, X)(gr + j);
                out = vselect(pos, CAT(weights_, X)(pv, pos, kind, expo) * (gv - vc), zero);
            }
            if (last) CAT(storen_, X)(orow + j, out, tail);
            else CAT(store_, X)(orow + j, out);
            if (last) break;
        }
    }
}

/* Forward over rows [0, n_rows) on `threads` OpenMP threads (rows.h), each with its own scratch row.
 * Returns -1, the smallest row index holding NaN or +inf (validate), or -2 (out of memory). */
int64_t CAT(ll_sparse_fwd_, X)(
    const XT *x, int64_t ldx, XT *p, int64_t ldp, int64_t n_rows, int64_t C, int kind,
    const double *alpha, int64_t lda, double tol, int max_iter, int max_passes, int validate,
    float *tau_out, int64_t *support_out, int64_t *iter_out, float *viol_out, int threads) {
    return LL_ROW_PARTS(n_rows, threads, (size_t)(C + DL) * sizeof(double),
                        CAT(sparse_fwd_rows_, X)(x, ldx, p, ldp, r0, r1, C, kind, alpha, lda, tol, max_iter,
                                                 max_passes, validate, tau_out, support_out, iter_out, viol_out,
                                                 (double *)scratch));
}

/* Backward over rows [0, n_rows) on `threads` OpenMP threads (rows.h). */
void CAT(ll_sparse_bwd_, X)(
    const XT *g, int64_t ldg, const XT *p, int64_t ldp, XT *o, int64_t ldo, int64_t n_rows, int64_t C,
    int kind, const double *alpha, int64_t lda, float *grad_alpha, int threads) {
    (void)LL_ROW_PARTS(n_rows, threads, 0,
                       (CAT(sparse_bwd_rows_, X)(g, ldg, p, ldp, o, ldo, r0, r1, C, kind, alpha, lda, grad_alpha),
                        (int64_t)-1));
}

#undef XT
