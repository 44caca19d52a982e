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

Zero probabilities: :func:`safe_log` returns ``-inf`` where a probability is exactly 0 and
routes no gradient through those entries, so that a sparse distribution never produces a NaN
in the forward or the backward pass.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Mapping

import torch
from torch import Tensor

from logitlab import registry
from logitlab._validation import fail

__all__ = ["normalizer_spec", "normalizer_params", "regularizer_params", "with_validate", "safe_log",
           "model_distribution", "as_callers_errors"]


@functools.lru_cache(maxsize=None)
def _inner_names() -> frozenset[str]:
    """The function names of every registered normalizer, its log form and its Ω."""
    paths = [p for spec in registry.NORMALIZERS.values() for p in (spec.fn, spec.log_fn, spec.regularizer) if p]
    return frozenset(path.partition(":")[2] for path in paths)


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


def normalizer_spec(fn: str, name: object, allowed: tuple[str, ...]) -> registry.NormalizerSpec:
    """The registry spec of normalizer ``name``, which must be one of ``allowed``."""
    if name not in registry.NORMALIZERS:
        fail(fn, "normalizer", "one of " + ", ".join(repr(c) for c in allowed), name,
             detail="unknown normalizer")
    if name not in allowed:
        fail(fn, "normalizer", "one of " + ", ".join(repr(c) for c in allowed), name,
             detail="this loss is not defined for it")
    return registry.NORMALIZERS[name]  # type: ignore[index]


@functools.lru_cache(maxsize=None)
def _accepted(path: str) -> tuple[frozenset[str], bool]:
    """Keyword names a ``"module:function"`` accepts besides the tensor and ``dim`` (cached:
    ``inspect.signature`` costs more than a small loss call)."""
    signature = inspect.signature(registry.resolve(path))
    names, var = set(), False
    for index, (pname, param) in enumerate(signature.parameters.items()):
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var = True
        elif index > 0 and pname != "dim" and param.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(pname)
    return frozenset(names), var


def normalizer_params(fn: str, spec: registry.NormalizerSpec, params: Mapping[str, Any],
                      own: tuple[str, ...] = ()) -> dict[str, Any]:
    """The normalizer's keyword parameters: its registry defaults updated with ``params``.

    Raises:
        TypeError: a name in ``params`` is not a parameter of the normalizer.
    """
    merged = {**spec.params, **params}
    if not params:
        return merged
    names, var = _accepted(spec.fn)
    for key in params:
        if key not in names and not var:
            takes = ", ".join(sorted(names)) or "no parameters"
            hint = f"; this loss's own parameters are {', '.join(own)}" if own else ""
            fail(fn, key, f"a parameter of normalizer {spec.name!r} (it takes: {takes}{hint})",
                 "<unexpected keyword>", kind=TypeError)
    return merged


def regularizer_params(spec: registry.NormalizerSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of the normalizer's parameters that its regularizer Ω takes (e.g. ``alpha``)."""
    if spec.regularizer is None:  # callers check; a bug, not bad input
        raise RuntimeError(f"internal error: normalizer {spec.name!r} has no regularizer")
    names, var = _accepted(spec.regularizer)
    return {k: v for k, v in params.items() if var or k in names}


def with_validate(path: str, params: Mapping[str, Any], validate: bool) -> dict[str, Any]:
    """``params`` plus ``validate=validate`` when the function at ``path`` takes it.

    A normalizer receives the loss's own ``validate``: its checks include domain constraints the
    loss does not repeat (e.g. non-negative scores for 'standard' without ``positivity``).
    Ω receives ``validate=False``: its inputs were checked or computed by the loss.
    """
    names, _ = _accepted(path)
    return {**params, "validate": validate} if "validate" in names else dict(params)


def safe_log(probs: Tensor) -> Tensor:
    """``log(probs)`` with ``-inf`` (and zero gradient) where ``probs == 0``.

    Example:
        >>> safe_log(torch.tensor([0.5, 0.0]))
        tensor([-0.6931,    -inf])
    """
    positive = probs > 0
    logs = torch.log(torch.where(positive, probs, torch.ones_like(probs)))
    return torch.where(positive, logs, torch.full_like(logs, -torch.inf))


def model_distribution(spec: registry.NormalizerSpec, rows: Tensor, params: Mapping[str, Any],
                       validate: bool = True, *, probs: bool = True) -> tuple[Tensor | None, Tensor]:
    """``(probs, log_probs)`` of a normalizer applied to ``rows`` (N, n) along the last axis.

    Softmax without parameters is computed in log space (``log_softmax``), so that
    ``log_probs`` stays finite where ``probs`` underflows. A normalizer with a registered
    log-space function uses it; the others go through :func:`safe_log`. With ``probs=False``
    a log-space path skips the ``exp`` and returns None for the probabilities.
    """
    if spec.name == "softmax" and not params:
        log_probs = torch.log_softmax(rows, dim=-1)
        return (log_probs.exp() if probs else None), log_probs
    if spec.log_fn is not None:
        log_fn = registry.resolve(spec.log_fn)
        log_probs = log_fn(rows, dim=-1, **with_validate(spec.log_fn, params, validate))
        return (log_probs.exp() if probs else None), log_probs
    values = registry.resolve(spec.fn)(rows, dim=-1, **with_validate(spec.fn, params, validate))
    return values, safe_log(values)
