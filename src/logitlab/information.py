"""Information-theory helpers: entropy, cross-entropy and KL between distributions.

They state the identity behind "minimize cross-entropy": H(p, q) = H(p) + KL(p ‖ q). The
target's entropy H(p) does not depend on the model, so minimizing the cross-entropy over the
model is minimizing KL(target ‖ model), and with one-hot targets (H(p) = 0) the two are equal.

Conventions: natural logarithms (nats) unless ``base`` is given (``base=2`` for bits);
0 · log 0 = 0; H(p, q) and KL(p ‖ q) are +inf where p > 0 = q, with zero gradient, never NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from logitlab import _divergence_rows as divergence_rows
from logitlab._validation import (
    check_dim,
    check_floating,
    check_positive,
    check_probs,
    check_same_device,
    compute_dtype,
    fail,
)
from logitlab.losses._inputs import check_logit_rows
from logitlab.losses._model import safe_log

__all__ = ["entropy", "cross_entropy_between", "kl_between", "decompose", "Decomposition"]


def _scale(values: Tensor, fn: str, base: float | None) -> Tensor:
    if base is None:
        return values
    base = check_positive(fn, "base", base)
    if base == 1:
        fail(fn, "base", "a number > 0 other than 1", base)
    return values / math.log(base)


def _pair(fn: str, target_probs: Tensor, probs: Tensor, dim: int, validate: bool) -> tuple[Tensor, Tensor]:
    """Check a (target, model) pair; return both with the class axis last, in the compute dtype."""
    check_floating(fn, "target_probs", target_probs)
    check_floating(fn, "probs", probs)
    check_same_device(fn, "target_probs", target_probs, probs=probs)
    if target_probs.shape != probs.shape:
        fail(fn, "probs", f"shape {tuple(target_probs.shape)} (the shape of target_probs)",
             f"<shape {tuple(probs.shape)}>")
    axis = check_dim(fn, dim, probs.ndim)
    if validate:
        check_probs(fn, "target_probs", _one_axis(target_probs), dim=axis)
        check_probs(fn, "probs", _one_axis(probs), dim=axis)
    dtype = compute_dtype(probs)
    return target_probs.to(dtype).movedim(axis, -1), probs.to(dtype).movedim(axis, -1)


def _one_axis(tensor: Tensor) -> Tensor:
    """A 0-d tensor (one class, check_dim's convention) viewed as (1,) for the row checks."""
    return tensor.reshape(1) if tensor.ndim == 0 else tensor


def entropy(probs: Tensor, *, dim: int = -1, base: float | None = None,
            validate: bool = True) -> Tensor:
    """Shannon entropy H(p) = −Σ_i p_i log p_i, with 0 log 0 = 0.

    Args:
        probs: (*batch, n) distributions along ``dim``.
        dim: the class axis.
        base: logarithm base (None: nats; 2: bits).
        validate: check that the rows are distributions.

    Returns:
        (*batch) entropies, in [0, log n], dtype of ``probs``.

    Raises:
        ValueError: rows that are not distributions; a base ≤ 0 or = 1.

    Reference: Shannon, "A Mathematical Theory of Communication", 1948.

    Example:
        >>> entropy(torch.tensor([0.5, 0.5, 0.0]), base=2)
        tensor(1.)
    """
    fn = "entropy"
    check_floating(fn, "probs", probs)
    axis = check_dim(fn, dim, probs.ndim)
    if validate:
        check_probs(fn, "probs", _one_axis(probs), dim=axis)
    p = probs.to(compute_dtype(probs))
    values = -(p * torch.where(p > 0, safe_log(p), torch.zeros_like(p))).sum(axis)
    return _scale(values, fn, base).to(probs.dtype)


def cross_entropy_between(target_probs: Tensor, probs: Tensor, *, dim: int = -1,
                          base: float | None = None, validate: bool = True) -> Tensor:
    """Cross-entropy H(p, q) = −Σ_i p_i log q_i of ``probs`` q relative to ``target_probs`` p.

    0 · log 0 = 0; +inf where some p_i > 0 has q_i = 0. H(p, q) = H(p) + KL(p ‖ q).

    Args:
        target_probs: (*batch, n) the distribution p the expectation is taken under.
        probs: (*batch, n) the model distribution q.
        dim: the class axis.
        base: logarithm base (None: nats; 2: bits).
        validate: check that both are distributions.

    Returns:
        (*batch) cross-entropies.

    Raises:
        ValueError: shapes differ; rows not distributions; invalid base.

    Example:
        >>> cross_entropy_between(torch.tensor([1.0, 0.0]), torch.tensor([0.25, 0.75]), base=2)
        tensor(2.)
    """
    fn = "cross_entropy_between"
    p, q = _pair(fn, target_probs, probs, dim, validate)
    values = _cross_entropy_rows(p, safe_log(p), safe_log(q))
    return _scale(values, fn, base).to(probs.dtype)


def _cross_entropy_rows(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    support = log_p > -math.inf
    infinite = (support & (log_q == -math.inf)).any(-1)
    terms = torch.where(support & (log_q > -math.inf), -p * log_q, torch.zeros_like(p))
    values = terms.sum(-1)
    return torch.where(infinite, torch.full_like(values, math.inf), values)


def kl_between(target_probs: Tensor, probs: Tensor, *, dim: int = -1, base: float | None = None,
               validate: bool = True) -> Tensor:
    """KL(target ‖ model) = Σ_i p_i log(p_i / q_i) between two distributions.

    0 · log 0 = 0; +inf where some p_i > 0 has q_i = 0.

    Args:
        target_probs: (*batch, n) p.
        probs: (*batch, n) q.
        dim: the class axis.
        base: logarithm base (None: nats; 2: bits).
        validate: check that both are distributions.

    Returns:
        (*batch) divergences ≥ 0.

    Raises:
        ValueError: shapes differ; rows not distributions; invalid base.

    Reference: Kullback & Leibler, "On Information and Sufficiency", 1951.

    Example:
        >>> kl_between(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), base=2)
        tensor(1.)
    """
    fn = "kl_between"
    p, q = _pair(fn, target_probs, probs, dim, validate)
    values = divergence_rows.kl(p, safe_log(p), q, safe_log(q)).value
    return _scale(values, fn, base).to(probs.dtype)


class Decomposition(NamedTuple):
    """H(target, model) = H(target) + KL(target ‖ model), each (*batch), in nats."""

    cross_entropy: Tensor
    entropy: Tensor
    kl: Tensor


def decompose(logits: Tensor, target_probs: Tensor, *, dim: int = -1, base: float | None = None,
              validate: bool = True) -> Decomposition:
    """Split the cross-entropy of softmax(logits) into the target's entropy and the KL.

    H(p, softmax(z)) = H(p) + KL(p ‖ softmax(z)); only the KL depends on the model, which is
    why minimizing cross-entropy and minimizing KL(target ‖ model) are the same problem. With a
    one-hot target H(p) = 0 and cross_entropy = kl. Computed in log space (log_softmax).

    Args:
        logits: (*batch, n) scores (-inf marks an excluded class).
        target_probs: (*batch, n) target distributions.
        dim: the class axis.
        base: the logarithm's base: None for nats, 2 for bits (any b > 0 other than 1; each
            part is divided by log b).
        validate: check logits for NaN/+inf and target rows for being distributions.

    Returns:
        Decomposition(cross_entropy, entropy, kl), each (*batch), dtype of ``logits``.

    Raises:
        ValueError: shapes differ, rows not distributions, NaN/+inf logits, a bad ``base``.

    Example:
        >>> parts = decompose(torch.zeros(4), torch.tensor([0.5, 0.5, 0.0, 0.0]))
        >>> [round(float(x), 4) for x in parts]  # log 4 = log 2 + log 2
        [1.3863, 0.6931, 0.6931]
        >>> [float(x) for x in decompose(torch.zeros(4), torch.tensor([0.5, 0.5, 0.0, 0.0]), base=2)]
        [2.0, 1.0, 1.0]
    """
    fn = "decompose"
    if base is not None:
        _scale(torch.zeros(()), fn, base)  # check it before any work
    check_floating(fn, "logits", logits)
    check_floating(fn, "target_probs", target_probs)
    check_same_device(fn, "logits", logits, target_probs=target_probs)
    if target_probs.shape != logits.shape:
        fail(fn, "target_probs", f"shape {tuple(logits.shape)} (the shape of logits)",
             f"<shape {tuple(target_probs.shape)}>")
    axis = check_dim(fn, dim, logits.ndim)
    if validate:
        check_logit_rows(fn, "logits", _one_axis(logits), axis)
        check_probs(fn, "target_probs", _one_axis(target_probs), dim=axis)
    dtype = compute_dtype(logits)
    log_q = torch.log_softmax(_one_axis(logits).to(dtype), dim=axis).movedim(axis, -1)
    p = _one_axis(target_probs).to(dtype).movedim(axis, -1)
    log_p = safe_log(p)
    cross = _cross_entropy_rows(p, log_p, log_q)
    ent = -(p * torch.where(p > 0, log_p, torch.zeros_like(p))).sum(-1)
    kl = divergence_rows.kl(p, log_p, log_q.exp(), log_q).value
    return Decomposition(*(_scale(part, fn, base).to(logits.dtype) for part in (cross, ent, kl)))
