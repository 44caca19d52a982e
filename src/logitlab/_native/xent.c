/* Cross-entropy rows in one fused pass: the loss and the gradient with respect to the logits.
 *
 * For each row with logits x (C classes), temperature T (inv_t = 1 / T), s = x / T,
 * m = max s, Z = Σ exp(s − m), lse = m + log Z and log p_c = s_c − lse, a target distribution
 * q (one-hot at y, or given probabilities), label smoothing ε, class weights w (Σ w = w_sum)
 * and z-loss coefficient λ:
 *
 *     ℓ = −(1 − ε) Σ_c q_c w_c log p_c − (ε / C) Σ_c w_c log p_c + λ ρ lse²,
 *     ρ = w_y (index targets) or 1 (probabilities),
 *     ∂ℓ/∂x_c = (A p_c − (1 − ε) q_c w_c − (ε / C) w_c) / T,
 *     A = (1 − ε) Σ_c q_c w_c + ε w_sum / C + 2 λ ρ lse.
 *
 * The row's gradient, and its loss when `scale_loss`, are multiplied by scale[r] (the
 * reduction's factor; rows with keep[r] == 0 get loss 0 and a zero gradient row). The row is read three times: for its
 * maximum, for Z and the sums, and for the gradient; the second and third reads hit the cache
 * (a row of 32768 float32 is 128 KiB), so memory traffic is one read of the logits and one
 * write of the gradient. The gradient may be the logits' own memory (g == x): every element is
 * read before it is written, and the target logit is read before the passes start.
 *
 * Returns -1, or 4 r + 1 for the first row r holding NaN or +inf, or 4 r + 2 for the first kept
 * row whose logits are all -inf (only when `validate`; excluded rows may be all -inf).
 */
#define LL_NATIVE_WIDTH /* 8-float vectors on AVX2 builds (vec.h) */
/* A gradient of at least this many bytes is written with non-temporal stores (xent_body.h): far
 * more than the last-level cache holds, so its lines would be read from memory only to be
 * overwritten, and evicted before anything reads them back. */
#define LL_XENT_STREAM_BYTES (32.0 * 1024 * 1024)
#include "vec.h"
#include "rows.h"

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define CAT4_(a, b, c, d) a##b##c##d
#define CAT4(a, b, c, d) CAT4_(a, b, c, d)

#define X f32
#define P f32
#include "xent_body.h"
#undef P
#define P bf16
#include "xent_body.h"
#undef P
#define P f16
#include "xent_body.h"
#undef P
#undef X

#define X bf16
#define P f32
#include "xent_body.h"
#undef P
#define P bf16
#include "xent_body.h"
#undef P
#define P f16
#include "xent_body.h"
#undef P
#undef X

#define X f16
#define P f32
#include "xent_body.h"
#undef P
#define P bf16
#include "xent_body.h"
#undef P
#define P f16
#include "xent_body.h"
#undef P
#undef X

/* Whether this build runs rows on OpenMP threads (1) or serially (0). */
int ll_xent_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
