"""How the gradient behaves as a model becomes confidently wrong, for any normalizer + loss pair."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from logitlab import registry
from logitlab._validation import check_tensor, fail

__all__ = ["GradientSweep", "gradient_sweep", "sweep_pairs", "DEFAULT_SWEEP_PARAMS"]


@dataclass(frozen=True)
class GradientSweep:
    """The loss and its gradient along a path of increasingly confident wrong predictions.

    Row m of every tensor is the model with logits ``offset + margins[m] · e_wrong`` (class 0
    is the true class, class 1 the wrong favourite, every other logit ``offset``): the true
    class's logit is ``margins[m]`` below the best one. The fields are stable; the study plots them.

    Attributes:
        normalizer, loss: the registry names; params: the keyword parameters used.
        num_classes: C.
        margins: (M,) the margins, float64.
        loss_value: (M,) the loss of that one example.
        grad_norm: (M,) ‖∂loss/∂logits‖₂.
        grad_true: (M,) ∂loss/∂z_true (negative: the pull up on the true class).
        grad_wrong: (M,) ∂loss/∂z_wrong (positive: the push down on the wrong favourite).
        prob_true: (M,) the model's probability of the true class.
    """

    normalizer: str
    loss: str
    num_classes: int
    margins: Tensor
    loss_value: Tensor
    grad_norm: Tensor
    grad_true: Tensor
    grad_wrong: Tensor
    prob_true: Tensor
    params: dict[str, Any] = field(default_factory=dict)


def gradient_sweep(normalizer: str, loss: str, *, margins: Tensor | list[float], num_classes: int = 10,
                   offset: float = 0.0, **params: Any) -> GradientSweep:
    """Loss and logit-gradient of one example whose true class is ``margin`` below the best one.

    The objective is ``registry.make_objective(normalizer, loss, **params)`` evaluated in
    float64 on logits z = offset·1 + margin·e_1 with target class 0, for each margin. What the
    sweep shows, as margin → ∞ (checked in the tests):

    * softmax + cross-entropy: ∂L/∂z = softmax(z) − e_y → e_1 − e_0, so the gradient norm tends
      to √2 and ∂L/∂z_y to −1, a non-zero constant: L = log Σ exp(z) − z_y ≈ margin, the exp of
      the softmax cancels the log of the likelihood and the loss is linear in the logit.
    * softmax + squared error on probabilities ("brier"): ∂L/∂z = J_softmax(z)ᵀ 2(p − y) with
      J = diag(p) − ppᵀ → 0 exponentially: the gradient vanishes, the confidently wrong model
      stops learning (the loss saturates at 2).
    * sparsemax + sparsemax loss: ∂L/∂z = sparsemax(z) − e_y = e_1 − e_0 exactly once
      margin ≥ 1 (the map is one-hot there), and L = margin exactly: bounded, constant gradient
      and a linear loss, with no exponential anywhere (entmax-1.5 likewise once margin ≥ 2).
      Any divergence on the *probabilities* of a sparse map (brier, js, tv, hellinger) has a
      gradient of exactly 0 there instead: the Jacobian of a one-hot sparsemax output is 0.
    * x/Σx ("standard" with scores f(z) ≥ 0): p_y = f(z_y)/Σ f decays only like 1/margin, so
      KL(e_y ‖ p) = −log p_y grows like log(margin); its gradient on the true class is
      −f'(z_y)/f(z_y) + f'(z_y)/Σ f → −f'(z_y)/f(z_y), a constant set by z_y alone (−1/2/log 2
      for softplus at 0), and on the wrong class f'(z_1)/Σ f → 0 like 1/margin.
    * sigmoid + binary cross-entropy: each class is its own Bernoulli, ∂L/∂z_k = σ(z_k) − y_k:
      the pull on the true class σ(offset) − 1 does not depend on the margin at all.

    Args:
        normalizer, loss: a valid pair of the registry (``registry.valid_pairs()``).
        margins: (M,) non-negative margins.
        num_classes: C >= 2.
        offset: the logit of the true class and of every class but the favourite (x/Σx
            without a positivity transform needs scores > 0: use offset > 0 there).
        **params: passed to ``make_objective`` (e.g. ``positivity="softplus"``, ``gamma=``).

    Returns:
        A :class:`GradientSweep`.

    Raises:
        ValueError: an unknown or invalid pair, negative or non-finite margins, num_classes < 2.

    Example:
        >>> sweep = gradient_sweep("softmax", "cross_entropy", margins=[0.0, 5.0, 30.0], num_classes=3)
        >>> sweep.grad_norm
        tensor([0.8165, 1.4001, 1.4142], dtype=torch.float64)
        >>> sweep.loss_value - sweep.margins   # L − margin → 0: linear in the logit
        tensor([1.0986e+00, 1.3386e-02, 1.8829e-13], dtype=torch.float64)
        >>> gradient_sweep("softmax", "brier", margins=[0.0, 5.0, 30.0], num_classes=3).grad_norm
        tensor([5.4433e-01, 4.8485e-02, 6.9998e-13], dtype=torch.float64)
    """
    fn = "gradient_sweep"
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        fail(fn, "num_classes", "an int >= 2", num_classes)
    margins_t = torch.as_tensor(margins, dtype=torch.float64) if not isinstance(margins, Tensor) else \
        check_tensor(fn, "margins", margins).detach().to(torch.float64)
    if margins_t.ndim != 1 or margins_t.numel() == 0:
        fail(fn, "margins", "a non-empty 1-D sequence", f"<shape {tuple(margins_t.shape)}>")
    if not bool(torch.isfinite(margins_t).all()) or bool((margins_t < 0).any()):
        fail(fn, "margins", "finite values >= 0", f"<min {float(margins_t.min()):.3g}>")
    if not math.isfinite(float(offset)):
        fail(fn, "offset", "a finite number", offset)
    _check_pair(fn, normalizer, loss)
    objective = registry.make_objective(normalizer, loss, **params)
    normalize = registry.get_normalizer(normalizer)
    accepted = inspect.signature(registry.resolve(registry.NORMALIZERS[normalizer].fn)).parameters
    nparams = {k: v for k, v in params.items() if k in accepted and k not in ("logits", "dim")}
    target = torch.zeros(1, dtype=torch.long)
    values, norms, trues, wrongs, probs = [], [], [], [], []
    for margin in margins_t.tolist():
        logits = torch.full((1, num_classes), float(offset), dtype=torch.float64)
        logits[0, 1] += margin
        logits.requires_grad_(True)
        value = objective(logits, target)
        (grad,) = torch.autograd.grad(value, logits)
        values.append(float(value.detach()))
        norms.append(float(grad.norm()))
        trues.append(float(grad[0, 0]))
        wrongs.append(float(grad[0, 1]))
        with torch.no_grad():
            probs.append(float(normalize(logits.detach(), **nparams)[0, 0]))
    as_t = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    return GradientSweep(normalizer, loss, num_classes, margins_t, as_t(values), as_t(norms), as_t(trues),
                         as_t(wrongs), as_t(probs), dict(params))


def _check_pair(fn: str, normalizer: object, loss: object) -> None:
    """Both names in the registry and the pair defined there, else an error naming the argument."""
    if normalizer not in registry.NORMALIZERS:
        fail(fn, "normalizer", "one of " + ", ".join(map(repr, registry.NORMALIZERS)), normalizer,
             detail=f"unknown normalizer {normalizer!r}")
    if loss not in registry.LOSSES:
        fail(fn, "loss", "one of " + ", ".join(map(repr, registry.LOSSES)), loss,
             detail=f"unknown loss {loss!r}")
    takes = registry.LOSSES[loss].normalizers  # type: ignore[index]
    if normalizer not in takes:
        fail(fn, "loss", f"a loss defined for normalizer {normalizer!r}", loss,
             detail=f"not defined for normalizer {normalizer!r}; it takes: {', '.join(takes)}")


#: Keyword parameters :func:`sweep_pairs` uses per normalizer unless told otherwise: x/Σx needs
#: a positivity transform for logits that can be negative (the study's choice: softplus).
DEFAULT_SWEEP_PARAMS: dict[str, dict[str, Any]] = {"standard": {"positivity": "softplus"}}


def sweep_pairs(*, margins: Tensor | list[float], num_classes: int = 10,
                pairs: list[tuple[str, str]] | None = None,
                params: dict[str, dict[str, Any]] | None = None) -> list[GradientSweep]:
    """:func:`gradient_sweep` for many pairs (default: every training pair of the registry).

    Args:
        margins: (M,) non-negative margins, shared by every pair.
        num_classes: C.
        pairs: (normalizer, loss) pairs; default ``registry.valid_pairs(index_targets=True)``.
        params: normalizer name → keyword parameters (default :data:`DEFAULT_SWEEP_PARAMS`).

    Returns:
        One :class:`GradientSweep` per pair, in order.

    Raises:
        ValueError, TypeError: as :func:`gradient_sweep`, for the first pair that fails.

    Example:
        >>> sweeps = sweep_pairs(margins=[0.0, 30.0], num_classes=4,
        ...                      pairs=[("softmax", "cross_entropy"), ("softmax", "brier")])
        >>> [(s.loss, round(float(s.grad_norm[-1]), 4)) for s in sweeps]
        [('cross_entropy', 1.4142), ('brier', 0.0)]
    """
    chosen = registry.valid_pairs(index_targets=True) if pairs is None else list(pairs)
    extra = DEFAULT_SWEEP_PARAMS if params is None else params
    return [gradient_sweep(normalizer, loss, margins=margins, num_classes=num_classes, **extra.get(normalizer, {}))
            for normalizer, loss in chosen]
