"""Row kernels of the divergence family: ``D(target ‖ model)`` for (N, n) rows, in log space.

Each kernel takes the target's ``p``, ``log_p`` and the model's ``q``, ``log_q`` (log = -inf
exactly where the probability is 0) and returns (N,) values. Conventions, shared by all:

* ``0 · log 0 = 0``: an entry where the weighting distribution is 0 contributes nothing.
* A divergence is ``+inf`` only where the math says so (e.g. KL(p ‖ q) with p > 0 where q = 0);
  such a row has zero gradient, never NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NEG_INF = -math.inf


def _finite_or_zero(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _infinite_rows(values: Tensor, infinite: Tensor) -> Tensor:
    """Set rows flagged ``infinite`` (N,) to +inf with a constant (zero-gradient) branch."""
    return torch.where(infinite, torch.full_like(values, math.inf), values)


def kl(p: Tensor, log_p: Tensor, q: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ p (log p − log q); +inf iff some p > 0 has q = 0."""
    p_support = log_p > NEG_INF
    infinite = (p_support & (log_q == NEG_INF)).any(-1)
    diff = torch.where(p_support & (log_q > NEG_INF), log_p - log_q, torch.zeros_like(log_p))
    return _infinite_rows((p * _finite_or_zero(diff)).sum(-1), infinite)


def _logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """log(e^a + e^b), -inf (with a finite backward) where both are -inf."""
    both = (a == NEG_INF) & (b == NEG_INF)
    zero = torch.zeros_like(a)
    out = torch.logaddexp(torch.where(both, zero, a), torch.where(both, zero, b))
    return torch.where(both, torch.full_like(out, NEG_INF), out)


def js(p: Tensor, log_p: Tensor, q: Tensor, log_q: Tensor, beta: float) -> Tensor:
    """β KL(p ‖ m) + (1 − β) KL(q ‖ m) with m = β p + (1 − β) q; always finite."""
    log_m = _logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    m = beta * p + (1 - beta) * q
    return beta * kl(p, log_p, m, log_m) + (1 - beta) * kl(q, log_q, m, log_m)


def log_power_sum(log_p: Tensor, log_q: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """``(log Σ p^α q^(1−α), infinite)`` for α ∉ {0, 1}, with 0 · ∞ conventions.

    A term is 0 when p = 0 and α > 0, or q = 0 and α < 1; it is +inf when p = 0 (α < 0) or
    q = 0 (α > 1) and the other factor is positive. ``infinite`` (N,) flags rows with a +inf
    term; their log-sum is returned as 0 and must be replaced by the caller.
    """
    p_zero, q_zero = log_p == NEG_INF, log_q == NEG_INF
    zero = (p_zero & (alpha > 0)) | (q_zero & (alpha < 1))
    infinite_term = ~zero & (p_zero | q_zero)
    exponent = alpha * _finite_or_zero(log_p) + (1 - alpha) * _finite_or_zero(log_q)
    exponent = torch.where(zero | infinite_term, torch.full_like(exponent, NEG_INF), exponent)
    empty = (exponent == NEG_INF).all(-1, keepdim=True)
    log_sum = torch.logsumexp(torch.where(empty, torch.zeros_like(exponent), exponent), dim=-1)
    log_sum = torch.where(empty.squeeze(-1), torch.full_like(log_sum, NEG_INF), log_sum)
    infinite = infinite_term.any(-1)
    return torch.where(infinite, torch.zeros_like(log_sum), log_sum), infinite


def power_sum_minus_one(p: Tensor, log_p: Tensor, log_q: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """``(Σ p^α q^(1−α) − 1, usable)`` without cancellation near α = 1, for rows on the simplex.

    With d = log p − log q on the joint support and Σ p = 1, Σ p^α q^(1−α) − 1 =
    Σ_{p,q>0} p·expm1((α − 1) d) − Σ_{p>0=q} p (the last sum only for α < 1; for α > 1 such a
    row is +inf and flagged by :func:`log_power_sum`). Computing ``1 + (...)`` and subtracting 1
    instead loses every digit below eps, then divided by α − 1. ``usable`` (N,) marks rows with
    |(α − 1) d| ≤ 1 everywhere (no overflow in expm1); the others must use the log-space sum.
    """
    both = (log_p > NEG_INF) & (log_q > NEG_INF)
    scaled = (alpha - 1) * torch.where(both, log_p - log_q, torch.zeros_like(log_p))
    usable = (scaled.abs() <= 1).all(-1)
    scaled = torch.where(usable.unsqueeze(-1), scaled, torch.zeros_like(scaled))
    gain = torch.where(both, p * torch.expm1(scaled), torch.zeros_like(p)).sum(-1)
    if alpha < 1:
        gain = gain - torch.where((log_p > NEG_INF) & ~both, p, torch.zeros_like(p)).sum(-1)
    return gain, usable


def amari(p: Tensor, log_p: Tensor, q: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    """(Σ p^α q^(1−α) − 1) / (α (α − 1)); α = 1 gives KL(p ‖ q), α = 0 gives KL(q ‖ p)."""
    if alpha == 1:
        return kl(p, log_p, q, log_q)
    if alpha == 0:
        return kl(q, log_q, p, log_p)
    if alpha < 0.5:  # D_α(p ‖ q) = D_{1−α}(q ‖ p): keep the order nearest 1, where the sum cancels
        return amari(q, log_q, p, log_p, 1 - alpha)
    log_sum, infinite = log_power_sum(log_p, log_q, alpha)
    near, usable = power_sum_minus_one(p, log_p, log_q, alpha)
    values = torch.where(usable, near, torch.expm1(log_sum)) / (alpha * (alpha - 1))
    return _infinite_rows(values, infinite)


def renyi(p: Tensor, log_p: Tensor, q: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    """log(Σ p^α q^(1−α)) / (α − 1); α = 1 gives KL(p ‖ q)."""
    if alpha == 1:
        return kl(p, log_p, q, log_q)
    log_sum, infinite = log_power_sum(log_p, log_q, alpha)
    # Disjoint supports (log_sum = -inf, α < 1) give +inf: flag them for a zero gradient.
    infinite = infinite | (log_sum == NEG_INF)
    near, usable = power_sum_minus_one(p, log_p, log_q, alpha)
    usable = usable & ~infinite & (near > -1)
    near = torch.log1p(torch.where(usable, near, torch.zeros_like(near)))
    values = torch.where(usable, near, _finite_or_zero(log_sum))
    return _infinite_rows(values / (alpha - 1), infinite)


def total_variation(p: Tensor, log_p: Tensor, q: Tensor, log_q: Tensor) -> Tensor:
    """½ Σ |p − q|."""
    return 0.5 * (p - q).abs().sum(-1)


def hellinger(p: Tensor, log_p: Tensor, q: Tensor, log_q: Tensor) -> Tensor:
    """½ Σ (√p − √q)², square roots taken as exp(½ log) so that q = 0 has a finite gradient."""
    return 0.5 * (torch.exp(0.5 * log_p) - torch.exp(0.5 * log_q)).square().sum(-1)


def brier(p: Tensor, log_p: Tensor, q: Tensor, log_q: Tensor) -> Tensor:
    """Σ (p − q)²."""
    return (p - q).square().sum(-1)
