"""linear_divergence_loss: distillation between two linear heads, chunk by chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from logitlab import _validation as v
from logitlab.fused._engine import FusedLinearLoss, Plan, accumulation_dtype, chunk_rows
from logitlab.fused.cross_entropy import check_linear, check_target, choose_impl

__all__ = ["linear_divergence_loss", "DIVERGENCES"]

DIVERGENCES = ("kl", "reverse_kl", "js")


def _divergence_rows(log_p: Tensor, log_q: Tensor, divergence: str, beta: float) -> tuple[Tensor, Tensor]:
    """Per-row D between teacher p and student q (log-probabilities, rows along dim 1).

    Returns (value, ∂value/∂log_q·q-chain): the gradient with respect to the student's logits
    divided by temperature, i.e. with respect to s = z / T.
    """
    q = log_q.exp()
    if divergence == "kl":        # D(p ‖ q) = Σ p (log p − log q)
        p = log_p.exp()
        value = torch.where(p > 0, p * (log_p - log_q), p.new_zeros(())).sum(1)
        return value, q - p
    if divergence == "reverse_kl":  # D(q ‖ p) = Σ q (log q − log p)
        ratio = log_q - log_p
        value = (q * ratio).sum(1)
        return value, q * (ratio - value.unsqueeze(1))
    # Generalized Jensen–Shannon: m = β p + (1 − β) q,
    # JS_β = β D(p ‖ m) + (1 − β) D(q ‖ m); ∂JS_β/∂q = (1 − β) log(q / m).
    log_m = torch.logaddexp(log_p + math.log(beta) if beta > 0 else torch.full_like(log_p, -math.inf),
                            log_q + math.log(1 - beta) if beta < 1 else torch.full_like(log_q, -math.inf))
    p = log_p.exp()
    value = (1 - beta) * (q * (log_q - log_m)).sum(1)
    if beta > 0:
        value = value + beta * torch.where(p > 0, p * (log_p - log_m), p.new_zeros(())).sum(1)
    slope = (1 - beta) * (log_q - log_m)
    return value, q * (slope - (q * slope).sum(1, keepdim=True))


@dataclass
class DivergenceKernel:
    """Rows of D(teacher ‖ student) at temperature T (+ α·cross-entropy on hard labels)."""

    teacher_hidden: Tensor   # (N, D_t)
    teacher_weight: Tensor   # (V, D_t)
    teacher_bias: Tensor | None
    keep: Tensor             # (N,) bool
    target: Tensor | None    # (N,) or None
    divergence: str
    beta: float
    temperature: float
    hard_label_weight: float

    def __call__(self, z: Tensor, start: int, stop: int, need_grad: bool):
        keep = self.keep[start:stop]
        t = self.temperature
        teacher = self.teacher_hidden[start:stop] @ self.teacher_weight.t()
        teacher = teacher.to(z.dtype)
        if self.teacher_bias is not None:
            teacher.add_(self.teacher_bias.to(z.dtype))
        log_p = torch.log_softmax(teacher.div_(t), dim=1)
        log_q = torch.log_softmax(z / t, dim=1)
        loss, grad = _divergence_rows(log_p, log_q, self.divergence, self.beta)
        grad.div_(t)
        if self.hard_label_weight:
            log_q1 = log_q if t == 1 else torch.log_softmax(z, dim=1)
            index = torch.where(keep, self.target[start:stop], torch.zeros_like(self.target[start:stop]))
            loss = loss - self.hard_label_weight * log_q1.gather(1, index.unsqueeze(1)).squeeze(1)
            if need_grad:
                grad.add_(self.hard_label_weight * log_q1.exp())
                grad.scatter_add_(1, index.unsqueeze(1), grad.new_full((stop - start, 1), -self.hard_label_weight))
        loss = torch.where(keep, loss, loss.new_zeros(()))
        if need_grad:
            grad.masked_fill_(~keep.unsqueeze(1), 0.0)
        return loss, grad


def linear_divergence_loss(hidden: Tensor, weight: Tensor, *, teacher_hidden: Tensor, teacher_weight: Tensor,
                           divergence: str = "kl", beta: float = 0.5, temperature: float = 1.0,
                           target: Tensor | None = None, hard_label_weight: float = 0.0,
                           bias: Tensor | None = None, teacher_bias: Tensor | None = None,
                           ignore_index: int = -100, reduction: str = "mean", chunk_size: int | None = None,
                           impl: str = "auto", accum_dtype: torch.dtype = torch.float32) -> Tensor:
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

    Args:
        hidden: (*batch, D) student features. weight: (V, D) student head. bias: (V,) optional.
        teacher_hidden: (*batch, D_t). teacher_weight: (V, D_t). teacher_bias: (V,) optional.
        divergence: 'kl' | 'reverse_kl' | 'js'.
        beta: β in [0, 1] of the generalized JS divergence.
        temperature: T > 0 applied to both heads' logits.
        target: (*batch) class indices (or ``ignore_index``), optional.
        hard_label_weight: α >= 0, weight of the cross-entropy term (needs ``target``).
        reduction: 'none' | 'mean' (over kept rows) | 'sum'.
        chunk_size, impl, accum_dtype: as in :func:`linear_cross_entropy`.

    Returns:
        A scalar (or (*batch) for 'none') in the dtype of ``hidden``.

    Raises:
        ValueError/TypeError: shapes that do not fit or bad options.

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
    vocab = weight.shape[0]
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
        hard_label_weight=float(hard_label_weight))
    kept = int(keep.sum())
    scale = None if reduction == "none" else 1.0 if reduction == "sum" else (1.0 / kept if kept else 0.0)
    hidden2d = hidden.reshape(rows, hidden.shape[-1])

    if choose_impl(impl, rows, vocab) == "naive":
        acc = accumulation_dtype(hidden.dtype, accum_dtype)
        z = torch.nn.functional.linear(hidden2d, weight, bias).to(acc)
        loss_rows, _ = kernel(z, 0, rows, need_grad=False)
        out = loss_rows if scale is None else loss_rows.sum() * scale
        return (out.reshape(target.shape if target is not None else hidden.shape[:-1]) if scale is None
                else out).to(hidden.dtype)

    plan = Plan(chunk=chunk_size or chunk_rows(rows, vocab, hidden.dtype), accum_dtype=accum_dtype)
    out = FusedLinearLoss.apply(hidden2d, weight, bias, kernel, scale, plan)
    return out.reshape(hidden.shape[:-1]) if reduction == "none" else out
