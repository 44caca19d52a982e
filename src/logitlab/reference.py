"""Naive, obviously correct implementations: the truth that tests and benchmarks share.

Everything here is written for clarity, not speed: float64, explicit loops where they make the
definition plain, no tricks for stability beyond what the definition needs. This module imports
only torch and the standard library, never the rest of logitlab, so that a bug in the package
cannot leak into its own expected values.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

F64 = torch.float64


def _rows(x: Tensor, dim: int) -> tuple[Tensor, tuple[int, ...]]:
    moved = x.to(F64).movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1]), tuple(moved.shape)


def _unrows(rows: Tensor, shape: tuple[int, ...], dim: int) -> Tensor:
    return rows.reshape(shape).movedim(-1, dim)


# ---------------------------------------------------------------------------------------------
# Normalizers
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Losses and divergences
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Fused linear + loss
# ---------------------------------------------------------------------------------------------


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None = None,
                         class_weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                         label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None) -> Tensor:
    """Cross-entropy of logits z = hidden @ weight.T + bias, row by row in float64.

    Per kept row with target t: (1 − ε)·w_t·(lse − z_t) + (ε / V)·Σ_c w_c·(lse − z_c) + λ·lse²;
    'mean' divides by Σ w_t over kept rows (0 when no row is kept).
    """
    h = hidden.to(F64).reshape(-1, hidden.shape[-1])
    logits = h @ weight.to(F64).T
    if bias is not None:
        logits = logits + bias.to(F64)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    vocab = logits.shape[1]
    w = torch.ones(vocab, dtype=F64) if class_weight is None else class_weight.to(F64)
    flat = target.reshape(-1)
    rows, denom = [], torch.zeros((), dtype=F64)
    for n in range(logits.shape[0]):
        t = int(flat[n])
        if t == ignore_index:
            rows.append(logits[n].sum() * 0)  # zero, but connected to the inputs (zero gradient)
            continue
        lse = torch.logsumexp(logits[n], 0)
        nll = lse - logits[n]
        row = (1 - label_smoothing) * w[t] * nll[t] + label_smoothing / vocab * (w * nll).sum()
        rows.append(row + z_loss * lse**2)
        denom = denom + w[t]
    values = torch.stack(rows) if rows else torch.zeros(0, dtype=F64)
    if reduction == "none":
        return values.reshape(target.shape)
    if reduction == "sum":
        return values.sum()
    return values.sum() / denom if denom > 0 else values.sum() * 0


def linear_divergence_loss(hidden: Tensor, weight: Tensor, *, teacher_hidden: Tensor, teacher_weight: Tensor,
                           divergence: str = "kl", beta: float = 0.5, temperature: float = 1.0,
                           target: Tensor | None = None, hard_label_weight: float = 0.0,
                           bias: Tensor | None = None, teacher_bias: Tensor | None = None,
                           ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Distillation D(teacher ‖ student) (or reverse, or JS_β) of two linear heads, in float64."""
    z = hidden.to(F64).reshape(-1, hidden.shape[-1]) @ weight.to(F64).T
    u = teacher_hidden.to(F64).reshape(-1, teacher_hidden.shape[-1]) @ teacher_weight.to(F64).T
    if bias is not None:
        z = z + bias.to(F64)
    if teacher_bias is not None:
        u = u + teacher_bias.to(F64)
    values, kept = [], 0
    flat = None if target is None else target.reshape(-1)
    for n in range(z.shape[0]):
        if flat is not None and int(flat[n]) == ignore_index:
            values.append(z[n].sum() * 0)  # zero, but connected to the inputs (zero gradient)
            continue
        p = torch.softmax(u[n] / temperature, 0)
        q = torch.softmax(z[n] / temperature, 0)
        if divergence == "kl":
            value = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum()
        elif divergence == "reverse_kl":
            value = torch.where(q > 0, q * (torch.log(q) - torch.log(p)), torch.zeros_like(q)).sum()
        else:
            m = beta * p + (1 - beta) * q
            value = torch.where(p > 0, beta * p * torch.log(p / m), torch.zeros_like(p)).sum()
            value = value + torch.where(q > 0, (1 - beta) * q * torch.log(q / m), torch.zeros_like(q)).sum()
        if hard_label_weight:
            value = value - hard_label_weight * torch.log_softmax(z[n], 0)[int(flat[n])]
        values.append(torch.as_tensor(value, dtype=F64))
        kept += 1
    out = torch.stack(values)
    if reduction == "none":
        return out.reshape(hidden.shape[:-1])
    if reduction == "sum":
        return out.sum()
    return out.sum() / kept if kept else out.sum() * 0


# ---------------------------------------------------------------------------------------------
# Structures (linear-chain CRF by enumeration) and maximum entropy
# ---------------------------------------------------------------------------------------------
