"""The cross-entropy kernels: one fused pass for loss and gradient, and a composite twin.

Both work on rows: ``rows`` is (N, C) logits, ``target`` is (N,) class indices or (N, C)
probabilities. The caller (``cross_entropy``) has already checked the arguments and computed

* ``keep``  (N,) bool: the rows that count (not ignored, not masked out);
* ``scale`` (N,) the factor of each row in the reduction: ``keep / D`` for 'mean' (D the total
  row weight, or 1 when D is 0, so that an all-excluded batch gives 0 and zero gradient),
  ``keep`` for 'sum' and 'none'.

With s = logits / T, log p = log_softmax(s), a target distribution q (one-hot or the given
probabilities, smoothed to (1 − ε) q + ε / C) and class weights w, a row's loss is

    ℓ = −Σ_c q_c w_c log p_c + z · r · lse(s)²,     r = w_y (index targets) or 1 (probabilities)

and its gradient with respect to the logits is ((A + 2 z r lse) p − q ⊙ w) / T with A = Σ_c q_c w_c.

Why a fused Function: on a CPU the time of eager cross-entropy is dominated by allocating and
page-faulting full (N, C) tensors (log-softmax output, the one-hot gradient, the gradient).
The fused forward computes the loss and the finished gradient in one pass over the logits and
writes the gradient once (into a new (N, C) tensor advised to use huge pages, or into the
logits themselves with ``inplace_backward``). The backward only scales it by the incoming
gradient, in place.

Two kernels implement that forward, with the same results (tests hold both to the float64
truth): the native C kernel (``logitlab/_native/xent.c``: each row read once from memory, its
maximum, Σ exp and the gradient computed while it sits in cache, rows on torch's OpenMP threads)
for CPU float32/bfloat16/float16 logits, and the eager torch kernel below, which walks a block
of rows at a time with a few eager ops per block, for float64, other devices and machines where
the native kernel cannot be built. Why C and not torch.compile: an inductor kernel for one block
was as fast, but each option set (smoothing, weights, probabilities, z-loss and dtype each need
their own) pays its own cold compile, many times the build of the one C file that covers them all.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from logitlab._memory import empty_like_huge
from logitlab._native import xent as native_xent
from logitlab._validation import compute_dtype, fail

__all__ = ["XentOptions", "fused_cross_entropy", "composite_cross_entropy", "saved_gradient", "check_row_max",
           "BLOCK_BYTES"]

# Rows are processed in blocks of about this many bytes of compute-dtype logits: small enough
# that the block's log-softmax buffer stays in a server CPU's last-level cache, large enough that
# each block's few eager ops are worth a parallel region: on a loaded machine, blocks of a few MiB
# lose to thread synchronization (every eager op is an OpenMP region and a descheduled thread
# stalls it). benchmarks/cross_entropy.py times this kernel (impl="torch").
BLOCK_BYTES = 16 << 20

_LOG_SOFTMAX_OUT = torch.ops.aten._log_softmax.out


class XentOptions(NamedTuple):
    """The checked scalar options of one cross-entropy call."""

    fn: str
    index_target: bool
    label_smoothing: float
    z_loss: float
    temperature: float
    per_row: bool  # reduction == 'none'
    validate: bool
    inplace_backward: bool
    native: bool = False  # impl 'native': the C kernel (else the eager torch kernel below)


def check_row_max(opts: XentOptions, row_max: Tensor, offset: int, keep: Tensor | None = None) -> None:
    """Raise if a kept row holds NaN or +inf (its max is NaN or +inf), or only -inf logits.

    An excluded row (ignored target, masked out) may hold anything: padding often is all -inf.
    """
    bad = torch.isnan(row_max) | (row_max == math.inf)
    if keep is not None:
        bad &= keep
    if bool(bad.any()):
        _raise_bad(opts, offset + int(bad.nonzero()[0, 0]), 1)
    empty = row_max == -math.inf
    if keep is not None:
        empty &= keep
    if bool(empty.any()):
        _raise_bad(opts, offset + int(empty.nonzero()[0, 0]), 2)



def _raise_bad(opts: XentOptions, row: int, kind: int, target: Tensor | None = None,
               n_classes: int = 0) -> None:
    """Raise for the native kernel's error ``kind`` at ``row``: 1 NaN/+inf, 2 all -inf, 3 a class
    index outside [0, n_classes) (checked even with ``validate=False``: the index addresses memory)."""
    if kind == 3:
        index = int(target.reshape(-1)[row]) if target is not None else "?"
        fail(opts.fn, "target", f"class indices in [0, {n_classes - 1}]",
             f"<index {index} in row {row} of the flattened batch>", kind=IndexError)
    if kind == 1:
        fail(opts.fn, "logits", "values without NaN or +inf (-inf marks an excluded class)",
             f"<NaN or +inf in row {row} of the flattened batch>")
    fail(opts.fn, "logits", "at least one finite logit per kept row (-inf excludes a class)",
         f"<row {row} of the flattened batch is all -inf>")


def _block_rows(n_classes: int, dtype: torch.dtype) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, BLOCK_BYTES // max(1, n_classes * itemsize))


def fused_forward(rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor,
                  scale: Tensor, opts: XentOptions, want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Per-row scaled losses (N,) in the compute dtype and, if asked, the gradient (N, C)."""
    n_rows, n_classes = rows.shape
    cd = compute_dtype(rows)
    eps, z, temp = opts.label_smoothing, opts.z_loss, opts.temperature
    if opts.native:
        losses, grad, bad, kind = native_xent.xent_rows(
            rows, target, weight, keep, scale, index_target=opts.index_target, label_smoothing=eps,
            z_loss=z, temperature=temp, validate=opts.validate, want_grad=want_grad,
            in_place=opts.inplace_backward)
        if bad >= 0:
            _raise_bad(opts, bad, kind, target, n_classes)
        return losses, grad
    if want_grad:
        grad = rows if opts.inplace_backward else empty_like_huge(rows)
    else:
        grad = None
    losses = rows.new_empty(n_rows, dtype=cd)
    # max(1, ...): an empty batch (N = 0) still needs a positive range() step.
    block = max(1, min(n_rows, _block_rows(n_classes, cd)))
    convert = rows.dtype != cd or temp != 1.0
    s_buf = rows.new_empty((block, n_classes), dtype=cd) if convert else None
    lp_buf = rows.new_empty((block, n_classes), dtype=cd)
    if not opts.index_target:
        tw_buf = rows.new_empty((block, n_classes), dtype=cd)
        prod_buf = rows.new_empty((block, n_classes), dtype=cd)
    w_sum = float(weight.sum()) if weight is not None else float(n_classes)
    w_row = weight.unsqueeze(0) if weight is not None else None
    grad_in_place_dtype = grad is not None and grad.dtype == cd

    for r0 in range(0, n_rows, block):
        r1 = min(n_rows, r0 + block)
        k = r1 - r0
        x = rows[r0:r1]
        if convert:
            s = s_buf[:k]  # type: ignore[index]
            if temp != 1.0:
                torch.div(x, temp, out=s)
            else:
                s.copy_(x)
        else:
            s = x
        if opts.validate:
            check_row_max(opts, s.amax(1), r0, keep[r0:r1])
        logp = _LOG_SOFTMAX_OUT(s, 1, False, out=lp_buf[:k])
        excluded = ~keep[r0:r1]
        if bool(excluded.any()):
            # An excluded row may be all -inf (padding): NaN there would leak into its zero gradient.
            logp.masked_fill_(excluded.unsqueeze(1), 0.0)
        sc = scale[r0:r1]
        if opts.index_target:
            y = target[r0:r1].unsqueeze(1)
            wy = weight[target[r0:r1]] if weight is not None else None
            if eps < 1.0:
                lpy = logp.gather(1, y).squeeze(1)
                ce = lpy * (-(1.0 - eps)) if wy is None else lpy * wy * (-(1.0 - eps))
            else:
                ce = logp.new_zeros(k)
            total = (1.0 - eps) * (wy if wy is not None else 1.0)
            row_w = wy
        else:
            t = target[r0:r1]
            if weight is not None:
                tw = torch.mul(t, w_row, out=tw_buf[:k])
            elif t.dtype != cd:
                tw = tw_buf[:k].copy_(t)
            else:
                tw = t
            prod = torch.mul(tw, logp, out=prod_buf[:k])
            dot = prod.sum(1)
            if bool(torch.isnan(dot).any()):
                # 0 · log 0 = 0: zero target mass on an excluded (-inf) class contributes nothing.
                prod.nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)
                dot = prod.sum(1)
            ce = dot * (-(1.0 - eps))
            total = tw.sum(1) * (1.0 - eps)
            row_w = None
        if eps > 0.0:
            smooth = logp @ weight if weight is not None else logp.sum(1)
            ce = ce - smooth * (eps / n_classes)
            total = total + eps * w_sum / n_classes
        if z > 0.0:
            lse = s.amax(1) - logp.amax(1)
            zr = z if row_w is None else row_w * z
            ce = ce + zr * lse * lse
            total = total + 2.0 * zr * lse
        losses[r0:r1] = torch.where(keep[r0:r1], ce * sc, 0.0)
        if grad is None:
            continue
        # gradient: (total · p − q ⊙ w) · scale / T, written once.
        p = logp.exp_()
        sct = sc / temp
        coef = (total * sct).unsqueeze(1) if isinstance(total, Tensor) else (sct * total).unsqueeze(1)
        g = grad[r0:r1]
        if opts.index_target and eps == 0.0:
            # p · coef written once (converting to a half-precision gradient on the way), then
            # the target column, computed in the compute dtype and rounded once.
            torch.mul(p, coef, out=g)
            hit = sct * -1.0 if wy is None else sct * wy * -1.0
            column = p.gather(1, y) * coef + hit.unsqueeze(1)
            g.scatter_(1, y, column.to(g.dtype))
            continue
        work = torch.mul(p, coef, out=g) if grad_in_place_dtype else p.mul_(coef)
        if opts.index_target:
            hit = sct * (-(1.0 - eps)) if wy is None else sct * wy * (-(1.0 - eps))
            work.scatter_add_(1, y, hit.unsqueeze(1))
        elif eps < 1.0:
            work.addcmul_(tw, (sct * (-(1.0 - eps))).unsqueeze(1))
        if eps > 0.0:
            spread = (sct * (eps / n_classes)).unsqueeze(1)
            if w_row is not None:
                work.addcmul_(spread, w_row, value=-1.0)
            else:
                work.sub_(spread)
        if not grad_in_place_dtype:
            g.copy_(work)
    return losses, grad


def saved_gradient(ctx, forward, name: str) -> Tensor:
    """The gradient a one-pass forward saved on ``ctx.grad``, handed over once (no copy), or
    recomputed by ``forward`` from the saved inputs for a later backward through the same graph;
    shared by the backward of every one-pass implementation (``name`` says which in errors)."""
    opts: XentOptions = ctx.opts
    if torch.is_grad_enabled():
        raise RuntimeError(f"{opts.fn}(): {name} has no double backward (create_graph=True); "
                           "use impl='composite' for higher-order gradients")
    grad, ctx.grad = ctx.grad, None
    if grad is None:
        if opts.inplace_backward:
            raise RuntimeError(
                f"{opts.fn}(): with inplace_backward=True the gradient lives in the logits' memory "
                "and the backward can run only once; use inplace_backward=False to backpropagate twice")
        rows, target, weight, keep, scale = ctx.saved_tensors
        _, grad = forward(rows, target, weight, keep, scale, opts._replace(validate=False), True)
    return grad


class _FusedCrossEntropy(torch.autograd.Function):
    """Loss and gradient in one forward pass; the backward scales the saved gradient.

    The first backward scales the saved gradient in place and hands it over (no allocation).
    A later backward through the same graph (``retain_graph=True``, gradcheck) recomputes the
    gradient from the saved logits; with ``inplace_backward`` the logits are gone, so it raises.
    Higher-order gradients are not implemented here (``impl='composite'`` has them).
    """

    @staticmethod
    def forward(ctx, rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor,  # type: ignore[override]
                scale: Tensor, opts: XentOptions) -> Tensor:
        want_grad = ctx.needs_input_grad[0]
        losses, grad = fused_forward(rows, target, weight, keep, scale, opts, want_grad)
        ctx.grad = grad
        ctx.opts = opts
        if want_grad and not opts.inplace_backward:
            ctx.save_for_backward(rows, target, weight, keep, scale)
        out = losses if opts.per_row else losses.sum()
        return out.to(rows.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        opts: XentOptions = ctx.opts
        grad = saved_gradient(ctx, fused_forward, "impl='native' or 'torch'")
        if opts.per_row:
            grad.mul_(grad_output.to(grad.dtype).unsqueeze(1))
        elif torch.compiler.is_compiling() or not bool(grad_output == 1):  # no host read when compiled
            grad.mul_(grad_output.to(grad.dtype))
        return grad, None, None, None, None, None


def fused_cross_entropy(rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor,
                        scale: Tensor, opts: XentOptions) -> Tensor:
    """(N,) losses for reduction 'none', else their scaled sum; through the fused Function."""
    return _FusedCrossEntropy.apply(rows, target, weight, keep, scale, opts)


def composite_cross_entropy(rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor,
                            scale: Tensor, opts: XentOptions) -> Tensor:
    """The same values as :func:`fused_cross_entropy`, written with differentiable torch ops.

    Used under ``torch.compile`` (the compiler fuses it itself), for higher-order gradients, and
    when the target probabilities or the class weights require a gradient.
    """
    n_classes = rows.shape[1]
    cd = compute_dtype(rows)
    eps, z = opts.label_smoothing, opts.z_loss
    s = rows.to(cd)
    if opts.temperature != 1.0:
        s = s / opts.temperature
    if opts.validate:
        check_row_max(opts, s.detach().amax(1), 0, keep)
    # An excluded row may be all -inf (padding); its log-softmax would be NaN, and NaN times the
    # zero the row's loss is multiplied by stays NaN in the gradient.
    s = s.masked_fill(~keep.unsqueeze(1), 0.0)
    logp = torch.log_softmax(s, 1)
    w = weight.to(cd) if weight is not None else None
    if opts.index_target:
        wy = w[target] if w is not None else None
        if eps < 1.0:
            lpy = logp.gather(1, target.unsqueeze(1)).squeeze(1)
            ce = -(1.0 - eps) * (lpy if wy is None else wy * lpy)
        else:
            ce = logp.new_zeros(logp.shape[0])
        row_w = wy
    else:
        t = target.to(cd)
        tw = t * w if w is not None else t
        safe = torch.where(tw == 0, torch.zeros_like(logp), logp)
        ce = -(1.0 - eps) * (tw * safe).sum(1)
        row_w = None
    if eps > 0.0:
        smooth = (logp * w).sum(1) if w is not None else logp.sum(1)
        ce = ce - eps / n_classes * smooth
    if z > 0.0:
        lse = torch.logsumexp(s, 1)
        ce = ce + (z if row_w is None else z * row_w) * lse * lse
    values = torch.where(keep, ce * scale.to(cd), torch.zeros_like(ce))
    out = values if opts.per_row else values.sum()
    return out.to(rows.dtype)
