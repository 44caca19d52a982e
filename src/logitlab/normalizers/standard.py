"""Standard normalization: scores divided by their sum, the map people compare softmax against.

standard(x)_i = x_i / Σ_k x_k needs non-negative scores. Logits of a network are not, so a
positivity transform f is applied first: p_i = f(z_i) / Σ_k f(z_k). The study uses
``positivity="softplus"`` (smooth, > 0 everywhere, ≈ exp(z) for very negative z and ≈ z for
large z, so the map is neither shift- nor scale-invariant).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from logitlab._validation import can_read, check_choice, check_dim, check_floating, compiling, compute_dtype, fail
from logitlab.normalizers._masking import describe_rows, scan
from logitlab.normalizers._ratio import Score, ratio_normalize
from logitlab.normalizers.softmax import softmax

__all__ = ["standard_normalize", "POSITIVITY"]

POSITIVITY = (None, "softplus", "relu", "abs")
NEG_INF = -math.inf
# Below this score, softplus(z) = exp(z)(1 − exp(z)/2 + …) is replaced by its log, z − exp(z)/2
# (error < exp(2z)/3 < 1e-26): rows whose largest score is below it are normalized in log space.
_COLD = -30.0


def _log_softplus(z: Tensor) -> Tensor:
    """log softplus(z) without underflow (finite z)."""
    cold = z < _COLD
    zc = z.clamp(max=_COLD)
    zw = torch.where(cold, z.new_zeros(()), z)
    return torch.where(cold, zc - torch.exp(zc) / 2, torch.log(F.softplus(zw)))


class _Identity(Score):
    def value(self, x: Tensor) -> Tensor:
        return x

    def graph_value(self, x: Tensor) -> Tensor:
        return x

    def derivative(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)

    def scale_by_derivative_(self, out: Tensor, x: Tensor) -> Tensor:
        return out


class _Softplus(Score):
    def value(self, x: Tensor) -> Tensor:
        return F.softplus(x)

    graph_value = value

    def derivative(self, x: Tensor) -> Tensor:
        # F.softplus is x itself above its threshold 20, so its derivative is exactly 1 there.
        return torch.where(x > 20, x.new_ones(()), torch.sigmoid(x))

    def scale_by_derivative_(self, out: Tensor, x: Tensor) -> Tensor:
        slope = torch.sigmoid(x)
        return out.mul_(slope.masked_fill_(x > 20, 1.0))


class _Relu(Score):
    def value(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    graph_value = value

    def derivative(self, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    def scale_by_derivative_(self, out: Tensor, x: Tensor) -> Tensor:
        return out.masked_fill_(x <= 0, 0.0)


class _Abs(Score):
    def value(self, x: Tensor) -> Tensor:
        return x.abs()

    graph_value = value

    def derivative(self, x: Tensor) -> Tensor:
        return x.sign()


_SCORES = {None: _Identity(), "softplus": _Softplus(), "relu": _Relu(), "abs": _Abs()}


def standard_normalize(logits: Tensor, *, dim: int = -1, positivity: str | None = None,
                       validate: bool = True) -> Tensor:
    """Divide the scores of each row by their sum: p_i = f(x_i) / Σ_k f(x_k).

    f is the identity when ``positivity`` is None (the scores must then be non-negative with a
    positive row sum), else softplus(x) = log(1 + exp(x)), relu(x) = max(x, 0) or |x|. The
    study normalizes raw logits with ``positivity="softplus"``.
    A ``-inf`` score is an excluded class (probability exactly 0, no gradient) in every mode; a
    row of all ``-inf`` maps to an all-zero row. With softplus, a row whose scores are all below
    −30 is computed as softmax(log softplus(x)), so it never underflows to a zero sum.

    The gradient is ∂p_i/∂x_j = f'(x_j) (δ_ij − p_i) / Σ_k f(x_k): defined wherever the sum is
    positive (relu and abs use the subgradient 0 at x = 0).

    Args:
        logits: (*batch, n, *rest) scores, any floating dtype (half precision computed in float32).
        dim: the class axis.
        positivity: None, 'softplus', 'relu' or 'abs'.
        validate: check the data: NaN or ``+inf`` scores, and (positivity None) negative scores,
            or (None, relu, abs) rows with a zero sum, raise an error that names those rows.
            Without it, a zero-sum row maps to an all-zero row.

    Returns:
        probs of the shape and dtype of ``logits``; rows sum to 1 along ``dim``.

    Raises:
        TypeError: ``logits`` not floating; ``dim`` not an int. IndexError: ``dim`` out of range.
        ValueError: unknown ``positivity``; NaN/``+inf`` scores, negative scores or zero-sum rows
            (validate; the message lists the rows, as indices over the dimensions other than ``dim``).

    Example:
        >>> standard_normalize(torch.tensor([1.0, 3.0, 0.0]))
        tensor([0.2500, 0.7500, 0.0000])
        >>> standard_normalize(torch.tensor([0.0, -math.inf]), positivity="softplus")
        tensor([1., 0.])
        >>> standard_normalize(torch.tensor([[1.0, -2.0], [1.0, 1.0]]))
        Traceback (most recent call last):
        ...
        ValueError: standard_normalize(): argument 'logits' expected non-negative scores ...

    References:
        de Brébisson, Vincent, "An exploration of softmax alternatives belonging to the spherical
        loss family", ICLR 2016 (standard normalization as a baseline).
    """
    fn = "standard_normalize"
    check_floating(fn, "logits", logits)
    d = check_dim(fn, dim, logits.ndim)
    check_choice(fn, "positivity", positivity, POSITIVITY)
    if logits.ndim == 0:
        out = standard_normalize(logits.reshape(1), positivity=positivity, validate=validate)
        return out.reshape(())
    low, _ = scan(fn, logits, validate=validate)
    x = logits.to(compute_dtype(logits))
    excluded = logits == NEG_INF if low == NEG_INF else None
    finite = x if excluded is None else torch.where(excluded, x.new_zeros(()), x)
    if positivity is None and validate and low < 0 and can_read(logits):
        negative = (x < 0).any(d) if excluded is None else ((x < 0) & ~excluded).any(d)
        if bool(negative.any()):
            fail(fn, "logits", "non-negative scores (-inf marks an excluded class; "
                 "positivity='softplus' accepts any logits)", f"<negative scores in {describe_rows(negative)}>")
    probs, total = ratio_normalize(finite, excluded, _SCORES[positivity], d)
    if validate and positivity != "softplus" and logits.numel() and can_read(logits):
        zero = (total == 0).squeeze(d)
        if bool(zero.any()):
            if excluded is not None:
                zero = zero & ~excluded.all(d)
            if bool(zero.any()):
                fail(fn, "logits", "rows with a positive sum of scores", f"<zero sum in {describe_rows(zero)}>")
    if positivity == "softplus" and logits.numel() and low < _COLD:
        cold = x.amax(d, keepdim=True) < _COLD
        if compiling() or bool(cold.any()):  # under torch.compile: the where, without a host branch
            log_scores = _log_softplus(finite)
            if excluded is not None:
                log_scores = torch.where(excluded, x.new_tensor(NEG_INF), log_scores)
            probs = torch.where(cold, softmax(log_scores, dim=d, validate=False), probs)
    return probs.to(logits.dtype)
