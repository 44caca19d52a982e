"""The distillation row kernel in Triton: D(teacher ‖ student) of two blocks of logits, one row
per program, loss and gradient in one launch.

Per row, with the student's logits z (+ bias b) and the teacher's u (+ bias), at temperature T:
s = (z + b) / T, t = u / T, log q = s − lse(s) (student), log p = t − lse(t) (teacher):

    kl          D(p ‖ q) = Σ p (log p − log q)              ∂/∂s = q − p
    reverse_kl  D(q ‖ p) = Σ q (log q − log p)              ∂/∂s = q (log q − log p − D)
    js          JS_β = β D(p ‖ m) + (1 − β) D(q ‖ m),  m = β p + (1 − β) q
                                                            ∂/∂s = q (σ − Σ q σ),  σ = (1 − β) log(q / m)

plus α times the cross-entropy of the hard label y at T = 1, −log softmax(z + b)_y, whose
gradient is α (softmax(z + b) − onehot(y)). The gradient with respect to z is ∂/∂s / T plus that
term, times the row's scale; it overwrites the student's block (the teacher's is only read).
Terms with zero probability contribute 0 (0 · log 0 = 0).

Pass 1 streams both rows once with running maxima (the online log-sum-exp of s, t, and of z + b
when T ≠ 1 and α > 0), and for kl and reverse_kl also the running sum Σ e^{t − m} (t − s) (or
Σ e^{s − m} (s − t)), rescaled as its maximum grows, which gives D without a second read:
D(p ‖ q) = Σ e^{t − m_t} (t − s) / Σ e^{t − m_t} − lse(t) + lse(s). JS_β needs log m, hence both
log-sum-exps first: a second pass sums it. The last pass writes the gradient.
"""

from __future__ import annotations

import math

import torch
import triton.language as tl
from torch import Tensor

from logitlab._triton import compute_tl_dtype, jit
from logitlab._triton.rows import HELPERS, load_scores, lse_step
from logitlab._triton.xent import _pair, block_size

__all__ = ["divergence_rows", "CODES"]

CODES = {"kl": 0, "reverse_kl": 1, "js": 2}


def _divergence_kernel(
    z_ptr, z_stride, u_ptr, u_stride, b_ptr, tb_ptr, t_ptr, keep_ptr, scale_ptr, loss_ptr, n_cols,
    it_hi, it_lo, beta_hi, beta_lo, alpha_hi, alpha_lo,
    DIV: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_TBIAS: tl.constexpr, HARD: tl.constexpr,
    SEPARATE_Z: tl.constexpr, WANT_GRAD: tl.constexpr, CD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    u_row = u_ptr + row * u_stride
    keep = tl.load(keep_ptr + row)
    offs = tl.arange(0, BLOCK)
    inv_t = tl.cast(it_hi, CD) + tl.cast(it_lo, CD)
    beta = tl.cast(beta_hi, CD) + tl.cast(beta_lo, CD)
    alpha = tl.cast(alpha_hi, CD) + tl.cast(alpha_lo, CD)
    neg_inf = float("-inf")
    if keep != 0:
        m_s = tl.full((), neg_inf, CD)
        m_t = tl.full((), neg_inf, CD)
        m_z = tl.full((), neg_inf, CD)
        se_s = tl.zeros((), CD)
        se_t = tl.zeros((), CD)
        se_z = tl.zeros((), CD)
        acc = tl.zeros((), CD)  # Σ e^{t − m_t} (t − s) for kl, Σ e^{s − m_s} (s − t) for reverse_kl
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            inside = cols < n_cols
            x, _x = load_scores(z_row, b_ptr, cols, inside, 1.0, 1.0, HAS_BIAS, False, CD)
            x = tl.where(inside, x, neg_inf)
            t, _t = load_scores(u_row, tb_ptr, cols, inside, 1.0, inv_t, HAS_TBIAS, False, CD)
            t = tl.where(inside, t, neg_inf)
            s = x * inv_t
            m_s, se_s, e_s, rescale_s = lse_step(m_s, se_s, s)
            m_t, se_t, e_t, rescale_t = lse_step(m_t, se_t, t)
            if DIV == 0:
                acc = acc * rescale_t + tl.sum(tl.where(e_t > 0, e_t * (t - s), 0.0), 0)
            if DIV == 1:
                acc = acc * rescale_s + tl.sum(tl.where(e_s > 0, e_s * (s - t), 0.0), 0)
            if SEPARATE_Z:
                m_z, se_z, e_z, rescale_z = lse_step(m_z, se_z, x)
        lse_s = m_s + tl.log(se_s)
        lse_t = m_t + tl.log(se_t)
        if DIV == 0:
            value = acc / se_t - lse_t + lse_s
        if DIV == 1:
            value = acc / se_s - lse_s + lse_t
        if DIV == 2:
            log_b = tl.log(beta)
            log_1b = tl.log(1.0 - beta)
            sq = tl.zeros((), CD)  # Σ q σ
            sp = tl.zeros((), CD)  # Σ p (log p − log m)
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                inside = cols < n_cols
                x, _x = load_scores(z_row, b_ptr, cols, inside, 1.0, 1.0, HAS_BIAS, False, CD)
                v, _v = load_scores(u_row, tb_ptr, cols, inside, 1.0, 1.0, HAS_TBIAS, False, CD)
                log_q = tl.where(inside, x * inv_t - lse_s, neg_inf)
                log_p = tl.where(inside, v * inv_t - lse_t, neg_inf)
                a = log_p + log_b
                c = log_q + log_1b
                hi = tl.maximum(a, c)
                hi_safe = tl.where(hi == neg_inf, 0.0, hi)
                log_m = hi_safe + tl.log(tl.exp(a - hi_safe) + tl.exp(c - hi_safe))
                q = tl.exp(log_q)
                p = tl.exp(log_p)
                sq += tl.sum(tl.where(q > 0, q * (1.0 - beta) * (log_q - log_m), 0.0), 0)
                sp += tl.sum(tl.where(p > 0, p * (log_p - log_m), 0.0), 0)
            value = sq + beta * sp
        loss = value
        if HARD:
            y = tl.load(t_ptr + row).to(tl.int64)
            valid = (y >= 0) & (y < n_cols)
            y_safe = tl.where(valid, y, 0)
            zy = tl.load(z_row + y_safe).to(CD)
            if HAS_BIAS:
                zy += tl.load(b_ptr + y_safe).to(CD)
            zy = tl.where(valid, zy, float("nan"))
            if SEPARATE_Z:
                lse_z = m_z + tl.log(se_z)
            else:
                lse_z = lse_s
            loss += alpha * (lse_z - zy)
        tl.store(loss_ptr + row, loss)
        if WANT_GRAD:
            sc = tl.load(scale_ptr + row).to(CD)
            if DIV == 2:
                log_b = tl.log(beta)
                log_1b = tl.log(1.0 - beta)
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                inside = cols < n_cols
                x, _x = load_scores(z_row, b_ptr, cols, inside, 1.0, 1.0, HAS_BIAS, False, CD)
                v, _v = load_scores(u_row, tb_ptr, cols, inside, 1.0, 1.0, HAS_TBIAS, False, CD)
                log_q = x * inv_t - lse_s
                log_p = v * inv_t - lse_t
                q = tl.exp(log_q)
                if DIV == 0:
                    g = q - tl.exp(log_p)
                if DIV == 1:
                    g = tl.where(q > 0, q * (log_q - log_p - value), 0.0)
                if DIV == 2:
                    a = log_p + log_b
                    c = log_q + log_1b
                    hi = tl.maximum(a, c)
                    hi_safe = tl.where(hi == neg_inf, 0.0, hi)
                    log_m = hi_safe + tl.log(tl.exp(a - hi_safe) + tl.exp(c - hi_safe))
                    g = tl.where(q > 0, q * ((1.0 - beta) * (log_q - log_m) - sq), 0.0)
                g = g * inv_t
                if HARD:
                    g += alpha * (tl.exp(x - lse_z) - tl.where(cols == y, 1.0, 0.0))
                tl.store(z_row + cols, (g * sc).to(z_ptr.dtype.element_ty), mask=inside)
    else:
        tl.store(loss_ptr + row, tl.zeros((), loss_ptr.dtype.element_ty))
        if WANT_GRAD:
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                tl.store(z_row + cols, tl.zeros((BLOCK,), z_ptr.dtype.element_ty), mask=cols < n_cols)


_kernel = jit(_divergence_kernel, helpers=HELPERS)


def divergence_rows(z: Tensor, teacher: Tensor, keep: Tensor, scale: Tensor, *, divergence: str, beta: float,
                    temperature: float, hard_label_weight: float, target: Tensor | None, bias: Tensor | None,
                    teacher_bias: Tensor | None, want_grad: bool, block: int | None = None) -> Tensor:
    """Row losses (N,) in the compute dtype of the student's raw logits ``z`` (N, V) against the
    teacher's ``teacher`` (N, V); with ``want_grad`` the gradient with respect to ``z`` (times
    ``scale``) overwrites ``z``. No host synchronization."""
    n_rows, n_cols = z.shape
    for name, x in (("z", z), ("teacher", teacher)):
        if n_cols > 1 and x.stride(1) != 1:
            raise RuntimeError(f"divergence_rows: the columns of {name} must be contiguous")
    cd = torch.float64 if z.dtype == torch.float64 else torch.float32
    losses = z.new_empty(n_rows, dtype=cd)
    if n_rows == 0:
        return losses
    hard = hard_label_weight > 0.0
    blk = block or block_size(n_cols)
    dummy = losses
    _kernel()[(n_rows,)](
        z, z.stride(0), teacher, teacher.stride(0), bias if bias is not None else dummy,
        teacher_bias if teacher_bias is not None else dummy, target if hard else dummy,
        keep.contiguous().view(torch.uint8), scale.contiguous(), losses, n_cols,
        *_pair(1.0 / float(temperature)), *_pair(beta if divergence == "js" else 0.5), *_pair(hard_label_weight),
        DIV=CODES[divergence], HAS_BIAS=bias is not None, HAS_TBIAS=teacher_bias is not None, HARD=hard,
        SEPARATE_Z=hard and not math.isclose(float(temperature), 1.0, rel_tol=0.0, abs_tol=0.0),
        WANT_GRAD=bool(want_grad), CD=compute_tl_dtype(z.dtype), BLOCK=blk, num_warps=8 if blk >= 2048 else 4,
    )
    return losses
