"""Literal tables: name -> spec for the normalizers and the losses, and which pairs are valid.

The tables name functions by import path (``"module:function"``) and are resolved lazily, so
importing the registry imports nothing else. The CLI, the study, the analysis functions and the
contract tests all read these tables; adding an entry here is how an op joins all of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor

__all__ = [
    "NormalizerSpec",
    "LossSpec",
    "NORMALIZERS",
    "LOSSES",
    "get_normalizer",
    "get_loss",
    "valid_pairs",
    "make_objective",
    "resolve",
]


@dataclass(frozen=True)
class NormalizerSpec:
    """A map from logits to a distribution.

    Attributes:
        name: registry key.
        fn: ``"module:function"`` of the functional form ``fn(logits, *, dim=-1, **params)``.
        module: the name of its ``logitlab.nn`` Module.
        params: default keyword parameters (e.g. ``{"alpha": 1.5}``).
        simplex: outputs lie on the probability simplex along ``dim`` (sigmoid's do not: it
            maps each score to its own Bernoulli probability).
        shift_invariant: adding a constant to a row leaves the output unchanged.
        sparse: can output exact zeros for finite logits.
        regularizer: ``"module:function"`` of Ω(p) for the Fenchel–Young loss, or None.
        log_fn: ``"module:function"`` of a stable log-space version, or None.
        doc: one line for ``logitlab list``.
    """

    name: str
    fn: str
    module: str
    params: Mapping[str, Any] = field(default_factory=dict)
    simplex: bool = True
    shift_invariant: bool = True
    sparse: bool = False
    regularizer: str | None = None
    log_fn: str | None = None
    doc: str = ""


@dataclass(frozen=True)
class LossSpec:
    """A loss D(target ‖ model).

    Attributes:
        name: registry key.
        fn: ``"module:function"``; called as ``fn(logits, target, **params)`` and, when
            ``takes_normalizer``, with ``normalizer=<name>`` as well.
        module: the name of its ``logitlab.nn`` Module.
        target: 'index' (class indices), 'probs' (a distribution per row) or 'both'.
        normalizers: the normalizers this loss is defined for.
        takes_normalizer: the function takes a ``normalizer=`` keyword.
        index_objective: the loss is a sensible training objective for class-index targets
            (given as one-hot rows when ``target == 'probs'``).
        params: default keyword parameters.
        doc: one line for ``logitlab list``.
    """

    name: str
    fn: str
    module: str
    target: str
    normalizers: tuple[str, ...]
    takes_normalizer: bool = False
    index_objective: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""


_N = "logitlab.normalizers"

NORMALIZERS: dict[str, NormalizerSpec] = {
    "softmax": NormalizerSpec(
        "softmax", f"{_N}.softmax:softmax", "Softmax", regularizer=f"{_N}.softmax:shannon_negentropy",
        log_fn=f"{_N}.softmax:log_softmax", doc="exp(z / T) / Σ exp(z / T): the Gibbs distribution"),
    "sigmoid": NormalizerSpec(
        "sigmoid", f"{_N}.sigmoid:sigmoid", "Sigmoid", simplex=False, shift_invariant=False,
        regularizer=f"{_N}.sigmoid:binary_negentropy", log_fn=f"{_N}.sigmoid:log_sigmoid", doc="1 / (1 + exp(-z)) per score: one-vs-all Bernoulli"),
    "standard": NormalizerSpec(
        "standard", f"{_N}.standard:standard_normalize", "StandardNormalize", shift_invariant=False,
        doc="z / Σ z for non-negative scores"),
    "sparsemax": NormalizerSpec(
        "sparsemax", f"{_N}.sparsemax:sparsemax", "Sparsemax", sparse=True,
        regularizer=f"{_N}.sparsemax:gini_regularizer", doc="Euclidean projection onto the simplex"),
    "entmax15": NormalizerSpec(
        "entmax15", f"{_N}.entmax:entmax15", "Entmax15", sparse=True,
        regularizer=f"{_N}.entmax:tsallis15_regularizer", doc="1.5-entmax (Tsallis α = 1.5), exact"),
    "entmax": NormalizerSpec(
        "entmax", f"{_N}.entmax:entmax", "Entmax", params={"alpha": 1.5}, sparse=True,
        regularizer=f"{_N}.entmax:tsallis_regularizer", doc="α-entmax for any α > 0 (softmax at 1, dense below), by safeguarded Newton"),
    "entmax_dense": NormalizerSpec(
        "entmax_dense", f"{_N}.entmax:entmax", "Entmax", params={"alpha": 0.5},
        regularizer=f"{_N}.entmax:tsallis_regularizer",
        doc="α-entmax below 1 (α = 0.5): dense, power-law tails; the same op as 'entmax'"),
    "spherical_softmax": NormalizerSpec(
        "spherical_softmax", f"{_N}.spherical:spherical_softmax", "SphericalSoftmax", shift_invariant=False,
        doc="(z² + ε) / Σ (z² + ε)"),
    "taylor_softmax": NormalizerSpec(
        "taylor_softmax", f"{_N}.spherical:taylor_softmax", "TaylorSoftmax", params={"order": 2},
        shift_invariant=False, doc="normalized Taylor expansion of exp, even order"),
}

_L = "logitlab.losses"
_SIMPLEX = tuple(name for name, spec in NORMALIZERS.items() if spec.simplex)
_FY = tuple(name for name, spec in NORMALIZERS.items() if spec.regularizer is not None)
# KL(target ‖ model) and Rényi are +inf wherever a sparse model puts 0 on a target class (always
# so for a one-hot target outside the support): listed for the dense normalizers only. The
# functions accept every simplex normalizer.
_DENSE = tuple(name for name in _SIMPLEX if not NORMALIZERS[name].sparse)

LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(
        "cross_entropy", f"{_L}.cross_entropy:cross_entropy", "CrossEntropyLoss", "both", ("softmax",),
        doc="H(target, softmax(z)) with weights, smoothing, ignore_index, z-loss"),
    "binary_cross_entropy": LossSpec(
        "binary_cross_entropy", f"{_L}.cross_entropy:binary_cross_entropy_with_logits", "BCEWithLogitsLoss",
        "probs", ("sigmoid",), doc="Σ_k BCE(target_k, sigmoid(z_k)): one-vs-all"),
    "kl": LossSpec(
        "kl", f"{_L}.divergences:kl_divergence", "KLDivergenceLoss", "probs", _DENSE, takes_normalizer=True,
        doc="KL(target ‖ model); with one-hot targets, the cross-entropy of any normalizer"),
    "reverse_kl": LossSpec(
        "reverse_kl", f"{_L}.divergences:reverse_kl_divergence", "ReverseKLDivergenceLoss", "probs", _SIMPLEX,
        takes_normalizer=True, index_objective=False, doc="KL(model ‖ target)"),
    "js": LossSpec(
        "js", f"{_L}.divergences:js_divergence", "JSDivergenceLoss", "probs", _SIMPLEX, takes_normalizer=True,
        params={"beta": 0.5}, doc="generalized Jensen–Shannon JS_β(target ‖ model)"),
    "alpha": LossSpec(
        "alpha", f"{_L}.divergences:alpha_divergence", "AlphaDivergenceLoss", "probs", _SIMPLEX,
        takes_normalizer=True, index_objective=False, params={"amari_alpha": 0.5}, doc="Amari α-divergence"),
    "renyi": LossSpec(
        "renyi", f"{_L}.divergences:renyi_divergence", "RenyiDivergenceLoss", "probs", _DENSE,
        takes_normalizer=True, params={"renyi_alpha": 0.5}, doc="Rényi divergence of order α"),
    "tv": LossSpec(
        "tv", f"{_L}.divergences:total_variation", "TotalVariationLoss", "probs", _SIMPLEX,
        takes_normalizer=True, doc="½ Σ |target − model|"),
    "hellinger": LossSpec(
        "hellinger", f"{_L}.divergences:hellinger_distance", "HellingerLoss", "probs", _SIMPLEX,
        takes_normalizer=True, doc="squared Hellinger distance"),
    "brier": LossSpec(
        "brier", f"{_L}.divergences:brier_loss", "BrierLoss", "probs", _SIMPLEX, takes_normalizer=True,
        doc="Σ (target − model)²: squared error on probabilities"),
    "focal": LossSpec(
        "focal", f"{_L}.focal:focal_loss", "FocalLoss", "index", ("softmax",), params={"gamma": 2.0},
        doc="-(1 − p_y)^γ log p_y"),
    "poly1": LossSpec(
        "poly1", f"{_L}.focal:poly1_cross_entropy", "Poly1CrossEntropyLoss", "index", ("softmax",),
        params={"epsilon": 1.0}, doc="CE + ε (1 − p_y)"),
    # Margin losses act on the raw scores and model no probabilities; the study reads its predicted
    # distribution from softmax(z), the map they are listed with.
    "multiclass_hinge": LossSpec(
        "multiclass_hinge", f"{_L}.margin:multiclass_hinge_loss", "MulticlassHingeLoss", "index", ("softmax",),
        params={"margin": 1.0}, doc="max(0, max_{k≠y} (m + z_k) − z_y): Crammer–Singer hinge on the scores"),
    "perceptron": LossSpec(
        "perceptron", f"{_L}.margin:perceptron_loss", "PerceptronLoss", "index", ("softmax",),
        doc="max_k z_k − z_y: the Fenchel–Young loss of argmax"),
    "fenchel_young": LossSpec(
        "fenchel_young", f"{_L}.fenchel_young:fenchel_young_loss", "FenchelYoungLoss", "both", _FY,
        takes_normalizer=True, doc="Ω*(z) + Ω(target) − ⟨z, target⟩"),
    "sparsemax_loss": LossSpec(
        "sparsemax_loss", f"{_L}.fenchel_young:sparsemax_loss", "SparsemaxLoss", "both", ("sparsemax",),
        doc="the Fenchel–Young loss of sparsemax"),
    "entmax_loss": LossSpec(
        "entmax_loss", f"{_L}.fenchel_young:entmax_loss", "EntmaxLoss", "both", ("entmax15", "entmax"),
        takes_normalizer=True, doc="the Fenchel–Young loss of α-entmax"),
}


def resolve(path: str) -> Callable[..., Any]:
    """Import ``"module:function"`` and return the function."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _lookup(table: Mapping[str, Any], kind: str, name: object, fn: str, arg: str) -> Any:
    """``table[name]``, or a ValueError naming the caller ``fn``, its argument ``arg`` and the choices."""
    if name not in table:
        raise ValueError(
            f"{fn}(): argument '{arg}' expected a registered {kind}, got {name!r} "
            f"(unknown {kind} {name!r}; expected one of: " + ", ".join(sorted(table)) + ")")
    return table[name]  # type: ignore[index]


def get_normalizer(name: str) -> Callable[..., Tensor]:
    """The functional normalizer registered as ``name``, with its default parameters bound.

    Example:
        >>> import torch
        >>> get_normalizer("softmax")(torch.zeros(2))
        tensor([0.5000, 0.5000])
    """
    spec = _lookup(NORMALIZERS, "normalizer", name, "get_normalizer", "name")
    fn = resolve(spec.fn)
    if not spec.params:
        return fn
    defaults = dict(spec.params)

    def bound(logits: Tensor, **kwargs: Any) -> Tensor:
        return fn(logits, **{**defaults, **kwargs})

    bound.__name__ = name
    bound.__doc__ = fn.__doc__
    return bound


def get_loss(name: str) -> Callable[..., Tensor]:
    """The functional loss registered as ``name``."""
    return resolve(_lookup(LOSSES, "loss", name, "get_loss", "name").fn)


def valid_pairs(*, index_targets: bool = False) -> list[tuple[str, str]]:
    """Every (normalizer, loss) pair that is defined, in table order.

    With ``index_targets=True``, only the pairs that make a training objective for class-index
    targets (the pairs the study may run).
    """
    pairs = []
    for loss, spec in LOSSES.items():
        if index_targets and not spec.index_objective:
            continue
        for normalizer in NORMALIZERS:
            if normalizer in spec.normalizers:
                pairs.append((normalizer, loss))
    return pairs


def make_objective(normalizer: str, loss: str, **params: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """A training objective ``objective(logits, target) -> scalar`` for class-index targets.

    ``logits`` is (N, C), ``target`` is (N,) integer classes; the loss is averaged over rows.
    Losses that take probability targets receive the one-hot rows. ``params`` go to the loss
    (and, for losses that take a normalizer, the normalizer's own parameters such as ``alpha``).

    Example:
        >>> import torch
        >>> objective = make_objective("softmax", "cross_entropy", label_smoothing=0.1)
        >>> float(objective(torch.zeros(3, 4), torch.tensor([0, 1, 2])))  # log 4
        1.386...
    """
    nspec = _lookup(NORMALIZERS, "normalizer", normalizer, "make_objective", "normalizer")
    lspec = _lookup(LOSSES, "loss", loss, "make_objective", "loss")
    if normalizer not in lspec.normalizers:
        raise ValueError(
            f"make_objective(): argument 'normalizer' expected one of {', '.join(map(repr, lspec.normalizers))} "
            f"for loss {loss!r}, got {normalizer!r} (loss {loss!r} is not defined for normalizer {normalizer!r})")
    fn = resolve(lspec.fn)
    kwargs = {**lspec.params, **params}
    if lspec.takes_normalizer:
        kwargs = {**nspec.params, **kwargs, "normalizer": normalizer}

    def objective(logits: Tensor, target: Tensor) -> Tensor:
        if lspec.target == "probs":
            import torch.nn.functional as F

            target = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
        return fn(logits, target, **kwargs)

    objective.__name__ = f"{normalizer}+{loss}"
    return objective
