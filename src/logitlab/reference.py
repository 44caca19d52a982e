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

# --- dense normalizers (softmax, sigmoid, standard, spherical, taylor) ---

def _each_row(logits: Tensor, dim: int, row_fn) -> Tensor:
    rows, shape = _rows(logits, dim)
    out = torch.stack([row_fn(row) for row in rows]) if rows.shape[0] else rows.clone()
    return _unrows(out, shape, dim)


def softmax(logits: Tensor, dim: int = -1, temperature: float = 1.0) -> Tensor:
    """exp(z_i / T) / Σ exp(z_k / T); -inf entries get 0; an all -inf row gives zeros."""
    def row_fn(z: Tensor) -> Tensor:
        if bool((z == -math.inf).all()):
            return torch.zeros_like(z)
        e = torch.exp((z - z.max()) / temperature)
        return e / e.sum()
    return _each_row(logits, dim, row_fn)


def log_softmax(logits: Tensor, dim: int = -1, temperature: float = 1.0) -> Tensor:
    """z_i / T − log Σ exp(z_k / T); an all -inf row gives -inf."""
    def row_fn(z: Tensor) -> Tensor:
        if bool((z == -math.inf).all()):
            return torch.full_like(z, -math.inf)
        m = z.max() / temperature
        return z / temperature - m - torch.log(torch.exp(z / temperature - m).sum())
    return _each_row(logits, dim, row_fn)


def shannon_negentropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Σ p log p with 0 log 0 = 0."""
    rows, shape = _rows(probs, dim)
    values = [sum(float(p) * math.log(float(p)) for p in row if p > 0) for row in rows]
    return torch.tensor(values, dtype=F64).reshape(shape[:-1])


def sigmoid(logits: Tensor) -> Tensor:
    """1 / (1 + exp(−z)), elementwise."""
    z = logits.to(F64)
    return torch.where(z >= 0, 1 / (1 + torch.exp(-z.clamp(min=0))), torch.exp(z.clamp(max=0)) / (1 + torch.exp(z.clamp(max=0))))


def log_sigmoid(logits: Tensor) -> Tensor:
    """log σ(z) = −log(1 + exp(−z)), elementwise."""
    z = logits.to(F64)
    return torch.minimum(z, torch.zeros_like(z)) - torch.log1p(torch.exp(-z.abs()))


def _softplus(z: Tensor) -> Tensor:
    return torch.clamp(z, min=0) + torch.log1p(torch.exp(-z.abs()))


def standard_normalize(logits: Tensor, dim: int = -1, positivity: str | None = None) -> Tensor:
    """f(x_i) / Σ f(x_k), f in {identity, softplus, relu, abs}; -inf entries excluded (0)."""
    transforms = {None: lambda z: z, "softplus": _softplus, "relu": lambda z: z.clamp(min=0), "abs": torch.abs}

    def row_fn(z: Tensor) -> Tensor:
        excluded = z == -math.inf
        if bool(excluded.all()):
            return torch.zeros_like(z)
        scores = torch.where(excluded, torch.zeros_like(z), transforms[positivity](torch.where(excluded, torch.zeros_like(z), z)))
        total = scores.sum()
        if positivity == "softplus" and total == 0:  # every softplus underflowed: softplus(z) = exp(z) there
            return softmax(z, 0)
        return scores / total
    return _each_row(logits, dim, row_fn)


def spherical_softmax(logits: Tensor, dim: int = -1, eps: float = 1e-6) -> Tensor:
    """(z_i² + ε) / Σ (z_k² + ε); -inf entries excluded (0)."""
    def row_fn(z: Tensor) -> Tensor:
        excluded = z == -math.inf
        if bool(excluded.all()):
            return torch.zeros_like(z)
        values = torch.where(excluded, torch.zeros_like(z), z * z + eps)
        return values / values.sum()
    return _each_row(logits, dim, row_fn)


def taylor_softmax(logits: Tensor, dim: int = -1, order: int = 2) -> Tensor:
    """t(z_i) / Σ t(z_k), t(z) = Σ_{j<=order} z^j / j!; -inf entries excluded (0)."""
    def row_fn(z: Tensor) -> Tensor:
        excluded = z == -math.inf
        if bool(excluded.all()):
            return torch.zeros_like(z)
        zz = torch.where(excluded, torch.zeros_like(z), z)
        values = sum(zz ** j / math.factorial(j) for j in range(order + 1))
        values = torch.where(excluded, torch.zeros_like(z), values)
        return values / values.sum()
    return _each_row(logits, dim, row_fn)



# ---------------------------------------------------------------------------------------------
# Losses and divergences
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Fused linear + loss
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Structures (linear-chain CRF by enumeration) and maximum entropy
# ---------------------------------------------------------------------------------------------
