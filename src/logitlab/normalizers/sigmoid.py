"""The logistic sigmoid, per score: a Bernoulli probability for each class (one-vs-all).

sigmoid(z)_i = 1 / (1 + exp(−z_i)) is not a distribution over the classes (the outputs do not
sum to 1); it is the 2-class softmax of (0, z_i): each class against its own absence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from logitlab._validation import check_dim, check_floating, compute_dtype
from logitlab.normalizers._masking import scan

__all__ = ["sigmoid", "log_sigmoid", "binary_negentropy"]

NEG_INF = -math.inf


def _prepare(fn: str, logits: Tensor, dim: int, validate: bool, *, need_scan: bool) -> tuple[Tensor, bool]:
    """Check the input; return it in the compute dtype and whether any score is ``-inf``."""
    check_floating(fn, "logits", logits)
    check_dim(fn, dim, logits.ndim)
    low = scan(fn, logits, validate=validate)[0] if (validate or need_scan) else 0.0
    return logits.to(compute_dtype(logits)), low == NEG_INF


def sigmoid(logits: Tensor, *, dim: int = -1, validate: bool = True) -> Tensor:
    """The logistic function of each score: σ(z_i) = 1 / (1 + exp(−z_i)) = softmax((0, z_i))₁.

    Elementwise: ``dim`` changes nothing but is accepted (and checked) so that every normalizer
    has the signature ``fn(logits, *, dim=-1)``. A ``-inf`` score is an excluded class:
    σ(−inf) = 0 exactly, with zero gradient, so an all ``-inf`` row is an all-zero row. Not
    shift-invariant and not on the simplex.

    Args:
        logits: (*batch, n) scores, any floating dtype (half precision computed in float32).
        dim: the class axis (checked, otherwise unused).
        validate: reject NaN and ``+inf`` scores.

    Returns:
        probs of the shape and dtype of ``logits``, each in [0, 1].

    Raises:
        TypeError: ``logits`` not floating; ``dim`` not an int. IndexError: ``dim`` out of range.
        ValueError: NaN or ``+inf`` scores (validate).

    Example:
        >>> sigmoid(torch.tensor([0.0, math.log(3.0), -math.inf]))
        tensor([0.5000, 0.7500, 0.0000])
    """
    x, _ = _prepare("sigmoid", logits, dim, validate, need_scan=False)
    return torch.sigmoid(x).to(logits.dtype)  # σ(−inf) = 0 and σ'(−inf) = 0 already


def log_sigmoid(logits: Tensor, *, dim: int = -1, validate: bool = True) -> Tensor:
    """log σ(z_i) = −softplus(−z_i), computed stably.

    A ``-inf`` score gives ``-inf`` and receives no gradient (the derivative 1 − σ(z) would be 1
    there, but a ``-inf`` score is a mask, not a parameter: moving it by a finite amount changes
    nothing).

    Args:
        logits: (*batch, n) scores.
        dim: the class axis (checked, otherwise unused).
        validate: reject NaN and ``+inf`` scores.

    Returns:
        log_probs of the shape and dtype of ``logits``, each <= 0.

    Raises:
        TypeError, IndexError, ValueError: as :func:`sigmoid`.

    Example:
        >>> log_sigmoid(torch.tensor([0.0, -math.inf]))
        tensor([-0.6931,    -inf])
    """
    x, any_excluded = _prepare("log_sigmoid", logits, dim, validate, need_scan=True)
    if not any_excluded:
        return F.logsigmoid(x).to(logits.dtype)
    excluded = logits == NEG_INF
    out = F.logsigmoid(torch.where(excluded, x.new_zeros(()), x))
    return torch.where(excluded, out.new_tensor(NEG_INF), out).to(logits.dtype)


def binary_negentropy(probs: Tensor, *, dim: int = -1) -> Tensor:
    """Ω(p) = Σ_i p_i log p_i + (1 − p_i) log(1 − p_i) on the box [0, 1]^n: the Ω of the sigmoid.

    The negative sum of the per-class Bernoulli entropies, with 0 log 0 = 0, so Ω = 0 at every
    0/1 vector (a one-hot target included). Its map over the box,
    argmax_{p ∈ [0,1]^n} ⟨z, p⟩ − Ω(p), is the sigmoid of each score (Ω*(z) = Σ softplus(z_i)),
    which makes the Fenchel–Young loss of the sigmoid the one-vs-all binary logistic loss
    Σ_i BCE(z_i, y_i) − H_b(y_i) (``fenchel_young_loss(..., normalizer='sigmoid')``).

    Args:
        probs: (*batch, n) per-class probabilities in [0, 1] along ``dim``.
        dim: the class axis.

    Returns:
        (*batch) Ω of each row, in the dtype of ``probs``.

    Raises:
        TypeError: ``probs`` is not a floating-point tensor.
        IndexError: ``dim`` is out of range.

    Example:
        >>> binary_negentropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))  # 0, then 2 · log ½
        tensor([ 0.0000, -1.3863])

    References:
        Blondel, Martins & Niculae, "Learning with Fenchel-Young Losses", JMLR 2020 (§ 4.2).
    """
    check_floating("binary_negentropy", "probs", probs)
    axis = check_dim("binary_negentropy", dim, probs.ndim)
    p = probs.to(compute_dtype(probs))
    if p.ndim == 0:
        p, axis = p.reshape(1), 0
    q = 1 - p
    value = torch.special.xlogy(p, p) + torch.special.xlogy(q, q)
    return value.sum(axis).to(probs.dtype)
