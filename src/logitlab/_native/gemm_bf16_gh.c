/* grad_hidden: out (rows, dim) bf16 = G (rows, vocab) @ W (vocab, dim), summed in float32.
 *
 * Few rows against the whole vocabulary as inner dimension: the shape at which oneDNN's bf16
 * matmul loses most against its full-size rate (it repacks W on every call). Here each thread
 * owns 64-column strips of the output, walks the vocabulary in tiles of KT rows, packs each
 * (KT, 64) piece of W into pairs of vocabulary rows, wp[k][j] = (W[2k][j], W[2k+1][j]) (zero
 * beyond dim), and runs every group of MR output rows against it; a group broadcasts its rows'
 * (G[m][2k], G[m][2k+1]) from a copy of the tile's KT columns of G (G's rows are V elements apart,
 * which puts them all in the same few cache sets, so reading them in place is slower). While the rows run against one piece, they prefetch the next, each
 * group a share of its rows, so the fetch is spread over the whole piece rather than crowded
 * into the first group. The float32 sums live in a (rows, 64) buffer per strip and are rounded
 * to bf16 once, at the end. An odd last vocabulary row is added by a scalar loop.
 */
#include "gemm.h"

int ll_available(void) { return LL_HAVE_BF16; }

#if LL_HAVE_BF16

#define MR 6    /* output rows per micro-tile */
#define KT 256  /* vocabulary rows per packed tile */

static inline __attribute__((always_inline)) void gh_micro(float *acc_out, const uint16_t *g, int64_t ldg,
                                                           const uint16_t *wp, int64_t pairs, const int nm,
                                                           const uint16_t *next, int64_t ldw, int64_t phase,
                                                           int64_t stride) {
    __m512 acc[MR][4];
    for (int i = 0; i < nm; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_loadu_ps(acc_out + i * 64 + 16 * j);
    for (int64_t k = 0; k < pairs; k++) {
        const uint16_t *b = wp + k * 128;
        if (next && k % stride == phase) {
            const char *r = (const char *)(next + 2 * k * ldw);
            _mm_prefetch(r, _MM_HINT_T1);
            _mm_prefetch(r + 64, _MM_HINT_T1);
            _mm_prefetch(r + 2 * ldw, _MM_HINT_T1);
            _mm_prefetch(r + 2 * ldw + 64, _MM_HINT_T1);
        }
        __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 32);
        __m512bh b2 = (__m512bh)_mm512_load_si512(b + 64), b3 = (__m512bh)_mm512_load_si512(b + 96);
        for (int i = 0; i < nm; i++) {
            uint32_t pair;
            memcpy(&pair, g + i * ldg + 2 * k, sizeof pair);
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
            acc[i][2] = _mm512_dpbf16_ps(acc[i][2], a, b2);
            acc[i][3] = _mm512_dpbf16_ps(acc[i][3], a, b3);
        }
    }
    for (int i = 0; i < nm; i++)
        for (int j = 0; j < 4; j++) _mm512_storeu_ps(acc_out + i * 64 + 16 * j, acc[i][j]);
}

/* wp[k][j] = (W[2k][j], W[2k+1][j]) for j < 64, zero for j >= nd: a (2 pairs, 64) piece of W at w. */
static void gh_pack(uint16_t *wp, const uint16_t *w, int64_t ldw, int64_t pairs, int64_t nd) {
    if (nd == 64) {
        /* Interleave two rows of 32 columns: pair j takes element j of each (index 32 + j in the second). */
        __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
        __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
        for (int64_t k = 0; k < pairs; k++) {
            const uint16_t *r0 = w + 2 * k * ldw, *r1 = r0 + ldw;
            uint16_t *o = wp + k * 128;
            for (int h = 0; h < 2; h++) {
                __m512i a = _mm512_loadu_si512(r0 + 32 * h), b = _mm512_loadu_si512(r1 + 32 * h);
                _mm512_store_si512(o + 64 * h, _mm512_permutex2var_epi16(a, lo, b));
                _mm512_store_si512(o + 64 * h + 32, _mm512_permutex2var_epi16(a, hi, b));
            }
        }
        return;
    }
    for (int64_t k = 0; k < pairs; k++) {
        const uint16_t *r0 = w + 2 * k * ldw, *r1 = r0 + ldw;
        uint16_t *o = wp + k * 128;
        for (int64_t j = 0; j < nd; j++) {
            o[2 * j] = r0[j];
            o[2 * j + 1] = r1[j];
        }
        for (int64_t j = nd; j < 64; j++) o[2 * j] = o[2 * j + 1] = 0;
    }
}

/* All rows against one packed piece; group p of the row groups also prefetches the rows of pairs
 * k = p (mod groups) of the next piece of W (``next``, up to 2 * pairs rows of 128 bytes), so
 * packing it reads from cache. */
static void gh_rows(float *acc, const uint16_t *g, int64_t ldg, const uint16_t *wp, int64_t pairs, int64_t rows,
                    const uint16_t *next, int64_t ldw) {
    int64_t m = 0, groups = (rows + MR - 1) / MR;
    for (; m + MR <= rows; m += MR) gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, MR, next, ldw, m / MR, groups);
    int64_t p = m / MR;
    switch (rows - m) {
        case 5: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 5, next, ldw, p, groups); break;
        case 4: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 4, next, ldw, p, groups); break;
        case 3: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 3, next, ldw, p, groups); break;
        case 2: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 2, next, ldw, p, groups); break;
        case 1: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 1, next, ldw, p, groups); break;
        default: break;
    }
}

#endif

/* out (rows, dim) bf16, row stride ldo; g (rows, vocab) bf16, row stride ldg; w (vocab, dim) bf16,
 * row stride ldw; unit column strides. Returns 0, or -1 (nothing written) without AVX512-BF16 or
 * without memory for the buffers. */
int64_t ll_gh_bf16(uint16_t *out, int64_t ldo, const uint16_t *g, int64_t ldg, const uint16_t *w, int64_t ldw,
                   int64_t rows, int64_t vocab, int64_t dim, int threads) {
#if LL_HAVE_BF16
    if (rows <= 0 || dim <= 0) return 0;
    int64_t strips = (dim + 63) / 64, even = vocab - vocab % 2;
    int nthreads = threads > 0 ? threads : 1;
    float *acc_all = aligned_alloc(64, (size_t)strips * (size_t)rows * 64 * sizeof(float));
    uint16_t *wp_all = aligned_alloc(64, (size_t)nthreads * KT * 64 * sizeof(uint16_t));
    uint16_t *gt_all = aligned_alloc(64, (size_t)nthreads * (size_t)rows * KT * sizeof(uint16_t));
    if (!acc_all || !wp_all || !gt_all) {
        free(acc_all);
        free(wp_all);
        free(gt_all);
        return -1;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        int t = THREAD_NUM(), n = TEAM_SIZE();
        int64_t s0 = strips * t / n, s1 = strips * (t + 1) / n;
        uint16_t *wp = wp_all + (size_t)t * KT * 64, *gt = gt_all + (size_t)t * (size_t)rows * KT;
        memset(acc_all + s0 * rows * 64, 0, (size_t)(s1 - s0) * rows * 64 * sizeof(float));
        for (int64_t v0 = 0; v0 < even; v0 += KT) {
            int64_t pairs = (even - v0 < KT ? even - v0 : KT) / 2;
            /* This tile's columns of G, copied together: G's rows are V apart, which maps them
             * onto the same few cache sets, and every strip of the tile reads them again. */
            for (int64_t m = 0; m < rows; m++) memcpy(gt + m * KT, g + m * ldg + v0, (size_t)pairs * 4);
            for (int64_t s = s0; s < s1; s++) {
                int64_t d0 = 64 * s, nd = dim - d0 < 64 ? dim - d0 : 64;
                gh_pack(wp, w + v0 * ldw + d0, ldw, pairs, nd);
                /* The next piece: this tile's next strip, or the next tile's first strip. */
                const uint16_t *next = s + 1 < s1 ? w + v0 * ldw + d0 + 64
                                     : v0 + KT < even ? w + (v0 + KT) * ldw + 64 * s0 : NULL;
                gh_rows(acc_all + s * rows * 64, gt, KT, wp, pairs, rows, next, ldw);
                /* The next tile's columns of G, a share of the rows after each strip (without it the
                 * copy above waits on them from memory). */
                int64_t n0 = rows * (s - s0) / (s1 - s0), n1 = rows * (s + 1 - s0) / (s1 - s0);
                int64_t ahead = even - v0 - KT < KT ? even - v0 - KT : KT;
                for (int64_t m = n0; m < n1; m++)
                    for (int64_t b = 0; b < 2 * ahead; b += 64)
                        _mm_prefetch((const char *)(g + m * ldg + v0 + KT) + b, _MM_HINT_T1);
            }
        }
        for (int64_t s = s0; s < s1; s++) {
            int64_t d0 = 64 * s, nd = dim - d0 < 64 ? dim - d0 : 64;
            for (int64_t m = 0; m < rows; m++) {
                float *a = acc_all + (s * rows + m) * 64;
                if (even < vocab) {
                    float gv = bf16_value(g[m * ldg + even]);
                    for (int64_t j = 0; j < nd; j++) a[j] += gv * bf16_value(w[even * ldw + d0 + j]);
                }
                for (int64_t j = 0; j < nd; j += 16) {
                    __mmask16 mask = nd - j >= 16 ? 0xffff : (__mmask16)((1u << (nd - j)) - 1u);
                    _mm256_mask_storeu_epi16(out + m * ldo + d0 + j, mask,
                                             (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(a + j)));
                }
            }
        }
    }
    free(gt_all);
    free(wp_all);
    free(acc_all);
    return 0;
#else
    (void)out; (void)ldo; (void)g; (void)ldg; (void)w; (void)ldw; (void)rows; (void)vocab; (void)dim; (void)threads;
    return -1;
#endif
}
