"""Shared plumbing of the losses that take a ``normalizer=``: the model distribution from logits.

The parameter scheme (documented here once, used by every divergence and Fenchel–Young loss):

* A loss's own parameters have names that no normalizer uses: ``beta`` (generalized
  Jensen–Shannon), ``amari_alpha`` (Amari α-divergence), ``renyi_alpha`` (Rényi order).
* Every other keyword argument is a parameter of the normalizer and is forwarded to it, e.g.
  ``alpha=1.3`` for ``normalizer="entmax"`` or ``positivity="softplus"`` for
  ``normalizer="standard"``. Names the normalizer does not take are rejected with a message
  that lists the ones it does take. This is the registry's contract: ``make_objective`` passes
  the normalizer's parameters and the loss's parameters side by side as keywords.
* ``temperature`` belongs to the loss: logits are divided by it before the normalizer (and the
  teacher logits too, for distillation); it is never forwarded.

The normalizer is a :class:`logitlab.registry.Normalizer` record (or its registry name),
resolved once by :func:`normalizer_spec` at the loss's public boundary; the keywords a map and
its Ω take were read when the record was built, so a call imports and inspects nothing (and
``torch.compile`` traces it without a break).

Zero probabilities: :func:`safe_log` returns ``-inf`` where a probability is exactly 0 and
routes no gradient through those entries, so that a sparse distribution never produces a NaN
in the forward or the backward pass.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from logitlab import registry
from logitlab._validation import fail

__all__ = ["normalizer_spec", "normalizer_params", "regularizer_params", "with_validate", "safe_log",
           "model_distribution", "as_callers_errors"]


@functools.lru_cache(maxsize=None)
def _inner_names() -> frozenset[str]:
    """The function names of every registered normalizer, its log form and its Ω."""
    fns = [f for spec in registry.NORMALIZERS.values() for f in (spec.fn, spec.log_fn, spec.regularizer) if f]
    return frozenset(f.__name__ for f in fns)


def as_callers_errors(body):
    """Decorate ``body(fn, ...)`` so that an error a normalizer or Ω raised about a parameter the
    loss passed on names the loss ``fn`` that was called (and the normalizer it went to):
    ``fenchel_young_loss(normalizer="entmax", alpha=0.5)`` said "entmax(): argument 'alpha' …".
    An error about the scores themselves keeps the normalizer's name: it says which map's
    domain they left (e.g. negative scores for 'standard')."""

    @functools.wraps(body)
    def wrapper(fn: str, *args: Any, **kwargs: Any):
        try:
            return body(fn, *args, **kwargs)
        except (ValueError, TypeError, IndexError) as error:
            message = str(error)
            inner, sep, rest = message.partition("(): ")
            about_scores = rest.startswith(("argument 'logits'", "argument 'probs'"))
            if sep and inner in _inner_names() and inner != fn and rest.startswith("argument '") and not about_scores:
                raise type(error)(f"{fn}(): {rest} (raised by the normalizer's {inner}())") from error
            raise

    return wrapper


def normalizer_spec(fn: str, normalizer: object, allowed: Callable[[registry.Normalizer], bool] | tuple[str, ...],
                    ) -> registry.Normalizer:
    """The :class:`~logitlab.registry.Normalizer` a loss was given: a record, or the name of a
    registered one; it must satisfy ``allowed`` (a predicate on the record, or a tuple of names).

    Raises:
        ValueError: an unknown name, or a normalizer this loss is not defined for.
    """
    choices = (tuple(n for n, s in registry.NORMALIZERS.items() if allowed(s)) if callable(allowed)
               else allowed)
    expected = "one of " + ", ".join(repr(c) for c in choices)
    if isinstance(normalizer, registry.Normalizer):
        spec = normalizer
    elif isinstance(normalizer, str) and normalizer in registry.NORMALIZERS:
        spec = registry.NORMALIZERS[normalizer]
    else:
        fail(fn, "normalizer", expected, normalizer,
             detail="unknown normalizer")
    ok = allowed(spec) if callable(allowed) else spec.name in allowed
    if not ok:
        fail(fn, "normalizer", expected, spec.name if isinstance(normalizer, registry.Normalizer) else normalizer,
             detail="this loss is not defined for it")
    return spec


def normalizer_params(fn: str, spec: registry.Normalizer, params: Mapping[str, Any],
                      own: tuple[str, ...] = ()) -> dict[str, Any]:
    """The normalizer's keyword parameters: its registry defaults updated with ``params``.

    Raises:
        TypeError: a name in ``params`` is not a parameter of the normalizer.
    """
    merged = {**spec.params, **params}
    if not params:
        return merged
    names = spec.takes
    for key in params:
        if key not in names and not spec.takes_any:
            takes = ", ".join(sorted(names)) or "no parameters"
            hint = f"; this loss's own parameters are {', '.join(own)}" if own else ""
            fail(fn, key, f"a parameter of normalizer {spec.name!r} (it takes: {takes}{hint})",
                 "<unexpected keyword>", kind=TypeError)
    return merged


def regularizer_params(spec: registry.Normalizer, params: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of the normalizer's parameters that its regularizer Ω takes (e.g. ``alpha``),
    with ``validate=False`` where Ω takes it: its inputs were checked or computed by the loss."""
    if spec.regularizer is None:  # callers check; a bug, not bad input
        raise RuntimeError(f"internal error: normalizer {spec.name!r} has no regularizer")
    out = {k: v for k, v in params.items() if k in spec.regularizer_takes and k != "validate"}
    if "validate" in spec.regularizer_takes:
        out["validate"] = False
    return out


def with_validate(takes: frozenset[str], params: Mapping[str, Any], validate: bool) -> dict[str, Any]:
    """``params`` plus ``validate=validate`` when a function taking the keywords ``takes`` takes it.

    A normalizer receives the loss's own ``validate``: its checks include domain constraints the
    loss does not repeat (e.g. non-negative scores for 'standard' without ``positivity``).
    """
    return {**params, "validate": validate} if "validate" in takes else dict(params)


def safe_log(probs: Tensor) -> Tensor:
    """``log(probs)`` with ``-inf`` (and zero gradient) where ``probs == 0``.

    Example:
        >>> safe_log(torch.tensor([0.5, 0.0]))
        tensor([-0.6931,    -inf])
    """
    positive = probs > 0
    logs = torch.log(torch.where(positive, probs, torch.ones_like(probs)))
    return torch.where(positive, logs, torch.full_like(logs, -torch.inf))


def model_distribution(spec: registry.Normalizer, rows: Tensor, params: Mapping[str, Any],
                       validate: bool = True, *, probs: bool = True) -> tuple[Tensor | None, Tensor]:
    """``(probs, log_probs)`` of a normalizer applied to ``rows`` (N, n) along the last axis.

    Softmax without parameters is computed in log space (``log_softmax``), so that
    ``log_probs`` stays finite where ``probs`` underflows. A normalizer with a log-space form
    uses it; the others go through :func:`safe_log`. With ``probs=False`` a log-space path skips
    the ``exp`` and returns None for the probabilities.
    """
    if spec.fn is registry.NORMALIZERS["softmax"].fn and not params:
        log_probs = torch.log_softmax(rows, dim=-1)
        return (log_probs.exp() if probs else None), log_probs
    if spec.log_fn is not None:
        log_probs = spec.log_fn(rows, dim=-1, **with_validate(spec.log_takes, params, validate))
        return (log_probs.exp() if probs else None), log_probs
    values = spec.fn(rows, dim=-1, **with_validate(spec.takes, params, validate))
    return values, safe_log(values)
