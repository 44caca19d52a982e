/* One cross-entropy row kernel, instantiated by xent.c for each pair of storage types:
 * X (logits and gradient) and P (target probabilities). See xent.c for the mathematics. */

#define XT CAT(X, _t)
#define PT CAT(P, _t)

/* Passes 2 and 3 of the common cases (index targets, and label smoothing without class weights)
 * in loops of their own: the general loops below keep every option's constants live, which on
 * AVX2 spills them to the stack. The arithmetic is the general loops'. `tsum`, when not NULL,
 * accumulates Σ t (smoothing's term). */
static inline vf CAT4(sumexp_, X, _, P)(const XT *xr, int64_t C, vf vmx, vf vinv, int scaled, f32_t *er,
                                        vf *tsum) {
    const int64_t full = C - C % VL;
    vf vsum = vsplat(0.0f), vts = vsplat(0.0f);
    /* t = (x − max x) / T; at T = 1 the product is exact, so it is left out. */
#define LL_T(v) (scaled ? ((v) - vmx) * vinv : (v) - vmx)
    if (er != NULL) {
        for (int64_t j = 0; j < full; j += VL) {
            const vf t = LL_T(CAT(load_, X)(xr + j));
            vf e = vexp_neg(t);
            vsum += e;
            store_f32(er + j, e);
            if (tsum != NULL) vts += t;
        }
    } else {
        for (int64_t j = 0; j < full; j += VL) {
            const vf t = LL_T(CAT(load_, X)(xr + j));
            vsum += vexp_neg(t);
            if (tsum != NULL) vts += t;
        }
    }
    if (full < C) {
        const vf t = LL_T(CAT(loadn_, X)(xr + full, C - full, -INFINITY));
        vf e = vexp_neg(t);
        vsum += e;
        if (er != NULL) storen_f32(er + full, e, C - full);
        if (tsum != NULL) {
            vi lanes;
            for (int i = 0; i < VL; i++) lanes[i] = i < C - full ? -1 : 0;
            vts += vselect(lanes, t, vsplat(0.0f));
        }
    }
#undef LL_T
    if (tsum != NULL) *tsum = vts;
    return vsum;
}

/* e · k − spread. With `stream`, the elements before the first aligned address are stored as a
 * tail is, and the aligned vectors from there on with non-temporal stores (vec.h). */
static inline void CAT4(scale_exp_, X, _, P)(const f32_t *er, int64_t C, vf vk, int smooth, vf spread, XT *gr,
                                             int stream, int finite) {
    int64_t j = 0;
#define LL_G(e) (smooth ? (e) * vk - spread : (e) * vk)
    if (stream) {
        const uintptr_t align = LL_STREAM_ALIGN(XT);
        int64_t head = (int64_t)((align - (uintptr_t)gr % align) % align / sizeof(XT));
        head = head < C ? head : C;
        if (head) CAT(storen_, X)(gr, LL_G(loadn_f32(er, head, 0.0f)), head);
        if (finite) {
            for (j = head; j + VL <= C; j += VL) CAT(streamf_, X)(gr + j, LL_G(load_f32(er + j)));
        } else {
            for (j = head; j + VL <= C; j += VL) CAT(stream_, X)(gr + j, LL_G(load_f32(er + j)));
        }
    } else if (finite) {
        for (; j + VL <= C; j += VL) CAT(storef_, X)(gr + j, LL_G(load_f32(er + j)));
    } else {
        for (; j + VL <= C; j += VL) CAT(store_, X)(gr + j, LL_G(load_f32(er + j)));
    }
    if (j < C) CAT(storen_, X)(gr + j, LL_G(loadn_f32(er + j, C - j, 0.0f)), C - j);
#undef LL_G
}

static int64_t CAT4(xent_rows_, X, _, P)(
    const XT *x, int64_t ldx, XT *g, int64_t ldg, int64_t r0, int64_t r1, int64_t C,
    const int64_t *target, const PT *prob, int64_t ldp, const float *cw, double w_sum,
    const float *scale, const uint8_t *keep, double eps, double zl, float inv_t, int validate,
    int scale_loss, float *loss, int stream) {
    const int64_t full = C - C % VL;
    const int64_t tail = C - full;
    vi tail_lanes;
    for (int i = 0; i < VL; i++) tail_lanes[i] = i < tail ? -1 : 0;
    /* The exponentials are kept between the two passes that need them: in the gradient row
     * itself when it is float32, else in a float32 scratch row (a half-precision gradient
     * would round them). Without scratch memory they are computed twice. */
    float *scratch = g != NULL && sizeof(XT) != 4 ? malloc((size_t)(C + VL) * sizeof(float)) : NULL;
    const int keep_exp = g != NULL && (sizeof(XT) == 4 || scratch != NULL);

    for (int64_t r = r0; r < r1; r++) {
        const XT *xr = x + r * ldx;
        XT *gr = g != NULL ? g + r * ldg : NULL;
        const PT *pr = prob != NULL ? prob + r * ldp : NULL;
        f32_t *er = scratch != NULL ? scratch : (f32_t *)gr; /* where the exponentials wait */

        if (!keep[r]) { /* an excluded row may hold anything (padding): never read */
            loss[r] = 0.0f;
            if (gr != NULL) {
                vf zero = vsplat(0.0f);
                for (int64_t j = 0; j < full; j += VL) CAT(store_, X)(gr + j, zero);
                if (tail) CAT(storen_, X)(gr + full, zero, tail);
            }
            continue;
        }
        /* Pass 1: the row maximum, and whether the row holds a NaN. */
        int has_nan;
        const float mx = hmax(CAT(lanemax_, X)(xr, C, &has_nan));
        if (validate && (has_nan || mx == INFINITY)) {
            if (stream) stream_fence();
            free(scratch);
            return r * 4 + 1;
        }
        if (validate && mx == -INFINITY) {
            if (stream) stream_fence();
            free(scratch);
            return r * 4 + 2;
        }
        const float m = mx * inv_t; /* max(x / T) = max(x) / T: rounding is monotone */
        int64_t y = 0;
        float t_y = 0.0f;
        if (target != NULL) {
            y = target[r];
            if (y < 0 || y >= C) { /* checked whatever `validate` says: y addresses memory */
                if (stream) stream_fence();
                free(scratch);
                return r * 4 + 3;
            }
            t_y = (CAT(get_, X)(xr, y) - mx) * inv_t; /* read before an in-place gradient overwrites it */
        }

        /* Pass 2: Σ exp(s − m); with smoothing Σ w_c (s_c − m); with probabilities
         * Σ q_c w_c (s_c − m) over q_c w_c ≠ 0 (0 · log 0 = 0) and Σ q_c w_c. */
        vf vsum = vsplat(0.0f), vsm = vsplat(0.0f), vdot = vsplat(0.0f), vtq = vsplat(0.0f);
        const vf vinv = vsplat(inv_t), vmx = vsplat(mx), vzero = vsplat(0.0f);
        const int plain = pr == NULL && (eps == 0.0 || cw == NULL), smooth = eps > 0.0;
        f32_t *const keep_er = keep_exp ? er : NULL;
        if (plain && inv_t == 1.0f) {
            vsum = smooth ? CAT4(sumexp_, X, _, P)(xr, C, vmx, vinv, 0, keep_er, &vsm)
                          : CAT4(sumexp_, X, _, P)(xr, C, vmx, vinv, 0, keep_er, NULL);
        } else if (plain) {
            vsum = smooth ? CAT4(sumexp_, X, _, P)(xr, C, vmx, vinv, 1, keep_er, &vsm)
                          : CAT4(sumexp_, X, _, P)(xr, C, vmx, vinv, 1, keep_er, NULL);
        }
        for (int64_t j = 0; j < C && !plain; j += VL) {
            const int last = j == full;
            /* t = (x − max x) / T, the max subtracted before the scaling: x·(1/T) − m would be
             * contracted into one FMA that skips the product's rounding, so the maximum would
             * map to ±ulp(m) instead of exactly 0, and exp of a positive t overflows. */
            vf t = ((last ? CAT(loadn_, X)(xr + j, tail, -INFINITY) : CAT(load_, X)(xr + j)) - vmx) * vinv;
            vf e = vexp_neg(t);
            vsum += e;
            if (keep_exp) {
                if (last) storen_f32(er + j, e, tail);
                else store_f32(er + j, e);
            }
            vf w = vsplat(1.0f);
            if (cw != NULL && (eps > 0.0 || pr != NULL)) w = last ? loadn_f32(cw + j, tail, 0.0f) : load_f32(cw + j);
            if (eps > 0.0) {
                vf term = cw != NULL ? w * t : t;
                vsm += last ? vselect(tail_lanes, term, vzero) : term;
            }
            if (pr != NULL) {
                vf q = last ? CAT(loadn_, P)(pr + j, tail, 0.0f) : CAT(load_, P)(pr + j);
                vf qw = cw != NULL ? q * w : q;
                vtq += qw;
                vdot += vselect(vne(qw, vzero), qw * t, vzero);
            }
            if (last) break;
        }
        const double sum = hsum_d(vsum);
        const double log_sum = log(sum);
        const double lse = (double)m + log_sum;
        double ce = 0.0, total = 0.0, row_w = 1.0, w_y = 1.0;
        if (target != NULL) {
            w_y = cw != NULL ? (double)cw[y] : 1.0;
            row_w = w_y;
            if (eps < 1.0) ce = -(1.0 - eps) * w_y * ((double)t_y - log_sum);
            total = (1.0 - eps) * w_y;
        } else {
            const double tq = hsum_d(vtq);
            ce = -(1.0 - eps) * (hsum_d(vdot) - log_sum * tq);
            total = (1.0 - eps) * tq;
        }
        if (eps > 0.0) {
            ce -= eps / (double)C * (hsum_d(vsm) - log_sum * w_sum);
            total += eps * w_sum / (double)C;
        }
        if (zl > 0.0) {
            ce += zl * row_w * lse * lse;
            total += 2.0 * zl * row_w * lse;
        }
        loss[r] = (float)(scale_loss ? ce * (double)scale[r] : ce);
        if (gr == NULL) continue;

        /* Pass 3: the gradient (total · p − q ⊙ w) · scale / T, written once. */
        const double sct = (double)scale[r] * (double)inv_t;
        const vf vk = vsplat((float)(total * sct / sum));
        const vf vspread = vsplat((float)(sct * eps / (double)C));
        const vf vhit = vsplat((float)(sct * (1.0 - eps)));
        /* A row without NaN, with a finite maximum and finite factors, has a finite gradient:
         * its rounding to half precision needs no NaN lanes. */
        const int finite = !has_nan && isfinite(mx) && isfinite(vk[0]) && isfinite(vspread[0]);
        if (plain && keep_exp && smooth) CAT4(scale_exp_, X, _, P)(er, C, vk, 1, vspread, gr, stream, finite);
        else if (plain && keep_exp) CAT4(scale_exp_, X, _, P)(er, C, vk, 0, vspread, gr, stream, finite);
        const int stream_row = stream && (uintptr_t)gr % LL_STREAM_ALIGN(XT) == 0;
        for (int64_t j = 0; j < C && !(plain && keep_exp); j += VL) {
            const int last = j == full;
            if (last && !tail) break;
            vf e;
            if (keep_exp) {
                e = last ? loadn_f32(er + j, tail, 0.0f) : load_f32(er + j);
            } else {
                e = vexp_neg(((last ? CAT(loadn_, X)(xr + j, tail, -INFINITY) : CAT(load_, X)(xr + j)) - vmx) * vinv);
            }
            vf gv = e * vk;
            vf w = vsplat(1.0f);
            if (cw != NULL && (eps > 0.0 || pr != NULL)) w = last ? loadn_f32(cw + j, tail, 0.0f) : load_f32(cw + j);
            if (eps > 0.0) gv -= cw != NULL ? vspread * w : vspread;
            if (pr != NULL) {
                vf q = last ? CAT(loadn_, P)(pr + j, tail, 0.0f) : CAT(load_, P)(pr + j);
                gv -= vhit * (cw != NULL ? q * w : q);
            }
            if (last) CAT(storen_, X)(gr + j, gv, tail);
            else if (stream_row) CAT(stream_, X)(gr + j, gv);
            else CAT(store_, X)(gr + j, gv);
            if (last) break;
        }
        if (target != NULL) {
            /* The target column, from the same float32 terms, rounded once. */
            const double e_y = (double)sexp_neg(t_y);
            double g_y = e_y * (total * sct / sum) - sct * (1.0 - eps) * w_y;
            if (eps > 0.0) g_y -= sct * eps / (double)C * w_y;
            CAT(set_, X)(gr, y, (float)g_y);
        }
    }
    free(scratch);
    if (stream) stream_fence();
    return -1;
}

/* Rows [0, n_rows) on `threads` OpenMP threads (rows.h: the runtime torch itself uses, when it is
 * libgomp), in ranges handed out as threads free up; returns the smallest error code. */
int64_t CAT4(ll_xent_, X, _, P)(
    const XT *x, int64_t ldx, XT *g, int64_t ldg, int64_t n_rows, int64_t C,
    const int64_t *target, const PT *prob, int64_t ldp, const float *cw, double w_sum,
    const float *scale, const uint8_t *keep, double eps, double zl, float inv_t, int validate,
    int scale_loss, float *loss, int threads) {
    /* Non-temporal gradient stores when the gradient is half precision, far larger than a cache
     * and not the logits' own memory (whose lines the passes have just read into the cache). A
     * float32 gradient row is also the exponentials' scratch (above), so its lines are in the
     * cache before pass 3 anyway; streamed from a separate scratch row instead, it measured
     * slower than this with both x86 builds (benchmarks/cross_entropy.py). */
    const int stream = sizeof(XT) == 2 && g != NULL && g != x
                       && (double)n_rows * (double)ldg * sizeof(XT) >= LL_XENT_STREAM_BYTES;
    return LL_ROW_PARTS(n_rows, threads, 0,
                        CAT4(xent_rows_, X, _, P)(x, ldx, g, ldg, r0, r1, C, target, prob, ldp, cw, w_sum, scale,
                                                  keep, eps, zl, inv_t, validate, scale_loss, loss, stream));
}

#undef XT
#undef PT
