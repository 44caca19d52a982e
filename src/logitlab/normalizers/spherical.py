"""Spherical softmax and Taylor softmax: normalized even polynomials of the scores.

Both replace exp in softmax by a positive polynomial g: p_i = g(z_i) / Σ_k g(z_k), with
g(z) = z² + ε (spherical) or the even-order Taylor polynomial of exp (Taylor). Neither is
invariant to adding a constant to a row; spherical softmax is also even (z and −z give the
same output).

When g could overflow (scores beyond about 1e18 for spherical softmax in float32, smaller for
high Taylor orders), both are computed on scores divided by a power of two s >= 1 per row
(s > max |z|): exact in floating point, cancelled by the ratio.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from logitlab._validation import check_dim, check_floating, check_positive, compiling, compute_dtype, fail
from logitlab.normalizers._masking import safe_denominator, scan
from logitlab.normalizers._ratio import Score, ratio_normalize

__all__ = ["spherical_softmax", "taylor_softmax", "SPHERICAL_EPS"]

NEG_INF = -math.inf
# ε of spherical softmax: small enough that (z² + ε)/Σ(z² + ε) is z²/Σz² to within n·ε/Σz²
# (1e-2 relative once the row has a score of size 1e-2·sqrt(n)), large enough that an all-zero
# row is uniform and a zero score keeps a finite log-probability (log ε − log Σ).
SPHERICAL_EPS = 1e-6


class _Prepared(NamedTuple):
    finite: Tensor  # the scores in the compute dtype, -inf replaced by 0
    excluded: Tensor | None  # where the scores are -inf (None: nowhere)
    top: float  # max |score| over the finite entries of the whole tensor
    dim: int


def _prepare(fn: str, logits: Tensor, dim: int, validate: bool) -> _Prepared:
    check_floating(fn, "logits", logits)
    d = check_dim(fn, dim, logits.ndim)
    low, high = scan(fn, logits, validate=validate)
    x = logits.to(compute_dtype(logits))
    if low > NEG_INF:
        return _Prepared(x, None, max(abs(low), abs(high)), d)
    excluded = logits == NEG_INF
    finite = torch.where(excluded, x.new_zeros(()), x)
    if compiling():  # no host read under torch.compile: assume the worst, take the rescaled path
        return _Prepared(finite, excluded, math.inf, d)
    top = float(finite.detach().abs().amax()) if finite.numel() else 0.0
    return _Prepared(finite, excluded, top, d)


def _row_exponent(finite: Tensor, dim: int) -> Tensor:
    """e >= 0 per row with 2**e > max |score| of the row (keepdim), as an int tensor."""
    low, high = torch.aminmax(finite.detach(), dim=dim, keepdim=True)
    return torch.frexp(torch.maximum(high, -low))[1].clamp(min=0)


def _overflows(top: float, power: int, n: int, dtype: torch.dtype) -> bool:
    """Could n terms of size up to e·max(1, top)**power overflow ``dtype``?"""
    return power * math.log(max(top, 1.0)) + math.log(max(n, 1)) + 3.0 > math.log(torch.finfo(dtype).max)


def _power_of_two(like: Tensor, exponent: Tensor) -> Tensor:
    """2**exponent, exactly, in the dtype of ``like`` (a constant: no gradient).

    Multiplying by it is exact (barring underflow). ``torch.ldexp`` is not used on the scores
    themselves: its backward returns 0 for negative exponents (torch 2.13).
    """
    return torch.ldexp(torch.ones((), dtype=like.dtype, device=like.device).expand_as(exponent), exponent)


def _normalize(values: Tensor, excluded: Tensor | None, dim: int, dtype: torch.dtype) -> Tensor:
    if excluded is not None:
        values = torch.where(excluded, values.new_zeros(()), values)
    return (values / safe_denominator(values.sum(dim, keepdim=True))).to(dtype)


class _Square(Score):
    """g(z) = z² + ε, g'(z) = 2z."""

    def __init__(self, eps: float):
        self.eps = eps

    def value(self, x: Tensor) -> Tensor:
        return torch.addcmul(x.new_tensor(self.eps), x, x)

    graph_value = value

    def derivative(self, x: Tensor) -> Tensor:
        return 2 * x

    def scale_by_derivative_(self, out: Tensor, x: Tensor) -> Tensor:
        return out.mul_(x).mul_(2.0)


class _Taylor(Score):
    """g(z) = t_order(z) = Σ_{j<=order} z^j / j!, g' = t_(order-1), both by Horner's rule."""

    def __init__(self, order: int):
        self.order = order

    @staticmethod
    def _horner(x: Tensor, order: int, *, inplace: bool) -> Tensor:
        # g_order = 1, g_(k-1) = 1 + (z / k) g_k, g_0 = t_order(z).
        one = x.new_ones(())
        value = torch.add(one, x, alpha=1.0 / order)
        for k in range(order - 1, 0, -1):
            if inplace:  # same kernel as the out-of-place call, so the same rounding
                torch.addcmul(one, x, value, value=1.0 / k, out=value)
            else:
                value = torch.addcmul(one, x, value, value=1.0 / k)
        return value

    def value(self, x: Tensor) -> Tensor:
        return self._horner(x, self.order, inplace=True)

    def graph_value(self, x: Tensor) -> Tensor:
        return self._horner(x, self.order, inplace=False)

    def derivative(self, x: Tensor) -> Tensor:
        return self._horner(x, self.order - 1, inplace=False)

    def scale_by_derivative_(self, out: Tensor, x: Tensor) -> Tensor:
        if self.order == 2:  # g' = 1 + z: out (1 + z) without a temporary
            return out.addcmul_(out, x)
        return out.mul_(self._horner(x, self.order - 1, inplace=True))


def spherical_softmax(logits: Tensor, *, dim: int = -1, eps: float = SPHERICAL_EPS,
                      validate: bool = True) -> Tensor:
    """Spherical softmax: p_i = (z_i² + ε) / Σ_k (z_k² + ε).

    ε (default ``SPHERICAL_EPS`` = 1e-6) keeps the map defined on an all-zero row (which maps to
    the uniform distribution) and gives a zero score a small non-zero probability. A ``-inf``
    score is an excluded class (probability exactly 0, no gradient), although z² would make it
    the largest: the project's rule for ``-inf`` wins. A row of all ``-inf`` maps to zeros.
    Not shift-invariant; even in z.

    Args:
        logits: (*batch, n, *rest) scores, any floating dtype (half precision computed in float32).
        dim: the class axis.
        eps: ε, a finite number > 0.
        validate: reject NaN and ``+inf`` scores.

    Returns:
        probs of the shape and dtype of ``logits``; rows sum to 1 along ``dim``.

    Raises:
        TypeError: ``logits`` not floating; ``dim`` not an int. IndexError: ``dim`` out of range.
        ValueError: ``eps`` not a finite number > 0; NaN or ``+inf`` scores (validate).

    Example:
        >>> spherical_softmax(torch.tensor([1.0, -3.0, -math.inf]), eps=1e-12)
        tensor([0.1000, 0.9000, 0.0000])

    References:
        Vincent, de Brébisson, Bouthillier, "Efficient exact gradient update for training deep
        networks with very large sparse targets", NIPS 2015; de Brébisson, Vincent, "An
        exploration of softmax alternatives belonging to the spherical loss family", ICLR 2016.
    """
    fn = "spherical_softmax"
    eps = check_positive(fn, "eps", eps)
    if isinstance(logits, Tensor) and logits.ndim == 0:
        return spherical_softmax(logits.reshape(1), eps=eps, validate=validate).reshape(())
    prep = _prepare(fn, logits, dim, validate)
    finite, d = prep.finite, prep.dim
    n = logits.shape[d] if logits.ndim else 1
    if finite.numel() and _overflows(prep.top, 2, n, finite.dtype):
        inverse = _power_of_two(finite, -_row_exponent(finite, d))
        scaled = finite * inverse
        values = torch.addcmul(eps * inverse * inverse, scaled, scaled)
        return _normalize(values, prep.excluded, d, logits.dtype)
    return ratio_normalize(finite, prep.excluded, _Square(eps), d)[0].to(logits.dtype)


def taylor_softmax(logits: Tensor, *, dim: int = -1, order: int = 2, validate: bool = True) -> Tensor:
    """Taylor softmax: p_i = t(z_i) / Σ_k t(z_k), t(z) = Σ_{j=0}^{order} z^j / j!.

    The Taylor polynomial of exp of an even order is strictly positive: at a minimum z*, its
    derivative (the polynomial of order − 1) vanishes, so t(z*) = z*^order / order! > 0 (z* ≠ 0);
    for order 2, t(z) = ((z + 1)² + 1) / 2 >= 1/2. Odd orders go negative, so only even orders
    >= 2 are accepted. A ``-inf`` score is an excluded class (probability exactly 0, no
    gradient; t(−inf) would be +inf); a row of all ``-inf`` maps to zeros. Not shift-invariant.

    Args:
        logits: (*batch, n, *rest) scores, any floating dtype (half precision computed in float32).
        dim: the class axis.
        order: an even int >= 2.
        validate: reject NaN and ``+inf`` scores.

    Returns:
        probs of the shape and dtype of ``logits``; rows sum to 1 along ``dim``.

    Raises:
        TypeError: ``logits`` not floating; ``dim`` or ``order`` not an int.
        IndexError: ``dim`` out of range.
        ValueError: ``order`` odd or < 2; NaN or ``+inf`` scores (validate).

    Example:
        >>> taylor_softmax(torch.tensor([0.0, 2.0, -math.inf]))  # t = 1, 5
        tensor([0.1667, 0.8333, 0.0000])

    References:
        de Brébisson, Vincent, "An exploration of softmax alternatives belonging to the spherical
        loss family", ICLR 2016.
    """
    fn = "taylor_softmax"
    if isinstance(order, bool) or not isinstance(order, int):
        fail(fn, "order", "an even int >= 2", f"<{type(order).__name__}>", kind=TypeError)
    if order < 2 or order % 2:
        fail(fn, "order", "an even int >= 2 (odd Taylor polynomials of exp take negative values)", order)
    if isinstance(logits, Tensor) and logits.ndim == 0:
        return taylor_softmax(logits.reshape(1), order=order, validate=validate).reshape(())
    prep = _prepare(fn, logits, dim, validate)
    finite, d = prep.finite, prep.dim
    n = logits.shape[d] if logits.ndim else 1
    if finite.numel() and _overflows(prep.top, order, n, finite.dtype):
        # Horner's rule on t(z) / s^order, homogeneous in a = z / s and b = 1 / s:
        # g_order = 1, g_(k-1) = b^(order-k+1) + (a / k) g_k, g_0 = t(z) / s^order.
        exponent = _row_exponent(finite, d)
        scaled = finite * _power_of_two(finite, -exponent)
        value = torch.add(_power_of_two(finite, -exponent), scaled, alpha=1.0 / order)
        for k in range(order - 1, 0, -1):
            value = torch.addcmul(_power_of_two(finite, -(order - k + 1) * exponent), scaled, value, value=1.0 / k)
        return _normalize(value, prep.excluded, d, logits.dtype)
    return ratio_normalize(finite, prep.excluded, _Taylor(order), d)[0].to(logits.dtype)
