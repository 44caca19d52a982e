/* logits: out (rows, vocab) float32 = H (rows, dim) @ W^T (+ bias), for linear_cross_entropy's
 * float32 chunks.
 *
 * The float32 twin of gemm_bf16_logits.c: a micro-tile broadcasts W[v][k] for LV vocabulary
 * rows straight from W (read once, in place) against blocks of up to 64 rows of H packed once per
 * call as hp[b][k][lane] = H[m_b + lane][k] (zero past the block's rows; m_b from block_start in
 * gemm.h), keeping LV x 64 sums in 24 registers
 * over spans of KS features that are then added to a tile started at the bias (one chain over
 * all of dim rounded 2-3x worse than torch.mm), and writes the tile out transposed.
 * MKL at 64 rows stays well below its full-size rate on this product, even with class-major
 * tiles (benchmarks/chunk_sweep.py times both paths and the floor). Each thread takes a contiguous
 * range of LV-row groups; the last, partial group runs on a zero-padded copy of its rows.
 * Without AVX-512, ll_available() returns 0 and the caller keeps torch's matmul.
 */
#include "gemm.h"

int ll_available(void) { return LL_HAVE_AVX512; }

#if LL_HAVE_AVX512

#define LV 6    /* vocabulary rows per micro-tile */
#define KS 128  /* features summed in registers before they go into the tile */

static inline __attribute__((always_inline)) void micro(float *tile, const float *w, int64_t ldw, const float *hp,
                                                        int64_t dim, const float *bias, const int nd) {
    for (int i = 0; i < LV; i++)
        for (int j = 0; j < nd; j++) _mm512_store_ps(tile + i * 64 + 16 * j, _mm512_set1_ps(bias ? bias[i] : 0.0f));
    for (int64_t k0 = 0; k0 < dim; k0 += KS) {
        int64_t k1 = dim - k0 < KS ? dim : k0 + KS;
        __m512 acc[LV][4];
        for (int i = 0; i < LV; i++)
            for (int j = 0; j < nd; j++) acc[i][j] = _mm512_setzero_ps();
        for (int64_t k = k0; k < k1; k++) {
            const float *b = hp + k * 64;
            __m512 bv[4];
            for (int j = 0; j < nd; j++) bv[j] = _mm512_load_ps(b + 16 * j);
            for (int i = 0; i < LV; i++) {
                __m512 a = _mm512_set1_ps(w[i * ldw + k]);
                for (int j = 0; j < nd; j++) acc[i][j] = _mm512_fmadd_ps(a, bv[j], acc[i][j]);
            }
        }
        for (int i = 0; i < LV; i++)
            for (int j = 0; j < nd; j++) {
                float *t = tile + i * 64 + 16 * j;
                _mm512_store_ps(t, _mm512_add_ps(_mm512_load_ps(t), acc[i][j]));
            }
    }
}

#endif

/* out (rows, vocab) float32, row stride ldo; h (rows, dim), row stride ldh; w (vocab, dim), row
 * stride ldw; unit column strides; bias (vocab) or NULL. Returns 0, or -1 (nothing written)
 * without AVX-512 or without memory for the packed copy. */
int64_t ll_logits_f32(float *out, int64_t ldo, const float *h, int64_t ldh, const float *w, int64_t ldw,
                      int64_t rows, int64_t vocab, int64_t dim, int threads, const float *bias) {
#if LL_HAVE_AVX512
    if (rows <= 0 || vocab <= 0) return 0;
    int64_t blocks = (rows + 63) / 64, groups = (vocab + LV - 1) / LV, lanes = (rows + 15) / 16;
    int nthreads = threads > 0 ? threads : 1;
    float *hp = aligned_alloc(64, (size_t)blocks * (size_t)(dim > 0 ? dim : 1) * 64 * sizeof(float));
    float *pad_all = calloc((size_t)nthreads * LV * (size_t)(dim + 1), sizeof(float));
    if (!hp || !pad_all) {
        free(hp);
        free(pad_all);
        return -1;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < dim; k++)
            for (int64_t blk = 0; blk < blocks; blk++) {
                int64_t m0 = block_start(blk, lanes, blocks), m1 = block_start(blk + 1, lanes, blocks);
                for (int64_t m = m0; m < m0 + 64; m++)
                    hp[(blk * dim + k) * 64 + m - m0] = m < m1 && m < rows ? h[m * ldh + k] : 0.0f;
            }
        int t = THREAD_NUM(), n = TEAM_SIZE();
        int64_t g0 = groups * t / n, g1 = groups * (t + 1) / n;
        float *pad = pad_all + (size_t)t * LV * (size_t)(dim + 1);
        float tile[LV * 64] __attribute__((aligned(64)));
        for (int64_t grp = g0; grp < g1; grp++) {
            int64_t v0 = grp * LV, nv = vocab - v0 < LV ? vocab - v0 : LV;
            const float *wv = w + v0 * ldw;
            int64_t ld = ldw;
            if (nv < LV) {  /* the last rows, copied into zeros so the micro-tile reads LV rows */
                for (int64_t i = 0; i < nv; i++) memcpy(pad + i * (dim + 1), wv + i * ldw, (size_t)dim * sizeof(float));
                wv = pad;
                ld = dim + 1;
            }
            float b[LV] = {0};
            for (int64_t i = 0; i < nv && bias; i++) b[i] = bias[v0 + i];
            const float *bp = bias ? b : NULL;
            for (int64_t blk = 0; blk < blocks; blk++) {
                int64_t m0 = block_start(blk, lanes, blocks), m1 = block_start(blk + 1, lanes, blocks);
                int64_t nm = (m1 < rows ? m1 : rows) - m0;
                const float *hb = hp + blk * dim * 64;
                switch ((nm + 15) / 16) {
                    case 1: micro(tile, wv, ld, hb, dim, bp, 1); break;
                    case 2: micro(tile, wv, ld, hb, dim, bp, 2); break;
                    case 3: micro(tile, wv, ld, hb, dim, bp, 3); break;
                    default: micro(tile, wv, ld, hb, dim, bp, 4); break;
                }
                for (int64_t m = 0; m < nm; m++)
                    for (int64_t i = 0; i < nv; i++) out[(m0 + m) * ldo + v0 + i] = tile[i * 64 + m];
            }
        }
    }
    free(pad_all);
    free(hp);
    return 0;
#else
    (void)out; (void)ldo; (void)h; (void)ldh; (void)w; (void)ldw; (void)bias; (void)rows; (void)vocab; (void)dim;
    (void)threads;
    return -1;
#endif
}
