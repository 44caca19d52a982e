"""The one place where user input is checked.

Every check raises an exception whose message names the function, the argument, what was
expected and what was received, e.g.::

    softmax(): argument 'temperature' expected a number > 0, got 0.0

Checks that need a pass over the data (finite values, probability rows summing to 1, class
indices in range) are switched by the callers' ``validate=`` keyword, on by default.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

__all__ = [
    "fail",
    "check_tensor",
    "check_floating",
    "check_dim",
    "check_positive",
    "check_unit_interval",
    "check_range",
    "check_choice",
    "check_reduction",
    "check_finite",
    "check_nonnegative",
    "check_probs",
    "check_index_target",
    "check_same_shape",
    "check_mask",
    "check_same_device",
    "check_float_dtype",
    "has_data",
    "can_read",
    "compiling",
    "meta_output",
    "compute_dtype",
    "REDUCTIONS",
]

REDUCTIONS = ("none", "mean", "sum")


def _short(value: object) -> str:
    if isinstance(value, Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    if isinstance(value, float):
        return repr(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(fn: str, name: str, expected: str, received: object, *, kind: type = ValueError,
         detail: str = "") -> None:
    """Raise ``kind`` with the project's message format.

    Example:
        >>> fail("softmax", "temperature", "a number > 0", 0.0)
        Traceback (most recent call last):
        ...
        ValueError: softmax(): argument 'temperature' expected a number > 0, got 0.0
    """
    got = received if isinstance(received, str) and received.startswith("<") else _short(received)
    message = f"{fn}(): argument '{name}' expected {expected}, got {got}"
    if detail:
        message += f" ({detail})"
    raise kind(message)


def check_tensor(fn: str, name: str, value: object) -> Tensor:
    """``value`` is a torch.Tensor; a DTensor is refused with what to do instead."""
    if not isinstance(value, Tensor):
        fail(fn, name, "a torch.Tensor", f"<{type(value).__name__}>", kind=TypeError)
    if type(value).__name__ == "DTensor":
        fail(fn, name, "a plain (local) torch.Tensor", "<DTensor>", kind=TypeError,
             detail="pass dtensor.to_local(); logits or a head sharded over the vocabulary go "
                    "to vocab_parallel_cross_entropy, vocab_parallel_kl_divergence or "
                    "linear_cross_entropy, which take such DTensors")
    return value  # type: ignore[return-value]


def check_floating(fn: str, name: str, value: object) -> Tensor:
    """Check that ``value`` is a floating-point tensor (float16/bfloat16/float32/float64)."""
    tensor = check_tensor(fn, name, value)
    if not tensor.is_floating_point():
        fail(fn, name, "a floating-point tensor", f"<dtype {tensor.dtype}>", kind=TypeError)
    return tensor


def check_dim(fn: str, dim: object, ndim: int, name: str = "dim") -> int:
    """Return ``dim`` as a non-negative axis of a tensor with ``ndim`` dimensions.

    A 0-d tensor is treated as having one axis (as torch does), so dim in {-1, 0} is valid.
    """
    if isinstance(dim, bool) or not isinstance(dim, int):
        fail(fn, name, "an int", f"<{type(dim).__name__}>", kind=TypeError)
    n = max(ndim, 1)
    if not -n <= dim < n:  # type: ignore[operator]
        fail(fn, name, f"an int in [{-n}, {n - 1}] for a {ndim}-D tensor", dim, kind=IndexError)
    return dim % n  # type: ignore[operator]


def _number(fn: str, name: str, value: object) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(fn, name, "a real number", f"<{type(value).__name__}>", kind=TypeError)
    if math.isnan(float(value)):  # type: ignore[arg-type]
        fail(fn, name, "a real number", float("nan"))
    return float(value)  # type: ignore[arg-type]


def check_positive(fn: str, name: str, value: object) -> float:
    number = _number(fn, name, value)
    if not (number > 0 and math.isfinite(number)):
        fail(fn, name, "a finite number > 0", number)
    return number


def check_range(fn: str, name: str, value: object, low: float, high: float, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """Check ``low <= value <= high`` (with open ends where asked)."""
    number = _number(fn, name, value)
    ok_low = number > low if low_open else number >= low
    ok_high = number < high if high_open else number <= high
    if not (ok_low and ok_high):
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        fail(fn, name, f"a number in {lb}{low}, {high}{hb}", number)
    return number


def check_choice(fn: str, name: str, value: object, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if value not in options:
        fail(fn, name, "one of " + ", ".join(repr(c) for c in options), value)
    return value  # type: ignore[return-value]


def check_reduction(fn: str, reduction: object) -> str:
    return check_choice(fn, "reduction", reduction, REDUCTIONS)


def all_finite(tensor: Tensor, *, allow_neg_inf: bool = False) -> bool:
    """Whether ``tensor`` holds no NaN and no ±inf (-inf allowed with ``allow_neg_inf``), read on the host.

    One pass, by its minimum and maximum (both propagate NaN): no boolean tensor of its size, which
    for a (V, D) head or (N, C) logits would be a large transient allocation of its own.

    Example:
        >>> all_finite(torch.tensor([0.0, -float("inf")])), all_finite(torch.tensor([0.0, -float("inf")]),
        ...                                                            allow_neg_inf=True)
        (False, True)
    """
    if tensor.numel() == 0 or not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    if tensor.is_complex():
        return bool(torch.isfinite(tensor).all())
    low, high = torch.aminmax(tensor)
    return bool(~torch.isnan(low) & (high < math.inf) & ((low > -math.inf) | allow_neg_inf))


def check_finite(fn: str, name: str, tensor: Tensor, *, allow_neg_inf: bool = True) -> None:
    """Reject NaN and +inf (and -inf unless ``allow_neg_inf``: -inf marks an excluded class)."""
    if tensor.numel() == 0 or not can_read(tensor) or all_finite(tensor, allow_neg_inf=allow_neg_inf):
        return
    if allow_neg_inf:
        bad = torch.isnan(tensor) | (tensor == math.inf)
        what = "values without NaN or +inf (-inf marks an excluded class)"
    else:
        bad = ~torch.isfinite(tensor)
        what = "finite values"
    if bool(bad.any()):
        count = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        fail(fn, name, what, f"<{count} bad entries, first at index {first}>")


def check_nonnegative(fn: str, name: str, tensor: Tensor) -> None:
    """Reject NaN, ±inf and negative entries (one read of ``tensor``: its min and max)."""
    if tensor.numel() == 0 or not can_read(tensor):
        return
    low, high = torch.stack(torch.aminmax(tensor)).tolist()  # NaN propagates
    if not (math.isfinite(low) and math.isfinite(high)):
        check_finite(fn, name, tensor, allow_neg_inf=False)
    if low < 0:
        fail(fn, name, "non-negative entries", f"<minimum {low:.3g}>")


def check_same_shape(fn: str, name: str, tensor: Tensor, shape: torch.Size, other: str) -> None:
    if tensor.shape != shape:
        fail(fn, name, f"shape {tuple(shape)} (the shape of {other})", f"<shape {tuple(tensor.shape)}>")


def check_probs(fn: str, name: str, probs: Tensor, *, dim: int = -1, atol: float | None = None) -> None:
    """Check that ``probs`` has non-negative entries and rows summing to 1 along ``dim``."""
    if probs.numel() == 0 or not can_read(probs):
        return
    if not all_finite(probs):
        fail(fn, name, "finite probabilities", "<non-finite entries>")
    if bool((probs < 0).any()):
        fail(fn, name, "probabilities >= 0", f"<minimum {float(probs.min()):.3g}>")
    if atol is None:
        # Rounding each entry of a distribution to a half type moves its sum by at most eps/2.
        half = probs.dtype in (torch.float16, torch.bfloat16)
        atol = max(1e-3, torch.finfo(probs.dtype).eps) if half else 1e-5 * max(probs.shape[dim], 1) ** 0.5 + 1e-6
    sums = probs.float().sum(dim) if probs.dtype != torch.float64 else probs.sum(dim)
    err = (sums - 1).abs()
    if bool((err > atol).any()):
        worst = int(err.flatten().argmax())
        fail(fn, name, f"rows summing to 1 along dim {dim} (tolerance {atol:.1e})",
             f"<row {worst} sums to {float(sums.flatten()[worst]):.6g}>")


def check_unit_interval(fn: str, name: str, probs: Tensor) -> None:
    """Check that every entry of ``probs`` is a probability in [0, 1] (rows need not sum to 1)."""
    if probs.numel() == 0 or not can_read(probs):
        return
    if not all_finite(probs):
        fail(fn, name, "finite probabilities in [0, 1]", "<non-finite entries>")
    low, high = float(probs.min()), float(probs.max())
    if low < 0 or high > 1:
        fail(fn, name, "probabilities in [0, 1]", f"<range [{low:.3g}, {high:.3g}]>")


def check_mask(fn: str, mask: object, batch_shape: tuple[int, ...]) -> Tensor | None:
    """``mask`` is None or a bool tensor of ``batch_shape`` (the input's shape without its class dim).

    Not a bool tensor: TypeError; a bool tensor of another shape: ValueError. Returns ``mask``.

    Example:
        >>> check_mask("cross_entropy", torch.ones(3), (3,))
        Traceback (most recent call last):
        ...
        TypeError: cross_entropy(): argument 'mask' expected a bool tensor of shape (3,) (True = keep the row), got <torch.float32 tensor of shape (3,)>
    """
    if mask is None:
        return None
    expected = f"a bool tensor of shape {tuple(batch_shape)} (True = keep the row)"
    if not isinstance(mask, Tensor):
        fail(fn, "mask", expected, f"<{type(mask).__name__}>", kind=TypeError)
    received = f"<{mask.dtype} tensor of shape {tuple(mask.shape)}>"
    if mask.dtype != torch.bool:
        fail(fn, "mask", expected, received, kind=TypeError)
    if tuple(mask.shape) != tuple(batch_shape):
        fail(fn, "mask", expected, received)
    return mask


def check_index_target(fn: str, name: str, target: Tensor, num_classes: int, *,
                       ignore_index: int | None = None, keep: Tensor | None = None) -> None:
    """Check integer class indices in [0, num_classes) (``ignore_index`` and rows where ``keep``
    is False excepted); the message names the first bad index.

    Written with elementwise ops and one reduction, not boolean-mask indexing: ``target[mask]``
    synchronizes threads and allocates, and cost more than the loss itself (the loss's time,
    check included, is measured by ``benchmarks/cross_entropy.py``).
    """
    if target.numel() == 0 or not can_read(target, keep) or transforms_active():
        return  # (under a transform no native kernel runs: resolve() refuses; torch's gather checks)
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if keep is not None:
        bad &= keep.reshape(target.shape)
    if bool(bad.any()):
        first = int(bad.reshape(-1).to(torch.uint8).argmax())
        extra = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        fail(fn, name, f"class indices in [0, {num_classes - 1}]{extra}",
             f"<index {int(target.reshape(-1)[first])}>")


def default_validate(sample: object, validate: bool | None) -> bool:
    """``validate=None`` of an op: True, except for CUDA tensors (data checks read values on the
    host, a synchronization a GPU step should not pay); a bool is taken as it is.

    Example:
        >>> default_validate(torch.zeros(1), None), default_validate(torch.zeros(1), False)
        (True, False)
    """
    if validate is None:
        return getattr(getattr(sample, "device", None), "type", None) != "cuda"
    return bool(validate)


def has_data(*tensors: Tensor | None) -> bool:
    """Whether data checks can look at these tensors' values: not on the meta device, and not
    FakeTensors of a bare ``FakeTensorMode`` (shapes only: such a call infers the output's shape
    and dtype, and checks no value). Under ``torch.compile`` fake tensors stand for real ones and
    take the real path, which the compiler traces."""
    return not any(t is not None and (t.device.type == "meta" or _bare_fake(t)) for t in tensors)


def _bare_fake(t: Tensor) -> bool:
    if type(t) in (Tensor, torch.nn.Parameter):  # plain tensors: no import of the fake-tensor machinery
        return False
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) and not torch.compiler.is_compiling()


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, ...) runs: its wrapped tensors have no
    values a data check could branch on (``torch.func`` refuses data-dependent control flow), so
    data checks are skipped there, as under ``torch.compile``."""
    return bool(torch._C._are_functorch_transforms_active())


def compiling() -> bool:
    """Whether torch.compile is tracing this call: values are symbolic, and a host branch on them
    (``bool(t.any())``, ``.item()``, ``.tolist()``) would break the graph."""
    return bool(torch.compiler.is_compiling())


def can_read(*tensors: Tensor | None) -> bool:
    """Whether a data check may read these tensors' values on the host: they have data
    (:func:`has_data`) and torch.compile is not tracing. Under torch.compile the data checks are
    skipped, as for ``validate=False``; the structural checks (dtype, shape, dim, options) stay."""
    return has_data(*tensors) and not compiling()


def meta_output(like: Tensor, shape: tuple[int, ...], reduction: str | None = None) -> Tensor:
    """The result of a call without data (meta tensors, a bare FakeTensorMode): an empty tensor of
    the output's shape and dtype on ``like``'s device (``shape`` itself, or a scalar unless
    ``reduction`` is 'none' or None).

    Example:
        >>> meta_output(torch.empty(3, 5, device="meta"), (3,), "mean").shape
        torch.Size([])
    """
    size = shape if reduction in (None, "none") else ()
    return torch.empty(size, dtype=like.dtype, device=like.device)


def check_same_device(fn: str, ref_name: str, ref: Tensor, **others: Tensor | None) -> None:
    """Every tensor of ``others`` (None skipped) is on the device of ``ref``.

    Example:
        >>> check_same_device("f", "hidden", torch.zeros(1), weight=torch.zeros(1, device="meta"))
        Traceback (most recent call last):
        ...
        ValueError: f(): argument 'weight' expected a tensor on cpu (the device of hidden), got <tensor on meta>
    """
    for name, tensor in others.items():
        if tensor is not None and tensor.device != ref.device:
            fail(fn, name, f"a tensor on {ref.device} (the device of {ref_name})", f"<tensor on {tensor.device}>")


def check_float_dtype(fn: str, name: str, value: object) -> torch.dtype:
    """``value`` is a floating torch.dtype (float16, bfloat16, float32, float64)."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        fail(fn, name, "a floating torch.dtype (torch.float32, torch.bfloat16, ...)", value, kind=TypeError)
    return value  # type: ignore[return-value]


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype computations run in: float32 for half precision, the input's dtype otherwise."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return tensor.dtype
