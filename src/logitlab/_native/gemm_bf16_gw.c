/* grad_weight (V, D) += G^T @ H for bfloat16 G (c, V) and H (c, D), into float32 or bf16; or
 * out = src + G^T @ H from a float32/bf16/split-float32 src or zeros into such an out (see gw_io).
 *
 * This is grad_weight's sum over linear_cross_entropy's bfloat16 chunks: the products of two
 * bfloat16 numbers are exact in float32, so into a float32 grad_weight this equals a matmul of the
 * widened inputs up to the order of the float32 additions, at the speed of bfloat16 dot products
 * (AVX512-BF16 VDPBF16PS: two products and their sum per float32 lane). The instruction treats
 * denormal inputs as zero and flushes denormal results, so values below 2^-126 (about 1.2e-38) in
 * magnitude are lost where the float32 matmul would keep them. Without that instruction set,
 * ll_available() returns 0 and the caller keeps torch's matmul.
 *
 * Layout. H is packed once per call into pairs of rows, (H[2k][d], H[2k+1][d]), strip by strip
 * (see hp_index), so one 64-byte load holds the pairs of 16 columns and a micro-tile's sum over c
 * reads one run of memory. Each thread takes tiles of VT vocabulary rows and packs their G pairs,
 * gp[k][i] = (G[2k][v0+i], G[2k+1][v0+i]) as one 32-bit word to broadcast. The micro-kernel keeps
 * an NV x (16 ND) block of grad_weight in NV*ND = 24 registers for the whole sum over c, walks a
 * tile's rows NV at a time and each group's columns left to right (grad_weight streams through in
 * row order), and prefetches the next block (without that, loading grad_weight from memory stalls
 * it; the strip layout, the row order and the vector G packing each saved time as well, measured
 * by benchmarks/chunk_sweep.py in bf16). A bf16 grad_weight
 * (accum_dtype=bfloat16) is widened on load and rounded to nearest even on store, so each call
 * rounds once. An odd last row pairs with zero. The column tail (D % 64) runs 16 masked
 * columns at a time; the last few vocabulary rows (fewer than NV) take a scalar loop.
 */
#include "gemm.h"

int ll_available(void) { return LL_HAVE_BF16; }

#if LL_HAVE_BF16

#define NV 6   /* grad_weight rows per micro-tile */
#define ND 4   /* 16-column vectors per micro-tile */
#define VT 48  /* vocabulary rows per thread tile (a multiple of 16: G is packed 16 at a time) */

/* Where hp holds the pair (H[2k][d], H[2k+1][d]): column strips of 64 (below ``full``, the
 * columns the full micro-tiles cover), then strips of 16 for the tail, each strip's pairs
 * contiguous, so a micro-tile's 32 steps read one run of memory (with rows of pairs D apart,
 * every step of a strip fell in the same few L1 sets and came from L2). */
static inline int64_t hp_index(int64_t k, int64_t d, int64_t pairs, int64_t full) {
    int64_t width = d < full ? 16 * ND : 16, s0 = d < full ? d - d % width : d - (d - full) % width;
    return (s0 * pairs + k * width + (d - s0)) * 2;
}

/* Where the sum starts and where it goes: out = src + G^T H, each a ``kind``. The source is
 * float32, bf16 (accum_dtype=bfloat16: widened on load), a float32 split in halves (src holds
 * each value's upper 16 bits, src_lo its lower 16), or ZERO (the first chunk: no zero fill of
 * grad_weight beforehand, and no read of it). The destination is float32, bf16 (rounded to
 * nearest even on store, once per call) or split. A split float32 sum of a bf16 head keeps its
 * upper halves in the bf16 gradient's own buffer, so the sum costs 2 bytes per element beyond
 * the gradient, not 4, and the last chunk rounds the total into that buffer in place (src SPLIT,
 * dst the same buffer as BF16). src == dst sums in place. Offsets are in elements, the same for
 * every buffer. */
enum { ZERO = 0, F32 = 1, BF16 = 2, SPLIT = 3 };
typedef struct {
    const void *src;
    const uint16_t *src_lo;
    void *dst;
    uint16_t *dst_lo;
    int src_kind, dst_kind;
} gw_io;

/* The helpers take the kinds as arguments so that the micro-kernel, instantiated per pair of
 * kinds (micro), has no branch left in its loops (one branch per vector cost 8% at 64 rows). */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __m512 halves_join(__m256i hi, __m256i lo) {
    __m512i upper = _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16);
    return _mm512_castsi512_ps(_mm512_or_si512(upper, _mm512_cvtepu16_epi32(lo)));
}

ALWAYS_INLINE __m256i halves_load(const uint16_t *p, __mmask16 mask) {
    return mask == 0xffff ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskz_loadu_epi16(mask, p);
}

ALWAYS_INLINE void halves_store(uint16_t *p, __mmask16 mask, __m256i v) {
    if (mask == 0xffff) _mm256_storeu_si256((__m256i *)p, v);
    else _mm256_mask_storeu_epi16(p, mask, v);
}

/* ``mask`` selects columns (the column tail); the full micro-tiles pass 0xffff, a constant, and
 * get plain loads and stores. */
ALWAYS_INLINE __m512 gw_load(int kind, const gw_io *io, int64_t at, __mmask16 mask) {
    const uint16_t *hi = (const uint16_t *)io->src + at;
    switch (kind) {
    case F32:
        return mask == 0xffff ? _mm512_loadu_ps((const float *)io->src + at)
                              : _mm512_maskz_loadu_ps(mask, (const float *)io->src + at);
    case BF16: return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves_load(hi, mask)), 16));
    case SPLIT: return halves_join(halves_load(hi, mask), halves_load(io->src_lo + at, mask));
    default: return _mm512_setzero_ps();
    }
}

ALWAYS_INLINE void gw_store(int kind, const gw_io *io, int64_t at, __mmask16 mask, __m512 v) {
    uint16_t *hi = (uint16_t *)io->dst + at;
    __m512i bits = _mm512_castps_si512(v);
    switch (kind) {
    case F32:
        if (mask == 0xffff) _mm512_storeu_ps((float *)io->dst + at, v);
        else _mm512_mask_storeu_ps((float *)io->dst + at, mask, v);
        break;
    case BF16: halves_store(hi, mask, (__m256i)_mm512_cvtneps_pbh(v)); break;
    default:  /* SPLIT */
        halves_store(hi, mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
        halves_store(io->dst_lo + at, mask, _mm512_cvtepi32_epi16(bits));
    }
}

/* The element at ``at`` of src as float32 (0 for ZERO), and its store to dst. */
static inline float gw_value(const gw_io *io, int64_t at) {
    if (io->src_kind == ZERO) return 0.0f;
    if (io->src_kind == F32) return ((const float *)io->src)[at];
    uint32_t u = (uint32_t)((const uint16_t *)io->src)[at] << 16 | (io->src_kind == SPLIT ? io->src_lo[at] : 0u);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline void gw_put(const gw_io *io, int64_t at, float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if (io->dst_kind == F32) {
        ((float *)io->dst)[at] = v;
    } else if (io->dst_kind == BF16) {
        ((uint16_t *)io->dst)[at] = bf16_round(v);
    } else {
        ((uint16_t *)io->dst)[at] = (uint16_t)(u >> 16);
        io->dst_lo[at] = (uint16_t)u;
    }
}

/* A line of the next micro-tile, fetched while this one runs: from a separate src for reading,
 * else dst's line (and a split dst's lower halves) for writing; the lower halves of a split src
 * rounded into its own upper halves (the last chunk) for reading. */
ALWAYS_INLINE void gw_prefetch(int sk, int dk, const gw_io *io, int64_t at) {
    if (sk != ZERO && io->src != io->dst) {
        __builtin_prefetch((const char *)io->src + at * (sk == F32 ? 4 : 2), 0, 3);
        if (sk == SPLIT) __builtin_prefetch(io->src_lo + at, 0, 3);
        return;
    }
    __builtin_prefetch((const char *)io->dst + at * (dk == F32 ? 4 : 2), 1, 3);
    if (dk == SPLIT) __builtin_prefetch(io->dst_lo + at, 1, 3);
    else if (sk == SPLIT) __builtin_prefetch(io->src_lo + at, 0, 3);
}

/* The NV x (16 ND) micro-tile of grad_weight at offset ``at``; ``next`` (or -1) is the next
 * micro-tile's offset, whose rows are fetched while this one runs. */
ALWAYS_INLINE void micro_kinds(int sk, int dk, const gw_io *shared, int64_t at, int64_t ldw, const uint32_t *gp,
                               int64_t pairs, const uint16_t *hp, int64_t full, int64_t d0, int64_t next) {
    const gw_io local = *shared, *io = &local;  /* in registers: the stores below may alias *shared */
    __m512 acc[NV][ND];
    for (int i = 0; i < NV; i++)
        for (int j = 0; j < ND; j++) acc[i][j] = gw_load(sk, io, at + i * ldw + 16 * j, 0xffff);
    const uint16_t *strip = hp + hp_index(0, d0, pairs, full);  /* step k at strip + k * 32 ND */
    for (int64_t k = 0; k < pairs; k++) {
        if (next >= 0 && k < NV * ND)
            gw_prefetch(sk, dk, io, next + (k / ND) * ldw + 16 * (k % ND));
        const uint16_t *b = strip + k * 32 * ND;
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 32);
        __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + 64), b3 = (__m512bh)_mm512_loadu_si512(b + 96);
        for (int i = 0; i < NV; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)gp[k * VT + i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
            acc[i][2] = _mm512_dpbf16_ps(acc[i][2], a, b2);
            acc[i][3] = _mm512_dpbf16_ps(acc[i][3], a, b3);
        }
    }
    for (int i = 0; i < NV; i++)
        for (int j = 0; j < ND; j++) gw_store(dk, io, at + i * ldw + 16 * j, 0xffff, acc[i][j]);
}

static void micro(const gw_io *io, int64_t at, int64_t ldw, const uint32_t *gp, int64_t pairs, const uint16_t *hp,
                  int64_t full, int64_t d0, int64_t next) {
#define MICRO(sk, dk) case (sk) * 4 + (dk): micro_kinds(sk, dk, io, at, ldw, gp, pairs, hp, full, d0, next); return;
#define MICRO_FROM(sk) MICRO(sk, F32) MICRO(sk, BF16) MICRO(sk, SPLIT)
    switch (io->src_kind * 4 + io->dst_kind) {
        MICRO_FROM(ZERO) MICRO_FROM(F32) MICRO_FROM(BF16) MICRO_FROM(SPLIT)
        default: return;
    }
#undef MICRO_FROM
#undef MICRO
}

/* Columns [d0, d0 + n) with n <= 16 under a mask, for the NV rows at ``at``: the column tail. */
static void micro_masked(const gw_io *io, int64_t at, int64_t ldw, const uint32_t *gp, int64_t pairs,
                         const uint16_t *hp, int64_t full, int64_t d0, int n) {
    __mmask16 mask = (__mmask16)((1u << n) - 1u);
    __m512 acc[NV];
    for (int i = 0; i < NV; i++) acc[i] = gw_load(io->src_kind, io, at + i * ldw, mask);
    const uint16_t *strip = hp + hp_index(0, d0, pairs, full);  /* a tail strip: 16 pairs per step */
    for (int64_t k = 0; k < pairs; k++) {
        __m512bh b = (__m512bh)_mm512_maskz_loadu_epi32(mask, strip + k * 32);
        for (int i = 0; i < NV; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi32((int)gp[k * VT + i]), b);
    }
    for (int i = 0; i < NV; i++) gw_store(io->dst_kind, io, at + i * ldw, mask, acc[i]);
}

/* The same sum for rows [i0, i1) of the tile at ``at`` and columns [d0, d1), one value at a time. */
static void scalar(const gw_io *io, int64_t at, int64_t ldw, const uint32_t *gp, int64_t pairs, const uint16_t *hp,
                   int64_t full, int64_t i0, int64_t i1, int64_t d0, int64_t d1) {
    for (int64_t i = i0; i < i1; i++)
        for (int64_t d = d0; d < d1; d++) {
            int64_t o = at + i * ldw + d;
            float acc = gw_value(io, o);
            for (int64_t k = 0; k < pairs; k++) {
                uint32_t pair = gp[k * VT + i];
                const uint16_t *b = hp + hp_index(k, d, pairs, full);
                acc += bf16_value((uint16_t)(pair & 0xffff)) * bf16_value(b[0]);
                acc += bf16_value((uint16_t)(pair >> 16)) * bf16_value(b[1]);
            }
            gw_put(io, o, acc);
        }
}

#endif


/* dst (vocab, dim) = src + g^T h. dst float32, bf16 when dst_low != 0, or split float32 with lower
 * halves at dst_lo, row stride ldw; src the same shape and row stride, float32, bf16 (src_low) or
 * split (src_lo), or NULL for zeros; src == dst sums in place (see gw_io).
 * g (rows, vocab) bf16, row stride ldg; h (rows, dim) bf16, row stride ldh; unit column strides.
 * Returns 0, or -1 (nothing written) without AVX512-BF16 or without memory for the packed copies. */
int64_t ll_gw_bf16(void *dst, int64_t ldw, const uint16_t *g, int64_t ldg, const uint16_t *h, int64_t ldh,
                   int64_t rows, int64_t vocab, int64_t dim, int threads, const void *src, const uint16_t *src_lo,
                   int src_low, uint16_t *dst_lo, int dst_low) {
#if LL_HAVE_BF16
    const gw_io io_value = {src, src_lo, dst, dst_lo, !src ? ZERO : src_lo ? SPLIT : src_low ? BF16 : F32,
                            dst_lo ? SPLIT : dst_low ? BF16 : F32}, *io = &io_value;
    if (vocab <= 0 || dim <= 0) return 0;
    if (rows <= 0) return -1;  /* dst = src: the caller's copy, not worth a loop here */
    int64_t pairs = (rows + 1) / 2;
    int64_t full = dim - dim % (16 * ND), padded = full + (dim - full + 15) / 16 * 16;
    size_t hp_bytes = ((size_t)pairs * (size_t)padded * 4 + 63) / 64 * 64;
    uint16_t *hp = aligned_alloc(64, hp_bytes);
    if (!hp) return -1;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < pairs; k++) {
        const uint16_t *even = h + 2 * k * ldh, *odd = 2 * k + 1 < rows ? even + ldh : NULL;
        for (int64_t d = 0; d < padded; d++) {
            uint16_t *out = hp + hp_index(k, d, pairs, full);
            out[0] = d < dim ? even[d] : 0;
            out[1] = d < dim && odd ? odd[d] : 0;
        }
    }
    int64_t tiles = (vocab + VT - 1) / VT;
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
                for (int64_t i = 0; i < nv; i += 16) {
                    __mmask16 m = nv - i >= 16 ? 0xffff : (__mmask16)((1u << (nv - i)) - 1u);
                    __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, even + i));
                    __m512i hi = odd ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, odd + i))
                                     : _mm512_setzero_si512();
                    _mm512_storeu_si512(gp + k * VT + i, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
                }
            }
            int64_t tile = v0 * ldw, grouped = nv - nv % NV;
            for (int64_t i = 0; i < grouped; i += NV)
                for (int64_t d0 = 0; d0 < full; d0 += 16 * ND) {
                    int64_t next = d0 + 16 * ND < full ? tile + i * ldw + d0 + 16 * ND
                                 : i + NV < grouped ? tile + (i + NV) * ldw : -1;
                    micro(io, tile + i * ldw + d0, ldw, gp + i, pairs, hp, full, d0, next);
                }
            if (grouped < nv) scalar(io, tile, ldw, gp, pairs, hp, full, grouped, nv, 0, full);
            for (int64_t d0 = full; d0 < dim; d0 += 16) {
                int n = dim - d0 < 16 ? (int)(dim - d0) : 16;
                for (int64_t i = 0; i < grouped; i += NV)
                    micro_masked(io, tile + i * ldw + d0, ldw, gp + i, pairs, hp, full, d0, n);
                if (grouped < nv) scalar(io, tile, ldw, gp, pairs, hp, full, grouped, nv, d0, d0 + n);
            }
        }
    }
    free(gp_all);
    free(hp);
    return 0;
#else
    (void)dst; (void)ldw; (void)g; (void)ldg; (void)h; (void)ldh; (void)rows; (void)vocab; (void)dim; (void)threads;
    (void)src; (void)src_lo; (void)src_low; (void)dst_lo; (void)dst_low;
    return -1;
#endif
}
