"""The input boundary of the losses: their arguments checked and laid out as rows, in one place.

:func:`loss_rows` checks the scores, the target (class indices or probabilities), ``dim``,
class weights, ``ignore_index`` and ``mask``, and returns a :class:`LossRows`: the (N, C) rows,
the target laid out with them and its kind, the kept rows, the weight of each row, and (with
:meth:`LossRows.scale`) each row's factor for the reduction. The cross-entropy family, the
focal and Poly-1 losses and the margin losses go through it; :func:`check_logit_rows` and
:func:`scale_by_temperature` are the divergences' and the Fenchel–Young losses' steps.

Data checks (values read on the host) run only with ``validate`` and never while
``torch.compile`` traces or a ``torch.func`` transform runs (:func:`data_checks_off`); the
structural checks (types, shapes, options) always run. Every message names the function, the
argument, what was expected and what was received (:mod:`logitlab._validation`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from logitlab._reduction import row_scale, to_rows
from logitlab._validation import (
    can_read,
    check_dim,
    check_finite,
    check_floating,
    check_index_target,
    check_mask,
    check_probs,
    check_same_device,
    check_tensor,
    compiling,
    compute_dtype,
    fail,
    has_data,
    transforms_active,
)

__all__ = ["LossRows", "loss_rows", "data_checks_off", "no_grad_options", "check_logit_rows",
           "scale_by_temperature"]


class LossRows(NamedTuple):
    """A checked call, flattened to rows: what :func:`loss_rows` returns."""

    rows: Tensor          # (N, C) logits
    target: Tensor        # (N,) safe class indices (excluded rows set to 0) or (N, C) probs
    index_target: bool
    keep: Tensor          # (N,) bool
    row_weight: Tensor | None  # (N,) weight of each row in the 'mean' denominator
    weight: Tensor | None  # (C,) class weights in the compute dtype
    batch_shape: tuple[int, ...]

    def scale(self, reduction: str) -> Tensor:
        """(N,) factor of each row's loss for ``reduction`` (:func:`logitlab._reduction.row_scale`),
        in the compute dtype of the rows."""
        return row_scale(self.keep, reduction, compute_dtype(self.rows), self.row_weight)


def data_checks_off() -> bool:
    """Under ``torch.compile`` or a ``torch.func`` transform: the data checks are skipped (nothing
    to branch on) and 'auto' takes the composite implementation."""
    return compiling() or transforms_active()


def no_grad_options(fn: str, **options: object) -> None:
    """Scalar options are read as Python numbers: a tensor that requires grad would get none."""
    for name, value in options.items():
        if isinstance(value, Tensor) and value.requires_grad:
            fail(fn, name, "a number (its gradient is not computed)",
                 "<tensor that requires grad>", kind=TypeError,
                 detail="to learn it, scale the logits yourself, e.g. logits / temperature")


def loss_rows(fn: str, logits: Tensor, target: object, dim: int, weight: object, ignore_index: object,
              mask: object, validate: bool, allow_probs: bool = True, name: str = "logits",
              check_indices: bool = True) -> LossRows:
    """The checks and the row layout of a loss over (*batch, C) scores and a target.

    ``name`` is the caller's name of the scores argument ('log_probs' for nll_loss).
    ``check_indices=False`` leaves the class indices to the caller (cross_entropy checks them
    once it knows the implementation: the Triton kernel with ``validate`` off reads no memory for
    an index outside [0, C) and gives its row a NaN loss, and is not checked on the host).
    """
    check_floating(fn, name, logits)
    if logits.ndim == 0:
        fail(fn, name, "a tensor with at least 1 dimension (the classes)", logits)
    dim = check_dim(fn, dim, logits.ndim)
    target = check_tensor(fn, "target", target)
    check_same_device(fn, name, logits, target=target, weight=weight if isinstance(weight, Tensor) else None,
                      mask=mask if isinstance(mask, Tensor) else None)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        fail(fn, "ignore_index", "an int", f"<{type(ignore_index).__name__}>", kind=TypeError)
    n_classes = logits.shape[dim]
    if n_classes == 0:
        fail(fn, name, f"at least 1 class along dim {dim}", f"<shape {tuple(logits.shape)}>")
    batch_shape = tuple(logits.shape[:dim] + logits.shape[dim + 1:])
    index_target = not target.is_floating_point()
    kinds = (f"class indices of shape {batch_shape} ({name}' shape without dim {dim})"
             + (f" or probabilities of shape {tuple(logits.shape)}" if allow_probs else ""))
    if index_target:
        if target.dtype == torch.bool or target.is_complex():
            fail(fn, "target", "an integer (class indices) or floating (probabilities) tensor",
                 f"<dtype {target.dtype}>", kind=TypeError)
        if tuple(target.shape) != batch_shape:
            fail(fn, "target", kinds, f"<integer tensor of shape {tuple(target.shape)}>")
    else:
        if not allow_probs:
            fail(fn, "target", "an integer tensor of class indices", f"<dtype {target.dtype}>",
                 kind=TypeError)
        if target.shape != logits.shape:
            fail(fn, "target", kinds, f"<floating tensor of shape {tuple(target.shape)}>")
        if target.dtype != logits.dtype:
            fail(fn, "target", f"probabilities of dtype {logits.dtype} (the dtype of logits)",
                 f"<dtype {target.dtype}>", kind=TypeError)
    cd = compute_dtype(logits)
    if weight is not None:
        weight = check_floating(fn, "weight", weight)
        if tuple(weight.shape) != (n_classes,):
            fail(fn, "weight", f"a 1-D tensor of {n_classes} class weights", weight)
        if validate and not data_checks_off() and has_data(weight) and not bool(torch.isfinite(weight).all()):
            fail(fn, "weight", "finite class weights", "<NaN or inf entries>")
        weight = weight.to(cd)
    rows, _ = to_rows(logits, dim)
    n_rows = rows.shape[0]
    if mask is not None:
        keep = check_mask(fn, mask, batch_shape).reshape(n_rows)
    else:
        keep = torch.ones(n_rows, dtype=torch.bool, device=logits.device)
    if index_target:
        flat = target.reshape(n_rows)
        keep = keep & (flat != ignore_index)
        if check_indices and not data_checks_off():  # whatever `validate` says: an index addresses memory
            check_index_target(fn, "target", flat, n_classes, ignore_index=ignore_index, keep=keep)
        safe = torch.where(keep, flat, torch.zeros((), dtype=flat.dtype, device=flat.device)).long()
        if weight is None:
            row_weight = None
        else:  # (unchecked indices are clamped here: an index out of range must not read memory)
            row_weight = weight[safe if check_indices else safe.clamp(0, n_classes - 1)]
        target_rows = safe
    else:
        target_rows, _ = to_rows(target, dim)
        if validate and not data_checks_off():
            check_probs(fn, "target", target_rows if mask is None else target_rows[keep], dim=-1)
        if mask is not None:
            # Masked-out rows are not checked and may hold anything (padding, NaN): zero them, or
            # NaN · 0 would put NaN into their gradient rows.
            target_rows = torch.where(keep.unsqueeze(1), target_rows, target_rows.new_zeros(()))
        row_weight = None
    return LossRows(rows, target_rows, index_target, keep, row_weight, weight, batch_shape)


def check_logit_rows(fn: str, name: str, logits: Tensor, axis: int) -> None:
    """No NaN or +inf, and at least one logit > -inf in every row along ``axis`` (a data pass)."""
    check_finite(fn, name, logits)
    if logits.numel() and can_read(logits) and bool((logits == -math.inf).all(axis).any()):
        fail(fn, name, "at least one logit > -inf per row", "<a row of all -inf>")


def scale_by_temperature(fn: str, name: str, logits: Tensor, temperature: float, dtype: torch.dtype,
                         validate: bool) -> Tensor:
    """``logits / temperature`` in ``dtype``; with ``validate``, a finite logit may not overflow."""
    scaled = logits.to(dtype) / temperature
    if validate and temperature < 1 and can_read(logits) and bool((torch.isinf(scaled) & torch.isfinite(logits)).any()):
        largest = float(logits.detach()[torch.isfinite(logits)].abs().max())
        fail(fn, "temperature", f"a value for which {name} / temperature stays finite in {dtype}",
             temperature, detail=f"largest |{name}| is {largest:.3g}")
    return scaled
