"""Row checks shared by the dense normalizers: bad values, excluded classes, empty rows.

``-inf`` marks an excluded class. A row whose entries are all ``-inf`` has no class left: every
normalizer maps it to an all-zero row (log versions: all ``-inf``), with zero gradient. These
helpers find such rows with one reduction (the row maximum), which also reveals NaN (the max
propagates it) and ``+inf``, so the checks cost one read of the logits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitlab._validation import check_finite, has_data

__all__ = ["scan", "empty_rows", "nonneg_inf", "safe_denominator", "describe_rows"]


def scan(fn: str, logits: Tensor, *, validate: bool) -> tuple[float, float]:
    """The smallest and largest entry of ``logits`` in one read (no allocation of its size).

    With ``validate``, NaN or ``+inf`` anywhere raises (naming ``fn`` and ``logits``); this costs
    one read of the logits (the row maximum). Without it, only the first entry of each row is
    read unless one of them is ``-inf``. The
    minimum tells whether any class is excluded (``-inf``; NaN is reported as ``-inf`` too, so
    that callers take their careful path). Empty tensors give (0.0, 0.0).
    """
    if logits.numel() == 0 or not has_data(logits):  # meta, bare fake tensors: shapes only, no value to read
        return 0.0, 0.0
    low, high = torch.stack(torch.aminmax(logits)).tolist()
    if validate and not high < math.inf:  # NaN or +inf somewhere
        check_finite(fn, "logits", logits)
    if math.isnan(low):
        low = -math.inf
    return low, high


def empty_rows(fn: str, logits: Tensor, dim: int, *, validate: bool,
               row_max: Tensor | None = None) -> Tensor | None:
    """The (*batch, 1)-shaped mask of rows whose entries are all ``-inf``, or None if there are none.

    With ``validate``, NaN or ``+inf`` anywhere raises (naming ``fn`` and ``logits``); this costs
    one read of the logits (the row maximum). Without it, only the first entry of each row is
    read unless one of them is ``-inf``.
    ``row_max`` (the max along ``dim``, keepdim) may be passed when the caller has it already.
    """
    if logits.numel() == 0 or logits.device.type == "meta":
        return None
    if not validate and row_max is None and not bool((logits.select(dim, 0) == -math.inf).any()):
        return None  # a row is all -inf only if its first entry is: one column read, not a pass
    top = logits.amax(dim, keepdim=True) if row_max is None else row_max
    if bool(torch.isfinite(top).all()):
        return None
    if validate:
        check_finite(fn, "logits", logits)
    empty = top == -math.inf
    return empty if bool(empty.any()) else None


def nonneg_inf(logits: Tensor, value: float = 0.0) -> Tensor:
    """``logits`` with its ``-inf`` entries replaced by ``value`` (a where: no gradient reaches them)."""
    return torch.where(logits == -math.inf, logits.new_tensor(value), logits)


def safe_denominator(total: Tensor) -> Tensor:
    """``total`` with zeros replaced by 1, so an empty row divides 0 by 1 (giving 0, gradient 0)."""
    return torch.where(total == 0, torch.ones_like(total), total)


def describe_rows(bad: Tensor, *, limit: int = 5) -> str:
    """Name the rows where the (*batch)-shaped bool ``bad`` holds, e.g. ``"rows [1, 4] (2 of 6)"``."""
    index = bad.nonzero()
    count = index.shape[0]
    if bad.ndim <= 1:
        shown = [int(row[0]) if bad.ndim == 1 else 0 for row in index[:limit]]
    else:
        shown = [tuple(int(i) for i in row) for row in index[:limit]]
    text = ", ".join(str(item) for item in shown) + (", ..." if count > limit else "")
    word = "row" if count == 1 else "rows"
    return f"{word} [{text}] ({count} of {max(bad.numel(), 1)})"
