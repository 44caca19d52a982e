"""The vocab-parallel cross-entropy's local work in Triton: the row statistics of this rank's
slice in one pass, and after the all-reduces, the gradient of the slice in one pass.

With z a row of this rank's slice [start, start + V_local) of a vocabulary of V classes, target
t, class weights w and smoothing ε, the statistics kernel reads the slice once and writes, per
row, the local maximum m and Σ_c e^{z_c − m} (the online log-sum-exp), the target logit z_t if
this slice owns t (else 0), and Σ_c w_c z_c (only with smoothing). The caller all-reduces the
maxima (M), then the rescaled sums Σ e^{z − m}·e^{m − M}, z_t and Σ w z (lse = M + log Σ) — the
two all-reduces the math needs — and the loss rows follow in (N,)-sized torch ops. The gradient
kernel reads the slice once more and writes

    ∂ℓ/∂z_c = a·e^{z_c − lse} − h·[c = t] − (ε / V)·w_c,

with a and h (the coefficient and the target's weight, 0 for ignored rows) given per row. Ignored
rows read nothing (their logits may be padding) and get a zero gradient.

The vocab-parallel KL divergence D(p ‖ q), p = softmax(u / T) (teacher), q = softmax(z / T)
(student), has the same structure. Its statistics kernel reads both slices once and writes, per
row, with s = z / T and t = u / T on this slice, the two local maxima m_s, m_t, the two sums
Σ e^{s − m_s}, Σ e^{t − m_t}, the gap Σ e^{t − m_t} (t − s) over the classes where both are
finite, and the count of classes with t > −inf = s (each makes the row +inf). The caller
all-reduces the maxima, then the three rescaled sums (each against its own maximum) and the
count — two all-reduces again — and the row is

    D(p ‖ q) = G / S_t + (M_s − M_t) + log(S_s / S_t),

G, S the global gap and sums, M the global maxima (this is Σ p (t − s) − lse(t) + lse(s), the
difference of the log-sum-exps taken as M_s − M_t + log(S_s / S_t), which does not cancel; the
conventions are those of ``logitlab._divergence_rows.kl``: 0 · log 0 = 0, +inf iff some p > 0
has q = 0, and a teacher row that is all −inf has no mass, value 0). Its gradient kernel reads
both slices once more and writes ∂D/∂z = (q − p) / T.

All four kernels run as ``torch.library`` custom ops (with fakes), so a compiled caller traces
them as opaque nodes; the statistics kernels share the online log-sum-exp step
(``rows.lse_step``) and the loads (``rows.load_scores``).
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from logitlab._triton import compute_tl_dtype, jit
from logitlab._triton.rows import HELPERS, load_scores, lse_step
from logitlab._triton.xent import _pair, block_size

__all__ = ["shard_stats", "shard_grad", "kl_shard_stats", "kl_shard_grad"]


def _shard_stats_kernel(x_ptr, x_stride, t_ptr, w_ptr, keep_ptr, stats_ptr, n_rows, n_cols, vocab_start,
                        HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr, CD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    keep = tl.load(keep_ptr + row)
    offs = tl.arange(0, BLOCK)
    neg_inf = float("-inf")
    m = tl.full((), neg_inf, CD)
    se = tl.zeros((), CD)
    zw = tl.zeros((), CD)
    z_t = tl.zeros((), CD)
    if keep != 0:
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            inside = cols < n_cols
            s, th = load_scores(x_row, x_row, cols, inside, 1.0, 1.0, False, False, CD)
            if SMOOTH:
                if HAS_WEIGHT:
                    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(CD)
                else:
                    w = tl.where(inside, 1.0, 0.0).to(CD)
                zw += tl.sum(tl.where(inside, w * s, 0.0), 0)
            m, se, e_block, rescale = lse_step(m, se, tl.where(inside, s, neg_inf))
        local = tl.load(t_ptr + row).to(tl.int64) - vocab_start
        owned = (local >= 0) & (local < n_cols)
        z_t = tl.load(x_row + tl.where(owned, local, 0), mask=owned, other=0.0).to(CD)
    tl.store(stats_ptr + row, m)
    tl.store(stats_ptr + n_rows + row, se)
    tl.store(stats_ptr + 2 * n_rows + row, z_t)
    tl.store(stats_ptr + 3 * n_rows + row, zw)


_stats_kernel = jit(_shard_stats_kernel, helpers=HELPERS)


def _shard_grad_kernel(x_ptr, x_stride, g_ptr, g_stride, t_ptr, w_ptr, keep_ptr, lse_ptr, coef_ptr, hit_ptr,
                       n_cols, vocab_start, sv_hi, sv_lo,
                       HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr, CD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    g_row = g_ptr + row * g_stride
    keep = tl.load(keep_ptr + row)
    offs = tl.arange(0, BLOCK)
    if keep != 0:
        smooth = tl.cast(sv_hi, CD) + tl.cast(sv_lo, CD)  # ε / V
        lse = tl.load(lse_ptr + row).to(CD)
        coef = tl.load(coef_ptr + row).to(CD)
        hit = tl.load(hit_ptr + row).to(CD)
        local = tl.load(t_ptr + row).to(tl.int64) - vocab_start
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            inside = cols < n_cols
            s, th = load_scores(x_row, x_row, cols, inside, 1.0, 1.0, False, False, CD)
            g = coef * tl.exp(s - lse) - tl.where(cols == local, hit, 0.0)
            if SMOOTH:
                if HAS_WEIGHT:
                    g -= smooth * tl.load(w_ptr + cols, mask=inside, other=0.0).to(CD)
                else:
                    g -= smooth
            tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=inside)
    else:
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            tl.store(g_row + cols, tl.zeros((BLOCK,), g_ptr.dtype.element_ty), mask=cols < n_cols)


_grad_kernel = jit(_shard_grad_kernel, helpers=HELPERS)


def _kl_shard_stats_kernel(z_ptr, z_stride, u_ptr, u_stride, stats_ptr, n_rows, n_cols, it_hi, it_lo,
                           CD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    u_row = u_ptr + row * u_stride
    offs = tl.arange(0, BLOCK)
    inv_t = tl.cast(it_hi, CD) + tl.cast(it_lo, CD)
    neg_inf = float("-inf")
    m_s = tl.full((), neg_inf, CD)
    m_t = tl.full((), neg_inf, CD)
    se_s = tl.zeros((), CD)
    se_t = tl.zeros((), CD)
    gap = tl.zeros((), CD)  # Σ e^{t − m_t} (t − s) where both are finite
    n_inf = tl.zeros((), CD)  # classes with t > −inf = s
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        inside = cols < n_cols
        s, _s = load_scores(z_row, z_row, cols, inside, 1.0, inv_t, False, False, CD)
        t, _t = load_scores(u_row, u_row, cols, inside, 1.0, inv_t, False, False, CD)
        s = tl.where(inside, s, neg_inf)
        t = tl.where(inside, t, neg_inf)
        m_s, se_s, e_s, rescale_s = lse_step(m_s, se_s, s)
        m_t, se_t, e_t, rescale_t = lse_step(m_t, se_t, t)
        both = (t > neg_inf) & (s > neg_inf)
        gap = gap * rescale_t + tl.sum(tl.where(both, e_t * (t - s), 0.0), 0)
        n_inf += tl.sum(tl.where((t > neg_inf) & (s == neg_inf), 1.0, 0.0).to(CD), 0)
    tl.store(stats_ptr + row, m_s)
    tl.store(stats_ptr + n_rows + row, m_t)
    tl.store(stats_ptr + 2 * n_rows + row, se_s)
    tl.store(stats_ptr + 3 * n_rows + row, se_t)
    tl.store(stats_ptr + 4 * n_rows + row, gap)
    tl.store(stats_ptr + 5 * n_rows + row, n_inf)


_kl_stats_kernel = jit(_kl_shard_stats_kernel, helpers=HELPERS)


def _kl_shard_grad_kernel(z_ptr, z_stride, u_ptr, u_stride, g_ptr, g_stride, lse_ptr, n_rows, n_cols, it_hi, it_lo,
                          CD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    u_row = u_ptr + row * u_stride
    g_row = g_ptr + row * g_stride
    offs = tl.arange(0, BLOCK)
    inv_t = tl.cast(it_hi, CD) + tl.cast(it_lo, CD)
    neg_inf = float("-inf")
    lse_s = tl.load(lse_ptr + row).to(CD)
    lse_t = tl.load(lse_ptr + n_rows + row).to(CD)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        inside = cols < n_cols
        s, _s = load_scores(z_row, z_row, cols, inside, 1.0, inv_t, False, False, CD)
        t, _t = load_scores(u_row, u_row, cols, inside, 1.0, inv_t, False, False, CD)
        # q and p, 0 at −inf (also where the whole row is −inf, whose lse is −inf)
        q = tl.where(s > neg_inf, tl.exp(s - lse_s), 0.0)
        p = tl.where(t > neg_inf, tl.exp(t - lse_t), 0.0)
        tl.store(g_row + cols, ((q - p) * inv_t).to(g_ptr.dtype.element_ty), mask=inside)


_kl_grad_kernel = jit(_kl_shard_grad_kernel, helpers=HELPERS)


def _rows(x: Tensor) -> Tensor:
    return x if x.shape[1] <= 1 or x.stride(1) == 1 else x.contiguous()


def _cd(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _launch(x: Tensor) -> dict:
    """The compile-time options of a one-row-per-program launch over (N, V_local) ``x``: the
    compute dtype, the block of columns, and the warps."""
    blk = block_size(x.shape[1])
    return dict(CD=compute_tl_dtype(x.dtype), BLOCK=blk, num_warps=8 if blk >= 2048 else 4)


def _stats(rows: Tensor, target: Tensor, class_weight: Tensor | None, keep: Tensor, vocab_start: int,
           smooth: bool) -> Tensor:
    """(4, N) in the compute dtype: the local maximum, Σ e^{z − max}, the owned target logit (0
    if another slice owns it) and Σ_c w_c z_c (0 without ``smooth``) of each row of the (N, V_local)
    slice; ignored rows (``keep`` False) give (−inf, 0, 0, 0) without reading their logits."""
    x = _rows(rows)
    n_rows, n_cols = x.shape
    stats = x.new_empty((4, n_rows), dtype=_cd(x.dtype))
    if n_rows == 0:
        return stats
    if n_cols == 0:
        stats[0] = float("-inf")
        stats[1:] = 0.0
        return stats
    w = class_weight.contiguous() if class_weight is not None else None
    _stats_kernel()[(n_rows,)](
        x, x.stride(0), target.contiguous(), w if w is not None else stats, keep.contiguous().view(torch.uint8),
        stats, n_rows, n_cols, int(vocab_start), HAS_WEIGHT=w is not None, SMOOTH=bool(smooth), **_launch(x))
    return stats


def _grad(rows: Tensor, target: Tensor, class_weight: Tensor | None, keep: Tensor, lse: Tensor, coef: Tensor,
          hit: Tensor, vocab_start: int, smoothing_over_vocab: float) -> Tensor:
    """The (N, V_local) gradient of the rows' losses with respect to the slice, in its dtype:
    coef·e^{z − lse} − hit·[c = t] − (ε / V)·w_c for kept rows, 0 for the others."""
    x = _rows(rows)
    n_rows, n_cols = x.shape
    grad = torch.empty_like(x, memory_format=torch.contiguous_format)
    if n_rows == 0 or n_cols == 0:
        return grad
    cd = _cd(x.dtype)
    w = class_weight.contiguous() if class_weight is not None else None
    _grad_kernel()[(n_rows,)](
        x, x.stride(0), grad, grad.stride(0), target.contiguous(), w if w is not None else grad,
        keep.contiguous().view(torch.uint8), lse.to(cd).contiguous(), coef.to(cd).contiguous(),
        hit.to(cd).contiguous(), n_cols, int(vocab_start), *_pair(smoothing_over_vocab),
        HAS_WEIGHT=w is not None, SMOOTH=smoothing_over_vocab != 0.0, **_launch(x))
    return grad


def _kl_stats(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """(6, N) in the compute dtype: the local maxima of s = z / T and t = u / T, Σ e^{s − m_s},
    Σ e^{t − m_t}, Σ e^{t − m_t} (t − s) over the classes where both are finite, and the number
    of classes with t > −inf = s, for each row of the (N, V_local) slices ``student`` (z) and
    ``teacher`` (u); an empty slice gives (−inf, −inf, 0, 0, 0, 0)."""
    z, u = _rows(student), _rows(teacher)
    n_rows, n_cols = z.shape
    stats = z.new_empty((6, n_rows), dtype=_cd(z.dtype))
    if n_rows == 0:
        return stats
    if n_cols == 0:
        stats[:2] = float("-inf")
        stats[2:] = 0.0
        return stats
    _kl_stats_kernel()[(n_rows,)](z, z.stride(0), u, u.stride(0), stats, n_rows, n_cols,
                                  *_pair(1.0 / float(temperature)), **_launch(z))
    return stats


def _kl_grad(student: Tensor, teacher: Tensor, lse: Tensor, temperature: float) -> Tensor:
    """The (N, V_local) gradient (q − p) / T of the rows' D(p ‖ q) with respect to the student's
    slice, in its dtype, from the (2, N) full-vocabulary log-sum-exps ``lse`` of z / T and u / T."""
    z, u = _rows(student), _rows(teacher)
    n_rows, n_cols = z.shape
    grad = torch.empty_like(z, memory_format=torch.contiguous_format)
    if n_rows == 0 or n_cols == 0:
        return grad
    _kl_grad_kernel()[(n_rows,)](z, z.stride(0), u, u.stride(0), grad, grad.stride(0),
                                 lse.to(_cd(z.dtype)).contiguous(), n_rows, n_cols,
                                 *_pair(1.0 / float(temperature)), **_launch(z))
    return grad


# The same launches as custom ops, for torch.compile (opaque nodes with fakes; eager calls skip
# their dispatch, whose first use imports torch._dynamo).
_stats_op = torch.library.custom_op("logitlab::triton_shard_stats", _stats, mutates_args=())
_grad_op = torch.library.custom_op("logitlab::triton_shard_grad", _grad, mutates_args=())
_kl_stats_op = torch.library.custom_op("logitlab::triton_shard_kl_stats", _kl_stats, mutates_args=())
_kl_grad_op = torch.library.custom_op("logitlab::triton_shard_kl_grad", _kl_grad, mutates_args=())


@_stats_op.register_fake
def _(rows, target, class_weight, keep, vocab_start, smooth):
    return rows.new_empty((4, rows.shape[0]), dtype=_cd(rows.dtype))


@_grad_op.register_fake
def _(rows, target, class_weight, keep, lse, coef, hit, vocab_start, smoothing_over_vocab):
    return torch.empty_like(rows, memory_format=torch.contiguous_format)


@_kl_stats_op.register_fake
def _(student, teacher, temperature):
    return student.new_empty((6, student.shape[0]), dtype=_cd(student.dtype))


@_kl_grad_op.register_fake
def _(student, teacher, lse, temperature):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _eager_or_op(eager, op):
    """The launch itself, or its custom op while torch.compile traces."""
    return op if torch.compiler.is_compiling() else eager


def shard_stats(rows: Tensor, target: Tensor, class_weight: Tensor | None, keep: Tensor, *, vocab_start: int,
                smooth: bool) -> Tensor:
    """See ``_stats``: (4, N) row statistics of the slice (max, Σ e^{z − max}, z_t, Σ w z)."""
    return _eager_or_op(_stats, _stats_op)(rows, target, class_weight, keep, int(vocab_start), bool(smooth))


def shard_grad(rows: Tensor, target: Tensor, class_weight: Tensor | None, keep: Tensor, lse: Tensor, coef: Tensor,
               hit: Tensor, *, vocab_start: int, smoothing_over_vocab: float) -> Tensor:
    """See ``_grad``: the (N, V_local) gradient of the slice, in its dtype."""
    return _eager_or_op(_grad, _grad_op)(rows, target, class_weight, keep, lse, coef, hit, int(vocab_start),
                                         float(smoothing_over_vocab))


def kl_shard_stats(student: Tensor, teacher: Tensor, *, temperature: float) -> Tensor:
    """See ``_kl_stats``: (6, N) row statistics of both slices (m_s, m_t, Σ e^{s − m_s}, Σ e^{t − m_t},
    the gap Σ e^{t − m_t} (t − s), the count of t > −inf = s)."""
    return _eager_or_op(_kl_stats, _kl_stats_op)(student, teacher, float(temperature))


def kl_shard_grad(student: Tensor, teacher: Tensor, lse: Tensor, *, temperature: float) -> Tensor:
    """See ``_kl_grad``: the (N, V_local) gradient (q − p) / T of the student's slice, in its dtype."""
    return _eager_or_op(_kl_grad, _kl_grad_op)(student, teacher, lse, float(temperature))
