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


# --- divergences (D(target ‖ model) between probability tensors; one value per row) ---------


def _div_rows(fn, target_probs: Tensor, model_probs: Tensor, dim: int) -> Tensor:
    p, shape = _rows(target_probs, dim)
    q, _ = _rows(model_probs, dim)
    out = torch.tensor([fn([float(v) for v in p[r]], [float(v) for v in q[r]])
                        for r in range(p.shape[0])], dtype=F64)
    return out.reshape(shape[:-1])


def _kl_row(p: list, q: list) -> float:
    total = 0.0
    for pi, qi in zip(p, q):
        if pi == 0:
            continue  # 0 log 0 = 0
        if qi == 0:
            return math.inf
        total += pi * math.log(pi / qi)
    return total


def _power_sum_row(p: list, q: list, alpha: float) -> float:
    """Σ p^α q^(1−α) with 0^a = 0 for a > 0 and 0^a = inf for a < 0."""
    total = 0.0
    for pi, qi in zip(p, q):
        if (pi == 0 and alpha > 0) or (qi == 0 and alpha < 1):
            continue
        if pi == 0 or qi == 0:
            return math.inf
        total += pi ** alpha * qi ** (1 - alpha)
    return total


def kl_divergence(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """KL(target ‖ model) = Σ p log(p / q) per row."""
    return _div_rows(_kl_row, target_probs, model_probs, dim)


def reverse_kl_divergence(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """KL(model ‖ target)."""
    return _div_rows(lambda p, q: _kl_row(q, p), target_probs, model_probs, dim)


def js_divergence(target_probs: Tensor, model_probs: Tensor, *, beta: float = 0.5, dim: int = -1) -> Tensor:
    """β KL(p ‖ m) + (1 − β) KL(q ‖ m), m = β p + (1 − β) q."""
    def row(p, q):
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
        return beta * _kl_row(p, m) + (1 - beta) * _kl_row(q, m)
    return _div_rows(row, target_probs, model_probs, dim)


def alpha_divergence(target_probs: Tensor, model_probs: Tensor, *, amari_alpha: float = 0.5,
                     dim: int = -1) -> Tensor:
    """(Σ p^α q^(1−α) − 1) / (α (α − 1)); KL at α = 1, reverse KL at α = 0."""
    a = amari_alpha
    def row(p, q):
        if a == 1:
            return _kl_row(p, q)
        if a == 0:
            return _kl_row(q, p)
        return (_power_sum_row(p, q, a) - 1) / (a * (a - 1))
    return _div_rows(row, target_probs, model_probs, dim)


def renyi_divergence(target_probs: Tensor, model_probs: Tensor, *, renyi_alpha: float = 0.5,
                     dim: int = -1) -> Tensor:
    """log(Σ p^α q^(1−α)) / (α − 1); KL at α = 1."""
    a = renyi_alpha
    def row(p, q):
        if a == 1:
            return _kl_row(p, q)
        s = _power_sum_row(p, q, a)
        return math.inf if s == 0 else math.log(s) / (a - 1)
    return _div_rows(row, target_probs, model_probs, dim)


def total_variation(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """½ Σ |p − q|."""
    return _div_rows(lambda p, q: 0.5 * sum(abs(a - b) for a, b in zip(p, q)),
                     target_probs, model_probs, dim)


def hellinger_distance(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """Squared Hellinger ½ Σ (√p − √q)²."""
    return _div_rows(lambda p, q: 0.5 * sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in zip(p, q)),
                     target_probs, model_probs, dim)


def brier_loss(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """Σ (p − q)²."""
    return _div_rows(lambda p, q: sum((a - b) ** 2 for a, b in zip(p, q)), target_probs, model_probs, dim)


def entropy(probs: Tensor, *, dim: int = -1) -> Tensor:
    """H(p) = −Σ p log p in nats, 0 log 0 = 0."""
    return _div_rows(lambda p, _: -sum(a * math.log(a) for a in p if a > 0), probs, probs, dim)


def cross_entropy_between(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """H(p, q) = −Σ p log q; +inf where p > 0 = q."""
    def row(p, q):
        if any(a > 0 and b == 0 for a, b in zip(p, q)):
            return math.inf
        return -sum(a * math.log(b) for a, b in zip(p, q) if a > 0)
    return _div_rows(row, target_probs, model_probs, dim)


# --- Fenchel–Young losses ---------------------------------------------------------------------


def regularizer(probs: Tensor, kind: str, *, alpha: float = 1.5, dim: int = -1) -> Tensor:
    """Ω(p): 'shannon' Σ p log p, 'gini' ½‖p‖² − ½, 'tsallis' (Σ p^α − 1) / (α (α − 1))."""
    def row(p, _):
        if kind == "shannon":
            return sum(a * math.log(a) for a in p if a > 0)
        if kind == "gini":
            return 0.5 * sum(a * a for a in p) - 0.5
        return (sum(a ** alpha for a in p) - 1) / (alpha * (alpha - 1))
    return _div_rows(row, probs, probs, dim)


def fenchel_young_loss(logits: Tensor, target_probs: Tensor, model_probs: Tensor, kind: str, *,
                       alpha: float = 1.5, dim: int = -1) -> Tensor:
    """Ω*(θ) + Ω(y) − ⟨θ, y⟩ with Ω*(θ) = ⟨θ, ŷ⟩ − Ω(ŷ), ŷ = ``model_probs`` the maximizer."""
    theta, _ = _rows(logits, dim)
    y, shape = _rows(target_probs, dim)
    yhat, _ = _rows(model_probs, dim)
    omega_y = regularizer(y, kind, alpha=alpha).tolist()
    omega_yhat = regularizer(yhat, kind, alpha=alpha).tolist()
    out = []
    for r in range(theta.shape[0]):
        inner = sum(float(t) * (float(a) - float(b)) for t, a, b in zip(theta[r], yhat[r], y[r])
                    if float(a) != float(b))
        out.append(inner - omega_yhat[r] + omega_y[r])
    return torch.tensor(out, dtype=F64).reshape(shape[:-1])


# ---------------------------------------------------------------------------------------------
# Fused linear + loss
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Structures (linear-chain CRF by enumeration) and maximum entropy
# ---------------------------------------------------------------------------------------------
