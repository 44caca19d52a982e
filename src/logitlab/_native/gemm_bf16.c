/* grad_weight (V, D) float32 += G^T @ H for bfloat16 G (c, V) and H (c, D).
 *
 * This is the float32 sum of bfloat16 chunks in linear_cross_entropy (accum_dtype=float32): the
 * products of two bfloat16 numbers are exact in float32, so this equals a float32 matmul of the
 * widened inputs up to the order of the float32 additions, at the speed of bfloat16 dot products
 * (AVX512-BF16 VDPBF16PS: two products and their sum per float32 lane). The instruction treats
 * denormal inputs as zero and flushes denormal results, so values below 2^-126 (about 1.2e-38) in
 * magnitude are lost where the float32 matmul would keep them. Without that instruction set,
 * ll_gw_bf16_available() returns 0 and the caller keeps its float32 matmul.
 *
 * Layout. H is packed once per call into pairs of rows, hp[k][d] = (H[2k][d], H[2k+1][d]), so one
 * 64-byte load holds the pairs of 16 columns. Each thread takes tiles of VT vocabulary rows and
 * packs their G pairs, gp[i][k] = (G[2k][v0+i], G[2k+1][v0+i]) as one 32-bit word to broadcast.
 * The micro-kernel keeps an NV x (16 ND) block of grad_weight in NV*ND = 24 registers for the
 * whole sum over c. An odd last row pairs with zero. The column tail (D % 64) runs 16 masked
 * columns at a time; the last few vocabulary rows (fewer than NV) take a scalar loop.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_NUM() omp_get_thread_num()
#else
#define THREAD_NUM() 0
#endif

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define LL_HAVE_BF16 1
#else
#define LL_HAVE_BF16 0
#endif

int ll_gw_bf16_available(void) { return LL_HAVE_BF16; }

#if LL_HAVE_BF16

#define NV 6   /* grad_weight rows per micro-tile */
#define ND 4   /* 16-column vectors per micro-tile */
#define VT 48  /* vocabulary rows per thread tile */

static inline float bf16_value(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void micro(float *gw, int64_t ldw, const uint32_t *gp, int64_t pairs, const uint16_t *hp, int64_t dim,
                  int64_t d0) {
    __m512 acc[NV][ND];
    for (int i = 0; i < NV; i++)
        for (int j = 0; j < ND; j++) acc[i][j] = _mm512_loadu_ps(gw + i * ldw + d0 + 16 * j);
    for (int64_t k = 0; k < pairs; k++) {
        const uint16_t *b = hp + (k * dim + d0) * 2;
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 32);
        __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + 64), b3 = (__m512bh)_mm512_loadu_si512(b + 96);
        for (int i = 0; i < NV; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)gp[i * pairs + k]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
            acc[i][2] = _mm512_dpbf16_ps(acc[i][2], a, b2);
            acc[i][3] = _mm512_dpbf16_ps(acc[i][3], a, b3);
        }
    }
    for (int i = 0; i < NV; i++)
        for (int j = 0; j < ND; j++) _mm512_storeu_ps(gw + i * ldw + d0 + 16 * j, acc[i][j]);
}

/* Columns [d0, d0 + n) with n <= 16 under a mask, for the NV rows at gw: the column tail. */
static void micro_masked(float *gw, int64_t ldw, const uint32_t *gp, int64_t pairs, const uint16_t *hp,
                         int64_t dim, int64_t d0, int n) {
    __mmask16 mask = (__mmask16)((1u << n) - 1u);
    __m512 acc[NV];
    for (int i = 0; i < NV; i++) acc[i] = _mm512_maskz_loadu_ps(mask, gw + i * ldw + d0);
    for (int64_t k = 0; k < pairs; k++) {
        __m512bh b = (__m512bh)_mm512_maskz_loadu_epi32(mask, hp + (k * dim + d0) * 2);
        for (int i = 0; i < NV; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi32((int)gp[i * pairs + k]), b);
    }
    for (int i = 0; i < NV; i++) _mm512_mask_storeu_ps(gw + i * ldw + d0, mask, acc[i]);
}

/* The same sum for rows [i0, i1) of the tile and columns [d0, d1), one value at a time. */
static void scalar(float *gw, int64_t ldw, const uint32_t *gp, int64_t pairs, const uint16_t *hp, int64_t dim,
                   int64_t i0, int64_t i1, int64_t d0, int64_t d1) {
    for (int64_t i = i0; i < i1; i++)
        for (int64_t d = d0; d < d1; d++) {
            float acc = gw[i * ldw + d];
            for (int64_t k = 0; k < pairs; k++) {
                uint32_t pair = gp[i * pairs + k];
                const uint16_t *b = hp + (k * dim + d) * 2;
                acc += bf16_value((uint16_t)(pair & 0xffff)) * bf16_value(b[0]);
                acc += bf16_value((uint16_t)(pair >> 16)) * bf16_value(b[1]);
            }
            gw[i * ldw + d] = acc;
        }
}

#endif

/* gw (vocab, dim) float32, row stride ldw; g (rows, vocab) bf16, row stride ldg; h (rows, dim)
 * bf16, row stride ldh; unit column strides. Returns 0, or -1 (nothing written) without
 * AVX512-BF16 or without memory for the packed copies. */
int64_t ll_gw_bf16(float *gw, int64_t ldw, const uint16_t *g, int64_t ldg, const uint16_t *h, int64_t ldh,
                   int64_t rows, int64_t vocab, int64_t dim, int threads) {
#if LL_HAVE_BF16
    if (rows <= 0 || vocab <= 0 || dim <= 0) return 0;
    int64_t pairs = (rows + 1) / 2;
    size_t hp_bytes = ((size_t)pairs * (size_t)dim * 4 + 63) / 64 * 64;
    uint16_t *hp = aligned_alloc(64, hp_bytes);
    if (!hp) return -1;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < pairs; k++) {
        const uint16_t *even = h + 2 * k * ldh, *odd = 2 * k + 1 < rows ? even + ldh : NULL;
        uint16_t *out = hp + k * dim * 2;
        for (int64_t d = 0; d < dim; d++) {
            out[2 * d] = even[d];
            out[2 * d + 1] = odd ? odd[d] : 0;
        }
    }
    int64_t tiles = (vocab + VT - 1) / VT, full = dim - dim % (16 * ND);
    /* Every thread's G tile is allocated up front: a failure must come before any update. */
    uint32_t *gp_all = malloc((size_t)(threads > 0 ? threads : 1) * VT * (size_t)pairs * sizeof(uint32_t));
    if (!gp_all) {
        free(hp);
        return -1;
    }
    #pragma omp parallel num_threads(threads)
    {
        uint32_t *gp = gp_all + (size_t)THREAD_NUM() * VT * (size_t)pairs;
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            int64_t v0 = t * VT, nv = vocab - v0 < VT ? vocab - v0 : VT;
            for (int64_t k = 0; k < pairs; k++) {
                const uint16_t *even = g + 2 * k * ldg + v0, *odd = 2 * k + 1 < rows ? even + ldg : NULL;
                for (int64_t i = 0; i < nv; i++)
                    gp[i * pairs + k] = (uint32_t)even[i] | (odd ? (uint32_t)odd[i] << 16 : 0u);
            }
            float *tile = gw + v0 * ldw;
            int64_t grouped = nv - nv % NV;
            for (int64_t d0 = 0; d0 < full; d0 += 16 * ND) {
                for (int64_t i = 0; i < grouped; i += NV)
                    micro(tile + i * ldw, ldw, gp + i * pairs, pairs, hp, dim, d0);
                if (grouped < nv) scalar(tile, ldw, gp, pairs, hp, dim, grouped, nv, d0, d0 + 16 * ND);
            }
            for (int64_t d0 = full; d0 < dim; d0 += 16) {
                int n = dim - d0 < 16 ? (int)(dim - d0) : 16;
                for (int64_t i = 0; i < grouped; i += NV)
                    micro_masked(tile + i * ldw, ldw, gp + i * pairs, pairs, hp, dim, d0, n);
                if (grouped < nv) scalar(tile, ldw, gp, pairs, hp, dim, grouped, nv, d0, d0 + n);
            }
        }
    }
    free(gp_all);
    free(hp);
    return 0;
#else
    (void)gw; (void)ldw; (void)g; (void)ldg; (void)h; (void)ldh; (void)rows; (void)vocab; (void)dim; (void)threads;
    return -1;
#endif
}
