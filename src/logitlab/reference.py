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

# --- cross-entropy family (naive: one row at a time, straight from the definitions) ---


def _row_ce(z: Tensor, q: Tensor, w: Tensor) -> Tensor:
    """-sum_c q_c w_c log p_c for one row, with 0 * log 0 = 0."""
    lse = torch.log(torch.exp(z - z.max()).sum()) + z.max()
    total = torch.zeros((), dtype=F64)
    for c in range(z.numel()):
        if q[c] * w[c] != 0:
            total = total - q[c] * w[c] * (z[c] - lse)
    return total


def cross_entropy(logits: Tensor, target: Tensor, *, dim: int = -1, weight: Tensor | None = None,
                  ignore_index: int = -100, mask: Tensor | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0, z_loss: float = 0.0, temperature: float = 1.0) -> Tensor:
    """Weighted, smoothed cross-entropy + z-loss; mean over the kept rows' weights (0 if none)."""
    rows, shape = _rows(logits, dim)
    n, c = rows.shape
    index = not target.is_floating_point()
    targets = target.reshape(-1) if index else _rows(target, dim)[0]
    keeps = mask.reshape(-1) if mask is not None else torch.ones(n, dtype=torch.bool)
    w = weight.to(F64) if weight is not None else torch.ones(c, dtype=F64)
    values, row_weights = [], []
    for i in range(n):
        z = rows[i] / temperature
        keep = bool(keeps[i]) and not (index and int(targets[i]) == ignore_index)
        if not keep:
            values.append(torch.where(torch.isfinite(z), z, 0).sum() * 0)  # 0, connected to the graph
            row_weights.append(torch.zeros((), dtype=F64))
            continue
        if index:
            q = torch.zeros(c, dtype=F64)
            q[int(targets[i])] = 1.0
            r = w[int(targets[i])]
        else:
            q = targets[i].clone()
            r = torch.ones((), dtype=F64)
        q = (1 - label_smoothing) * q + label_smoothing / c
        lse = torch.log(torch.exp(z - z.max()).sum()) + z.max()
        values.append(_row_ce(z, q, w) + z_loss * r * lse**2)
        row_weights.append(r)
    v = torch.stack(values) if values else torch.zeros(0, dtype=F64)
    if reduction == "none":
        return v.reshape(shape[:-1])
    if reduction == "sum":
        return v.sum()
    denom = torch.stack(row_weights).sum() if row_weights else torch.zeros((), dtype=F64)
    return v.sum() / denom if denom != 0 else v.sum() * 0


def nll_loss(log_probs: Tensor, target: Tensor, *, dim: int = -1, weight: Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """-w_y log_probs[y] per row; mean over the kept rows' weights (0 if none)."""
    rows, shape = _rows(log_probs, dim)
    t = target.reshape(-1)
    w = weight.to(F64) if weight is not None else torch.ones(rows.shape[1], dtype=F64)
    values, denom = [], torch.zeros((), dtype=F64)
    for i in range(rows.shape[0]):
        if int(t[i]) == ignore_index:
            values.append(torch.zeros((), dtype=F64))
            continue
        values.append(-w[int(t[i])] * rows[i, int(t[i])])
        denom = denom + w[int(t[i])]
    v = torch.stack(values)
    if reduction == "none":
        return v.reshape(shape[:-1])
    return v.sum() if reduction == "sum" else (v.sum() / denom if denom != 0 else v.sum() * 0)


def binary_cross_entropy_with_logits(logits: Tensor, target: Tensor, *, weight: Tensor | None = None,
                                     pos_weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """-w [pw t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))], elementwise."""
    z, t = logits.to(F64), target.to(F64)
    pw = pos_weight.to(F64) if pos_weight is not None else torch.ones((), dtype=F64)
    log_sig = -torch.log1p(torch.exp(-z.abs())) + torch.minimum(z, torch.zeros_like(z))
    log_one_minus = log_sig - z
    v = -(pw * t * log_sig + (1 - t) * log_one_minus)
    if weight is not None:
        v = v * weight.to(F64)
    return v if reduction == "none" else (v.sum() if reduction == "sum" else v.mean())


def focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 2.0, alpha: float | Tensor | None = None,
               dim: int = -1, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """-alpha_y (1 - p_y)^gamma log p_y per row; mean over the kept rows."""
    rows, shape = _rows(logits, dim)
    t = target.reshape(-1)
    values, kept = [], 0
    for i in range(rows.shape[0]):
        y = int(t[i])
        if y == ignore_index:
            values.append(torch.zeros((), dtype=F64))
            continue
        p = torch.exp(rows[i] - rows[i].max())
        p = p / p.sum()
        a = 1.0 if alpha is None else (float(alpha[y]) if isinstance(alpha, Tensor) else float(alpha))
        values.append(-a * (1 - p[y]) ** gamma * torch.log(p[y]))
        kept += 1
    v = torch.stack(values)
    if reduction == "none":
        return v.reshape(shape[:-1])
    return v.sum() if reduction == "sum" else v.sum() / max(kept, 1)


def poly1_cross_entropy(logits: Tensor, target: Tensor, *, epsilon: float = 1.0, dim: int = -1,
                        weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                        label_smoothing: float = 0.0) -> Tensor:
    """CE + epsilon * w_y * (1 - sum_c q_c p_c), q the smoothed one-hot target."""
    rows, shape = _rows(logits, dim)
    t = target.reshape(-1)
    c = rows.shape[1]
    w = weight.to(F64) if weight is not None else torch.ones(c, dtype=F64)
    values, denom = [], torch.zeros((), dtype=F64)
    for i in range(rows.shape[0]):
        y = int(t[i])
        if y == ignore_index:
            values.append(torch.zeros((), dtype=F64))
            continue
        q = torch.full((c,), label_smoothing / c, dtype=F64)
        q[y] += 1 - label_smoothing
        p = torch.exp(rows[i] - rows[i].max())
        p = p / p.sum()
        values.append(_row_ce(rows[i], q, w) + epsilon * w[y] * (1 - (q * p).sum()))
        denom = denom + w[y]
    v = torch.stack(values)
    if reduction == "none":
        return v.reshape(shape[:-1])
    return v.sum() if reduction == "sum" else (v.sum() / denom if denom != 0 else v.sum() * 0)

# --- end of the cross-entropy family ---


# ---------------------------------------------------------------------------------------------
# Fused linear + loss
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Structures (linear-chain CRF by enumeration) and maximum entropy
# ---------------------------------------------------------------------------------------------
