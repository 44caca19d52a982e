/* What the matmul kernels of linear_cross_entropy's chunks share (gemm_*.c): OpenMP thread
 * numbering that falls back to one thread, which SIMD the compiler may use (the files are built
 * with -march=native), and bf16 <-> float32 conversions for scalar tails. */
#ifndef LL_GEMM_H
#define LL_GEMM_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_NUM() omp_get_thread_num()
#define TEAM_SIZE() omp_get_num_threads()
#else
#define THREAD_NUM() 0
#define TEAM_SIZE() 1
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#define LL_HAVE_AVX512 1
#else
#define LL_HAVE_AVX512 0
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define LL_HAVE_BF16 1
#else
#define LL_HAVE_BF16 0
#endif

static inline float bf16_value(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float32 -> bf16, rounded to nearest even (as VCVTNEPS2BF16); NaN stays NaN. */
static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* First row of block b of ``blocks`` (at most 64 rows each) in the logits kernels, which run
 * the chunk's rows as vectors of 16 against the weight: the ``lanes`` = ceil(rows / 16) vectors
 * shared out evenly, so 88 rows run as 48 + 40 (three vectors each) rather than 64 + 24. */
static inline int64_t block_start(int64_t b, int64_t lanes, int64_t blocks) { return 16 * (lanes * b / blocks); }

#endif
