"""The one place where reductions, row masks and the row-wise layout live.

Conventions (shared by every loss in the package):

* ``reduction="none"`` returns one value per row (the shape of the input without ``dim``);
  excluded rows hold 0.
* ``reduction="sum"`` sums the (weighted) values of the kept rows.
* ``reduction="mean"`` divides that sum by the total weight of the kept rows (the number of
  kept rows when there are no weights), as ``torch.nn.functional.cross_entropy`` does. When no
  row is kept (all ignored or masked out) the mean is defined as 0, with zero gradient, rather
  than torch's NaN.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from logitlab._validation import check_tensor, fail

__all__ = ["reduce_loss", "reduction_scale", "row_scale", "to_rows", "from_rows", "rowwise", "neutralize",
           "shift_target"]


def reduce_loss(values: Tensor, reduction: str, *, keep: Tensor | None = None,
                row_weight: Tensor | None = None) -> Tensor:
    """Reduce per-row loss ``values`` by ``reduction``.

    Args:
        values: (*batch) per-row losses (already multiplied by ``row_weight`` if any).
        reduction: 'none' | 'mean' | 'sum'.
        keep: (*batch) bool, rows that count; the others are set to exactly 0.
        row_weight: (*batch) the weight of each row, the denominator of 'mean'.

    Example:
        >>> reduce_loss(torch.tensor([1.0, 3.0]), "mean")
        tensor(2.)
        >>> reduce_loss(torch.tensor([1.0, 3.0]), "mean", keep=torch.tensor([False, False]))
        tensor(0.)
    """
    if keep is not None:
        values = torch.where(keep, values, values.new_zeros(()))
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    if row_weight is None:
        denom = keep.sum() if keep is not None else torch.tensor(values.numel())
        denom = denom.to(values.dtype)
    else:
        w = row_weight if keep is None else torch.where(keep, row_weight, row_weight.new_zeros(()))
        denom = w.sum().to(values.dtype)
    # An empty batch (denominator 0) has mean 0: total is then exactly 0 too.
    return total / torch.where(denom == 0, torch.ones_like(denom), denom)


def reduction_scale(reduction: str, denominator: int | float | Tensor) -> float | Tensor | None:
    """The factor that turns the sum of the kept rows' losses into the reduction.

    None for 'none' (the rows are returned), 1 for 'sum', ``1 / denominator`` for 'mean' (the
    number or total weight of the kept rows; 'batchmean' is 'mean' with every row kept), 0 when
    the denominator is 0 (no row kept: the mean is 0). A tensor denominator gives a 0-d tensor,
    never read on the host (no device synchronisation; ``torch.compile`` traces it); a Python
    number gives a Python float.

    Example:
        >>> reduction_scale("mean", 4), reduction_scale("mean", 0), reduction_scale("sum", 4)
        (0.25, 0.0, 1.0)
        >>> reduction_scale("mean", torch.tensor([1.0, 3.0]).sum())
        tensor(0.2500)
    """
    if reduction == "none":
        return None
    if reduction == "sum":
        return 1.0
    if isinstance(denominator, Tensor):
        empty = denominator == 0
        return torch.where(empty, torch.zeros_like(denominator), 1.0 / torch.where(empty, 1.0, denominator))
    return 1.0 / denominator if denominator else 0.0


def row_scale(keep: Tensor, reduction: str, dtype: torch.dtype, row_weight: Tensor | None = None) -> Tensor:
    """(N,) factor of each row's loss: 1 for a kept row and 0 otherwise ('none', 'sum'), divided by
    the kept rows' total weight (their number without ``row_weight``) for 'mean'; on the device.

    Example:
        >>> row_scale(torch.tensor([True, False, True]), "mean", torch.float32)
        tensor([0.5000, 0.0000, 0.5000])
    """
    kept = keep.to(dtype)
    if reduction != "mean":
        return kept
    per_row = kept if row_weight is None else row_weight.to(dtype) * kept
    total = per_row.sum()
    return kept / torch.where(total == 0, torch.ones_like(total), total)


def to_rows(x: Tensor, dim: int) -> tuple[Tensor, tuple[int, ...]]:
    """Move ``dim`` last and flatten the rest: returns (rows, n) and the moved shape."""
    moved = x.movedim(dim, -1) if dim != x.ndim - 1 else x
    shape = tuple(moved.shape)
    n = shape[-1] if shape else 1
    # The row count is explicit: reshape(-1, 0) is ambiguous when the class axis is empty.
    return moved.reshape(math.prod(shape[:-1]), n), shape


def from_rows(rows: Tensor, shape: tuple[int, ...], dim: int, ndim: int) -> Tensor:
    """Inverse of :func:`to_rows`."""
    out = rows.reshape(shape)
    return out.movedim(-1, dim) if dim != ndim - 1 else out


def rowwise(fn: Callable[[Tensor], Tensor], x: Tensor, dim: int) -> Tensor:
    """Apply a map written for (rows, n) along any ``dim`` (already normalized, >= 0)."""
    if x.ndim == 0:
        return fn(x.reshape(1, 1)).reshape(())
    rows, shape = to_rows(x, dim)
    return from_rows(fn(rows), shape, dim, x.ndim)


def neutralize(x: Tensor, keep: Tensor | None, axis: int, value: float) -> Tensor:
    """``x`` with every row that ``keep`` excludes set to ``value`` along ``axis``.

    An excluded row (masked out, ignored target) may hold anything: padding is often all -inf
    and may be NaN. Its loss is 0, but a NaN or ±inf inside it would still reach the gradient
    (0 · NaN = NaN through a softmax of an all -inf row) or fail a data check meant for kept
    rows. Losses call this on their inputs before checking them. ``keep`` has the shape of ``x``
    without ``axis``; None (every row kept) returns ``x`` itself.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [-math.inf, -math.inf]])
        >>> neutralize(x, torch.tensor([True, False]), 1, 0.0)
        tensor([[1., 2.],
                [0., 0.]])
    """
    if keep is None:
        return x
    return torch.where(keep.unsqueeze(axis), x, x.new_full((), value))


def shift_target(fn: str, target: object, shift: object, ignore_index: int) -> Tensor:
    """Next-token targets: position t is scored against ``target[..., t + shift]``.

    The sequence is the last dimension of ``target`` (T positions). The result has the shape of
    ``target``: its first T − shift positions hold ``target[..., shift:]`` and its last
    ``shift`` positions hold ``ignore_index`` (they have no next token, so they do not count).
    This is Hugging Face's causal-LM shift (labels padded with -100 on the right, then shifted
    left). Only the integer targets move; the scores of the predicting positions (hidden states
    or logits) are neither sliced nor copied. ``shift`` is an int >= 0 or a bool (True = 1);
    0 returns ``target`` itself; otherwise the result is int64.

    Example:
        >>> shift_target("f", torch.tensor([[5, 6, 7]]), 1, -100)
        tensor([[   6,    7, -100]])
    """
    if isinstance(shift, bool):
        shift = int(shift)
    if not isinstance(shift, int) or shift < 0:
        fail(fn, "shift", "an int >= 0 or a bool (True = 1)", shift,
             kind=ValueError if isinstance(shift, int) else TypeError)
    target = check_tensor(fn, "target", target)
    if shift == 0:
        return target
    if target.is_floating_point() or target.dtype == torch.bool:
        fail(fn, "shift", "0 with a probability (floating) target", shift, kind=TypeError,
             detail="shift moves integer class indices; shift probability targets yourself")
    if target.ndim == 0 or target.shape[-1] <= shift:
        length = "a 0-d target" if target.ndim == 0 else f"target.shape[-1] = {target.shape[-1]}"
        fail(fn, "shift", f"a shift smaller than the sequence length (the last dimension of target; {length})",
             shift, detail="a sequence needs at least shift + 1 positions to have a next token; "
             "pass shift=0 with targets that are already shifted, or longer sequences")
    target = target.long()  # room for ignore_index whatever the integer dtype
    pad = target.new_full((*target.shape[:-1], shift), ignore_index)
    return torch.cat([target[..., shift:], pad], dim=-1)
