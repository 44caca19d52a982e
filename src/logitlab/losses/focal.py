"""Cross-entropy variants that reweight by the model's confidence: focal loss and Poly-1."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitlab import backend
from logitlab._reduction import neutralize, reduce_loss
from logitlab._validation import (
    check_floating,
    check_range,
    compute_dtype,
    fail,
    has_data,
    meta_output,
)
from logitlab.losses._inputs import data_checks_off, loss_rows, no_grad_options
from logitlab.losses._xent_kernel import XentOptions, check_row_max
from logitlab.losses.cross_entropy import cross_entropy

__all__ = ["focal_loss", "poly1_cross_entropy"]


def _log_p_target(fn: str, rows: Tensor, target: Tensor, keep: Tensor, validate: bool) -> Tensor:
    """log softmax(rows)[target] per row, without materializing the full log-softmax.

    Rows that ``keep`` excludes are neither checked nor computed (they are set to 0 first: an
    all -inf padding row would give NaN, and its NaN would reach the gradient).
    """
    cd = compute_dtype(rows)
    s = neutralize(rows.to(cd), keep, 1, 0.0)
    if validate and not data_checks_off():
        opts = XentOptions(fn, True, 0.0, 0.0, 1.0, True, True, False)
        check_row_max(opts, s.detach().amax(1), 0, keep)
    return s.gather(1, target.unsqueeze(1)).squeeze(1) - torch.logsumexp(s, 1)


def focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 2.0, alpha: float | Tensor | None = None,
               dim: int = -1, ignore_index: int = -100, mask: Tensor | None = None,
               reduction: str = "mean", validate: bool = True) -> Tensor:
    r"""Multiclass softmax focal loss −α_y (1 − p_y)^γ log p_y (Lin et al., 2017).

    p = softmax(logits) along ``dim`` and y the target class. γ = 0 and no α gives
    cross-entropy; γ > 0 down-weights examples the model already classifies confidently.
    (1 − p_y) is computed as −expm1(log p_y), accurate when p_y is close to 1; where p_y
    rounds to 1 the loss and its gradient are 0 for every γ (also 0 < γ < 1, where the
    derivative of (1 − p_y)^γ alone is infinite).

    ``alpha`` is a balancing factor: a number (the same for every class) or a (C,) tensor of
    per-class factors α_c. Unlike ``weight`` in :func:`cross_entropy`, α does not enter the
    'mean' denominator: 'mean' divides by the number of kept rows (0 when none is kept).

    Args:
        logits: (*batch, C) scores (C along ``dim``).
        target: (*batch) integer class indices.
        gamma: γ ≥ 0, the focusing parameter.
        alpha: None, a number, or a (C,) tensor.
        dim: the class axis.
        ignore_index: targets equal to it are excluded.
        mask: (*batch) bool, True = keep the row.
        reduction: 'none' | 'mean' | 'sum'.
        validate: data checks as in :func:`cross_entropy`.

    Returns:
        A scalar, or (*batch) for ``reduction='none'``.

    Raises:
        TypeError / ValueError / IndexError naming the argument (e.g. a negative ``gamma``).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
        >>> focal_loss(logits, torch.tensor([0, 2]), gamma=2.0)
        tensor(0.2462)
        >>> focal_loss(logits, torch.tensor([0, 2]), gamma=0.0)  # cross-entropy
        tensor(0.6342)
    """
    fn = "focal_loss"
    no_grad_options(fn, gamma=gamma)
    gamma = check_range(fn, "gamma", gamma, 0.0, math.inf, high_open=True)
    r = loss_rows(fn, logits, target, dim=dim, ignore_index=ignore_index, mask=mask, reduction=reduction,
                  validate=validate, kinds=("index",))
    if not has_data(logits, target, mask, alpha if isinstance(alpha, Tensor) else None):
        return meta_output(logits, r.batch_shape, reduction)
    cd = compute_dtype(logits)
    log_pt = _log_p_target(fn, r.rows, r.target, r.keep, validate)
    if gamma == 0.0:
        values = -log_pt
    else:
        # (1 − p_y)^γ with a zero-safe pow: for 0 < γ < 1 the derivative of u^γ is infinite at
        # u = 0 (a confidently right row, p_y == 1 in the compute dtype) and inf · 0 would make
        # the gradient NaN; the loss ~ u^(1+γ) has derivative 0 there, which the where gives.
        # A target on an excluded (-inf) class has u = 1 and loss +inf; its factor is kept out of
        # the graph there (-log p_y = inf times d(u^γ) = 0 was NaN), so the gradient is that of
        # −log p_y, p − onehot, finite as in cross_entropy (the limit of the full gradient).
        finite = torch.isfinite(log_pt)
        u = torch.where(finite, -torch.expm1(torch.where(finite, log_pt, torch.zeros_like(log_pt))),
                        torch.ones_like(log_pt))
        positive = u > 0
        factor = torch.where(positive, torch.where(positive, u, torch.ones_like(u)).pow(gamma),
                             torch.zeros_like(u))
        values = -factor * log_pt
    if alpha is not None:
        if isinstance(alpha, Tensor):
            check_floating(fn, "alpha", alpha)
            if tuple(alpha.shape) != (r.rows.shape[1],):
                fail(fn, "alpha", f"a number or a 1-D tensor of {r.rows.shape[1]} class factors", alpha)
            if validate and not data_checks_off() and not bool(torch.isfinite(alpha).all()):
                fail(fn, "alpha", "finite class factors", "<NaN or inf entries>")
            values = values * alpha.to(cd)[r.target]
        else:
            values = values * check_range(fn, "alpha", alpha, 0.0, math.inf, high_open=True)
    out = reduce_loss(values, reduction, keep=r.keep)
    out = out.reshape(r.batch_shape) if reduction == "none" else out
    return out.to(logits.dtype)


def poly1_cross_entropy(logits: Tensor, target: Tensor, *, epsilon: float = 1.0, dim: int = -1,
                        weight: Tensor | None = None, ignore_index: int = -100,
                        mask: Tensor | None = None, reduction: str = "mean",
                        label_smoothing: float = 0.0, validate: bool = True, impl: str = "auto") -> Tensor:
    r"""Poly-1 cross-entropy: CE + ε (1 − p_t) (Leng et al., 2022, "PolyLoss").

    CE is :func:`cross_entropy` with the same weight, smoothing and exclusion options, and p_t
    the probability the model gives the target: Σ_c q_c p_c for the (smoothed) target
    distribution q. The polynomial term is weighted like its row (w_y with class weights), so
    'mean' divides both terms by Σ w_y over kept rows, as cross_entropy does. ε = 0 is
    cross-entropy; ε may be negative (down to −1, where the loss stays bounded below).

    Args:
        logits: (*batch, C) scores (C along ``dim``).
        target: (*batch) integer class indices.
        epsilon: ε ≥ −1, the coefficient of the first polynomial term.
        dim, weight, ignore_index, mask, reduction, label_smoothing, validate: as in
            :func:`cross_entropy` (validate checks the logits of the kept rows for NaN/+inf
            and all -inf).
        impl: the implementation of the cross-entropy term, as in :func:`cross_entropy`
            ('composite' for higher-order gradients).

    Returns:
        A scalar, or (*batch) for ``reduction='none'``.

    Raises:
        TypeError / ValueError / IndexError naming the argument.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
        >>> poly1_cross_entropy(logits, torch.tensor([0, 2]), epsilon=1.0)
        tensor(1.0457)
    """
    fn = "poly1_cross_entropy"
    no_grad_options(fn, epsilon=epsilon, label_smoothing=label_smoothing)
    epsilon = check_range(fn, "epsilon", epsilon, -1.0, math.inf, high_open=True)
    smoothing = check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
    impl = backend.check_impl(fn, impl)
    r = loss_rows(fn, logits, target, dim=dim, weight=weight, ignore_index=ignore_index, mask=mask,
                  reduction=reduction, validate=validate, kinds=("index",))
    if not has_data(logits, target, weight, mask):
        return meta_output(logits, r.batch_shape, reduction)
    ce = cross_entropy(logits, target, dim=dim, weight=weight, ignore_index=ignore_index, mask=mask,
                       reduction="none", label_smoothing=smoothing, validate=False, impl=impl).reshape(-1)
    cd = compute_dtype(logits)
    p_y = _log_p_target(fn, r.rows, r.target, r.keep, validate).exp()
    n_classes = r.rows.shape[1]
    p_t = (1.0 - smoothing) * p_y + smoothing / n_classes
    poly = epsilon * (1.0 - p_t)
    if r.row_weight is not None:
        poly = poly * r.row_weight
    values = ce.to(cd) + poly
    out = reduce_loss(values, reduction, keep=r.keep, row_weight=r.row_weight)
    out = out.reshape(r.batch_shape) if reduction == "none" else out
    return out.to(logits.dtype)
