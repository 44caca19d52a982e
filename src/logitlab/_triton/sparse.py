"""sparsemax and 1.5-entmax rows in Triton: the exact threshold without sorting, and the backward.

The same mathematics as the CPU kernel (``_native/sparse.c``). With x = (α−1)(z − max z)
(sparsemax α = 2: x = z − max z; 1.5-entmax: x = (z − max z)/2), q = 1/(α−1) and
f(τ) = Σ_i [x_i − τ]_+^q, the map is p_i = [x_i − τ]_+^q with τ the unique root of f(τ) = 1.
f is convex and decreasing, and since max x = 0 and p ≤ 1, τ ∈ [−1, −n^{1−α}].

One program per row; a row longer than the block is streamed in blocks of ``BLOCK`` columns
(each pass below is a loop over the blocks, so a vocabulary of any size takes a fixed amount of
registers). Pass 1 reads the row maximum (and whether the row holds NaN or +inf). Then each
solve pass reads the row once at the current τ_k and sums, over S = {x > τ_k}: |S|, Σ_S u,
Σ_S u² (u = x − τ_k), min_S x and the largest x outside S. The closed form on S (sparsemax
τ_S = τ_k + (Σu − 1)/|S|; 1.5-entmax the smaller root of Σ_S (u − δ)² = 1) is accepted when it
certifies itself: every entry of S is ≥ τ_S and every other entry ≤ τ_S. Then f(τ_S) = 1 as
evaluated, so τ_S is the threshold (the root is unique) and S the support: the answer of the
sort-based algorithm, to rounding. Otherwise the next point is the Newton step on f from τ_k
(from τ_0 = −1, a lower bound, it stays one: for sparsemax it is Michelot's projection step,
which certifies within |S_0| steps, usually a few), kept inside the bracket [lo, hi] that every
evaluation narrows; after ``newton_passes`` passes, or when a step leaves the bracket, the
midpoint instead (bisection: the support is certified once the bracket is narrower than the gap
between τ and the nearest entry outside the support). A row not certified within ``max_passes``
passes (only rows with entries within rounding of τ) keeps the closed form of its last pass and
reports n_iter = −passes and its |Σp − 1|. The last pass writes p; x − τ within ``TIE`` (8 ulps
of the compute dtype at 1, the scale of x) of 0 is
a tie (p = 0), so an entry that the exact τ equals does not come out as a rounding-sized
probability.

The solve runs in float32 for float32 / bfloat16 / float16 rows and in float64 for float64 rows
(the ``gradcheck`` target). A row holding NaN or +inf comes out NaN (τ NaN: the caller raises
when validating); an all ``-inf`` row is all zeros (τ = +inf). Nothing is read on the host.

Backward, one pass for the sums and one to write: with w_i = p_i^{2−α} on the support
(sparsemax 1, 1.5-entmax √p), c = Σ w g / Σ w, ∂L/∂z_i = w_i (g_i − c) (0 off the support).
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from logitlab._triton import compute_tl_dtype, jit
from logitlab._triton.xent import block_size

__all__ = ["sparse_forward", "sparse_backward", "MAX_PASSES", "NEWTON_PASSES", "KINDS"]

KINDS = ("sparsemax", "entmax15")
# Solve passes before a row keeps its last closed form uncertified; Newton passes before bisection.
MAX_PASSES = 64
NEWTON_PASSES = 32


def _sparse_forward_kernel(
    x_ptr, x_stride, p_ptr, p_stride, tau_ptr, support_ptr, iter_ptr, viol_ptr, n_cols, max_passes, newton_passes,
    ENTMAX: tl.constexpr, TIE: tl.constexpr, CD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    p_row = p_ptr + row * p_stride
    offs = tl.arange(0, BLOCK)
    neg_inf = float("-inf")
    pos_inf = float("inf")
    # x = s (z − m): s = α − 1.
    if ENTMAX:
        s = 0.5
    else:
        s = 1.0

    # Pass 1: the row maximum, and whether the row holds NaN or +inf.
    m = tl.full((), neg_inf, CD)
    bad = tl.zeros((), tl.int32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        z = tl.load(x_row + cols, mask=cols < n_cols, other=neg_inf).to(CD)
        bad += tl.sum(((z != z) | (z == pos_inf)).to(tl.int32), 0)
        m = tl.maximum(m, tl.max(z, 0))
    skip = (bad > 0) | (m == neg_inf)
    m_safe = tl.where(skip, 0.0, m)

    # The solve: τ in the x scale, bracket [lo, hi] with f(lo) ≥ 1 ≥ f(hi).
    n_f = tl.full((), 1.0, CD) * n_cols
    tau = tl.full((), -1.0, CD)
    lo = tl.full((), -1.0, CD)
    if ENTMAX:
        hi = -1.0 / tl.sqrt(n_f)
    else:
        hi = -1.0 / n_f
    tau_s = tl.full((), -1.0, CD)
    certified = skip.to(tl.int32)
    passes = tl.zeros((), tl.int32)
    while (certified == 0) & (passes < max_passes):
        cnt = tl.zeros((), tl.int32)
        su = tl.zeros((), CD)
        suu = tl.zeros((), CD)
        min_s = tl.full((), pos_inf, CD)
        max_e = tl.full((), neg_inf, CD)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            z = tl.load(x_row + cols, mask=cols < n_cols, other=neg_inf).to(CD)
            x = (z - m_safe) * s
            above = x > tau
            u = tl.where(above, x - tau, 0.0)
            cnt += tl.sum(above.to(tl.int32), 0)
            su += tl.sum(u, 0)
            suu += tl.sum(u * u, 0)
            min_s = tl.minimum(min_s, tl.min(tl.where(above, x, pos_inf), 0))
            max_e = tl.maximum(max_e, tl.max(tl.where(above, neg_inf, x), 0))
        cnt_f = tl.maximum(cnt, 1).to(CD)
        if ENTMAX:
            disc = su * su - cnt_f * (suu - 1.0)
            delta = (su - tl.sqrt(tl.maximum(disc, 0.0))) / cnt_f
            step = (suu - 1.0) / (2.0 * tl.maximum(su, 1e-30))
            f = suu
            solvable = disc >= 0.0
        else:
            delta = (su - 1.0) / cnt_f
            step = delta
            f = su
            solvable = cnt > 0
        tau_s = tau + delta
        ok = solvable & (tau_s <= min_s) & (tau_s >= max_e)
        lo = tl.where(f >= 1.0, tl.maximum(lo, tau), lo)
        hi = tl.where(f < 1.0, tl.minimum(hi, tau), hi)
        newton = tau + step
        in_bracket = (newton > lo) & (newton < hi) & (passes < newton_passes)
        tau = tl.where(in_bracket, newton, 0.5 * (lo + hi))
        certified = ok.to(tl.int32)
        passes += 1
    # Uncertified (passes exhausted): the last closed form, or the bracket's point if it had none.
    tau = tl.where(tau_s == tau_s, tau_s, tau)

    # Last pass: p written once (NaN rows NaN, all −inf rows 0), its support and mass.
    support = tl.zeros((), tl.int32)
    mass = tl.zeros((), CD)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        inside = cols < n_cols
        z = tl.load(x_row + cols, mask=inside, other=neg_inf).to(CD)
        u = (z - m_safe) * s - tau
        keep = u > TIE
        if ENTMAX:
            p = tl.where(keep, u * u, 0.0)
        else:
            p = tl.where(keep, u, 0.0)
        p = tl.where(bad > 0, float("nan"), p)
        support += tl.sum(keep.to(tl.int32), 0)
        mass += tl.sum(p, 0)
        tl.store(p_row + cols, p.to(p_ptr.dtype.element_ty), mask=inside)
    nan_row = bad > 0
    tau_out = tl.where(nan_row, float("nan"), tl.where(skip, pos_inf, s * m_safe + tau))
    tl.store(tau_ptr + row, tau_out.to(tau_ptr.dtype.element_ty))
    tl.store(support_ptr + row, tl.where(skip, 0, support).to(tl.int64))
    n_iter = tl.where(certified != 0, passes, -passes)
    tl.store(iter_ptr + row, n_iter.to(tl.int64))
    viol = tl.where(nan_row, float("nan"), tl.where(skip, 0.0, tl.abs(mass - 1.0)))
    tl.store(viol_ptr + row, viol.to(viol_ptr.dtype.element_ty))


_forward_kernel = jit(_sparse_forward_kernel)


def _support_weights(p_row, g_row, cols, inside, ENTMAX: tl.constexpr, CD: tl.constexpr):
    """At ``cols``: whether p > 0, w = p^{2−α} there (sparsemax 1, 1.5-entmax √p; 0 elsewhere), g."""
    p = tl.load(p_row + cols, mask=inside, other=0.0).to(CD)
    g = tl.load(g_row + cols, mask=inside, other=0.0).to(CD)
    on = p > 0.0
    if ENTMAX:
        w = tl.sqrt(tl.where(on, p, 0.0))
    else:
        w = tl.where(on, 1.0, 0.0).to(CD)
    return on, w, g


def _sparse_backward_kernel(g_ptr, g_stride, p_ptr, p_stride, o_ptr, o_stride, n_cols,
                            ENTMAX: tl.constexpr, CD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g_row = g_ptr + row * g_stride
    p_row = p_ptr + row * p_stride
    o_row = o_ptr + row * o_stride
    offs = tl.arange(0, BLOCK)
    sw = tl.zeros((), CD)
    swg = tl.zeros((), CD)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        inside = cols < n_cols
        on, w, g = _support_weights(p_row, g_row, cols, inside, ENTMAX, CD)
        sw += tl.sum(w, 0)
        swg += tl.sum(tl.where(on, w * g, 0.0), 0)  # g off the support never enters the sums
    c = tl.where(sw > 0.0, swg / tl.where(sw > 0.0, sw, 1.0), 0.0)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        inside = cols < n_cols
        on, w, g = _support_weights(p_row, g_row, cols, inside, ENTMAX, CD)
        out = tl.where(on, w * (g - c), 0.0)
        tl.store(o_row + cols, out.to(o_ptr.dtype.element_ty), mask=inside)


_backward_kernel = jit(_sparse_backward_kernel, helpers=(_support_weights,))


def _rowmajor(t: Tensor) -> Tensor:
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def _launch_options(n_cols: int) -> tuple[int, int]:
    blk = block_size(n_cols)
    return blk, 8 if blk >= 2048 else 4


def sparse_forward(rows: Tensor, kind: str, *, max_passes: int = MAX_PASSES, newton_passes: int = NEWTON_PASSES
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """probs (N, C) in the dtype of ``rows``, τ (N,) in the logits' scale, support (N,) int64,
    n_iter (N,) int64 (negative: not certified), |Σp − 1| (N,); τ and the violation in the
    compute dtype. No host synchronization. ``newton_passes=0`` bisects from the first pass (for
    tests of the safeguard)."""
    if kind not in KINDS:
        raise ValueError(f"logitlab._triton.sparse: kind must be one of {KINDS}, got {kind!r}")
    x = _rowmajor(rows)
    n_rows, n_cols = x.shape
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    probs = torch.empty_like(x, memory_format=torch.contiguous_format)
    tau = x.new_empty(n_rows, dtype=cd)
    support = x.new_empty(n_rows, dtype=torch.int64)
    n_iter = x.new_empty(n_rows, dtype=torch.int64)
    violation = x.new_empty(n_rows, dtype=cd)
    if n_rows == 0 or n_cols == 0:
        return probs, tau.fill_(float("inf")), support.zero_(), n_iter.zero_(), violation.zero_()
    blk, warps = _launch_options(n_cols)
    tie = 8 * torch.finfo(cd).eps
    _forward_kernel()[(n_rows,)](
        x, x.stride(0), probs, probs.stride(0), tau, support, n_iter, violation, n_cols, int(max_passes),
        int(newton_passes), ENTMAX=kind == "entmax15", TIE=tie, CD=compute_tl_dtype(x.dtype), BLOCK=blk,
        num_warps=warps,
    )
    return probs, tau, support, n_iter, violation


def sparse_backward(grad: Tensor, probs: Tensor, kind: str) -> Tensor:
    """∂L/∂z (N, C) in the dtype of ``probs`` from the incoming gradient and the forward's probs."""
    p = _rowmajor(probs)
    g = _rowmajor(grad)
    n_rows, n_cols = p.shape
    out = torch.empty_like(p, memory_format=torch.contiguous_format)
    if n_rows == 0 or n_cols == 0:
        return out.zero_()
    blk, warps = _launch_options(n_cols)
    _backward_kernel()[(n_rows,)](
        g, g.stride(0), p, p.stride(0), out, out.stride(0), n_cols, ENTMAX=kind == "entmax15",
        CD=compute_tl_dtype(p.dtype), BLOCK=blk, num_warps=warps,
    )
    return out
