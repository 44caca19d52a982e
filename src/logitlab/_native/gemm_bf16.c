/* Two bfloat16 products of linear_cross_entropy's chunks, summed in float32 with AVX512-BF16:
 * grad_weight (V, D) float32 += G^T @ H for bfloat16 G (c, V) and H (c, D), here, and grad_hidden
 * (c, D) = G @ W further down.
 *
 * grad_weight is the float32 sum of bfloat16 chunks in linear_cross_entropy (accum_dtype=float32): the
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
 * whole sum over c, and prefetches the next block's rows (without that, loading grad_weight from
 * memory stalled it: 0.91 s -> 0.76 s at 4096x1024x32768 in 32 chunks). A bf16 grad_weight
 * (accum_dtype=bfloat16) is widened on load and rounded to nearest even on store, so each call
 * rounds once. An odd last row pairs with zero. The column tail (D % 64) runs 16 masked
 * columns at a time; the last few vocabulary rows (fewer than NV) take a scalar loop.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_NUM() omp_get_thread_num()
#define omp_threads_in_team() omp_get_num_threads()
#else
#define THREAD_NUM() 0
#define omp_threads_in_team() 1
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

/* grad_weight is float32, or bf16 when ``low`` (accum_dtype=bfloat16: widened on load, rounded
 * to nearest even on store, once per call). Offsets are in elements. */
static inline __m512 gw_load(const void *gw, int64_t at, int low) {
    if (!low) return _mm512_loadu_ps((const float *)gw + at);
    __m256i bits = _mm256_loadu_si256((const __m256i *)((const uint16_t *)gw + at));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

static inline void gw_store(void *gw, int64_t at, __m512 v, int low) {
    if (low) _mm256_storeu_si256((__m256i *)((uint16_t *)gw + at), (__m256i)_mm512_cvtneps_pbh(v));
    else _mm512_storeu_ps((float *)gw + at, v);
}

static inline __m512 gw_load_masked(const void *gw, int64_t at, __mmask16 mask, int low) {
    if (!low) return _mm512_maskz_loadu_ps(mask, (const float *)gw + at);
    __m256i bits = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)gw + at);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

static inline void gw_store_masked(void *gw, int64_t at, __mmask16 mask, __m512 v, int low) {
    if (low) _mm256_mask_storeu_epi16((uint16_t *)gw + at, mask, (__m256i)_mm512_cvtneps_pbh(v));
    else _mm512_mask_storeu_ps((float *)gw + at, mask, v);
}

static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  /* NaN stays NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* The NV x (16 ND) micro-tile of grad_weight at offset ``at``; ``next`` (or -1) is the next
 * micro-tile's offset, whose rows are fetched while this one runs. */
static void micro(void *gw, int64_t at, int64_t ldw, const uint32_t *gp, int64_t pairs, const uint16_t *hp,
                  int64_t dim, int64_t d0, int64_t next, int low) {
    __m512 acc[NV][ND];
    for (int i = 0; i < NV; i++)
        for (int j = 0; j < ND; j++) acc[i][j] = gw_load(gw, at + i * ldw + 16 * j, low);
    for (int64_t k = 0; k < pairs; k++) {
        if (next >= 0 && k < NV * ND)
            __builtin_prefetch((const char *)gw + (next + (k / ND) * ldw + 16 * (k % ND)) * (low ? 2 : 4), 1, 3);
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
        for (int j = 0; j < ND; j++) gw_store(gw, at + i * ldw + 16 * j, acc[i][j], low);
}

/* Columns [d0, d0 + n) with n <= 16 under a mask, for the NV rows at ``at``: the column tail. */
static void micro_masked(void *gw, int64_t at, int64_t ldw, const uint32_t *gp, int64_t pairs, const uint16_t *hp,
                         int64_t dim, int64_t d0, int n, int low) {
    __mmask16 mask = (__mmask16)((1u << n) - 1u);
    __m512 acc[NV];
    for (int i = 0; i < NV; i++) acc[i] = gw_load_masked(gw, at + i * ldw, mask, low);
    for (int64_t k = 0; k < pairs; k++) {
        __m512bh b = (__m512bh)_mm512_maskz_loadu_epi32(mask, hp + (k * dim + d0) * 2);
        for (int i = 0; i < NV; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi32((int)gp[i * pairs + k]), b);
    }
    for (int i = 0; i < NV; i++) gw_store_masked(gw, at + i * ldw, mask, acc[i], low);
}

/* The same sum for rows [i0, i1) of the tile at ``at`` and columns [d0, d1), one value at a time. */
static void scalar(void *gw, int64_t at, int64_t ldw, const uint32_t *gp, int64_t pairs, const uint16_t *hp,
                   int64_t dim, int64_t i0, int64_t i1, int64_t d0, int64_t d1, int low) {
    for (int64_t i = i0; i < i1; i++)
        for (int64_t d = d0; d < d1; d++) {
            int64_t o = at + i * ldw + d;
            float acc = low ? bf16_value(((uint16_t *)gw)[o]) : ((float *)gw)[o];
            for (int64_t k = 0; k < pairs; k++) {
                uint32_t pair = gp[i * pairs + k];
                const uint16_t *b = hp + (k * dim + d) * 2;
                acc += bf16_value((uint16_t)(pair & 0xffff)) * bf16_value(b[0]);
                acc += bf16_value((uint16_t)(pair >> 16)) * bf16_value(b[1]);
            }
            if (low) ((uint16_t *)gw)[o] = bf16_round(acc);
            else ((float *)gw)[o] = acc;
        }
}

#endif

/* gw (vocab, dim) float32, or bf16 when low != 0, row stride ldw; g (rows, vocab) bf16, row stride
 * ldg; h (rows, dim) bf16, row stride ldh; unit column strides. Returns 0, or -1 (nothing
 * written) without AVX512-BF16 or without memory for the packed copies. */
int64_t ll_gw_bf16(void *gw, int64_t ldw, const uint16_t *g, int64_t ldg, const uint16_t *h, int64_t ldh,
                   int64_t rows, int64_t vocab, int64_t dim, int threads, int low) {
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
            int64_t tile = v0 * ldw, grouped = nv - nv % NV;
            for (int64_t d0 = 0; d0 < full; d0 += 16 * ND) {
                for (int64_t i = 0; i < grouped; i += NV) {
                    int64_t next = i + NV < grouped ? tile + (i + NV) * ldw + d0
                                 : d0 + 16 * ND < full ? tile + d0 + 16 * ND : -1;
                    micro(gw, tile + i * ldw + d0, ldw, gp + i * pairs, pairs, hp, dim, d0, next, low);
                }
                if (grouped < nv) scalar(gw, tile, ldw, gp, pairs, hp, dim, grouped, nv, d0, d0 + 16 * ND, low);
            }
            for (int64_t d0 = full; d0 < dim; d0 += 16) {
                int n = dim - d0 < 16 ? (int)(dim - d0) : 16;
                for (int64_t i = 0; i < grouped; i += NV)
                    micro_masked(gw, tile + i * ldw + d0, ldw, gp + i * pairs, pairs, hp, dim, d0, n, low);
                if (grouped < nv) scalar(gw, tile, ldw, gp, pairs, hp, dim, grouped, nv, d0, d0 + n, low);
            }
        }
    }
    free(gp_all);
    free(hp);
    return 0;
#else
    (void)gw; (void)ldw; (void)g; (void)ldg; (void)h; (void)ldh; (void)rows; (void)vocab; (void)dim; (void)threads;
    (void)low;
    return -1;
#endif
}

/* ---- grad_hidden: out (rows, dim) bf16 = G (rows, vocab) @ W (vocab, dim), summed in float32. ----
 *
 * Few rows against the whole vocabulary as inner dimension: the shape at which oneDNN's bf16
 * matmul loses most against its full-size rate (it repacks W on every call). Here each thread
 * owns 64-column strips of the output, walks the vocabulary in tiles of KT rows, packs each
 * (KT, 64) piece of W into pairs of vocabulary rows, wp[k][j] = (W[2k][j], W[2k+1][j]) (zero
 * beyond dim), and runs every group of MR output rows against it; a group broadcasts its rows'
 * (G[m][2k], G[m][2k+1]) straight from G. The float32 sums live in a (rows, 64) buffer per strip
 * and are rounded to bf16 once, at the end. An odd last vocabulary row is added by a scalar loop.
 */
#if LL_HAVE_BF16

#define MR 6    /* output rows per micro-tile */
#define KT 256  /* vocabulary rows per packed tile */

static inline __attribute__((always_inline)) void gh_micro(float *acc_out, const uint16_t *g, int64_t ldg,
                                                           const uint16_t *wp, int64_t pairs, const int nm,
                                                           const uint16_t *next, int64_t ldw) {
    __m512 acc[MR][4];
    for (int i = 0; i < nm; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_loadu_ps(acc_out + i * 64 + 16 * j);
    for (int64_t k = 0; k < pairs; k++) {
        const uint16_t *b = wp + k * 128;
        if (next) {
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

/* All rows against one packed piece; the first group also prefetches the next piece's W rows
 * (``next``, up to 2 * pairs rows of 128 bytes), so packing it reads from cache. */
static void gh_rows(float *acc, const uint16_t *g, int64_t ldg, const uint16_t *wp, int64_t pairs, int64_t rows,
                    const uint16_t *next, int64_t ldw) {
    int64_t m = 0;
    for (; m + MR <= rows; m += MR, next = NULL) gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, MR, next, ldw);
    switch (rows - m) {
        case 5: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 5, next, ldw); break;
        case 4: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 4, next, ldw); break;
        case 3: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 3, next, ldw); break;
        case 2: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 2, next, ldw); break;
        case 1: gh_micro(acc + m * 64, g + m * ldg, ldg, wp, pairs, 1, next, ldw); break;
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
    if (!acc_all || !wp_all) {
        free(acc_all);
        free(wp_all);
        return -1;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        int t = THREAD_NUM(), n = omp_threads_in_team();
        int64_t s0 = strips * t / n, s1 = strips * (t + 1) / n;
        uint16_t *wp = wp_all + (size_t)t * KT * 64;
        memset(acc_all + s0 * rows * 64, 0, (size_t)(s1 - s0) * rows * 64 * sizeof(float));
        for (int64_t v0 = 0; v0 < even; v0 += KT) {
            int64_t pairs = (even - v0 < KT ? even - v0 : KT) / 2;
            for (int64_t s = s0; s < s1; s++) {
                int64_t d0 = 64 * s, nd = dim - d0 < 64 ? dim - d0 : 64;
                gh_pack(wp, w + v0 * ldw + d0, ldw, pairs, nd);
                /* The next piece: this tile's next strip, or the next tile's first strip. */
                const uint16_t *next = s + 1 < s1 ? w + v0 * ldw + d0 + 64
                                     : v0 + KT < even ? w + (v0 + KT) * ldw + 64 * s0 : NULL;
                gh_rows(acc_all + s * rows * 64, g + v0, ldg, wp, pairs, rows, next, ldw);
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
    free(wp_all);
    free(acc_all);
    return 0;
#else
    (void)out; (void)ldo; (void)g; (void)ldg; (void)w; (void)ldw; (void)rows; (void)vocab; (void)dim; (void)threads;
    return -1;
#endif
}

/* ---- logits: out (rows, vocab) bf16 = H (rows, dim) @ W^T (+ bias), summed in float32. ----
 *
 * The weight is read once, in place: a micro-tile broadcasts the (W[v][2k], W[v][2k+1]) pairs of
 * LV vocabulary rows straight from W against 64 rows of H packed once per call as
 * hp[b][k][lane] = (H[64b + lane][2k], H[64b + lane][2k+1]) (zero past the rows and the columns),
 * so nothing of W is repacked, unlike oneDNN's bf16 matmul on every call. The LV x 64 float32
 * sums start at the bias, are rounded to bf16 in registers and written out through a small
 * transposed tile. Each thread takes a contiguous range of LV-row groups; the last, partial group
 * runs on a zero-padded copy of its rows.
 */
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
 * stride ldw; bias (vocab) float32 or NULL; unit column strides. Returns 0, or -1 (nothing
 * written) without AVX512-BF16 or without memory for the packed copy. */
int64_t ll_logits_bf16(uint16_t *out, int64_t ldo, const uint16_t *h, int64_t ldh, const uint16_t *w, int64_t ldw,
                       const float *bias, int64_t rows, int64_t vocab, int64_t dim, int threads) {
#if LL_HAVE_BF16
    if (rows <= 0 || vocab <= 0) return 0;
    int64_t pairs = (dim + 1) / 2, blocks = (rows + 63) / 64, groups = (vocab + LV - 1) / LV;
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
            for (int64_t m = 0; m < blocks * 64; m++) {
                uint32_t v = 0;
                if (m < rows) {
                    const uint16_t *r = h + m * ldh + 2 * k;
                    v = (uint32_t)r[0] | (2 * k + 1 < dim ? (uint32_t)r[1] << 16 : 0u);
                }
                hp[((m / 64) * pairs + k) * 64 + m % 64] = v;
            }
        int t = THREAD_NUM(), n = omp_threads_in_team();
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
                int64_t m0 = 64 * blk, nm = rows - m0 < 64 ? rows - m0 : 64;
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
