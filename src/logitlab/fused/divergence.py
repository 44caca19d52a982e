"""linear_divergence_loss: distillation between two linear heads, chunk by chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from logitlab import _validation as v
from logitlab.fused._engine import FusedLinearLoss, Plan, accumulation_dtype, chunk_rows
from logitlab.fused._kernel import all_reduce
from logitlab.fused.cross_entropy import check_linear, check_target, choose_impl, vocab_offsets

__all__ = ["linear_divergence_loss", "DIVERGENCES"]

DIVERGENCES = ("kl", "reverse_kl", "js")


def _log_normalizers(blocks: list[Tensor], group, extra: Tensor) -> tuple[Tensor, Tensor]:
    """log Σ_c exp x_c over the FULL vocabulary for each (rows, V_local) block, and Σ_ranks ``extra``.

    Two all-reduces whatever the number of blocks: the row maxima (MAX), then the shifted sums of
    exponentials together with ``extra`` (SUM), so a row statistic such as the target logit
    rides along. Without a group both are no-ops and this is a plain log-sum-exp.
    """
    rows, local = blocks[0].shape
    if local:
        peaks = torch.stack([b.detach().amax(1) for b in blocks])
    else:
        peaks = blocks[0].new_full((len(blocks), rows), -math.inf)
    all_reduce(peaks, "max", group)
    peaks = torch.where(torch.isfinite(peaks), peaks, peaks.new_zeros(()))
    sums = torch.cat([torch.stack([(b - m.unsqueeze(1)).exp().sum(1) for b, m in zip(blocks, peaks)]),
                      extra.reshape(-1, rows)])
    all_reduce(sums, "sum", group)
    return peaks + sums[: len(blocks)].log(), sums[len(blocks):]


def _divergence_rows(log_p: Tensor, log_q: Tensor, divergence: str, beta: float, group=None,
                     need_grad: bool = True) -> tuple[Tensor, Tensor | None]:
    """Per-row D between teacher p and student q, given as log-probabilities (rows along dim 1).

    The columns may be this rank's slice of the vocabulary (log-probabilities normalized over the
    full one): the sums over the columns are then all-reduced over ``group`` (one all-reduce).

    Returns (value of the full rows, gradient with respect to s = z / T on these columns, or
    None without ``need_grad``).
    """
    q = log_q.exp()
    zero = q.new_zeros(())
    if divergence == "kl":        # D(p ‖ q) = Σ p (log p − log q);  ∂/∂s = q − p
        p = log_p.exp()
        value = torch.where(p > 0, p * (log_p - log_q), zero).sum(1)
        return all_reduce(value, "sum", group), (q - p if need_grad else None)
    if divergence == "reverse_kl":  # D(q ‖ p) = Σ q (log q − log p);  ∂/∂s = q (log q − log p − D)
        ratio = torch.where(q > 0, log_q - log_p, zero)
        value = all_reduce((q * ratio).sum(1), "sum", group)
        return value, (q * (ratio - value.unsqueeze(1)) if need_grad else None)
    # Generalized Jensen–Shannon: m = β p + (1 − β) q,
    # JS_β = β D(p ‖ m) + (1 − β) D(q ‖ m); ∂JS_β/∂q = (1 − β) log(q / m), so with
    # slope = (1 − β) log(q / m): ∂/∂s = q (slope − Σ q·slope).
    log_m = torch.logaddexp(log_p + math.log(beta) if beta > 0 else torch.full_like(log_p, -math.inf),
                            log_q + math.log(1 - beta) if beta < 1 else torch.full_like(log_q, -math.inf))
    p = log_p.exp()
    slope = torch.where(q > 0, (1 - beta) * (log_q - log_m), zero)
    sums = torch.stack([(q * slope).sum(1), torch.where(p > 0, p * (log_p - log_m), zero).sum(1)])
    all_reduce(sums, "sum", group)
    value = sums[0] + beta * sums[1] if beta > 0 else sums[0]
    return value, (q * (slope - sums[0].unsqueeze(1)) if need_grad else None)


@dataclass
class DivergenceKernel:
    """Rows of D(teacher ‖ student) at temperature T (+ α·cross-entropy on hard labels).

    With a ``group``, both heads hold this rank's columns [vocab_start, vocab_start + V_local)
    of the vocabulary, and per chunk three all-reduces of (rows,)-sized statistics give every
    rank the rows of the full vocabulary: the maxima of z / T, u / T (and z when T ≠ 1 and the
    hard-label term is on), then their sums of exponentials with the target logit, then the
    divergence's own sums over the columns.
    """

    teacher_hidden: Tensor   # (N, D_t)
    teacher_weight: Tensor   # (V_local, D_t)
    teacher_bias: Tensor | None
    keep: Tensor             # (N,) bool
    target: Tensor | None    # (N,) global class indices, or None
    divergence: str
    beta: float
    temperature: float
    hard_label_weight: float
    vocab_start: int = 0
    group: object = None

    def __call__(self, z: Tensor, start: int, stop: int, need_grad: bool):
        keep = self.keep[start:stop]
        t, alpha, group = self.temperature, self.hard_label_weight, self.group
        rows, local = z.shape
        teacher = self.teacher_hidden[start:stop] @ self.teacher_weight.t()
        teacher = teacher.to(z.dtype)
        if self.teacher_bias is not None:
            teacher.add_(self.teacher_bias.to(z.dtype))
        u = teacher.div_(t)
        s = z / t
        blocks = [s, u] + ([z] if alpha and t != 1 else [])  # the hard-label term is at T = 1
        z_t = z.new_zeros(rows)
        if alpha:
            index = self.target[start:stop] - self.vocab_start
            owned = keep & (index >= 0) & (index < local)
            index = torch.where(owned, index, torch.zeros_like(index)).unsqueeze(1)
            if local:
                z_t = torch.where(owned, z.gather(1, index).squeeze(1), z_t)
        lse, (z_t,) = _log_normalizers(blocks, group, z_t)
        log_q = s - lse[0].unsqueeze(1)
        log_p = u.sub_(lse[1].unsqueeze(1))
        loss, grad = _divergence_rows(log_p, log_q, self.divergence, self.beta, group, need_grad)
        if alpha:
            lse_z = lse[2] if t != 1 else lse[0]
            loss = loss + alpha * (lse_z - z_t)
        loss = torch.where(keep, loss, loss.new_zeros(()))
        if not need_grad:
            return loss, None
        grad.div_(t)
        if alpha:  # + α (softmax(z) − onehot(target)) on these columns
            grad.add_((z - lse_z.unsqueeze(1)).exp_().mul_(alpha))
            if local:
                grad.scatter_add_(1, index, torch.where(owned, grad.new_full((), -alpha), grad.new_zeros(())).unsqueeze(1))
        return loss, grad.masked_fill_(~keep.unsqueeze(1), 0.0)


def linear_divergence_loss(hidden: Tensor, weight: Tensor, *, teacher_hidden: Tensor, teacher_weight: Tensor,
                           divergence: str = "kl", beta: float = 0.5, temperature: float = 1.0,
                           target: Tensor | None = None, hard_label_weight: float = 0.0,
                           bias: Tensor | None = None, teacher_bias: Tensor | None = None,
                           ignore_index: int = -100, reduction: str = "mean", chunk_size: int | None = None,
                           impl: str = "auto", accum_dtype: torch.dtype = torch.float32,
                           process_group=None) -> Tensor:
    r"""Distillation loss between a student head and a frozen teacher head, logits never materialized.

    With student logits z = hidden @ weight.T + bias, teacher logits u = teacher_hidden @
    teacher_weight.T + teacher_bias, q = softmax(z / T) and p = softmax(u / T), each row's loss is

    * ``"kl"``: D(p ‖ q) = Σ p (log p − log q)  (forward KL, mean-seeking);
    * ``"reverse_kl"``: D(q ‖ p) = Σ q (log q − log p)  (mode-seeking);
    * ``"js"``: JS_β = β·D(p ‖ m) + (1 − β)·D(q ‖ m), m = β p + (1 − β) q  (β = 0.5: Jensen–Shannon),

    plus ``hard_label_weight``·cross_entropy(z, target) when ``target`` is given. No T² factor is
    applied (multiply by it yourself to follow Hinton et al.). Equivalent to computing both logit
    matrices and the divergence row by row; here only a chunk of rows of each exists at a time.
    Gradients flow to the student (hidden, weight, bias) only; the teacher is treated as
    constant. Rows whose target is ``ignore_index`` count in neither term.

    With ``process_group``, ``weight`` and ``teacher_weight`` (and ``bias``, ``teacher_bias``)
    are this rank's contiguous rows of the vocabulary, in rank order (shards may be uneven);
    ``hidden``, ``teacher_hidden`` and ``target`` (global class indices) are the same on every
    rank. Per chunk of rows, only (rows,)-sized statistics cross the group: the row maxima of
    z / T and u / T, their sums of exponentials (with the target logit), then the divergence's
    sums over each rank's columns; logits and weights are never gathered. Every rank gets the
    loss of the full vocabulary, the same grad_hidden (summed over the ranks), and for its
    shard the matching rows of the full grad_weight and grad_bias.

    Args:
        hidden: (*batch, D) student features. weight: (V, D) student head. bias: (V,) optional.
        teacher_hidden: (*batch, D_t). teacher_weight: (V, D_t). teacher_bias: (V,) optional.
            (With ``process_group``, V is V_local, this rank's number of vocabulary rows.)
        divergence: 'kl' | 'reverse_kl' | 'js'.
        beta: β in [0, 1] of the generalized JS divergence.
        temperature: T > 0 applied to both heads' logits.
        target: (*batch) class indices (or ``ignore_index``), optional.
        hard_label_weight: α >= 0, weight of the cross-entropy term (needs ``target``).
        reduction: 'none' | 'mean' (over kept rows) | 'sum'.
        chunk_size, impl, accum_dtype: as in :func:`linear_cross_entropy`.
        process_group: a torch.distributed group over which both heads are sharded by
            vocabulary rows, or None (one process holds the whole vocabulary). With a group,
            ``impl="naive"`` also runs chunked (autograd cannot differentiate an all-reduce).

    Returns:
        A scalar (or (*batch) for 'none') in the dtype of ``hidden``, the same on every rank.

    Raises:
        ValueError/TypeError: shapes that do not fit, bad options, indices out of range (of the
        full vocabulary); RuntimeError naming the collective when another rank fails.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> h, w, th, tw = torch.randn(5, 3), torch.randn(8, 3), torch.randn(5, 4), torch.randn(8, 4)
        >>> loss = linear_divergence_loss(h, w, teacher_hidden=th, teacher_weight=tw, impl="chunked", chunk_size=2)
        >>> p, log_q = torch.softmax(th @ tw.T, 1), torch.log_softmax(h @ w.T, 1)
        >>> bool(torch.allclose(loss, (p * (p.log() - log_q)).sum(1).mean()))
        True

    References:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015);
        Agarwal et al., "On-Policy Distillation of Language Models" (2024) for JS_β.
    """
    fn = "linear_divergence_loss"
    check_linear(fn, hidden, weight, bias)
    v.check_floating(fn, "teacher_hidden", teacher_hidden)
    v.check_floating(fn, "teacher_weight", teacher_weight)
    if tuple(teacher_hidden.shape[:-1]) != tuple(hidden.shape[:-1]):
        v.fail(fn, "teacher_hidden", f"batch shape {tuple(hidden.shape[:-1])} (hidden.shape[:-1])",
               f"<shape {tuple(teacher_hidden.shape)}>")
    if teacher_weight.ndim != 2 or tuple(teacher_weight.shape) != (weight.shape[0], teacher_hidden.shape[-1]):
        v.fail(fn, "teacher_weight", f"shape ({weight.shape[0]}, {teacher_hidden.shape[-1]})",
               f"<shape {tuple(teacher_weight.shape)}>")
    if teacher_bias is not None and tuple(teacher_bias.shape) != (weight.shape[0],):
        v.fail(fn, "teacher_bias", f"shape ({weight.shape[0]},)", f"<shape {tuple(teacher_bias.shape)}>")
    v.check_choice(fn, "divergence", divergence, DIVERGENCES)
    v.check_range(fn, "beta", beta, 0.0, 1.0)
    v.check_positive(fn, "temperature", temperature)
    v.check_range(fn, "hard_label_weight", hard_label_weight, 0.0, float("inf"))
    v.check_reduction(fn, reduction)
    v.check_choice(fn, "impl", impl, ("auto", "chunked", "naive"))
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        v.fail(fn, "chunk_size", "None or an int >= 1", chunk_size)
    vocab_start, vocab = 0, weight.shape[0]
    if process_group is not None:
        vocab_start, vocab = vocab_offsets(weight.shape[0], process_group, weight.device)
    rows = hidden.numel() // max(hidden.shape[-1], 1)
    if target is not None:
        check_target(fn, target, hidden)
        flat_target = target.reshape(-1).long()
        v.check_index_target(fn, "target", flat_target, vocab, ignore_index=ignore_index)
        keep = flat_target != ignore_index
    else:
        if hard_label_weight:
            v.fail(fn, "target", "class indices when hard_label_weight > 0", None)
        flat_target, keep = None, torch.ones(rows, dtype=torch.bool, device=hidden.device)

    kernel = DivergenceKernel(
        teacher_hidden=teacher_hidden.detach().reshape(rows, teacher_hidden.shape[-1]),
        teacher_weight=teacher_weight.detach(),
        teacher_bias=None if teacher_bias is None else teacher_bias.detach(), keep=keep, target=flat_target,
        divergence=divergence, beta=float(beta), temperature=float(temperature),
        hard_label_weight=float(hard_label_weight), vocab_start=vocab_start, group=process_group)
    kept = int(keep.sum())
    scale = None if reduction == "none" else 1.0 if reduction == "sum" else (1.0 / kept if kept else 0.0)
    hidden2d = hidden.reshape(rows, hidden.shape[-1])

    if choose_impl(impl, rows, vocab) == "naive" and process_group is None:
        acc = accumulation_dtype(hidden.dtype, accum_dtype)
        z = torch.nn.functional.linear(hidden2d, weight, bias).to(acc)
        loss_rows, _ = kernel(z, 0, rows, need_grad=False)
        out = loss_rows if scale is None else loss_rows.sum() * scale
        return (out.reshape(target.shape if target is not None else hidden.shape[:-1]) if scale is None
                else out).to(hidden.dtype)

    # The chunk depends only on what every rank shares (rows, full vocabulary): the ranks must
    # run the same number of chunks, since each chunk's statistics are all-reduced.
    plan = Plan(chunk=chunk_size or chunk_rows(rows, vocab, hidden.dtype), accum_dtype=accum_dtype,
                group=process_group)
    out = FusedLinearLoss.apply(hidden2d, weight, bias, kernel, scale, plan)
    return out.reshape(hidden.shape[:-1]) if reduction == "none" else out
