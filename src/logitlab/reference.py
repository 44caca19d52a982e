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


# --- sparse maps (sparsemax, 1.5-entmax, α-entmax): sort-based, row by row ---


def _sorted_desc(row: Tensor) -> list[float]:
    return sorted((float(v) for v in row), reverse=True)


def _shift(row: Tensor) -> Tensor:
    """z − max z: the same map (both are shift invariant), without losing the 1 to rounding."""
    return row - row.max()


def sparsemax(logits: Tensor, dim: int = -1) -> Tensor:
    """[z − τ]_+ with τ from the sorted row: the largest k with 1 + k z_(k) > Σ_{j≤k} z_(j)."""
    rows, shape = _rows(logits, dim)
    out = torch.zeros_like(rows)
    for r, row in enumerate(rows):
        if bool(torch.isneginf(row).all()):
            continue  # every class excluded: an all-zero row
        row = _shift(row)
        zs = _sorted_desc(row)
        total, size, tau = 0.0, 0, 0.0
        for k, value in enumerate(zs, start=1):
            total += value
            if 1 + k * value > total:
                size, tau = k, (total - 1) / k
        out[r] = (row - tau).clamp_min(0)
    return _unrows(out, shape, dim)


def entmax15(logits: Tensor, dim: int = -1) -> Tensor:
    """[z/2 − τ]_+², τ from the support's Σ x and Σ x² (x = z/2), support found on the sorted row."""
    rows, shape = _rows(logits, dim)
    out = torch.zeros_like(rows)
    for r, row in enumerate(rows):
        if bool(torch.isneginf(row).all()):
            continue
        row = _shift(row)
        xs = [v / 2 for v in _sorted_desc(row) if v != -math.inf]
        total, total_sq, tau = 0.0, 0.0, 0.0
        for k, value in enumerate(xs, start=1):
            total += value
            total_sq += value * value
            mean = total / k
            delta = (1 - (total_sq - k * mean * mean)) / k
            tau_k = mean - math.sqrt(max(delta, 0.0))
            if tau_k <= value:
                tau = tau_k
        out[r] = (row / 2 - tau).clamp_min(0) ** 2
    return _unrows(out, shape, dim)


def entmax_bisect(logits: Tensor, alpha: float = 1.5, dim: int = -1, n_iter: int = 100) -> Tensor:
    """[(α−1) z − τ]_+^{1/(α−1)} with Σ = 1, τ by plain bisection on [max − 1, max] (in the
    (α−1) z scale), all rows at once; 100 halvings reach float64 resolution."""
    rows, shape = _rows(logits, dim)
    q = 1 / (alpha - 1)
    excluded = torch.isneginf(rows).all(-1, keepdim=True)
    rows = torch.where(excluded, 0.0, rows)
    x = (alpha - 1) * (rows - rows.max(-1, keepdim=True).values)
    hi = x.max(-1, keepdim=True).values
    lo = hi - 1
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        above = ((x - mid).clamp_min(0) ** q).sum(-1, keepdim=True) >= 1
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    p = (x - lo).clamp_min(0) ** q
    out = torch.where(excluded, 0.0, p / p.sum(-1, keepdim=True))
    return _unrows(out, shape, dim)


def gini_regularizer(probs: Tensor, dim: int = -1) -> Tensor:
    """½ Σ p² − ½."""
    return 0.5 * (probs.to(F64) ** 2).sum(dim) - 0.5


def tsallis_regularizer(probs: Tensor, alpha: float = 1.5, dim: int = -1) -> Tensor:
    """(Σ p^α − 1) / (α (α − 1))."""
    return ((probs.to(F64) ** alpha).sum(dim) - 1) / (alpha * (alpha - 1))


# ---------------------------------------------------------------------------------------------
# Losses and divergences
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Fused linear + loss
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Structures (linear-chain CRF by enumeration) and maximum entropy
# ---------------------------------------------------------------------------------------------
