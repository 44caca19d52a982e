"""The cross-entropy row kernel in Triton: loss and gradient of each row in one program.

The same mathematics as the CPU kernels (``logitlab.losses._xent_kernel``; the C kernel
``_native/xent_body.h``). Per row, with s = (softcap·tanh((x + b) / softcap)) / T (the bias b
and the softcap only for the linear head, T only for ``cross_entropy``), class weights w, a
target distribution q (one-hot of the index y, or the given probabilities) and ε the label
smoothing, lse = log Σ_c exp s_c:

    ℓ = −(1 − ε) Σ_c q_c w_c (s_c − lse) − (ε / C) Σ_c w_c (s_c − lse) + z · r · lse²
    ∂ℓ/∂s_c = A·p_c − (1 − ε) q_c w_c − (ε / C) w_c,     p_c = exp(s_c − lse),
    A = (1 − ε) Σ_c q_c w_c + (ε / C) Σ_c w_c + 2 z r lse,

with r = w_y for an index target and 1 for probabilities. A class with q_c w_c = 0 contributes
nothing to the first sum even where s_c = −inf (0 · log 0 = 0).

One program per row. Pass 1 streams the row once in blocks of ``BLOCK`` columns, keeping a
running maximum m and Σ exp(s − m) rescaled whenever m grows (the online log-sum-exp), and the
sums the loss needs (Σ q w s, Σ q w, Σ w s); the loss follows. Pass 2 reads the row again and
writes the gradient, times the row's scale (the reduction's factor: 1/D for 'mean'), over the
logits themselves when asked (the ``grad`` pointer may be the logits'). An excluded row (ignored
target, masked out) reads nothing and writes zeros. The second read is the price of writing the
finished gradient in one kernel: the gradient needs lse, which needs the whole row.

Why blocks of at most 4096 columns: the program keeps one block of float32 values in registers
(4096 / (32 · num_warps) per thread, 16 with 8 warps) while it accumulates; a larger block spills.
"""

from __future__ import annotations

import math
import struct

import torch
import triton.language as tl
from torch import Tensor

import triton
from logitlab._triton import compute_tl_dtype, jit
from logitlab._triton.rows import HELPERS, load_scores, lse_step

__all__ = ["xent_rows", "MAX_BLOCK"]

MAX_BLOCK = 4096


def _xent_rows_kernel(
    x_ptr, x_stride, g_ptr, g_stride, t_ptr, t_stride, w_ptr, wsum_ptr, b_ptr, keep_ptr, scale_ptr,
    loss_ptr, lse_ptr, n_cols, eps_hi, eps_lo, zl_hi, zl_lo, it_hi, it_lo, cap_hi, cap_lo,
    INDEX: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SMOOTH: tl.constexpr,
    ZLOSS: tl.constexpr, SOFTCAP: tl.constexpr, WANT_GRAD: tl.constexpr, SCALE_LOSS: tl.constexpr,
    VALIDATE: tl.constexpr, CD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    g_row = g_ptr + row * g_stride
    t_row = t_ptr + row * t_stride
    keep = tl.load(keep_ptr + row)
    offs = tl.arange(0, BLOCK)
    # Scalars arrive as float32 pairs (value and rounding error): exact enough for float64 rows.
    eps = tl.cast(eps_hi, CD) + tl.cast(eps_lo, CD)
    zl = tl.cast(zl_hi, CD) + tl.cast(zl_lo, CD)
    inv_temp = tl.cast(it_hi, CD) + tl.cast(it_lo, CD)
    cap = tl.cast(cap_hi, CD) + tl.cast(cap_lo, CD)
    if keep != 0:
        neg_inf = float("-inf")
        m = tl.full((), neg_inf, CD)
        se = tl.zeros((), CD)
        sw = tl.zeros((), CD)   # Σ_c w_c s_c (label smoothing)
        qws = tl.zeros((), CD)  # Σ_c q_c w_c s_c over q_c w_c ≠ 0 (probability targets)
        qw = tl.zeros((), CD)   # Σ_c q_c w_c (probability targets)
        bad = tl.zeros((), tl.int32)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            inside = cols < n_cols
            s, th = load_scores(x_row, b_ptr, cols, inside, cap, inv_temp, HAS_BIAS, SOFTCAP, CD)
            s = tl.where(inside, s, neg_inf)
            if VALIDATE:
                bad += tl.sum(((s != s) | (s == float("inf"))).to(tl.int32), 0)
            m, se, e_block, rescale = lse_step(m, se, s)
            if HAS_WEIGHT:
                w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(CD)
            else:
                w = tl.where(inside, 1.0, 0.0).to(CD)
            if SMOOTH:
                sw += tl.sum(tl.where(inside, w * s, 0.0), 0)
            if not INDEX:
                q = tl.load(t_row + cols, mask=inside, other=0.0).to(CD)
                qwc = q * w
                qws += tl.sum(tl.where(qwc == 0.0, 0.0, qwc * s), 0)
                qw += tl.sum(qwc, 0)
        lse = m + tl.log(se)
        one_minus = 1.0 - eps
        if INDEX:
            y = tl.load(t_ptr + row * t_stride).to(tl.int64)
            valid = (y >= 0) & (y < n_cols)
            y_safe = tl.where(valid, y, 0)
            s_y, th_y = load_scores(x_row, b_ptr, y_safe, valid, cap, inv_temp, HAS_BIAS, SOFTCAP, CD)
            # An index outside [0, C) reads nothing and makes the row's loss NaN (the device
            # cannot raise; validate=True checks the indices on the host before the launch).
            s_y = tl.where(valid, s_y, float("nan"))
            if HAS_WEIGHT:
                w_y = tl.load(w_ptr + y_safe).to(CD)
            else:
                w_y = tl.full((), 1.0, CD)
            ce = tl.where(one_minus > 0.0, -one_minus * w_y * (s_y - lse), 0.0)
            total = one_minus * w_y
            r = w_y
        else:
            ce = tl.where(one_minus > 0.0, -one_minus * (qws - lse * qw), 0.0)
            total = one_minus * qw
            r = tl.full((), 1.0, CD)
        if SMOOTH:
            if HAS_WEIGHT:
                wsum = tl.load(wsum_ptr).to(CD)
            else:
                wsum = n_cols * 1.0
            ce += -(eps / n_cols) * (sw - lse * wsum)
            total += eps * wsum / n_cols
        if ZLOSS:
            ce += zl * r * lse * lse
            total += 2.0 * zl * r * lse
        sc = tl.load(scale_ptr + row).to(CD)
        if SCALE_LOSS:
            ce = ce * sc
        tl.store(loss_ptr + row, ce)
        if VALIDATE:
            lse = tl.where(bad > 0, float("nan"), lse)
        tl.store(lse_ptr + row, lse)
        if WANT_GRAD:
            coef = sc * inv_temp
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                inside = cols < n_cols
                s, th = load_scores(x_row, b_ptr, cols, inside, cap, inv_temp, HAS_BIAS, SOFTCAP, CD)
                g = total * tl.exp(s - lse)
                if HAS_WEIGHT:
                    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(CD)
                else:
                    w = tl.full((BLOCK,), 1.0, CD)
                if INDEX:
                    g -= tl.where(cols == y, one_minus * w_y, 0.0)
                else:
                    q = tl.load(t_row + cols, mask=inside, other=0.0).to(CD)
                    g -= one_minus * q * w
                if SMOOTH:
                    g -= (eps / n_cols) * w
                g = g * coef
                if SOFTCAP:
                    g = g * (1.0 - th * th)
                tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=inside)
    else:
        tl.store(loss_ptr + row, tl.zeros((), loss_ptr.dtype.element_ty))
        tl.store(lse_ptr + row, tl.zeros((), lse_ptr.dtype.element_ty))
        if WANT_GRAD:
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                tl.store(g_row + cols, tl.zeros((BLOCK,), g_ptr.dtype.element_ty), mask=cols < n_cols)


_kernel = jit(_xent_rows_kernel, helpers=HELPERS)


def _pair(value: float) -> tuple[float, float]:
    """``value`` as float32 high and low parts: hi + lo = value to about 48 bits."""
    value = float(value)
    if not abs(value) < 3.4e38:  # beyond float32 (struct would raise): inf or NaN as it is
        return value if value != value else math.copysign(math.inf, value), 0.0
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, struct.unpack("f", struct.pack("f", value - hi))[0]


def block_size(n_cols: int) -> int:
    return min(triton.next_power_of_2(max(n_cols, 1)), MAX_BLOCK)


def xent_rows(rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor, scale: Tensor, *,
              index_target: bool, label_smoothing: float, z_loss: float, temperature: float = 1.0,
              validate: bool = False, grad: Tensor | None = None, bias: Tensor | None = None,
              softcap: float | None = None, weight_sum: Tensor | None = None, scale_loss: bool = True,
              block: int | None = None) -> tuple[Tensor, Tensor]:
    """Launch the row kernel on (N, C) ``rows`` (column stride 1); no host synchronization.

    Args:
        rows: (N, C) logits, float32/bfloat16/float16 (computed in float32) or float64.
        target: (N,) int class indices (``index_target``) or (N, C) probabilities.
        weight: (C,) class weights or None. keep: (N,) bool. scale: (N,) the rows' factors.
        grad: (N, C) tensor the gradient (times ``scale``) is written into (may be ``rows``),
            or None for the loss only.
        bias, softcap: applied to the logits first (the linear head's options).
        weight_sum: Σ_c w_c as a one-element tensor (computed on the device when None).
        scale_loss: multiply the row losses by ``scale`` too.
        block: columns per step (a power of two; default min(next_pow2(C), 4096)).

    Returns:
        (losses (N,), lse (N,)) in the compute dtype; lse is NaN for a kept row holding NaN or
        +inf when ``validate`` (for the caller's check), 0 for excluded rows.
    """
    n_rows, n_cols = rows.shape
    if n_cols > 1 and rows.stride(1) != 1:
        raise RuntimeError("xent_rows: the logits' columns must be contiguous")
    cd = torch.float64 if rows.dtype == torch.float64 else torch.float32
    losses = rows.new_empty(n_rows, dtype=cd)
    lse = rows.new_empty(n_rows, dtype=cd)
    if n_rows == 0:
        return losses, lse
    if index_target:
        tgt, t_stride = target, 1 if target.ndim == 1 else target.stride(0)
        if tgt.stride(0) != 1:
            tgt = tgt.contiguous()
    else:
        tgt = target if n_cols <= 1 or target.stride(1) == 1 else target.contiguous()
        t_stride = tgt.stride(0)
    w = weight.contiguous() if weight is not None else None
    smooth = label_smoothing > 0.0
    if w is not None and smooth and weight_sum is None:
        weight_sum = w.to(cd).sum().reshape(1)
    if grad is not None and n_cols > 1 and grad.stride(1) != 1:
        raise RuntimeError("xent_rows: the gradient's columns must be contiguous")
    keep8 = keep.contiguous().view(torch.uint8)
    scale = scale.contiguous()
    b = bias.contiguous() if bias is not None else None
    dummy = losses
    blk = block or block_size(n_cols)
    _kernel()[(n_rows,)](
        rows, rows.stride(0), grad if grad is not None else dummy, grad.stride(0) if grad is not None else 0,
        tgt, t_stride, w if w is not None else dummy, weight_sum if weight_sum is not None else dummy,
        b if b is not None else dummy, keep8, scale, losses, lse, n_cols,
        *_pair(label_smoothing), *_pair(z_loss), *_pair(1.0 / float(temperature)), *_pair(softcap or 1.0),
        INDEX=bool(index_target), HAS_WEIGHT=w is not None, HAS_BIAS=b is not None, SMOOTH=smooth,
        ZLOSS=z_loss > 0.0, SOFTCAP=softcap is not None, WANT_GRAD=grad is not None,
        SCALE_LOSS=bool(scale_loss), VALIDATE=bool(validate), CD=compute_tl_dtype(rows.dtype), BLOCK=blk,
        num_warps=8 if blk >= 2048 else 4,
    )
    return losses, lse


def _scale_rows_kernel(g_ptr, g_stride, go_ptr, go_stride, n_cols, CD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    go = tl.load(go_ptr + row * go_stride)
    # The usual incoming gradient is 1 (loss.backward()): then the program reads and writes nothing.
    if go != 1.0:
        g_row = g_ptr + row * g_stride
        offs = tl.arange(0, BLOCK)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            inside = cols < n_cols
            g = tl.load(g_row + cols, mask=inside, other=0.0)
            tl.store(g_row + cols, (g.to(CD) * go.to(CD)).to(g.dtype), mask=inside)


_scale_kernel = jit(_scale_rows_kernel)


def scale_rows_(grad: Tensor, grad_output: Tensor) -> Tensor:
    """grad (N, C) ← grad · grad_output in place, for a scalar or an (N,) ``grad_output``, without
    reading it on the host: each row's program loads its factor and touches nothing when it is 1.

    (Comparing grad_output to 1 on the host would synchronize; multiplying regardless would cost a
    pass over the gradient, as much memory traffic as the loss itself.)
    """
    out = grad
    if grad.ndim == 1:
        grad = grad.view(1, -1) if grad_output.numel() == 1 else grad.view(-1, 1)
    if grad.numel() == 0:
        return out
    if grad.shape[1] > 1 and grad.stride(1) != 1:
        raise RuntimeError("scale_rows_: the gradient's columns must be contiguous")
    go = grad_output.reshape(-1)
    if go.dtype != grad.dtype and go.dtype not in (torch.float32, torch.float64):
        go = go.float()
    go_stride = 0 if go.numel() == 1 else go.stride(0)
    blk = block_size(grad.shape[1])
    _scale_kernel()[(grad.shape[0],)](grad, grad.stride(0), go, go_stride, grad.shape[1],
                                      CD=compute_tl_dtype(grad.dtype), BLOCK=blk, num_warps=8 if blk >= 2048 else 4)
    return out
