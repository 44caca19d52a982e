"""Fenchel–Young losses, written once for every normalizer with a regularizer Ω.

A normalizer ŷ(θ) = argmax_{p ∈ Δ} ⟨θ, p⟩ − Ω(p) defines the loss

    L_Ω(θ; y) = Ω*(θ) + Ω(y) − ⟨θ, y⟩,   Ω*(θ) = ⟨θ, ŷ⟩ − Ω(ŷ),

so L = ⟨θ, ŷ − y⟩ + Ω(y) − Ω(ŷ) ≥ 0, = 0 iff y = ŷ(θ), and ∇_θ L = ŷ − y (Danskin). Softmax
(Ω = Shannon negentropy) gives cross-entropy minus H(y); sparsemax (Ω = ½‖p‖² − ½, Gini) the
sparsemax loss; α-entmax (Tsallis Ω) the entmax losses. The normalizer and Ω come from the
registry (``NormalizerSpec.fn`` and ``.regularizer``); nothing here is specific to one of them.

Reference: Blondel, Martins & Niculae, "Learning with Fenchel-Young Losses", JMLR 21, 2020.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from logitlab import registry
from logitlab._reduction import reduce_loss, to_rows
from logitlab._validation import (
    check_dim, check_floating, check_index_target, check_mask, check_positive, check_probs,
    check_reduction, check_tensor, compute_dtype, fail,
)
from logitlab.losses.divergences import check_logit_rows, scale_by_temperature
from logitlab.losses._model import (
    normalizer_params, normalizer_spec, regularizer_params, with_validate,
)

__all__ = ["fenchel_young_loss", "sparsemax_loss", "entmax_loss", "entmax15_loss"]

_FY = tuple(name for name, spec in registry.NORMALIZERS.items() if spec.regularizer is not None)


class _FenchelYoung(torch.autograd.Function):
    """Row values of L_Ω(θ; y) for (N, n) θ; backward ŷ − y for θ, no gradient for the target.

    The target is either (N, n) probabilities or (N,) class indices (then Ω(y) = 0, the
    registry's normalization of Ω at one-hot vectors, and no one-hot matrix is built).

    With ``create_graph=True`` the backward recomputes ŷ = predict(θ) with its graph, so the
    gradient ŷ − y is itself differentiable (the Hessian of L is the normalizer's Jacobian ∂ŷ/∂θ,
    as for ``F.cross_entropy``); without, it reuses the ŷ of the forward.
    """

    @staticmethod
    def forward(ctx: Any, theta: Tensor, target: Tensor, predict: Callable[[Tensor], Tensor],
                omega: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        # Every normalizer with an Ω is shift invariant and Σ(ŷ − y) = 0: shift by the row max
        # so that ⟨θ, ŷ⟩ − ⟨θ, y⟩ does not lose digits to a large common offset.
        top = theta.amax(-1, keepdim=True)
        shifted = theta - torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        pred = predict(shifted)
        excluded = bool(torch.isneginf(shifted).any())
        # -inf logits (excluded classes) have ŷ = 0: clamp them so that 0 · θ is 0, not NaN.
        finite = shifted.clamp_min(torch.finfo(shifted.dtype).min) if excluded else shifted
        values = (finite * pred).sum(-1) - omega(pred)  # Ω*(θ)
        index = not target.is_floating_point()
        if index:
            values = values - shifted.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # +inf if excluded
        else:
            values = values + omega(target) - (finite * target).sum(-1)
            if excluded:  # target mass on an excluded class: ⟨θ, y⟩ = -inf
                infinite = ((target > 0) & torch.isneginf(shifted)).any(-1)
                values = torch.where(infinite, torch.full_like(values, math.inf), values)
        ctx.save_for_backward(pred, target, theta)
        ctx.predict = predict
        return values.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        pred, target, theta = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: ŷ(θ) again, with its graph
            top = theta.detach().amax(-1, keepdim=True)
            pred = ctx.predict(theta - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
        if target.is_floating_point():
            diff = pred - target
        else:
            diff = pred.scatter_add(-1, target.unsqueeze(-1), pred.new_full((pred.shape[0], 1), -1.0))
        return grad.unsqueeze(-1) * diff, None, None, None


def fenchel_young_loss(logits: Tensor, target: Tensor, *, normalizer: str = "softmax", dim: int = -1,
                       reduction: str = "mean", mask: Tensor | None = None, ignore_index: int = -100,
                       temperature: float = 1.0, validate: bool = True,
                       **normalizer_params: Any) -> Tensor:
    """The Fenchel–Young loss L_Ω(θ; y) of a normalizer with regularizer Ω, θ = logits / T.

    L_Ω(θ; y) = Ω*(θ) + Ω(y) − ⟨θ, y⟩ = ⟨θ, ŷ − y⟩ + Ω(y) − Ω(ŷ),  ŷ = normalizer(θ),

    a divergence D(target ‖ model) measured in score space: ≥ 0, and 0 exactly when the
    target equals the prediction. Its gradient is ŷ − y (a custom autograd Function; the
    target receives no gradient). With softmax, L = H(y, softmax(θ)) − H(y): the cross-entropy
    for one-hot targets. Rounding below 0 is clamped to 0. A target with mass on a class whose
    logit is -inf gives +inf.

    Args:
        logits: (*batch, n) scores (-inf marks an excluded class).
        target: (*batch) integer class indices, or (*batch, n) probabilities along ``dim``.
        normalizer: one with a regularizer: 'softmax' (Shannon), 'sparsemax' (Gini),
            'entmax15', 'entmax' (Tsallis, ``alpha=``).
        dim: the class axis.
        reduction: 'none' (*batch) | 'mean' over kept rows | 'sum'.
        mask: (*batch) bool, True = keep the row.
        ignore_index: index targets equal to it are excluded rows (as in torch).
        temperature: logits are divided by it.
        validate: check logits for NaN/+inf, index range, probability rows.
        **normalizer_params: forwarded to the normalizer and, where it takes them, to Ω
            (e.g. ``alpha=1.3`` for 'entmax').

    Returns:
        The reduced loss, dtype of ``logits``.

    Raises:
        ValueError / TypeError: unknown normalizer or one without Ω (the message lists the
            choices), a parameter the normalizer does not take, target shape or dtype,
            index out of range, rows not distributions, NaN/+inf logits, a row of all -inf,
            no class along ``dim``, a temperature for which logits / temperature overflows.

    Reference: Blondel, Martins & Niculae, "Learning with Fenchel-Young Losses", JMLR, 2020.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0, 0.0]])
        >>> round(float(fenchel_young_loss(logits, torch.tensor([0]))), 4)  # log 3
        1.0986
    """
    return _fenchel_young("fenchel_young_loss", logits, target, normalizer=normalizer, dim=dim,
                          reduction=reduction, mask=mask, ignore_index=ignore_index,
                          temperature=temperature, validate=validate, params=normalizer_params)


def _fenchel_young(fn: str, logits: Tensor, target: Tensor, *, normalizer: str, dim: int,
                   reduction: str, mask: Tensor | None, ignore_index: int, temperature: float,
                   validate: bool, params: dict[str, Any]) -> Tensor:
    check_floating(fn, "logits", logits)
    check_tensor(fn, "target", target)
    spec = normalizer_spec(fn, normalizer, _FY)
    nparams = normalizer_params(fn, spec, params)
    axis = check_dim(fn, dim, logits.ndim)
    if logits.ndim and logits.shape[axis] == 0:
        fail(fn, "logits", f"at least one class along dim {dim}", f"<shape {tuple(logits.shape)}>")
    check_reduction(fn, reduction)
    temperature = check_positive(fn, "temperature", temperature)
    batch_shape = tuple(s for i, s in enumerate(logits.shape) if i != axis)
    n = logits.shape[axis] if logits.ndim else 1
    index = not target.is_floating_point()
    if index:
        if target.dtype == torch.bool or target.is_complex():
            fail(fn, "target", "integer class indices or floating probabilities",
                 f"<dtype {target.dtype}>", kind=TypeError)
        if tuple(target.shape) != batch_shape:
            fail(fn, "target", f"class indices of shape {batch_shape} (logits without dim) "
                 f"or probabilities of shape {tuple(logits.shape)}", f"<shape {tuple(target.shape)}>")
    elif target.shape != logits.shape:
        fail(fn, "target", f"probabilities of shape {tuple(logits.shape)} or class indices of "
             f"shape {batch_shape}", f"<shape {tuple(target.shape)}>")
    check_mask(fn, mask, batch_shape)
    if validate:
        check_logit_rows(fn, "logits", logits, axis)
        if index:
            check_index_target(fn, "target", target, n, ignore_index=ignore_index)
        else:
            check_probs(fn, "target", target, dim=axis)

    dtype = compute_dtype(logits)
    theta = to_rows(scale_by_temperature(fn, "logits", logits, temperature, dtype, validate), axis)[0]
    keep = mask
    if index:
        flat = target.reshape(-1)
        kept = flat != ignore_index
        y = torch.where(kept, flat, torch.zeros_like(flat)).long()
        kept = kept.reshape(batch_shape)
        keep = kept if keep is None else keep & kept
    else:
        y = to_rows(target.to(dtype), axis)[0]
    normalize = registry.resolve(spec.fn)
    regularize = registry.resolve(spec.regularizer)  # type: ignore[arg-type]
    rparams = with_validate(spec.regularizer, regularizer_params(spec, nparams), False)  # type: ignore[arg-type]
    nparams = with_validate(spec.fn, nparams, validate)
    values = _FenchelYoung.apply(
        theta, y,
        lambda rows: normalize(rows, dim=-1, **nparams),
        lambda rows: regularize(rows, dim=-1, **rparams))
    values = values.reshape(batch_shape)
    return reduce_loss(values, reduction, keep=keep).to(logits.dtype)


def sparsemax_loss(logits: Tensor, target: Tensor, *, dim: int = -1, reduction: str = "mean",
                   mask: Tensor | None = None, ignore_index: int = -100, temperature: float = 1.0,
                   validate: bool = True) -> Tensor:
    """The sparsemax loss: the Fenchel–Young loss of Ω(p) = ½‖p‖² − ½ (Gini).

    L(θ; y) = ⟨θ, ŷ − y⟩ + ½‖y‖² − ½‖ŷ‖²,  ŷ = sparsemax(θ); gradient sparsemax(θ) − y.
    Zero with a margin: once θ_y exceeds the others by 1, the loss and its gradient vanish.
    Equal to ``entmax.SparsemaxLoss`` for index targets; probability targets work too.

    Args:
        logits: (*batch, n) scores.
        target: (*batch) class indices or (*batch, n) probabilities.
        (the others as in :func:`fenchel_young_loss`)

    Returns:
        The reduced loss, dtype of ``logits``.

    Raises:
        As :func:`fenchel_young_loss`.

    Reference: Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016.

    Example:
        >>> float(sparsemax_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])))
        0.0
    """
    return _fenchel_young("sparsemax_loss", logits, target, normalizer="sparsemax", dim=dim,
                          reduction=reduction, mask=mask, ignore_index=ignore_index,
                          temperature=temperature, validate=validate, params={})


def entmax_loss(logits: Tensor, target: Tensor, *, alpha: float = 1.5, normalizer: str | None = None,
                dim: int = -1, reduction: str = "mean", mask: Tensor | None = None,
                ignore_index: int = -100, temperature: float = 1.0, validate: bool = True,
                **normalizer_params: Any) -> Tensor:
    """The α-entmax loss: the Fenchel–Young loss of the Tsallis regularizer of order α.

    Ω_α(p) = (Σ_i p_i^α − 1) / (α (α − 1)),  L = ⟨θ, ŷ − y⟩ + Ω_α(y) − Ω_α(ŷ),  ŷ = α-entmax(θ).
    α = 1 is the softmax (cross-entropy) loss and α = 2 the sparsemax loss; α < 1 gives the
    losses of the dense α-entmax maps (Ω_α is convex on the simplex for every α > 0).

    Args:
        logits: (*batch, n) scores.
        target: (*batch) class indices or (*batch, n) probabilities.
        alpha: the entmax order, > 0.
        normalizer: 'entmax15' (exact, α = 1.5 only) or 'entmax' (any α); None picks
            'entmax15' when α = 1.5 and 'entmax' otherwise.
        **normalizer_params: further parameters of the normalizer.
        (the others as in :func:`fenchel_young_loss`)

    Returns:
        The reduced loss, dtype of ``logits``.

    Raises:
        ValueError: α ≤ 0, normalizer not an entmax, α ≠ 1.5 with 'entmax15'; and as
            :func:`fenchel_young_loss`.

    Reference: Peters, Niculae & Martins, "Sparse Sequence-to-Sequence Models", ACL 2019.

    Example:
        >>> float(entmax_loss(torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([0])))
        0.0
    """
    fn = "entmax_loss"
    alpha = check_positive(fn, "alpha", alpha)
    if normalizer is None:
        normalizer = "entmax15" if alpha == 1.5 else "entmax"
    if normalizer not in ("entmax15", "entmax"):
        fail(fn, "normalizer", "one of 'entmax15', 'entmax'", normalizer)
    params = dict(normalizer_params)
    if normalizer == "entmax15":
        if alpha != 1.5:
            fail(fn, "alpha", "1.5 with normalizer='entmax15' (use normalizer='entmax')", alpha)
    else:
        params["alpha"] = alpha
    return _fenchel_young(fn, logits, target, normalizer=normalizer, dim=dim, reduction=reduction,
                          mask=mask, ignore_index=ignore_index, temperature=temperature,
                          validate=validate, params=params)


def entmax15_loss(logits: Tensor, target: Tensor, *, dim: int = -1, reduction: str = "mean",
                  mask: Tensor | None = None, ignore_index: int = -100, temperature: float = 1.0,
                  validate: bool = True) -> Tensor:
    """The 1.5-entmax loss (the exact 1.5-entmax map): :func:`entmax_loss` at α = 1.5.

    Equal to ``entmax.Entmax15Loss`` for index targets; probability targets work too.

    Args:
        logits: (*batch, n) scores.
        target: (*batch) class indices or (*batch, n) probabilities.
        (the others as in :func:`fenchel_young_loss`)

    Returns:
        The reduced loss, dtype of ``logits``.

    Raises:
        As :func:`fenchel_young_loss`.

    Example:
        >>> float(entmax15_loss(torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([0])))
        0.0
    """
    return _fenchel_young("entmax15_loss", logits, target, normalizer="entmax15", dim=dim,
                          reduction=reduction, mask=mask, ignore_index=ignore_index,
                          temperature=temperature, validate=validate, params={})
