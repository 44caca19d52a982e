"""The divergence family: losses D(target ‖ model) between a target distribution and the model's.

The model distribution is ``normalizer(logits / temperature)`` for any registered normalizer
whose outputs lie on the simplex; the target is given as probabilities (``target``) or as
teacher logits (``target_logits=``, mapped by the same normalizer and temperature, for
distillation).

Parameters (see :mod:`logitlab.losses._model`): a divergence's own parameter has a name no
normalizer uses (``beta``, ``amari_alpha``, ``renyi_alpha``); every other keyword argument is a
parameter of the normalizer (``alpha=`` for entmax, ``positivity=`` for standard, ...).

Zero probabilities: 0 · log 0 = 0; a divergence is +inf exactly where its definition is
(KL(target ‖ model) with target > 0 where model = 0, KL(model ‖ target) with model > 0 where
target = 0, Rényi and Amari orders outside (0, 1) likewise, Rényi of order < 1 between disjoint
supports); such rows have zero gradient. JS, TV, Hellinger and Brier are always finite. No
input that passes validation produces a NaN.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from logitlab import registry
from logitlab._reduction import neutralize, reduce_loss, to_rows
from logitlab._validation import (
    can_read,
    check_choice,
    check_dim,
    check_finite,
    check_floating,
    check_mask,
    check_positive,
    check_probs,
    check_reduction,
    check_same_device,
    compiling,
    compute_dtype,
    fail,
    has_data,
    meta_output,
)
from logitlab.losses import _kernels
from logitlab.losses._model import as_callers_errors, model_distribution, normalizer_params, normalizer_spec, safe_log

__all__ = [
    "DIVERGENCES",
    "divergence_loss",
    "kl_divergence",
    "reverse_kl_divergence",
    "js_divergence",
    "alpha_divergence",
    "renyi_divergence",
    "total_variation",
    "hellinger_distance",
    "brier_loss",
]

# name -> (kernel, its own parameter or None, default value)
DIVERGENCES: dict[str, tuple[Callable[..., Tensor], str | None, float | None]] = {
    "kl": (_kernels.kl, None, None),
    "reverse_kl": (lambda p, lp, q, lq: _kernels.kl(q, lq, p, lp), None, None),
    "js": (_kernels.js, "beta", 0.5),
    "alpha": (_kernels.amari, "amari_alpha", 0.5),
    "renyi": (_kernels.renyi, "renyi_alpha", 0.5),
    "tv": (_kernels.total_variation, None, None),
    "hellinger": (_kernels.hellinger, None, None),
    "brier": (_kernels.brier, None, None),
}
_OWN = ("beta", "amari_alpha", "renyi_alpha")


def _simplex(spec: registry.Normalizer) -> bool:
    return spec.simplex


def _check_param(fn: str, divergence: str, value: Any) -> float:
    if divergence == "js":
        number = check_positive(fn, "beta", value)
        if not number < 1:
            fail(fn, "beta", "a number in (0, 1)", number)
        return number
    if divergence == "alpha":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail(fn, "amari_alpha", "a finite real number", value)
        return float(value)
    return check_positive(fn, "renyi_alpha", value)


def check_logit_rows(fn: str, name: str, logits: Tensor, axis: int) -> None:
    """No NaN or +inf, and at least one logit > -inf in every row along ``axis`` (a data pass)."""
    check_finite(fn, name, logits)
    if logits.numel() and can_read(logits) and bool((logits == -math.inf).all(axis).any()):
        fail(fn, name, "at least one logit > -inf per row", "<a row of all -inf>")


def scale_by_temperature(fn: str, name: str, logits: Tensor, temperature: float, dtype: torch.dtype,
                         validate: bool) -> Tensor:
    """``logits / temperature`` in ``dtype``; with ``validate``, a finite logit may not overflow.

    (Shared with the Fenchel–Young losses; its natural home is ``losses._model``.)
    """
    scaled = logits.to(dtype) / temperature
    if validate and temperature < 1 and can_read(logits) and bool((torch.isinf(scaled) & torch.isfinite(logits)).any()):
        fail(fn, "temperature", f"a value for which {name} / temperature stays finite in {dtype}",
             temperature, detail=f"largest |{name}| is {float(logits.detach()[torch.isfinite(logits)].abs().max()):.3g}")
    return scaled


@as_callers_errors
def _divergence(fn: str, divergence: str, logits: Tensor, target: Tensor | None, *,
                normalizer: str | registry.Normalizer, dim: int, reduction: str, mask: Tensor | None,
                temperature: float, target_logits: Tensor | None, validate: bool,
                param: Any, params: dict[str, Any]) -> Tensor:
    check_choice(fn, "divergence", divergence, DIVERGENCES)
    kernel, pname, _ = DIVERGENCES[divergence]
    check_floating(fn, "logits", logits)
    spec = normalizer_spec(fn, normalizer, _simplex)
    nparams = normalizer_params(fn, spec, params, own=_OWN)
    axis = check_dim(fn, dim, logits.ndim)
    if logits.ndim and logits.shape[axis] == 0:
        fail(fn, "logits", f"at least one class along dim {dim}", f"<shape {tuple(logits.shape)}>")
    check_reduction(fn, reduction)
    temperature = check_positive(fn, "temperature", temperature)
    value = _check_param(fn, divergence, param) if pname is not None else None
    if (target is None) == (target_logits is None):
        fail(fn, "target", "exactly one of 'target' (probabilities) and 'target_logits'",
             "<both>" if target is not None else "<neither>")
    name = "target" if target is not None else "target_logits"
    given = target if target is not None else target_logits
    check_floating(fn, name, given)
    if given.shape != logits.shape:  # type: ignore[union-attr]
        fail(fn, name, f"shape {tuple(logits.shape)} (the shape of logits)",
             f"<shape {tuple(given.shape)}>")  # type: ignore[union-attr]
    if logits.ndim == 0:  # one class: view as (1,) so that every row-wise step sees an axis
        logits = logits.reshape(1)
        target = None if target is None else target.reshape(1)
        target_logits = None if target_logits is None else target_logits.reshape(1)
    batch_shape = tuple(s for i, s in enumerate(logits.shape) if i != axis)
    check_mask(fn, mask, batch_shape)
    check_same_device(fn, "logits", logits, target=target, target_logits=target_logits, mask=mask)
    if not has_data(logits, target, target_logits, mask):  # meta: the output's shape, no data to read
        return meta_output(logits, batch_shape, reduction)
    if mask is not None:
        # Masked-out rows may hold anything (all -inf padding, NaN): neither checked nor computed.
        logits = neutralize(logits, mask, axis, 0.0)
        target = None if target is None else neutralize(target, mask, axis, 1.0 / logits.shape[axis])
        target_logits = None if target_logits is None else neutralize(target_logits, mask, axis, 0.0)
    if validate:
        check_logit_rows(fn, "logits", logits, axis)
        if target is not None:
            check_probs(fn, "target", target, dim=axis)
        else:
            check_logit_rows(fn, "target_logits", target_logits, axis)  # type: ignore[arg-type]

    dtype = compute_dtype(logits)
    rows, _ = to_rows(scale_by_temperature(fn, "logits", logits, temperature, dtype, validate), axis)
    if divergence == "kl" and target is not None and not target.requires_grad:
        # Fast path for the common case (distillation to fixed probabilities, a model without
        # excluded classes): Σ xlogy(p, p) − p log q, no masks. Falls through on a -inf log q.
        q, log_q = model_distribution(spec, rows, nparams, validate, probs=False)
        p = to_rows(target.to(dtype), axis)[0]
        if not compiling() and not bool(torch.isneginf(log_q).any()):  # compiled: the general path, no host branch
            values = (torch.xlogy(p, p) - p * log_q).sum(-1).reshape(batch_shape)
            return reduce_loss(values, reduction, keep=mask).to(logits.dtype)
        q = log_q.exp() if q is None else q
    else:
        q, log_q = model_distribution(spec, rows, nparams, validate)
    if target is not None:
        p = to_rows(target.to(dtype), axis)[0]
        log_p = safe_log(p)  # exact zeros: -inf with a zero gradient
    else:
        teacher = to_rows(scale_by_temperature(fn, "target_logits", target_logits, temperature,  # type: ignore[arg-type]
                                               dtype, validate), axis)[0]
        p, log_p = model_distribution(spec, teacher, nparams, validate)
    if q is None:  # every path above sets it; a bug, not bad input
        raise RuntimeError(f"{fn}(): internal error: no model distribution was computed")
    values = kernel(p, log_p, q, log_q) if value is None else kernel(p, log_p, q, log_q, value)
    values = values.reshape(batch_shape)
    return reduce_loss(values, reduction, keep=mask).to(logits.dtype)


_ARGS = """
    Args:
        logits: (*batch, n) scores of the model (float; -inf marks an excluded class).
        target: (*batch, n) target probabilities along ``dim``.
        normalizer: a registered normalizer with outputs on the simplex ('softmax',
            'standard', 'sparsemax', 'entmax15', 'entmax', 'spherical_softmax',
            'taylor_softmax'), by name or as its :class:`logitlab.registry.Normalizer` record.
        dim: the class axis.
        reduction: 'none' (*batch) | 'mean' over kept rows | 'sum'.
        mask: (*batch) bool, True = keep the row; excluded rows count as 0 and are not in the mean.
        temperature: logits are divided by it before the normalizer.
        validate: check logits for NaN/+inf and target rows for being distributions.
        **normalizer_params: forwarded to the normalizer (e.g. ``alpha=1.3`` for 'entmax',
            ``positivity='softplus'`` for 'standard').

    Returns:
        The reduced loss: a scalar, or (*batch) for reduction='none'; the dtype of ``logits``.

    Raises:
        ValueError / TypeError: unknown normalizer, a parameter it does not take, target shape
            not that of logits, target rows not distributions, NaN or +inf logits, a row of
            all -inf, no class along ``dim``, a temperature for which logits / temperature
            overflows, invalid divergence parameter.
"""


def _doc(text: str, own: str = "") -> str:
    """Append the shared Args/Returns/Raises, with the divergence's own parameter first."""
    head, _, example = text.partition("    Example:")
    args = _ARGS.replace("        normalizer: a registered", own + "        normalizer: a registered") if own else _ARGS
    return head.rstrip() + "\n" + args + "\n    Example:" + example


def divergence_loss(logits: Tensor, target: Tensor | None = None, *, divergence: str = "kl",
                    normalizer: str | registry.Normalizer = "softmax", dim: int = -1, reduction: str = "mean",
                    mask: Tensor | None = None, temperature: float = 1.0,
                    target_logits: Tensor | None = None, validate: bool = True,
                    **params: Any) -> Tensor:
    """Any member of the divergence family, D(target ‖ normalizer(logits / temperature)).

    ``divergence`` is one of 'kl', 'reverse_kl', 'js', 'alpha', 'renyi', 'tv', 'hellinger',
    'brier' (see the named functions for the math). The target is ``target`` (probabilities) or
    ``target_logits`` (teacher logits, mapped by the same normalizer and temperature; gradients
    flow into them unless you detach them). For distillation, Hinton et al. (2015) multiply the
    KL loss by temperature²; this function does not, so scale it yourself if you want that.
    ``params`` holds the divergence's own parameter (``beta``, ``amari_alpha`` or
    ``renyi_alpha``) and the normalizer's parameters.

    Args:
        logits: (*batch, n) student scores.
        target: (*batch, n) target probabilities, or None when ``target_logits`` is given.
        divergence: the member of the family.
        target_logits: (*batch, n) teacher scores, instead of ``target``.
        (the other arguments as in :func:`kl_divergence`)

    Returns:
        The reduced loss, in the dtype of ``logits``.

    Raises:
        ValueError: unknown divergence (the message lists the choices), both or neither of
            ``target`` and ``target_logits``, and the errors of :func:`kl_divergence`.

    Example:
        >>> student = torch.tensor([[1.0, 2.0, 3.0]])
        >>> teacher = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(divergence_loss(student, target_logits=teacher, divergence="js", temperature=2.0))
        0.0
    """
    fn = "divergence_loss"
    check_choice(fn, "divergence", divergence, DIVERGENCES)
    pname = DIVERGENCES[divergence][1]
    param = params.pop(pname, DIVERGENCES[divergence][2]) if pname is not None else None
    for other in _OWN:
        if other in params:
            fail(fn, other, f"no '{other}' for divergence={divergence!r}", params[other],
                 kind=TypeError)
    return _divergence(fn, divergence, logits, target, normalizer=normalizer, dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=target_logits, validate=validate, param=param, params=params)


def kl_divergence(logits: Tensor, target: Tensor, *, normalizer: str | registry.Normalizer = "softmax", dim: int = -1,
                  reduction: str = "mean", mask: Tensor | None = None, temperature: float = 1.0,
                  validate: bool = True, **normalizer_params: Any) -> Tensor:
    return _divergence("kl_divergence", "kl", logits, target, normalizer=normalizer,
                       dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=None, validate=validate, param=None,
                       params=normalizer_params)


kl_divergence.__doc__ = _doc("""Forward Kullback–Leibler divergence KL(target ‖ model), per row.

    KL(p ‖ q) = Σ_i p_i (log p_i − log q_i), with p = target and q = normalizer(logits / T).
    Minimizing it over the model is maximum likelihood: KL(p ‖ q) = H(p, q) − H(p), so with
    one-hot targets it equals the cross-entropy of any normalizer. +inf where some p_i > 0 has
    q_i = 0 (possible with sparse normalizers or -inf logits).

    Reference: Kullback & Leibler, "On Information and Sufficiency", 1951.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(float(kl_divergence(logits, torch.tensor([[1.0, 0.0]]))), 4)  # log 2
        0.6931
    """)


def reverse_kl_divergence(logits: Tensor, target: Tensor, *, normalizer: str | registry.Normalizer = "softmax",
                          dim: int = -1, reduction: str = "mean", mask: Tensor | None = None,
                          temperature: float = 1.0, validate: bool = True,
                          **normalizer_params: Any) -> Tensor:
    return _divergence("reverse_kl_divergence", "reverse_kl", logits, target, normalizer=normalizer,
                       dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=None, validate=validate, param=None,
                       params=normalizer_params)


reverse_kl_divergence.__doc__ = _doc("""Reverse KL divergence, KL(model ‖ target), per row.

    D(target ‖ model) = KL(q ‖ p) = Σ_i q_i (log q_i − log p_i): mode-seeking. +inf where the
    model puts mass on a class the target excludes (always so for a dense normalizer and a
    one-hot target, hence not an index-target objective).

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(float(reverse_kl_divergence(logits, torch.tensor([[0.25, 0.75]]))), 4)
        0.1438
    """)


def js_divergence(logits: Tensor, target: Tensor, *, beta: float = 0.5, normalizer: str | registry.Normalizer = "softmax",
                  dim: int = -1, reduction: str = "mean", mask: Tensor | None = None,
                  temperature: float = 1.0, validate: bool = True, **normalizer_params: Any) -> Tensor:
    return _divergence("js_divergence", "js", logits, target, normalizer=normalizer,
                       dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=None, validate=validate, param=beta,
                       params=normalizer_params)


js_divergence.__doc__ = _doc("""Generalized Jensen–Shannon divergence JS_β(target ‖ model).

    JS_β(p ‖ q) = β KL(p ‖ m) + (1 − β) KL(q ‖ m),  m = β p + (1 − β) q,  β ∈ (0, 1).

    β = 0.5 is the Jensen–Shannon divergence (symmetric, at most log 2). Limits:
    JS_β / β → KL(p ‖ q) (forward, target ‖ model) as β → 0 and JS_β / (1 − β) → KL(q ‖ p)
    (reverse) as β → 1. Always finite: at most h(β) = −β log β − (1 − β) log(1 − β) (log 2 at ½),
    with finite gradients at zero probabilities.
    ``beta`` is this loss's own parameter (keyword-only).

    References: Lin, "Divergence measures based on the Shannon entropy", 1991; Agarwal et al.,
    "On-Policy Distillation of Language Models" (generalized JSD), 2024.

    Example:
        >>> logits = torch.tensor([[0.0, -torch.inf]])
        >>> round(float(js_divergence(logits, torch.tensor([[0.0, 1.0]]))), 4)  # log 2
        0.6931
    """, "        beta: the mixture weight β ∈ (0, 1) of the target (0.5: Jensen–Shannon).\n")


def alpha_divergence(logits: Tensor, target: Tensor, *, amari_alpha: float = 0.5,
                     normalizer: str | registry.Normalizer = "softmax", dim: int = -1, reduction: str = "mean",
                     mask: Tensor | None = None, temperature: float = 1.0, validate: bool = True,
                     **normalizer_params: Any) -> Tensor:
    return _divergence("alpha_divergence", "alpha", logits, target, normalizer=normalizer,
                       dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=None, validate=validate, param=amari_alpha,
                       params=normalizer_params)


alpha_divergence.__doc__ = _doc("""Amari α-divergence D_α(target ‖ model), α = ``amari_alpha``.

    D_α(p ‖ q) = (Σ_i p_i^α q_i^(1−α) − 1) / (α (α − 1)),  α ∈ ℝ,

    in the parametrization of Cichocki & Amari (2010) restricted to the simplex. α → 1 gives
    KL(p ‖ q) and α → 0 gives KL(q ‖ p) (both used exactly at α ∈ {1, 0}); α = ½ gives
    4 · squared Hellinger. For α ∈ (0, 1) it is finite and bounded by 1 / (α (1 − α)); for
    α > 1 it is +inf where p > 0 = q, for α < 0 where q > 0 = p. The parameter is named
    ``amari_alpha`` so that ``alpha=`` stays the entmax normalizer's.

    Reference: Amari, "Differential-Geometrical Methods in Statistics", 1985; Cichocki &
    Amari, "Families of Alpha- Beta- and Gamma- Divergences", Entropy 12, 2010.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(float(alpha_divergence(logits, torch.tensor([[1.0, 0.0]]))), 4)  # 4(1 − √½)
        1.1716
    """, "        amari_alpha: the order α, any finite real (0 and 1 are the KL limits).\n")


def renyi_divergence(logits: Tensor, target: Tensor, *, renyi_alpha: float = 0.5,
                     normalizer: str | registry.Normalizer = "softmax", dim: int = -1, reduction: str = "mean",
                     mask: Tensor | None = None, temperature: float = 1.0, validate: bool = True,
                     **normalizer_params: Any) -> Tensor:
    return _divergence("renyi_divergence", "renyi", logits, target, normalizer=normalizer,
                       dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=None, validate=validate, param=renyi_alpha,
                       params=normalizer_params)


renyi_divergence.__doc__ = _doc("""Rényi divergence of order α = ``renyi_alpha`` > 0, D_α(target ‖ model).

    D_α(p ‖ q) = log(Σ_i p_i^α q_i^(1−α)) / (α − 1);  α → 1 gives KL(p ‖ q) (used exactly at
    α = 1); α = ½ gives −2 log Σ √(p q). With a one-hot target it is −log q_y for every α,
    the cross-entropy. +inf for α > 1 where p > 0 = q, and for α < 1 between disjoint supports.

    Reference: Rényi, "On Measures of Entropy and Information", 1961; van Erven & Harremoës,
    "Rényi Divergence and Kullback–Leibler Divergence", IEEE Trans. Inf. Theory, 2014.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(float(renyi_divergence(logits, torch.tensor([[1.0, 0.0]]), renyi_alpha=2.0)), 4)
        0.6931
    """, "        renyi_alpha: the order α > 0 (1 is KL).\n")


def total_variation(logits: Tensor, target: Tensor, *, normalizer: str | registry.Normalizer = "softmax", dim: int = -1,
                    reduction: str = "mean", mask: Tensor | None = None, temperature: float = 1.0,
                    validate: bool = True, **normalizer_params: Any) -> Tensor:
    return _divergence("total_variation", "tv", logits, target, normalizer=normalizer,
                       dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=None, validate=validate, param=None,
                       params=normalizer_params)


total_variation.__doc__ = _doc("""Total variation distance TV(target, model) = ½ Σ_i |p_i − q_i|.

    Symmetric, in [0, 1]. Its gradient is a sign vector: bounded, but blind to how wrong the
    model is.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> float(total_variation(logits, torch.tensor([[1.0, 0.0]])))
        0.5
    """)


def hellinger_distance(logits: Tensor, target: Tensor, *, normalizer: str | registry.Normalizer = "softmax", dim: int = -1,
                       reduction: str = "mean", mask: Tensor | None = None, temperature: float = 1.0,
                       validate: bool = True, **normalizer_params: Any) -> Tensor:
    return _divergence("hellinger_distance", "hellinger", logits, target, normalizer=normalizer,
                       dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=None, validate=validate, param=None,
                       params=normalizer_params)


hellinger_distance.__doc__ = _doc("""Squared Hellinger distance H²(target, model) = ½ Σ_i (√p_i − √q_i)².

    Symmetric, in [0, 1], equal to 1 − Σ √(p q) (computed in the difference form, which does
    not cancel near equality). The loss is the square (the distance is its root).

    Reference: Hellinger, 1909; Le Cam & Yang, "Asymptotics in Statistics", 2000.

    Example:
        >>> logits = torch.tensor([[0.0, -torch.inf]])
        >>> float(hellinger_distance(logits, torch.tensor([[0.0, 1.0]])))
        1.0
    """)


def brier_loss(logits: Tensor, target: Tensor, *, normalizer: str | registry.Normalizer = "softmax", dim: int = -1,
               reduction: str = "mean", mask: Tensor | None = None, temperature: float = 1.0,
               validate: bool = True, **normalizer_params: Any) -> Tensor:
    return _divergence("brier_loss", "brier", logits, target, normalizer=normalizer,
                       dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=None, validate=validate, param=None,
                       params=normalizer_params)


brier_loss.__doc__ = _doc("""Brier score: the squared error between probability vectors, Σ_i (p_i − q_i)².

    A proper scoring rule, symmetric, in [0, 2]: the "anything else" baseline. This is the
    multiclass Brier score (scikit-learn's ``brier_score_loss`` with ``scale_by_half=False``);
    for two classes it is twice the binary Brier score (p_1 − q_1)².

    Reference: Brier, "Verification of forecasts expressed in terms of probability", 1950.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> float(brier_loss(logits, torch.tensor([[1.0, 0.0]])))
        0.5
    """)
