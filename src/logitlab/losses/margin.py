"""Margin losses on raw scores: the multiclass hinge (Crammer–Singer, Weston–Watkins) and the perceptron.

They ask the true class's score to beat the others by a margin and ignore how much beyond it:
no probabilities are modelled. With one example's scores z, its class y and margin m:

* Crammer–Singer hinge: max(0, max_{k≠y} (m + z_k) − z_y) = max_k (z_k + m·[k ≠ y]) − z_y;
* Weston–Watkins hinge: Σ_{k≠y} max(0, m + z_k − z_y), each violating class on its own;
* perceptron: max_k z_k − z_y (the Crammer–Singer hinge with m = 0).

The perceptron loss is the Fenchel–Young loss of the argmax map (Ω = 0 on the simplex):
max_k z_k − z_y = lim_{T→0} T · H(e_y, softmax(z / T)). The multiclass hinge is its
cost-augmented form (Blondel, Martins and Niculae, 2020, §5). Their gradients are those of a
max: e_{k*} − e_y for the maximizing class k* (the first on ties), 0 once the margin holds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitlab._reduction import reduce_loss
from logitlab._validation import check_range, compute_dtype, fail
from logitlab.losses._inputs import data_checks_off, loss_rows

__all__ = ["multiclass_hinge_loss", "perceptron_loss"]

_KINDS = ("crammer_singer", "weston_watkins")


def _check_rows(fn: str, rows: Tensor, keep: Tensor, validate: bool) -> None:
    if not validate or data_checks_off():
        return
    kept = rows[keep]
    bad = torch.isnan(kept) | (kept == math.inf)
    if bool(bad.any()):
        fail(fn, "logits", "no NaN or +inf in the rows that count (-inf marks an excluded class)",
             f"<{int(bad.any(1).sum())} row(s) with NaN or +inf>")


def _margin_values(fn: str, logits: Tensor, target: Tensor, margin: float, kind: str, dim: int,
                   ignore_index: int, mask: Tensor | None, reduction: str, validate: bool) -> Tensor:
    r = loss_rows(fn, logits, target, dim=dim, ignore_index=ignore_index, mask=mask, reduction=reduction,
                  validate=validate, kinds=("index",))
    _check_rows(fn, r.rows, r.keep, validate)
    rows = r.rows.to(compute_dtype(logits))
    y = r.target.unsqueeze(1)
    true_score = rows.gather(1, y)
    if rows.shape[0] and rows.shape[1] == 1:
        values = rows.new_zeros(rows.shape[0])  # one class: nothing to beat
    elif kind == "crammer_singer":
        shifted = (rows + margin).scatter(1, y, true_score)  # m + z_k for k ≠ y, z_y for y
        values = shifted.amax(1) - true_score.squeeze(1)
    else:
        violations = (margin + rows - true_score).clamp_min(0).scatter(1, y, rows.new_zeros(y.shape))
        values = violations.sum(1)
    # An excluded row may be all -inf: its value is NaN (-inf - -inf); the keep mask zeroes it and
    # the where inside reduce_loss keeps NaN out of the gradient.
    values = torch.where(r.keep, values, values.new_zeros(()))
    out = reduce_loss(values, reduction, keep=r.keep)
    out = out.reshape(r.batch_shape) if reduction == "none" else out
    return out.to(logits.dtype)


def multiclass_hinge_loss(logits: Tensor, target: Tensor, *, margin: float = 1.0, kind: str = "crammer_singer",
                          dim: int = -1, ignore_index: int = -100, mask: Tensor | None = None,
                          reduction: str = "mean", validate: bool = True) -> Tensor:
    r"""Multiclass hinge loss on scores: the true class must beat the others by ``margin``.

    Per example, with scores z (along ``dim``), true class y and margin m::

        crammer_singer:  max(0, max_{k≠y} (m + z_k) − z_y)      (Crammer and Singer, 2001)
        weston_watkins:  Σ_{k≠y} max(0, m + z_k − z_y)          (Weston and Watkins, 1999)

    ``weston_watkins`` is C times ``torch.nn.functional.multi_margin_loss`` (which divides by
    the number of classes C); for C = 2 the two kinds agree. One class gives 0.

    Args:
        logits: (*batch, C) scores (C along ``dim``).
        target: (*batch) integer class indices.
        margin: m ≥ 0 (m = 0 with ``crammer_singer`` is :func:`perceptron_loss`).
        kind: 'crammer_singer' (the largest violation) or 'weston_watkins' (the sum of violations).
        dim: the class axis.
        ignore_index: targets equal to it are excluded (0 in 'none', not counted in 'mean').
        mask: (*batch) bool, True = keep the row.
        reduction: 'none' | 'mean' (over the kept rows) | 'sum'.
        validate: check the class indices and reject NaN / +inf in the kept rows.

    Returns:
        A scalar, or (*batch) for ``reduction='none'``.

    Raises:
        TypeError / ValueError / IndexError naming the argument (e.g. a negative ``margin``).

    Example:
        >>> logits = torch.tensor([[2.0, 1.5, -1.0], [0.0, 3.0, 0.0]])
        >>> multiclass_hinge_loss(logits, torch.tensor([0, 0]), reduction="none")
        tensor([0.5000, 4.0000])
        >>> multiclass_hinge_loss(logits, torch.tensor([0, 0]), kind="weston_watkins", reduction="none")
        tensor([0.5000, 5.0000])
    """
    fn = "multiclass_hinge_loss"
    margin = check_range(fn, "margin", margin, 0.0, math.inf, high_open=True)
    if kind not in _KINDS:
        fail(fn, "kind", "one of " + ", ".join(repr(k) for k in _KINDS), kind)
    return _margin_values(fn, logits, target, margin, kind, dim, ignore_index, mask, reduction, validate)


def perceptron_loss(logits: Tensor, target: Tensor, *, dim: int = -1, ignore_index: int = -100,
                    mask: Tensor | None = None, reduction: str = "mean", validate: bool = True) -> Tensor:
    r"""Multiclass perceptron loss max_k z_k − z_y: how far the true class is behind the best one.

    0 exactly when the true class has the largest score; its gradient is e_{k*} − e_y for the
    best class k*. It is the Fenchel–Young loss of the argmax map, the T → 0 limit of
    T · cross_entropy(z / T, y), and :func:`multiclass_hinge_loss` with margin 0 (Rosenblatt, 1958;
    Collins, 2002).

    Args:
        logits: (*batch, C) scores (C along ``dim``).
        target: (*batch) integer class indices.
        dim, ignore_index, mask, reduction, validate: as in :func:`multiclass_hinge_loss`.

    Returns:
        A scalar, or (*batch) for ``reduction='none'``.

    Raises:
        TypeError / ValueError / IndexError naming the argument.

    Example:
        >>> perceptron_loss(torch.tensor([[2.0, 1.5, -1.0], [0.0, 3.0, 0.0]]), torch.tensor([0, 0]), reduction="none")
        tensor([0., 3.])
    """
    fn = "perceptron_loss"
    return _margin_values(fn, logits, target, 0.0, "crammer_singer", dim, ignore_index, mask, reduction, validate)
