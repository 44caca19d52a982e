"""The input boundary of the losses: their arguments checked and laid out as rows, in one place.

:func:`loss_rows` checks the scores (logits, log-probabilities, or the hidden states of a linear
head), the target (class indices, probabilities, points, or teacher logits), ``dim``, class
weights, ``ignore_index``, ``mask``, ``temperature`` and ``reduction``, and returns a
:class:`LossRows`: the (N, C) rows (or (N, D) hidden rows), the target laid out with them and its
kind, the kept rows, the weight of each row, and the factors of the reduction
(:meth:`LossRows.scale` per row, :meth:`LossRows.total_scale` as one number). Every loss goes
through it: the cross-entropy family, the focal, Poly-1 and margin losses, the divergences, the
Fenchel–Young losses, the fused head losses and the vocabulary-parallel losses. The checks that
belong to one family only (a head's shapes, :func:`check_head`; the row values of a head,
:func:`check_head_values`) live here too, so no loss imports another's helpers.

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

from logitlab._reduction import neutralize, reduction_scale, row_scale, to_rows
from logitlab._validation import (
    can_read,
    check_dim,
    check_finite,
    check_floating,
    check_index_target,
    check_mask,
    check_positive,
    check_probs,
    check_reduction,
    check_same_device,
    check_tensor,
    check_unit_interval,
    compiling,
    compute_dtype,
    fail,
    has_data,
    transforms_active,
)

__all__ = ["LossRows", "loss_rows", "data_checks_off", "no_grad_options", "check_logit_rows",
           "scale_by_temperature", "check_head", "check_head_values", "check_group", "KINDS"]

# The kinds of target a loss may take, with the noun its messages use:
# 'index' (*batch) class indices; 'probs' (*batch, C) rows on the simplex; 'box' (*batch, C)
# probabilities in [0, 1] each (the sigmoid's box); 'points' (*batch, C) finite points of a
# regularizer's domain; 'logits' (*batch, C) teacher scores, laid out (and scaled) like the logits.
KINDS = {"index": "class indices", "probs": "probabilities", "box": "probabilities", "points": "points",
         "logits": "logits"}


class LossRows(NamedTuple):
    """A checked call, flattened to rows: what :func:`loss_rows` returns."""

    rows: Tensor          # (N, C) scores (dense: in the compute dtype, / T), or (N, D) hidden rows of a head
    target: Tensor | None  # (N,) safe class indices (excluded rows set to 0), (N, C) rows, or None
    kind: str             # the target's kind (a key of KINDS), or 'none' without a target
    keep: Tensor          # (N,) bool
    row_weight: Tensor | None  # (N,) weight of each row in the 'mean' denominator
    weight: Tensor | None  # (C,) class weights in the compute dtype
    batch_shape: tuple[int, ...]
    reduction: str | None = None
    temperature: float = 1.0

    @property
    def index_target(self) -> bool:
        return self.kind == "index"

    def scale(self, reduction: str | None = None) -> Tensor:
        """(N,) factor of each row's loss for ``reduction`` (default: the checked one;
        :func:`logitlab._reduction.row_scale`), in the compute dtype of the rows."""
        return row_scale(self.keep, reduction or self.reduction, compute_dtype(self.rows), self.row_weight)

    def total_scale(self, dtype: torch.dtype) -> float | Tensor | None:
        """The factor that turns the sum of the rows' losses into the checked reduction
        (:func:`logitlab._reduction.reduction_scale`): None for 'none', 1 for 'sum', 1 / (the
        kept rows' total weight) for 'mean' as a 0-d tensor of ``dtype``, never read on the host."""
        kept = self.keep.to(dtype) if self.row_weight is None else torch.where(
            self.keep, self.row_weight.to(dtype), torch.zeros((), dtype=dtype, device=self.keep.device))
        return reduction_scale(self.reduction, kept.sum())


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


def loss_rows(fn: str, logits: Tensor, target: object, *, dim: int = -1, weight: object = None,
              ignore_index: object = -100, mask: object = None, reduction: object = None,
              temperature: object = None, validate: bool = True, kinds: tuple[str, ...] = ("index", "probs"),
              name: str = "logits", target_name: str = "target", weight_name: str = "weight",
              head: Tensor | None = None, n_classes: int | None = None, dense: bool = False,
              check_scores: bool | None = None, sharded: bool = False, check_indices: bool = True,
              target_optional: bool = False) -> LossRows:
    """The checks and the row layout of a loss over (*batch, C) scores and a target.

    Two layouts of the scores ``logits`` (named ``name`` in messages):

    * (*batch, C) scores with the classes along ``dim`` (the default): rows (N, C). A 0-d tensor
      is an error, except with ``dense`` (one class, as ``check_dim`` has it).
    * the hidden states (*batch, D) of a linear head ``head`` (V, D) (shapes checked by
      :func:`check_head` first): rows (N, D) of ``logits``; the classes are those of ``head``, or
      ``n_classes`` of them (a head sharded over the vocabulary), and class weights are checked
      but not picked per row (a sharded head's row kernel does that).

    The target (named ``target_name``) is of one of ``kinds`` (see :data:`KINDS`); with
    ``target_optional`` it may be None (every row kept, kind 'none'). Rows are excluded by
    ``mask`` (True keeps a row) and, for class indices, by ``ignore_index``. ``reduction`` and
    ``temperature`` (when not None) are checked and kept for :meth:`LossRows.total_scale`.

    ``dense=False`` (the one-pass kernels, which read the scores, exclude rows and divide by the
    temperature themselves): the rows are the scores as given, probabilities must have their
    dtype, excluded probability rows are set to 0 (the target's data are checked as with
    ``dense``). ``dense=True`` (losses that compute every row
    with torch ops): excluded rows are neutralized first (scores 0, probabilities uniform: an
    excluded row may hold anything, padding or NaN), and the rows and the target rows come
    divided by the temperature in the compute dtype.

    ``check_scores`` (default: ``dense``): with ``validate``, no NaN or +inf in the kept rows of
    the scores, and at least one logit > -inf in each, except when ``sharded`` (the class axis is
    one rank's slice of the vocabulary: it may be empty, and a row of it all -inf). The target's
    data (probability rows, points, teacher logits) are checked with ``validate``; class indices
    whatever it says (an index addresses memory) unless ``check_indices=False`` leaves them to
    the caller (cross_entropy checks them once it knows the implementation: the Triton kernel
    with ``validate`` off reads no memory for an index outside [0, C), and is not checked on the
    host; a sharded loss checks them against the full vocabulary).
    """
    check_floating(fn, name, logits)
    check_scores = dense if check_scores is None else check_scores
    if head is None:
        if logits.ndim == 0 and not dense:
            fail(fn, name, "a tensor with at least 1 dimension (the classes)", logits)
        axis = check_dim(fn, dim, logits.ndim)
        classes = logits.shape[axis] if logits.ndim else 1
        if classes == 0 and not sharded:
            fail(fn, name, f"at least one class along dim {dim}", f"<shape {tuple(logits.shape)}>")
        batch_shape = tuple(s for i, s in enumerate(logits.shape) if i != axis)
        where = f"the shape of {name} without dim {dim}"
    else:
        axis, classes = logits.ndim - 1, head.shape[0]
        batch_shape = tuple(logits.shape[:-1])
        where = f"{name}.shape[:-1]"
    n_classes = classes if n_classes is None else n_classes
    if reduction is not None:
        check_reduction(fn, reduction)
    if temperature is not None:
        temperature = check_positive(fn, "temperature", temperature)
    kind = _target_kind(fn, logits, target, kinds, name, target_name, batch_shape, where, dense, target_optional)
    tensors = {target_name: target if kind != "none" else None, weight_name: weight if isinstance(weight, Tensor)
               else None, "mask": mask if isinstance(mask, Tensor) else None}
    check_same_device(fn, name, logits, **tensors)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        fail(fn, "ignore_index", "an int", f"<{type(ignore_index).__name__}>", kind=TypeError)
    checking = validate and not data_checks_off()
    cd = compute_dtype(logits)
    if weight is not None:
        weight = check_floating(fn, weight_name, weight)
        if tuple(weight.shape) != (classes,):
            fail(fn, weight_name, f"a 1-D tensor of {classes} class weights", weight)
        if checking and has_data(weight) and not bool(torch.isfinite(weight).all()):
            fail(fn, weight_name, "finite class weights", "<NaN or inf entries>")
        weight = weight.to(cd)
    n_rows = math.prod(batch_shape)
    if mask is not None:
        keep = check_mask(fn, mask, batch_shape).reshape(n_rows)
    else:
        keep = torch.ones(n_rows, dtype=torch.bool, device=logits.device)
    row_weight, target_rows = None, None
    if kind == "index":
        flat = target.reshape(n_rows)  # type: ignore[union-attr]
        keep = keep & (flat != ignore_index)
        if check_indices and not data_checks_off():  # whatever `validate` says: an index addresses memory
            check_index_target(fn, target_name, flat, n_classes, ignore_index=ignore_index, keep=keep)
        target_rows = torch.where(keep, flat, torch.zeros((), dtype=flat.dtype, device=flat.device)).long()
        if weight is not None and head is None:  # (unchecked indices are clamped: no read out of range)
            row_weight = weight[target_rows if check_indices else target_rows.clamp(0, n_classes - 1)]
    if head is not None:
        return LossRows(logits.reshape(n_rows, logits.shape[-1]), target_rows, kind, keep, None, weight,
                        batch_shape, reduction, 1.0 if temperature is None else temperature)

    scores = logits.reshape(1) if logits.ndim == 0 else logits  # a 0-d tensor (dense): one class
    given = None if kind in ("none", "index") else target.reshape(scores.shape)  # type: ignore[union-attr]
    excluded = mask is not None or kind == "index"
    if dense and excluded:  # neither checked nor computed: an excluded row may hold anything
        kept = keep.reshape(batch_shape)
        scores = neutralize(scores, kept, axis, 0.0)
        if given is not None:
            given = neutralize(given, kept, axis, 0.0 if kind == "logits" else 1.0 / max(classes, 1))
    if checking and check_scores:
        checked = scores if dense or not excluded else neutralize(scores, keep.reshape(batch_shape), axis, 0.0)
        if sharded:
            check_finite(fn, name, checked)
        else:
            check_logit_rows(fn, name, checked, axis)
    if not dense:
        rows = to_rows(scores, axis)[0]
        if given is not None:
            target_rows = to_rows(given, axis)[0]
            if checking and kind == "probs":
                check_probs(fn, target_name, target_rows if mask is None else target_rows[keep], dim=-1)
            elif checking:
                _check_target_data(fn, target_name, target_rows, kind, 1, sharded)
            if mask is not None:
                # Masked-out rows are not checked and may hold anything (padding, NaN): zero them, or
                # NaN · 0 would put NaN into their gradient rows.
                target_rows = torch.where(keep.unsqueeze(1), target_rows, target_rows.new_zeros(()))
        return LossRows(rows, target_rows, kind, keep, row_weight, weight, batch_shape, reduction,
                        1.0 if temperature is None else temperature)

    t = 1.0 if temperature is None else temperature
    if given is not None and checking:
        _check_target_data(fn, target_name, given, kind, axis, sharded)
    rows = to_rows(scale_by_temperature(fn, name, scores, t, cd, validate), axis)[0]
    if kind == "logits":
        target_rows = to_rows(scale_by_temperature(fn, target_name, given, t, cd, validate), axis)[0]
    elif given is not None:
        target_rows = to_rows(given.to(cd), axis)[0]
    return LossRows(rows, target_rows, kind, keep, row_weight, weight, batch_shape, reduction, t)


def _check_target_data(fn: str, name: str, given: Tensor, kind: str, axis: int, sharded: bool) -> None:
    """The data checks of a same-shape target of ``kind``, the classes along ``axis``."""
    if kind == "probs":
        check_probs(fn, name, given, dim=axis)
    elif kind == "box":  # one probability per class (the sigmoid's box [0, 1]^n)
        check_unit_interval(fn, name, given)
    elif kind == "points":
        check_finite(fn, name, given, allow_neg_inf=False)
    elif sharded:
        check_finite(fn, name, given)
    else:
        check_logit_rows(fn, name, given, axis)


def _target_kind(fn: str, logits: Tensor, target: object, kinds: tuple[str, ...], name: str, target_name: str,
                 batch_shape: tuple[int, ...], where: str, dense: bool, optional: bool) -> str:
    """The kind of ``target`` among ``kinds`` (its dtype and shape checked), 'none' for an
    optional target that is None."""
    if target is None and optional:
        return "none"
    floating = [k for k in kinds if k != "index"]
    if "index" not in kinds:
        target = check_floating(fn, target_name, target)
    target = check_tensor(fn, target_name, target)
    index = not target.is_floating_point()
    if index and (target.dtype == torch.bool or target.is_complex()) or not index and not floating:
        expected = ("an integer tensor of class indices" if not floating else
                    f"integer class indices or floating {KINDS[floating[0]]}")
        fail(fn, target_name, expected, f"<dtype {target.dtype}>", kind=TypeError)
    kind = "index" if index else floating[0]
    shape = batch_shape if index else tuple(logits.shape)
    if tuple(target.shape) != shape:
        # The kind received first, with where its shape comes from; then the other kinds.
        expected = f"{KINDS[kind]} of shape {shape} ({where if index else 'the shape of ' + name})" + "".join(
            f" or {KINDS[k]} of shape {batch_shape if k == 'index' else tuple(logits.shape)}"
            for k in kinds if k != kind and KINDS[k] != KINDS[kind])
        fail(fn, target_name, expected,
             f"<{'integer' if index else 'floating'} tensor of shape {tuple(target.shape)}>")
    if not index and not dense and target.dtype != logits.dtype:
        fail(fn, target_name, f"{KINDS[kind]} of dtype {logits.dtype} (the dtype of {name})",
             f"<dtype {target.dtype}>", kind=TypeError)
    return kind


def check_head(fn: str, hidden: object, weight: object, bias: object) -> None:
    """Shapes of a linear head: hidden (*batch, D), weight (V, D), bias (V,)."""
    check_floating(fn, "hidden", hidden)
    check_floating(fn, "weight", weight)
    if hidden.ndim < 1:  # type: ignore[union-attr]
        fail(fn, "hidden", "a tensor of shape (*batch, D)", "<a 0-d tensor>")
    if weight.ndim != 2:  # type: ignore[union-attr]
        fail(fn, "weight", "a 2-D tensor of shape (V, D)", f"<shape {tuple(weight.shape)}>")  # type: ignore[union-attr]
    if weight.shape[1] != hidden.shape[-1]:  # type: ignore[union-attr]
        fail(fn, "weight", f"shape (V, {hidden.shape[-1]}) (D = hidden.shape[-1])",  # type: ignore[union-attr]
             f"<shape {tuple(weight.shape)}>")  # type: ignore[union-attr]
    if weight.dtype != hidden.dtype:  # type: ignore[union-attr]
        fail(fn, "weight", f"dtype {hidden.dtype} (the dtype of hidden)", f"<dtype {weight.dtype}>",  # type: ignore[union-attr]
             kind=TypeError)
    if bias is not None:
        check_floating(fn, "bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):  # type: ignore[union-attr]
            fail(fn, "bias", f"shape ({weight.shape[0]},) (V = weight.shape[0])",  # type: ignore[union-attr]
                 f"<shape {tuple(bias.shape)}>")  # type: ignore[union-attr]
    check_same_device(fn, "hidden", hidden, weight=weight, bias=bias)  # type: ignore[arg-type]


def check_head_values(fn: str, hidden2d: Tensor, keep: Tensor, **tensors: Tensor | None) -> None:
    """No NaN or ±inf in the rows of ``hidden2d`` (N, D) that count (``keep``), nor in ``tensors``
    (a bias, whose name ends in 'bias', may hold -inf: it excludes a class).

    A row that does not count (its target is ``ignore_index``) may hold anything: padding.
    """
    if not can_read(hidden2d, keep, *tensors.values()):  # meta, or under torch.compile (no host branch)
        return
    # By each row's minimum and maximum (both propagate NaN): no (N, D) boolean tensor.
    low, high = torch.aminmax(hidden2d, dim=1) if hidden2d.shape[1] else (hidden2d.new_zeros(hidden2d.shape[0]),) * 2
    bad = ~(torch.isfinite(low) & torch.isfinite(high)) & keep
    if bool(bad.any()):
        fail(fn, "hidden", "finite values in the rows whose target counts",
             f"<NaN or inf in row {int(bad.nonzero()[0, 0])} of the flattened batch>")
    for name, tensor in tensors.items():
        if tensor is not None:
            check_finite(fn, name, tensor, allow_neg_inf=name.endswith("bias"))


def check_group(fn: str, group: object) -> object:
    """``group`` is None or a torch.distributed ProcessGroup (a string such as "world" is not)."""
    if group is None:
        return None
    import torch.distributed as dist

    if not isinstance(group, dist.ProcessGroup):
        fail(fn, "process_group", "None or a torch.distributed.ProcessGroup (e.g. dist.group.WORLD)",
             f"<{type(group).__name__}>", kind=TypeError)
    return group


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
