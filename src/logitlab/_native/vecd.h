/* Double-precision vectors for the row kernels that compute in double (sparse.c, qexp.c).
 *
 * A double vector holds DL = VL / 2 lanes, half a float vector of vec.h, so a block of VL
 * elements loaded as floats is two double halves (half_lo, half_hi) and goes back as one
 * (join_halves). Kernels that include this header define LL_NATIVE_WIDTH before vec.h: DL doubles
 * are then one whole register on every x86 build (8 in a zmm on AVX-512, 4 in a ymm on AVX2),
 * where the plain comparison operators compile to one compare each. (Eight doubles on an AVX2
 * build would be two registers, whose compares the compiler lowers lane by lane.)
 *
 * Sums that reach the output (vdsum_t below) are added in an order that does not depend on DL,
 * so the AVX2 and AVX-512 builds round the same additions and give the same bits.
 */
#ifndef LOGITLAB_VECD_H
#define LOGITLAB_VECD_H

#ifndef LL_NATIVE_WIDTH
#error "vecd.h: define LL_NATIVE_WIDTH before including vec.h (whole-register double vectors)"
#endif
#include "vec.h"

#define DL (VL / 2)
typedef double vd __attribute__((vector_size(DL * 8)));
typedef int64_t vl __attribute__((vector_size(DL * 8)));
typedef uint64_t vul __attribute__((vector_size(DL * 8)));
typedef float vfh __attribute__((vector_size(DL * 4)));

/* Every lane a (exactly: no 0 + a, which would turn −0 into +0). */
static inline vd vdsplat(double a) {
    vd v;
    for (int l = 0; l < DL; l++) v[l] = a;
    return v;
}
static inline vd vdselect(vl mask, vd a, vd b) { return (vd)(((vl)a & mask) | ((vl)b & ~mask)); }

/* The two halves of a float vector as doubles, and back. */
#if VL == 16
#define LO_LANES 0, 1, 2, 3, 4, 5, 6, 7
#define HI_LANES 8, 9, 10, 11, 12, 13, 14, 15
#elif VL == 8
#define LO_LANES 0, 1, 2, 3
#define HI_LANES 4, 5, 6, 7
#else
#error "vecd.h: VL must be 8 or 16"
#endif
static inline vd half_lo(vf v) { return __builtin_convertvector(__builtin_shufflevector(v, v, LO_LANES), vd); }
static inline vd half_hi(vf v) { return __builtin_convertvector(__builtin_shufflevector(v, v, HI_LANES), vd); }
static inline vf join_halves(vd lo, vd hi) {
    const vfh a = __builtin_convertvector(lo, vfh), b = __builtin_convertvector(hi, vfh);
    return __builtin_shufflevector(a, b, LO_LANES, HI_LANES);
}

/* Integer <-> double lanes through 1.5 · 2^52, as AVX2 has no instruction for 64-bit integer
 * lanes: adding it to a double below 2^51 in magnitude rounds that double to an integer n, and
 * the sum's low mantissa bits are then n. */
#define ROUND_MAGIC 6755399441055744.0
/* k as doubles (exact for |k| < 2^51). */
static inline vd vd_of_vl(vl k) {
    const vd magic = vdsplat(ROUND_MAGIC);
    return (vd)(k + (vl)magic) - magic;
}
/* The integers n of kn = x + ROUND_MAGIC (x rounded by that addition; kn − ROUND_MAGIC is n as a
 * double). */
static inline vl vl_of_rounded(vd kn) { return (vl)kn - (vl)vdsplat(ROUND_MAGIC); }

/* A sum of double lanes in one order on every build: SUM_LANES running sums, element i of a row
 * adding into sum i mod SUM_LANES in row order, held as NACC vectors of DL lanes (one on AVX-512
 * and portable builds, two on AVX2), and added up from sum 0 to sum 7 at the end. A loop adds
 * the vector at element offset i into part[(i / DL) % NACC]. */
#define SUM_LANES 8
#define NACC (SUM_LANES / DL)
typedef struct {
    vd part[NACC];
} vdsum_t;

static inline vdsum_t vdsum_zero(void) {
    vdsum_t s;
    for (int h = 0; h < NACC; h++) s.part[h] = vdsplat(0.0);
    return s;
}
static inline double vdsum_total(vdsum_t s) {
    double t = 0.0;
    for (int h = 0; h < NACC; h++)
        for (int l = 0; l < DL; l++) t += s.part[h][l];
    return t;
}

#endif
