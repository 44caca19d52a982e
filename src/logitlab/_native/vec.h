/* Portable SIMD helpers for logitlab's native kernels (GCC/Clang vector extensions).
 *
 * A vector holds VL = 16 floats (64 bytes), or 8 (32 bytes) in a kernel that defines
 * LL_NATIVE_WIDTH and is built for AVX2 without AVX-512 (the row kernels xent, sparse and qexp:
 * their loops then run in whole ymm registers; with 16 they ran at a third of the speed,
 * spilling halves; vecd.h has the double vectors of half that width). On a CPU with AVX-512 that is one register; with
 * -march=native on an older CPU the compiler splits it into narrower registers; on any other
 * target it is lowered to scalar code. The results are the same everywhere: every operation is
 * an ordinary IEEE float32 operation (no fast-math), and exp below is our own polynomial, so
 * it does not depend on the platform's libm.
 *
 * Storage types: float32 ("f32"), bfloat16 ("bf16", the top 16 bits of a float32) and IEEE
 * half ("f16"). Computation is always float32; a half-precision store rounds to nearest even.
 */
#ifndef LOGITLAB_VEC_H
#define LOGITLAB_VEC_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(LL_NATIVE_WIDTH) && defined(__AVX2__) && !defined(__AVX512F__)
#define VL 8
#else
#define VL 16
#endif

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef uint32_t vu __attribute__((vector_size(VL * 4)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));
typedef _Float16 vhf __attribute__((vector_size(VL * 2)));

typedef uint16_t bf16_t;
typedef _Float16 f16_t;
typedef float f32_t;

static inline vf vsplat(float a) { return (vf){0} + a; }

static inline vf vselect(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* Comparisons (all-ones lanes where true). With AVX2 but not AVX-512 the compiler has no mask
 * register for a 16-float compare and lowers `a > b` on the whole vector lane by lane (scalar
 * compares and inserts): made here as two 8-float compares on the halves instead, which it
 * emits as one vcmpps each. Elsewhere the plain vector operator. */
#if VL == 16 && defined(__AVX2__) && !defined(__AVX512F__)
typedef float vf_half __attribute__((vector_size(32)));
typedef int32_t vi_half __attribute__((vector_size(32)));
#define LL_CMP(name, op)                                                                           \
    static inline vi name(vf a, vf b) {                                                            \
        vf_half alo = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7);                       \
        vf_half ahi = __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);                 \
        vf_half blo = __builtin_shufflevector(b, b, 0, 1, 2, 3, 4, 5, 6, 7);                       \
        vf_half bhi = __builtin_shufflevector(b, b, 8, 9, 10, 11, 12, 13, 14, 15);                 \
        vi_half lo = alo op blo, hi = ahi op bhi;                                                  \
        return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); \
    }
#else
#define LL_CMP(name, op) \
    static inline vi name(vf a, vf b) { return a op b; }
#endif
LL_CMP(vgt, >)
LL_CMP(vge, >=)
LL_CMP(vne, !=)

/* a > b ? a : b, so b when either is NaN: the semantics of x86's maxps, which the compiler does
 * not find in the select above (it emits a compare and two xors). */
#if VL == 16 && defined(__AVX512F__)
static inline vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
#elif VL == 8 && defined(__AVX__)
static inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
#else
static inline vf vmax(vf a, vf b) { return vselect(vgt(a, b), a, b); }
#endif

/* max(a, 0) of integers: one vpmaxsd where there is one (the compiler emits a compare and an and). */
#if VL == 16 && defined(__AVX512F__)
static inline vi vmax0(vi a) { return (vi)_mm512_max_epi32((__m512i)a, _mm512_setzero_si512()); }
#elif VL == 8 && defined(__AVX2__)
static inline vi vmax0(vi a) { return (vi)_mm256_max_epi32((__m256i)a, _mm256_setzero_si256()); }
#else
static inline vi vmax0(vi a) { return a & (a > 0); }
#endif

static inline float hsum(vf a) {
    /* Pairwise: the same rounding on every target. */
    float s[VL];
    memcpy(s, &a, sizeof s);
    for (int w = VL / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) s[i] += s[i + w];
    return s[0];
}

static inline double hsum_d(vf a) {
    float s[VL];
    memcpy(s, &a, sizeof s);
    double t = 0.0;
    for (int i = 0; i < VL; i++) t += s[i];
    return t;
}

static inline float hmax(vf a) {
    float s[VL];
    memcpy(s, &a, sizeof s);
    float m = s[0];
    for (int i = 1; i < VL; i++) m = s[i] > m ? s[i] : m;
    return m;
}

static inline int hany(vi a) {
    int32_t s[VL];
    memcpy(s, &a, sizeof s);
    int32_t r = 0;
    for (int i = 0; i < VL; i++) r |= s[i];
    return r != 0;
}

/* exp(t) for t <= 0 (the only range softmax needs), float32 accuracy (against double exp for t
 * in [-87, 0]: under 1 ulp with fused multiply-adds, 1.2 without; tests/native/test_vec_exp.py):
 * t = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite split of ln2), exp(r) by a degree-6 minimax
 * polynomial with p(0) = 1 (relative error 5e-9 with its float32 coefficients: that of the
 * degree-7 Taylor polynomial it replaced, with one multiply-add fewer), times 2^n built in the
 * exponent bits. t is first raised to -104 (so -inf too), whose 2^n is 0: results below about
 * 2^-127 are exactly 0 without a compare. NaN stays NaN (vmax keeps its second argument's NaN). */
static inline vf vexp_neg(vf t) {
    t = vmax(vsplat(-104.0f), t);
    const vf magic = vsplat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf k = t * vsplat(1.44269504088896341f) + magic;
    vf n = k - magic;
    vi ni = (vi)k - (vi)magic; /* the integer n, from the mantissa bits of k */
    vf r = t - n * vsplat(0.693359375f);
    r = r - n * vsplat(-2.12194440e-4f);
    vf p = vsplat(0.0013885879f);
    p = p * r + vsplat(0.008372998f);
    p = p * r + vsplat(0.04166749f);
    p = p * r + vsplat(0.16666476f);
    p = p * r + vsplat(0.49999994f);
    p = p * r + vsplat(1.0f);
    p = p * r + vsplat(1.0f);
    vi e = vmax0(ni + 127); /* the biased exponent of 2^n; 0 (so the factor 0.0f) when n < -126 */
    return p * (vf)(e << 23);
}

static inline float sexp_neg(float t) {
    vf v = vsplat(t);
    vf e = vexp_neg(v);
    return e[0];
}

/* Loads and stores of VL elements (full) or n < VL elements (tail, padded with `fill`). */
static inline vf load_f32(const f32_t *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf load_bf16(const bf16_t *p) {
    vh h; memcpy(&h, p, sizeof h);
#if VL == 16 && defined(__AVX512F__) /* one vpmovzxwd: GCC splits the generic widening into halves */
    return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16);
#elif VL == 8 && defined(__AVX2__)
    return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32((__m128i)h), 16);
#else
    return (vf)(__builtin_convertvector(h, vu) << 16);
#endif
}
static inline vf load_f16(const f16_t *p) {
    vhf h; memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, vf);
}
static inline void store_f32(f32_t *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vh bf16_round(vf v) {
    vu b = (vu)v;
    vu rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
    vi nan = vne(v, v); /* a NaN stays a (quiet) NaN instead of rounding into the infinities */
    rounded = (vu)(((vi)rounded & ~nan) | (nan & 0x7FC0));
    return __builtin_convertvector(rounded, vh);
}
/* The rounding of a vector known to hold no NaN (so without bf16_round's NaN lanes), narrowed
 * with one pack where AVX2 has no vpmovdw: each lane is at most 0xFF80 (−inf) after the shift,
 * so an unsigned saturating pack keeps it. */
static inline vh bf16_round_finite(vf v) {
    vu b = (vu)v;
    vu rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
#if VL == 8 && defined(__AVX2__)
    const __m128i lo = _mm256_castsi256_si128((__m256i)rounded), hi = _mm256_extracti128_si256((__m256i)rounded, 1);
    return (vh)_mm_packus_epi32(lo, hi);
#else
    return __builtin_convertvector(rounded, vh);
#endif
}
static inline void store_bf16(bf16_t *p, vf v) { vh h = bf16_round(v); memcpy(p, &h, sizeof h); }
static inline void store_f16(f16_t *p, vf v) { vhf h = __builtin_convertvector(v, vhf); memcpy(p, &h, sizeof h); }

/* Non-temporal stores of VL elements to an address aligned to their size (LL_STREAM_ALIGN(element type)
 * bytes): they write the line without reading it first, which an ordinary store to memory that
 * is not in the cache does (a third stream of traffic beside the read of the input and the
 * write of the output). For outputs far larger than the cache, written once; stream_fence()
 * orders them before the kernel returns. Elsewhere an ordinary store. */
#define LL_STREAM_ALIGN(type) ((uintptr_t)VL * sizeof(type))
#if VL == 16 && defined(__AVX512F__)
static inline void stream_f32(f32_t *p, vf v) { _mm512_stream_ps(p, (__m512)v); }
static inline void stream_bf16(bf16_t *p, vf v) { _mm256_stream_si256((__m256i *)p, (__m256i)bf16_round(v)); }
static inline void stream_f16(f16_t *p, vf v) {
    _mm256_stream_si256((__m256i *)p, (__m256i)__builtin_convertvector(v, vhf));
}
static inline void stream_fence(void) { _mm_sfence(); }
#elif VL == 8 && defined(__AVX2__)
static inline void stream_f32(f32_t *p, vf v) { _mm256_stream_ps(p, (__m256)v); }
static inline void stream_bf16(bf16_t *p, vf v) { _mm_stream_si128((__m128i *)p, (__m128i)bf16_round(v)); }
static inline void stream_f16(f16_t *p, vf v) { _mm_stream_si128((__m128i *)p, (__m128i)__builtin_convertvector(v, vhf)); }
static inline void stream_fence(void) { _mm_sfence(); }
#else
static inline void stream_f32(f32_t *p, vf v) { store_f32(p, v); }
static inline void stream_bf16(bf16_t *p, vf v) { store_bf16(p, v); }
static inline void stream_f16(f16_t *p, vf v) { store_f16(p, v); }
static inline void stream_fence(void) {}
#endif

/* Stores of vectors known to hold no NaN ("finite" for short: infinities are kept), for the
 * half-precision gradient of a row without NaN: the same values as store_ and stream_. */
static inline void storef_f32(f32_t *p, vf v) { store_f32(p, v); }
static inline void storef_f16(f16_t *p, vf v) { store_f16(p, v); }
static inline void storef_bf16(bf16_t *p, vf v) { vh h = bf16_round_finite(v); memcpy(p, &h, sizeof h); }
static inline void streamf_f32(f32_t *p, vf v) { stream_f32(p, v); }
static inline void streamf_f16(f16_t *p, vf v) { stream_f16(p, v); }
#if VL == 16 && defined(__AVX512F__)
static inline void streamf_bf16(bf16_t *p, vf v) { _mm256_stream_si256((__m256i *)p, (__m256i)bf16_round_finite(v)); }
#elif VL == 8 && defined(__AVX2__)
static inline void streamf_bf16(bf16_t *p, vf v) { _mm_stream_si128((__m128i *)p, (__m128i)bf16_round_finite(v)); }
#else
static inline void streamf_bf16(bf16_t *p, vf v) { storef_bf16(p, v); }
#endif

#define DEFINE_TAIL(T)                                                               \
    static inline vf loadn_##T(const T##_t *p, int64_t n, float fill) {             \
        T##_t buf[VL];                                                               \
        memcpy(buf, p, (size_t)n * sizeof(T##_t));                                   \
        vf v = load_##T(buf);                                                        \
        for (int64_t i = n; i < VL; i++) v[i] = fill;                                \
        return v;                                                                    \
    }                                                                                \
    static inline void storen_##T(T##_t *p, vf v, int64_t n) {                      \
        T##_t buf[VL];                                                               \
        store_##T(buf, v);                                                           \
        memcpy(p, buf, (size_t)n * sizeof(T##_t));                                   \
    }
DEFINE_TAIL(f32)
DEFINE_TAIL(bf16)
DEFINE_TAIL(f16)

/* The first pass of every row kernel: per-lane maxima of n elements (the row maximum is their
 * hmax; -inf lanes where a row is shorter than VL) and whether any element is NaN (NaN never
 * wins the max, so it must be reported separately). */
#define DEFINE_LANEMAX(T)                                                            \
    static inline vf lanemax_##T(const T##_t *p, int64_t n, int *has_nan) {         \
        const int64_t full = n - n % VL;                                             \
        vf vm = vsplat(-INFINITY);                                                   \
        vi nan = (vi){0};                                                            \
        for (int64_t j = 0; j < full; j += VL) {                                     \
            vf v = load_##T(p + j);                                                  \
            nan |= vne(v, v);                                                        \
            vm = vmax(vm, v);                                                        \
        }                                                                            \
        if (n > full) {                                                              \
            vf v = loadn_##T(p + full, n - full, -INFINITY);                         \
            nan |= vne(v, v);                                                        \
            vm = vmax(vm, v);                                                        \
        }                                                                            \
        *has_nan = hany(nan);                                                        \
        return vm;                                                                   \
    }
DEFINE_LANEMAX(f32)
DEFINE_LANEMAX(bf16)
DEFINE_LANEMAX(f16)

/* Element access for scalar fix-ups. */
static inline float get_f32(const f32_t *p, int64_t i) { return p[i]; }
static inline float get_bf16(const bf16_t *p, int64_t i) { uint32_t u = (uint32_t)p[i] << 16; float f; memcpy(&f, &u, 4); return f; }
static inline float get_f16(const f16_t *p, int64_t i) { return (float)p[i]; }
static inline void set_f32(f32_t *p, int64_t i, float v) { p[i] = v; }
static inline void set_bf16(bf16_t *p, int64_t i, float v) { vh h = bf16_round(vsplat(v)); p[i] = h[0]; }
static inline void set_f16(f16_t *p, int64_t i, float v) { p[i] = (f16_t)v; }

#endif
