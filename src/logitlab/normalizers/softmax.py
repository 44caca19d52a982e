"""Softmax, its log, and its Fenchel–Young regularizer (the Shannon negentropy).

softmax(z / T)_i = exp(z_i / T) / Σ_k exp(z_k / T) is the Gibbs distribution: the maximizer of
⟨p, z⟩ − T Σ_i p_i log p_i over the simplex, so its Fenchel–Young regularizer is the Shannon
negentropy Ω(p) = Σ_i p_i log p_i.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitlab._validation import check_dim, check_floating, check_nonnegative, check_positive, compute_dtype, fail
from logitlab.normalizers._masking import empty_rows, nonneg_inf, scan

__all__ = ["softmax", "log_softmax", "shannon_negentropy"]

NEG_INF = -math.inf


def _scaled(fn: str, logits: Tensor, temperature: float | Tensor, dim: int) -> Tensor:
    """``logits / temperature`` up to a constant per row (temperature already validated), in the
    compute dtype unless T = 1.

    Below T = 1 (and for a tensor T) the row maximum is subtracted first: (z − max z) / T ≤ 0
    cannot overflow, where z / T reaches ±inf for a tiny T (softmax(z, temperature=1e-40) was NaN)
    and softmax and log_softmax are unchanged by a constant per row (so is their gradient,
    with respect to z and to T).
    """
    if not isinstance(temperature, Tensor) and temperature == 1.0:
        return logits  # torch.softmax(..., dtype=) upcasts half precision without a copy here
    cdtype = compute_dtype(logits)
    x = logits.to(cdtype)
    if (isinstance(temperature, Tensor) or temperature < 1.0) and x.shape[dim] > 0:
        peak = x.detach().amax(dim, keepdim=True)
        x = x - torch.where(torch.isfinite(peak), peak, peak.new_zeros(()))
    if isinstance(temperature, Tensor):
        t = temperature.to(cdtype).reshape(())
        if t.requires_grad:
            # d(z/T)/dT = -z/T² is -inf·0 = NaN at an excluded class: keep -inf out of the graph.
            return torch.where(logits == NEG_INF, x.new_tensor(NEG_INF), nonneg_inf(x) / t)
        return x / t
    return x / temperature


def _check_temperature(fn: str, temperature: object) -> float | Tensor:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            fail(fn, "temperature", "a number or a one-element tensor", temperature)
        check_positive(fn, "temperature", temperature)
        return temperature
    return check_positive(fn, "temperature", temperature)


def softmax(logits: Tensor, *, dim: int = -1, temperature: float | Tensor = 1.0,
            validate: bool = True) -> Tensor:
    """The softmax of ``logits / temperature`` along ``dim``.

    softmax(z / T)_i = exp(z_i / T) / Σ_k exp(z_k / T)

    A ``-inf`` logit is an excluded class: its probability is exactly 0 and it receives no
    gradient. A row whose entries are all ``-inf`` has no class left and maps to an all-zero row
    (zero gradient), where ``torch.softmax`` would return NaN. The map is invariant to adding a
    constant to a row. Half-precision inputs are computed in float32.

    Args:
        logits: (*batch, n, *rest) scores, any floating dtype; ``dim`` selects the class axis.
        dim: the class axis.
        temperature: T, a finite number > 0, or a one-element tensor (which may require grad,
            e.g. for temperature scaling). T → 0 approaches argmax, T → ∞ the uniform distribution.
        validate: reject NaN and ``+inf`` logits (checked through the row maximum, one read of
            the logits; with ``validate=False`` softmax is ``torch.softmax`` plus a read of one
            column, and NaN/``+inf`` propagate as NaN).

    Returns:
        probs of the shape and dtype of ``logits``; each row along ``dim`` sums to 1 (or is all
        zero when all its entries are ``-inf``).

    Raises:
        TypeError: ``logits`` not a floating-point tensor; ``dim`` not an int.
        IndexError: ``dim`` out of range.
        ValueError: ``temperature`` not a finite number > 0; NaN or ``+inf`` logits (validate).

    Example:
        >>> softmax(torch.tensor([0.0, math.log(3.0), -math.inf]))
        tensor([0.2500, 0.7500, 0.0000])
        >>> softmax(torch.tensor([[1.0, 2.0], [-math.inf, -math.inf]]), temperature=0.5)
        tensor([[0.1192, 0.8808],
                [0.0000, 0.0000]])

    References:
        Bridle, "Probabilistic interpretation of feedforward classification network outputs,
        with relationships to statistical pattern recognition", 1990.
    """
    fn = "softmax"
    check_floating(fn, "logits", logits)
    d = check_dim(fn, dim, logits.ndim)
    temperature = _check_temperature(fn, temperature)
    if logits.ndim == 0:
        return softmax(logits.reshape(1), temperature=temperature, validate=validate).reshape(())
    x = _scaled(fn, logits, temperature, d)
    empty = empty_rows(fn, logits, d, validate=validate)
    cdtype = compute_dtype(logits)
    if empty is None:
        return torch.softmax(x, d, dtype=cdtype).to(logits.dtype)
    probs = torch.softmax(torch.where(empty, x.new_zeros(()), x), d, dtype=cdtype)
    return torch.where(empty, probs.new_zeros(()), probs).to(logits.dtype)


def log_softmax(logits: Tensor, *, dim: int = -1, temperature: float | Tensor = 1.0,
                validate: bool = True) -> Tensor:
    """The log of :func:`softmax`, computed stably: z/T − logsumexp(z/T).

    log softmax(z / T)_i = z_i / T − log Σ_k exp(z_k / T)

    A ``-inf`` logit gives ``-inf`` and receives no gradient (moving a ``-inf`` score by any
    finite amount changes nothing, so the derivative is 0; ``torch.log_softmax`` passes the
    upstream gradient through instead). A row of all ``-inf`` gives an all ``-inf`` row with zero
    gradient, not NaN.

    Args:
        logits: (*batch, n, *rest) scores; ``dim`` selects the class axis.
        dim: the class axis.
        temperature: T, a finite number > 0 or a one-element tensor.
        validate: reject NaN and ``+inf`` logits.

    Returns:
        log_probs of the shape and dtype of ``logits``.

    Raises:
        TypeError, IndexError, ValueError: as :func:`softmax`.

    Example:
        >>> log_softmax(torch.tensor([0.0, 0.0, -math.inf]))
        tensor([-0.6931, -0.6931,    -inf])
    """
    fn = "log_softmax"
    check_floating(fn, "logits", logits)
    d = check_dim(fn, dim, logits.ndim)
    temperature = _check_temperature(fn, temperature)
    if logits.ndim == 0:
        return log_softmax(logits.reshape(1), temperature=temperature, validate=validate).reshape(())
    x = _scaled(fn, logits, temperature, d)
    if scan(fn, logits, validate=validate)[0] > NEG_INF:  # no excluded class: torch's op as is
        return torch.log_softmax(x, d, dtype=compute_dtype(logits)).to(logits.dtype)
    empty = empty_rows(fn, logits, d, validate=False)
    if empty is not None:
        x = torch.where(empty, x.new_zeros(()), x)
    log_probs = torch.log_softmax(x, d, dtype=compute_dtype(logits))
    # Excluded entries are -inf already; the where also stops their (upstream) gradient.
    log_probs = torch.where(logits == NEG_INF, log_probs.new_tensor(NEG_INF), log_probs)
    return log_probs.to(logits.dtype)


def shannon_negentropy(probs: Tensor, *, dim: int = -1, validate: bool = True) -> Tensor:
    """Ω(p) = Σ_i p_i log p_i with 0 log 0 = 0: the Fenchel–Young regularizer of softmax.

    Ω is the negative Shannon entropy; its convex conjugate on the simplex is logsumexp, whose
    gradient is softmax. Ω(one-hot) = 0 and Ω(uniform over n) = −log n. At p_i = 0 the
    derivative log p_i + 1 is −∞; the gradient returned there is 0 (so no NaN or inf appears).

    Args:
        probs: (*batch, n, *rest) non-negative values (a distribution along ``dim``).
        dim: the class axis.
        validate: reject NaN, inf and negative entries.

    Returns:
        (*batch, *rest): Ω of each row, in the dtype of ``probs``.

    Raises:
        TypeError: ``probs`` not floating; ``dim`` not an int. IndexError: ``dim`` out of range.
        ValueError: non-finite or negative entries (validate).

    Example:
        >>> shannon_negentropy(torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))
        tensor([-0.6931,  0.0000])

    References:
        Blondel, Martins, Niculae, "Learning with Fenchel-Young losses", JMLR 2020.
    """
    fn = "shannon_negentropy"
    check_floating(fn, "probs", probs)
    d = check_dim(fn, dim, probs.ndim)
    if validate:
        check_nonnegative(fn, "probs", probs)
    p = probs.to(compute_dtype(probs))
    if p.ndim == 0:
        p = p.reshape(1)
    return _NegEntropy.apply(p, d).to(probs.dtype)


class _NegEntropy(torch.autograd.Function):
    """Σ_i p_i log p_i along ``dim`` (0 log 0 = 0); gradient log p_i + 1, and 0 where p_i <= 0.

    The forward is one ``xlogy`` and a sum; the backward allocates only the gradient it returns
    and a bool mask (without ``create_graph``), or uses differentiable ops whose derivative is
    1/p_i (0 where p_i <= 0). (Summing xlogy block by block through a cache-sized buffer was
    tried: slower, as ``benchmarks/divergences.py`` measures the losses built on it.)
    """

    @staticmethod
    def forward(ctx, p: Tensor, dim: int) -> Tensor:
        ctx.save_for_backward(p)
        ctx.dim = dim
        return torch.special.xlogy(p, p).sum(dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (p,) = ctx.saved_tensors
        grad = grad.unsqueeze(ctx.dim)
        positive = p > 0
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            log_p = torch.log(torch.where(positive, p, torch.ones_like(p)))
            return torch.where(positive, (log_p + 1) * grad, p.new_zeros(())), None
        out = torch.log(p).add_(1.0).mul_(grad)
        return out.masked_fill_(torch.logical_not(positive, out=positive), 0.0), None
