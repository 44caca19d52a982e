"""Fenchel–Young losses, written once for every normalizer with a regularizer Ω.

A normalizer ŷ(θ) = argmax_{p ∈ Δ} ⟨θ, p⟩ − Ω(p) defines the loss

    L_Ω(θ; y) = Ω*(θ) + Ω(y) − ⟨θ, y⟩,   Ω*(θ) = ⟨θ, ŷ⟩ − Ω(ŷ),

so L = ⟨θ, ŷ − y⟩ + Ω(y) − Ω(ŷ) ≥ 0, = 0 iff y = ŷ(θ), and ∇_θ L = ŷ − y (Danskin). Softmax
(Ω = Shannon negentropy) gives cross-entropy minus H(y); sparsemax (Ω = ½‖p‖² − ½, Gini) the
sparsemax loss; α-entmax (Tsallis Ω) the entmax losses. The normalizer and Ω come from the
registry's :class:`~logitlab.registry.Normalizer` record (``.fn`` and ``.regularizer``); nothing here is
specific to one of them.

Reference: Blondel, Martins & Niculae, "Learning with Fenchel-Young Losses", JMLR 21, 2020.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from logitlab import registry
from logitlab._reduction import from_rows, reduce_loss, to_rows
from logitlab._validation import (
    check_dim,
    check_floating,
    check_positive,
    check_tensor,
    compiling,
    compute_dtype,
    fail,
    has_data,
    meta_output,
)
from logitlab.backend import check_impl
from logitlab.losses._inputs import loss_rows
from logitlab.losses._model import (
    as_callers_errors,
    normalizer_params,
    normalizer_spec,
    regularizer_params,
    with_validate,
)

__all__ = ["fenchel_young_loss", "sparsemax_loss", "entmax_loss", "entmax15_loss", "make_fenchel_young_loss"]



def _has_regularizer(spec: registry.Normalizer) -> bool:
    return spec.regularizer is not None


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
                omega: Callable[[Tensor], Tensor], shift: bool = True) -> Tensor:  # type: ignore[override]
        # A map with an Ω over the simplex is shift invariant and Σ(ŷ − y) = 0: shift by the row
        # max so that ⟨θ, ŷ⟩ − ⟨θ, y⟩ does not lose digits to a large common offset (``shift``;
        # not for maps over other domains, e.g. the sigmoid's box).
        top = theta.amax(-1, keepdim=True)
        if not shift:
            top = torch.zeros_like(top)
        shifted = theta - torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        pred = predict(shifted)
        # Under torch.compile, no host branch: both guarded steps below are the identity without -inf.
        excluded = compiling() or bool(torch.isneginf(shifted).any())
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
        ctx.predict, ctx.shift = predict, shift
        return values.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        pred, target, theta = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: ŷ(θ) again, with its graph
            top = theta.detach().amax(-1, keepdim=True) if ctx.shift else torch.zeros_like(theta[:, :1])
            pred = ctx.predict(theta - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
        if target.is_floating_point():
            diff = pred - target
        else:
            diff = pred.scatter_add(-1, target.unsqueeze(-1), pred.new_full((pred.shape[0], 1), -1.0))
        return grad.unsqueeze(-1) * diff, None, None, None, None


def fenchel_young_loss(logits: Tensor, target: Tensor, *, normalizer: str | registry.Normalizer = "softmax",
                       dim: int = -1, reduction: str = "mean", mask: Tensor | None = None, ignore_index: int = -100,
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
        normalizer: one with a regularizer, by name or as its :class:`logitlab.registry.Normalizer`
            record (which may be a user's own map with its Ω): 'softmax' (Shannon), 'sparsemax' (Gini),
            'entmax15', 'entmax', 'entmax_dense' (Tsallis, ``alpha=``), 'sigmoid' (the sum of
            binary negentropies over the box [0, 1]^n: the one-vs-all binary logistic loss,
            Σ_i BCE(θ_i, y_i) − H_b(y_i), with multi-label targets in [0, 1]^n). The other maps
            ('standard', 'spherical_softmax', 'taylor_softmax') have no Ω: every map
            ∇Ω*(θ) whose outputs sum to 1 is shift invariant (Ω*(θ + c1) = Ω*(θ) + c), and
            those maps are not (their Jacobians are not even symmetric, as a gradient's must
            be), so no Fenchel–Young loss has them as its prediction.
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


@as_callers_errors
def _fenchel_young(fn: str, logits: Tensor, target: Tensor, *, normalizer: str | registry.Normalizer, dim: int,
                   reduction: str, mask: Tensor | None, ignore_index: int, temperature: float,
                   validate: bool, params: dict[str, Any]) -> Tensor:
    check_floating(fn, "logits", logits)
    check_tensor(fn, "target", target)
    spec = normalizer_spec(fn, normalizer, _has_regularizer)
    nparams = normalizer_params(fn, spec, params)
    # Probability targets: rows on the simplex, or one probability per class (the sigmoid's box).
    r = loss_rows(fn, logits, target, dim=dim, mask=mask, ignore_index=ignore_index, reduction=reduction,
                  temperature=temperature, validate=validate, kinds=("index", "probs" if spec.simplex else "box"),
                  dense=True)
    if not has_data(logits, target, mask):  # meta: the output's shape, no data to read
        return meta_output(logits, r.batch_shape, reduction)
    normalize, regularize = spec.fn, spec.regularizer
    rparams = regularizer_params(spec, nparams)
    nparams = with_validate(spec.takes, nparams, validate)
    values = _FenchelYoung.apply(
        r.rows, r.target,
        lambda rows: normalize(rows, dim=-1, **nparams),
        lambda rows: regularize(rows, dim=-1, **rparams), spec.shift_invariant)
    values = values.reshape(r.batch_shape)
    return reduce_loss(values, reduction, keep=r.keep.reshape(r.batch_shape)).to(logits.dtype)


def sparsemax_loss(logits: Tensor, target: Tensor, *, dim: int = -1, reduction: str = "mean",
                   mask: Tensor | None = None, ignore_index: int = -100, temperature: float = 1.0,
                   validate: bool = True, impl: str = "auto") -> Tensor:
    """The sparsemax loss: the Fenchel–Young loss of Ω(p) = ½‖p‖² − ½ (Gini).

    L(θ; y) = ⟨θ, ŷ − y⟩ + ½‖y‖² − ½‖ŷ‖²,  ŷ = sparsemax(θ); gradient sparsemax(θ) − y.
    Zero with a margin: once θ_y exceeds the others by 1, the loss and its gradient vanish.
    Equal to ``entmax.SparsemaxLoss`` for index targets; probability targets work too.

    Args:
        logits: (*batch, n) scores.
        target: (*batch) class indices or (*batch, n) probabilities.
        impl: the implementation of the map ŷ = sparsemax(θ) (:func:`logitlab.sparsemax`'s
            ``impl``: 'auto', 'native', 'torch'; see :mod:`logitlab.backend`).
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
    impl = check_impl("sparsemax_loss", impl)
    return _fenchel_young("sparsemax_loss", logits, target, normalizer="sparsemax", dim=dim,
                          reduction=reduction, mask=mask, ignore_index=ignore_index,
                          temperature=temperature, validate=validate, params={"impl": impl})


def entmax_loss(logits: Tensor, target: Tensor, *, alpha: float = 1.5,
                normalizer: str | registry.Normalizer | None = None, dim: int = -1, reduction: str = "mean",
                mask: Tensor | None = None, ignore_index: int = -100, temperature: float = 1.0, validate: bool = True,
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
        **normalizer_params: further parameters of the normalizer, e.g. ``impl`` ('auto', 'native',
            'torch': the map's implementation, see :mod:`logitlab.backend`).
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
    name = normalizer.name if isinstance(normalizer, registry.Normalizer) else normalizer
    if name not in ("entmax15", "entmax"):
        fail(fn, "normalizer", "one of 'entmax15', 'entmax'", name)
    params = dict(normalizer_params)
    if name == "entmax15":
        if alpha != 1.5:
            fail(fn, "alpha", "1.5 with normalizer='entmax15' (use normalizer='entmax')", alpha)
    else:
        params["alpha"] = alpha
    return _fenchel_young(fn, logits, target, normalizer=normalizer, dim=dim, reduction=reduction,
                          mask=mask, ignore_index=ignore_index, temperature=temperature,
                          validate=validate, params=params)


def entmax15_loss(logits: Tensor, target: Tensor, *, dim: int = -1, reduction: str = "mean",
                  mask: Tensor | None = None, ignore_index: int = -100, temperature: float = 1.0,
                  validate: bool = True, impl: str = "auto") -> Tensor:
    """The 1.5-entmax loss (the exact 1.5-entmax map): :func:`entmax_loss` at α = 1.5.

    Equal to ``entmax.Entmax15Loss`` for index targets; probability targets work too.

    Args:
        logits: (*batch, n) scores.
        target: (*batch) class indices or (*batch, n) probabilities.
        impl: the implementation of the map (:func:`logitlab.entmax15`'s ``impl``).
        (the others as in :func:`fenchel_young_loss`)

    Returns:
        The reduced loss, dtype of ``logits``.

    Raises:
        As :func:`fenchel_young_loss`.

    Example:
        >>> float(entmax15_loss(torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([0])))
        0.0
    """
    impl = check_impl("entmax15_loss", impl)
    return _fenchel_young("entmax15_loss", logits, target, normalizer="entmax15", dim=dim,
                          reduction=reduction, mask=mask, ignore_index=ignore_index,
                          temperature=temperature, validate=validate, params={"impl": impl})


def make_fenchel_young_loss(*, regularizer: Callable[[Tensor], Tensor] | None = None,
                            predict: Callable[[Tensor], Tensor] | None = None,
                            max_fn: Callable[[Tensor], Tensor] | None = None,
                            shift_invariant: bool = False) -> Callable[..., Tensor]:
    """Build the Fenchel–Young loss of a user's regularizer Ω, from Ω and its map or from Ω*.

    L_Ω(θ; y) = Ω*(θ) + Ω(y) − ⟨θ, y⟩,  Ω*(θ) = max_{p ∈ dom Ω} ⟨θ, p⟩ − Ω(p),  ∇_θ L = ŷ − y,

    with ŷ(θ) = ∇Ω*(θ) the maximizer. Two ways to give Ω (all callables act on (N, n) rows,
    the class axis last, and return (N,) values, or (N, n) for ``predict``):

    * ``regularizer`` Ω and ``predict`` ŷ: L = ⟨θ, ŷ − y⟩ + Ω(y) − Ω(ŷ), by the autograd
      Function of the built-in losses (gradient ŷ − y; neither Ω nor ``predict`` is
      differentiated, except ``predict`` for a double backward).
    * ``max_fn`` Ω* (a differentiable torch function): L = Ω*(θ) − ⟨θ, y⟩ + Ω(y), differentiated
      by autograd (so ŷ = ∇Ω*, and double backward works if Ω* is twice differentiable). Ω(y) is
      added when ``regularizer`` is also given; without it L is defined up to that constant of
      the target (its gradient is the same), as optax's ``make_fenchel_young_loss``.

    Index targets are taken as one-hot rows (Ω(y) is evaluated on them).

    Args:
        regularizer: Ω(p), convex.
        predict: the map θ ↦ argmax_{p ∈ dom Ω} ⟨θ, p⟩ − Ω(p) (with ``regularizer``).
        max_fn: θ ↦ Ω*(θ) (instead of ``predict``).
        shift_invariant: the map ignores adding a constant to a row (true for any Ω on the
            simplex); the loss then shifts each row by its max before the inner products.

    Returns:
        ``loss(logits, target, *, dim=-1, reduction='mean', mask=None, ignore_index=-100)``:
        logits (*batch, n); target (*batch) class indices or (*batch, n) points of dom Ω;
        'none' (*batch) | 'mean' over kept rows | 'sum'. ``loss.predict(logits, dim=-1)`` is ŷ.

    Raises:
        TypeError: neither or both of ``predict`` and ``max_fn``; ``predict`` without
            ``regularizer``; an argument that is not callable. The loss raises as
            :func:`fenchel_young_loss` for bad logits, targets, masks and reductions.

    Example:
        >>> shannon = lambda p: torch.special.xlogy(p, p).sum(-1)
        >>> loss = make_fenchel_young_loss(regularizer=shannon, predict=lambda t: t.softmax(-1))
        >>> logits, target = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([1])
        >>> from logitlab import cross_entropy
        >>> bool(torch.isclose(loss(logits, target), cross_entropy(logits, target)))
        True
        >>> squared = make_fenchel_young_loss(max_fn=lambda t: 0.5 * (t * t).sum(-1),
        ...                                   regularizer=lambda p: 0.5 * (p * p).sum(-1))
        >>> squared(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))  # ½‖θ − y‖²
        tensor(2.5000)

    References:
        Blondel, Martins & Niculae, "Learning with Fenchel-Young Losses", JMLR 2020.
    """
    fn = "make_fenchel_young_loss"
    for name, value in (("regularizer", regularizer), ("predict", predict), ("max_fn", max_fn)):
        if value is not None and not callable(value):
            fail(fn, name, "a callable or None", f"<{type(value).__name__}>", kind=TypeError)
    if (predict is None) == (max_fn is None):
        fail(fn, "predict", "exactly one of predict= (with regularizer=) and max_fn=",
             "<both>" if predict is not None else "<neither>", kind=TypeError)
    if predict is not None and regularizer is None:
        fail(fn, "regularizer", "Ω(p) alongside predict=", None, kind=TypeError)
    shift = bool(shift_invariant)

    def loss(logits: Tensor, target: Tensor, *, dim: int = -1, reduction: str = "mean",
             mask: Tensor | None = None, ignore_index: int = -100) -> Tensor:
        r = loss_rows("fenchel_young", logits, target, dim=dim, mask=mask, ignore_index=ignore_index,
                      reduction=reduction, kinds=("index", "points"), dense=True)
        theta, y = r.rows, r.target
        if r.index_target:  # one-hot rows: Ω(y) is evaluated on them
            y = torch.nn.functional.one_hot(y, theta.shape[1]).to(theta.dtype)
        if predict is not None:
            values = _FenchelYoung.apply(theta, y, predict, regularizer, shift)
        else:
            top = theta.detach().amax(-1, keepdim=True) if shift else torch.zeros_like(theta[:, :1])
            shifted = theta - top
            values = max_fn(shifted) - (shifted * y).sum(-1)  # type: ignore[misc]
            if regularizer is not None:
                values = values + regularizer(y)
        keep = r.keep.reshape(r.batch_shape)
        return reduce_loss(values.reshape(r.batch_shape), reduction, keep=keep).to(logits.dtype)

    def predict_fn(logits: Tensor, *, dim: int = -1) -> Tensor:
        check_floating("fenchel_young.predict", "logits", logits)
        axis = check_dim("fenchel_young.predict", dim, logits.ndim)
        rows, shape = to_rows(logits.to(compute_dtype(logits)), axis)
        if predict is not None:
            out = predict(rows)
        else:
            with torch.enable_grad():
                x = rows.detach().requires_grad_()
                (out,) = torch.autograd.grad(max_fn(x).sum(), x)  # type: ignore[misc]
        return from_rows(out, shape, axis, logits.ndim).to(logits.dtype)

    loss.predict = predict_fn  # type: ignore[attr-defined]
    return loss
