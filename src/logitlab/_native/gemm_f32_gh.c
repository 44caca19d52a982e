/* grad_hidden (rows, dim) float32 = G (rows, vocab) @ W (vocab, dim) for linear_cross_entropy's
 * float32 chunks: few rows against the whole vocabulary as inner dimension.
 *
 * MKL splits such a product badly over threads; even as a batch over parts of the vocabulary it
 * stays well below its full-size rate (benchmarks/chunk_sweep.py times both paths and the floor).
 * Here each thread owns 64-column strips of the output and walks the vocabulary in tiles of KT
 * rows. It copies each (KT, 64) piece of W into a contiguous buffer (W's rows are dim apart, which
 * would put a piece's lines in a few sets of the L1 cache) while the previous piece's first
 * row group prefetches the next piece, and runs every group of MR output rows against the
 * buffer, broadcasting G[m][v] and keeping an MR x 64 block of sums in 24 registers. Each span
 * of KS classes is summed in a (rows, 64) buffer per strip, then added to the output (the first
 * span writes it): one chain of float32 additions over the whole vocabulary rounded 10x worse
 * than torch.mm, the spans as well as it. A partial last strip reads zeros past dim.
 * Without AVX-512, ll_available() returns 0 and the caller keeps torch's matmul.
 */
#include "gemm.h"

int ll_available(void) { return LL_HAVE_AVX512; }

#if LL_HAVE_AVX512

#define MR 6   /* output rows per micro-tile */
#define KT 128  /* vocabulary rows per piece */
#define KS 512  /* vocabulary rows summed in a buffer before they go into the output */

static inline __attribute__((always_inline)) void micro(float *out, int64_t ldo, const float *g, int64_t ldg, const float *wp, int64_t nv,
                                                        const int nm, const float *next, int64_t ldw) {
    __m512 acc[MR][4];
    for (int i = 0; i < nm; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_loadu_ps(out + i * ldo + 16 * j);
    for (int64_t k = 0; k < nv; k++) {
        if (next)
            for (int l = 0; l < 4; l++) _mm_prefetch((const char *)(next + k * ldw + 16 * l), _MM_HINT_T1);
        const float *b = wp + k * 64;
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32),
               b3 = _mm512_load_ps(b + 48);
        for (int i = 0; i < nm; i++) {
            __m512 a = _mm512_set1_ps(g[i * ldg + k]);
            acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(a, b2, acc[i][2]);
            acc[i][3] = _mm512_fmadd_ps(a, b3, acc[i][3]);
        }
    }
    for (int i = 0; i < nm; i++)
        for (int j = 0; j < 4; j++) _mm512_storeu_ps(out + i * ldo + 16 * j, acc[i][j]);
}

/* Every row against one piece; the first group prefetches the next piece (``next``, nv rows). */
static void all_rows(float *out, int64_t ldo, const float *g, int64_t ldg,
                     const float *wp, int64_t nv, int64_t rows, const float *next, int64_t ldw) {
    int64_t m = 0;
    for (; m + MR <= rows; m += MR, next = NULL)
        micro(out + m * ldo, ldo, g + m * ldg, ldg, wp, nv, MR, next, ldw);
    float *o = out + m * ldo;
    const float *gm = g + m * ldg;
    switch (rows - m) {
        case 5: micro(o, ldo, gm, ldg, wp, nv, 5, next, ldw); break;
        case 4: micro(o, ldo, gm, ldg, wp, nv, 4, next, ldw); break;
        case 3: micro(o, ldo, gm, ldg, wp, nv, 3, next, ldw); break;
        case 2: micro(o, ldo, gm, ldg, wp, nv, 2, next, ldw); break;
        case 1: micro(o, ldo, gm, ldg, wp, nv, 1, next, ldw); break;
        default: break;
    }
}

#endif

/* out (rows, dim) float32, row stride ldo; g (rows, vocab), row stride ldg; w (vocab, dim), row
 * stride ldw; unit column strides. Returns 0, or -1 (nothing written) without AVX-512 or without
 * memory for the buffers. */
int64_t ll_gh_f32(float *out, int64_t ldo, const float *g, int64_t ldg, const float *w, int64_t ldw, int64_t rows,
                  int64_t vocab, int64_t dim, int threads) {
#if LL_HAVE_AVX512
    if (rows <= 0 || dim <= 0) return 0;
    int64_t strips = (dim + 63) / 64;
    int nthreads = threads > 0 ? threads : 1;
    float *wp_all = aligned_alloc(64, (size_t)nthreads * KT * 64 * sizeof(float));
    float *acc_all = aligned_alloc(64, (size_t)strips * (size_t)rows * 64 * sizeof(float));
    if (!wp_all || !acc_all) {
        free(wp_all);
        free(acc_all);
        return -1;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        int t = THREAD_NUM(), n = TEAM_SIZE();
        int64_t s0 = strips * t / n, s1 = strips * (t + 1) / n;
        float *wp = wp_all + (size_t)t * KT * 64;
        for (int64_t span = 0; span < vocab; span += KS) {
            int64_t span_end = vocab - span < KS ? vocab : span + KS;
            memset(acc_all + s0 * rows * 64, 0, (size_t)(s1 - s0) * rows * 64 * sizeof(float));
            for (int64_t v0 = span; v0 < span_end; v0 += KT) {
                int64_t nv = span_end - v0 < KT ? span_end - v0 : KT;
                for (int64_t s = s0; s < s1; s++) {
                    int64_t d0 = 64 * s, nd = dim - d0 < 64 ? dim - d0 : 64;
                    for (int64_t k = 0; k < nv; k++)
                        for (int j = 0; j < 4; j++) {
                            int64_t c = nd - 16 * j;
                            __mmask16 mask = c >= 16 ? 0xffff : c <= 0 ? 0 : (__mmask16)((1u << c) - 1u);
                            _mm512_store_ps(wp + k * 64 + 16 * j,
                                            _mm512_maskz_loadu_ps(mask, w + (v0 + k) * ldw + d0 + 16 * j));
                        }
                    /* The next piece: this tile's next strip, or the next tile's first strip. */
                    const float *next = s + 1 < s1 ? w + v0 * ldw + d0 + 64
                                      : v0 + KT < vocab ? w + (v0 + KT) * ldw + 64 * s0 : NULL;
                    all_rows(acc_all + s * rows * 64, 64, g + v0, ldg, wp, nv, rows, next, ldw);
                }
            }
            /* The span's sums into the output: the first span writes it, the others add. */
            for (int64_t s = s0; s < s1; s++) {
                int64_t d0 = 64 * s, nd = dim - d0 < 64 ? dim - d0 : 64;
                for (int64_t m = 0; m < rows; m++) {
                    const float *a = acc_all + (s * rows + m) * 64;
                    float *o = out + m * ldo + d0;
                    for (int64_t j = 0; j < nd; j++) o[j] = span == 0 ? a[j] : o[j] + a[j];
                }
            }
        }
    }
    free(acc_all);
    free(wp_all);
    return 0;
#else
    (void)out; (void)ldo; (void)g; (void)ldg; (void)w; (void)ldw; (void)rows; (void)vocab; (void)dim; (void)threads;
    return -1;
#endif
}
