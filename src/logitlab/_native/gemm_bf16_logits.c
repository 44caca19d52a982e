/* logits: out (rows, vocab) bf16 = H (rows, dim) @ W^T (+ bias), summed in float32.
 *
 * The weight is read once, in place: a micro-tile broadcasts the (W[v][2k], W[v][2k+1]) pairs of
 * LV vocabulary rows straight from W against blocks of up to 64 rows of H packed once per call as
 * hp[b][k][lane] = (H[m_b + lane][2k], H[m_b + lane][2k+1]) (zero past the block's rows and the
 * columns; m_b from block_start in gemm.h),
 * so nothing of W is repacked, unlike oneDNN's bf16 matmul on every call. The LV x 64 float32
 * sums start at the bias, are rounded to bf16 in registers and written out through a small
 * transposed tile. Each thread takes a contiguous range of LV-row groups; the last, partial group
 * runs on a zero-padded copy of its rows.
 */
#include "gemm.h"

int ll_available(void) { return LL_HAVE_BF16; }

#if LL_HAVE_BF16

#define LV 6  /* vocabulary rows per micro-tile */

static inline __attribute__((always_inline)) void lg_micro(uint16_t *tile, const uint16_t *w, int64_t ldw,
                                                           const uint32_t *hp, int64_t pairs, int64_t dim,
                                                           const float *bias, const int nd) {
    __m512 acc[LV][4];
    for (int i = 0; i < LV; i++)
        for (int j = 0; j < nd; j++) acc[i][j] = _mm512_set1_ps(bias ? bias[i] : 0.0f);
    int64_t full = dim / 2;
    for (int64_t k = 0; k < pairs; k++) {
        const uint32_t *b = hp + k * 64;
        __m512bh bv[4];
        for (int j = 0; j < nd; j++) bv[j] = (__m512bh)_mm512_load_si512(b + 16 * j);
        for (int i = 0; i < LV; i++) {
            uint32_t pair;
            if (k < full) memcpy(&pair, w + i * ldw + 2 * k, sizeof pair);
            else pair = w[i * ldw + 2 * k];  /* odd dim: the last column pairs with zero */
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)pair);
            for (int j = 0; j < nd; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], a, bv[j]);
        }
    }
    for (int i = 0; i < LV; i++)
        for (int j = 0; j < nd; j++)
            _mm256_store_si256((__m256i *)(tile + i * 64 + 16 * j), (__m256i)_mm512_cvtneps_pbh(acc[i][j]));
}

#endif

/* out (rows, vocab) bf16, row stride ldo; h (rows, dim) bf16, row stride ldh; w (vocab, dim) bf16, row
 * stride ldw; unit column strides; bias (vocab) float32 or NULL. Returns 0, or -1 (nothing
 * written) without AVX512-BF16 or without memory for the packed copy. */
int64_t ll_logits_bf16(uint16_t *out, int64_t ldo, const uint16_t *h, int64_t ldh, const uint16_t *w, int64_t ldw,
                       int64_t rows, int64_t vocab, int64_t dim, int threads, const float *bias) {
#if LL_HAVE_BF16
    if (rows <= 0 || vocab <= 0) return 0;
    int64_t pairs = (dim + 1) / 2, blocks = (rows + 63) / 64, groups = (vocab + LV - 1) / LV;
    int64_t lanes = (rows + 15) / 16;  /* 16-row vectors, shared out evenly between the blocks */
    int nthreads = threads > 0 ? threads : 1;
    uint32_t *hp = aligned_alloc(64, (size_t)blocks * (size_t)(pairs > 0 ? pairs : 1) * 64 * sizeof(uint32_t));
    uint16_t *pad_all = calloc((size_t)nthreads * LV * (size_t)(dim + 2), sizeof(uint16_t));
    if (!hp || !pad_all) {
        free(hp);
        free(pad_all);
        return -1;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < pairs; k++)
            for (int64_t blk = 0; blk < blocks; blk++) {
                int64_t m0 = block_start(blk, lanes, blocks), m1 = block_start(blk + 1, lanes, blocks);
                for (int64_t m = m0; m < m0 + 64; m++) {
                    uint32_t v = 0;
                    if (m < m1 && m < rows) {
                        const uint16_t *r = h + m * ldh + 2 * k;
                        v = (uint32_t)r[0] | (2 * k + 1 < dim ? (uint32_t)r[1] << 16 : 0u);
                    }
                    hp[(blk * pairs + k) * 64 + m - m0] = v;
                }
            }
        int t = THREAD_NUM(), n = TEAM_SIZE();
        int64_t g0 = groups * t / n, g1 = groups * (t + 1) / n;
        uint16_t *pad = pad_all + (size_t)t * LV * (size_t)(dim + 2);
        uint16_t tile[LV * 64] __attribute__((aligned(64)));
        for (int64_t grp = g0; grp < g1; grp++) {
            int64_t v0 = grp * LV, nv = vocab - v0 < LV ? vocab - v0 : LV;
            const uint16_t *wv = w + v0 * ldw;
            int64_t ld = ldw;
            if (nv < LV) {  /* the last rows, copied into zeros so the micro-tile reads LV rows */
                for (int64_t i = 0; i < nv; i++) memcpy(pad + i * (dim + 2), wv + i * ldw, (size_t)dim * 2);
                wv = pad;
                ld = dim + 2;
            }
            float b[LV] = {0};
            for (int64_t i = 0; i < nv && bias; i++) b[i] = bias[v0 + i];
            for (int64_t blk = 0; blk < blocks; blk++) {
                int64_t m0 = block_start(blk, lanes, blocks), m1 = block_start(blk + 1, lanes, blocks);
                int64_t nm = (m1 < rows ? m1 : rows) - m0;
                const uint32_t *hb = hp + blk * pairs * 64;
                const float *bp = bias ? b : NULL;
                switch ((nm + 15) / 16) {
                    case 1: lg_micro(tile, wv, ld, hb, pairs, dim, bp, 1); break;
                    case 2: lg_micro(tile, wv, ld, hb, pairs, dim, bp, 2); break;
                    case 3: lg_micro(tile, wv, ld, hb, pairs, dim, bp, 3); break;
                    default: lg_micro(tile, wv, ld, hb, pairs, dim, bp, 4); break;
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
