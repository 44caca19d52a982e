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

Each divergence is defined once, in :mod:`logitlab._divergence_rows`: its row function (value
and gradient) and its record (own parameter, docstring). The named functions here
(``kl_divergence``, ...) are generated from those records, and the chunked and
vocabulary-parallel losses call the same row functions.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch  # noqa: F401 (the docstrings' examples use it: doctests run in this namespace)
from torch import Tensor

from logitlab import _divergence_rows as _rows
from logitlab import registry
from logitlab._reduction import reduce_loss
from logitlab._validation import (
    check_choice,
    check_floating,
    fail,
    has_data,
    meta_output,
)
from logitlab.losses._inputs import loss_rows
from logitlab.losses._model import as_callers_errors, model_distribution, normalizer_params, normalizer_spec, safe_log

DIVERGENCES = _rows.DIVERGENCES  # name -> its record: the row function, its own parameter, its doc
_OWN = tuple(d.param for d in DIVERGENCES.values() if d.param is not None)


def _simplex(spec: registry.Normalizer) -> bool:
    return spec.simplex


@as_callers_errors
def _divergence(fn: str, divergence: str, logits: Tensor, target: Tensor | None, *,
                normalizer: str | registry.Normalizer, dim: int, reduction: str, mask: Tensor | None,
                temperature: float, target_logits: Tensor | None, validate: bool,
                param: Any, params: dict[str, Any]) -> Tensor:
    check_choice(fn, "divergence", divergence, DIVERGENCES)
    record = DIVERGENCES[divergence]
    check_floating(fn, "logits", logits)
    spec = normalizer_spec(fn, normalizer, _simplex)
    nparams = normalizer_params(fn, spec, params, own=_OWN)
    value = record.check(fn, param) if record.check is not None else None
    if (target is None) == (target_logits is None):
        fail(fn, "target", "exactly one of 'target' (probabilities) and 'target_logits'",
             "<both>" if target is not None else "<neither>")
    probs = target is not None
    r = loss_rows(fn, logits, target if probs else target_logits, dim=dim, mask=mask, reduction=reduction,
                  temperature=temperature, validate=validate, kinds=("probs",) if probs else ("logits",),
                  target_name="target" if probs else "target_logits", dense=True)
    if not has_data(logits, target, target_logits, mask):  # meta: the output's shape, no data to read
        return meta_output(logits, r.batch_shape, reduction)
    # KL against given probabilities needs only log q (softmax: no exp of the model's rows).
    q, log_q = model_distribution(spec, r.rows, nparams, validate, probs=not (divergence == "kl" and probs))
    if probs:
        p, log_p = r.target, safe_log(r.target)  # exact zeros: -inf with a zero gradient
    else:
        p, log_p = model_distribution(spec, r.target, nparams, validate)
    values = record(p, log_p, q, log_q, value).value.reshape(r.batch_shape)
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
    pname = DIVERGENCES[divergence].param
    param = params.pop(pname, DIVERGENCES[divergence].default) if pname is not None else None
    for other in _OWN:
        if other in params:
            fail(fn, other, f"no '{other}' for divergence={divergence!r}", params[other],
                 kind=TypeError)
    return _divergence(fn, divergence, logits, target, normalizer=normalizer, dim=dim,
                       reduction=reduction, mask=mask, temperature=temperature,
                       target_logits=target_logits, validate=validate, param=param, params=params)


def _public(key: str, record: _rows.Divergence) -> Callable[..., Tensor]:
    """The public loss of one divergence: ``name(logits, target, *, [own parameter,] normalizer=...,
    dim=-1, reduction='mean', mask=None, temperature=1.0, validate=True, **normalizer_params)``."""
    name = record.public

    def loss(logits: Tensor, target: Tensor, *, normalizer: str | registry.Normalizer = "softmax", dim: int = -1,
             reduction: str = "mean", mask: Tensor | None = None, temperature: float = 1.0,
             validate: bool = True, **normalizer_params: Any) -> Tensor:
        param = normalizer_params.pop(record.param, record.default) if record.param is not None else None
        return _divergence(name, key, logits, target, normalizer=normalizer, dim=dim, reduction=reduction,
                           mask=mask, temperature=temperature, target_logits=None, validate=validate,
                           param=param, params=normalizer_params)

    signature = inspect.signature(loss)
    if record.param is not None:  # the own parameter first among the options, keyword-only
        own = inspect.Parameter(record.param, inspect.Parameter.KEYWORD_ONLY, default=record.default,
                                annotation="float")
        parts = list(signature.parameters.values())
        signature = signature.replace(parameters=parts[:2] + [own] + parts[2:])
    loss.__signature__ = signature  # type: ignore[attr-defined]
    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = _doc(record.doc, record.param_doc)
    return loss


# One public function per record of the table (the divergence's row function and doc live in
# logitlab/_divergence_rows.py): a new divergence has its function with nothing to edit here.
for _key, _record in DIVERGENCES.items():
    globals()[_record.public] = _public(_key, _record)

__all__ = ["DIVERGENCES", "divergence_loss", *(_record.public for _record in DIVERGENCES.values())]
