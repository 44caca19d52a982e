"""Python side of ``xent.c``: which inputs it takes, and the call over row ranges (through the
``logitlab::xent_rows`` operators of :mod:`logitlab._native.ops`)."""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab._native import DTYPE_CODES as _CODES
from logitlab._native import kernel_ready, plain_cpu
from logitlab._native import ops as _ops  # noqa: F401  (defines torch.ops.logitlab.*)

__all__ = ["supports", "xent_rows"]


def supports(rows: Tensor) -> bool:
    """Whether the native kernel takes these (N, C) logits (it builds on first use; never for a
    tensor that is not a plain CPU tensor, so no other device triggers a host compile)."""
    if not plain_cpu(rows) or rows.dtype not in _CODES or rows.dim() != 2:
        return False
    if rows.shape[1] > 1 and rows.stride(1) != 1:
        return False
    return kernel_ready("xent", f"ll_xent_{_CODES[rows.dtype]}_f32")


def xent_rows(rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor, scale: Tensor, *,
              index_target: bool, label_smoothing: float, z_loss: float, temperature: float,
              validate: bool, want_grad: bool, in_place: bool = False,
              scale_loss: bool = True) -> tuple[Tensor, Tensor | None, int, int]:
    """Per-row losses (N,) float32 (times ``scale`` if ``scale_loss``) and, if ``want_grad``, the
    gradient (times ``scale``): a new tensor, or ``rows`` itself overwritten when ``in_place``.

    Returns ``(losses, grad, bad_row, kind)``: ``bad_row`` is -1, or the first row holding NaN/+inf
    (kind 1), the first kept row that is all -inf (kind 2) or the first kept row whose class index
    is outside [0, C) (kind 3); the caller raises.
    """
    for tensor in (target, weight, keep, scale):
        # The kernel reads raw pointers: a tensor elsewhere (meta, CUDA) would be read as host memory.
        if tensor is not None and not plain_cpu(tensor) and tensor.device.type != "meta":
            raise RuntimeError(f"xent_rows: every tensor must be a plain CPU tensor, got a {type(tensor).__name__} "
                               f"on {tensor.device}")
    n_classes = rows.shape[1]
    if index_target:
        tgt, prob = target.to(torch.int64).contiguous(), None
    else:
        tgt = None
        prob = target if target.dtype in _CODES else target.to(torch.float32)
        if n_classes > 1 and prob.stride(1) != 1:
            prob = prob.contiguous()
    cw = weight.to(torch.float32).contiguous() if weight is not None else None
    args = (tgt, prob, cw, keep.contiguous().view(torch.uint8), scale.to(torch.float32).contiguous(),
            float(label_smoothing), float(z_loss), float(temperature), bool(validate), bool(scale_loss))
    if want_grad and in_place:
        losses, code = torch.ops.logitlab.xent_rows_(rows, *args)
        grad = rows
    else:
        losses, grad, code = torch.ops.logitlab.xent_rows(rows, *args, bool(want_grad))
        grad = grad if want_grad else None
    if torch.compiler.is_compiling():
        # No host read in a compiled graph: the status is checked by an assertion in the graph.
        torch._assert_async(code < 0, "logitlab cross-entropy kernel: a kept row holds NaN or +inf, only -inf, "
                            "or a class index out of range")
        return losses, grad, -1, 0
    # A fake output (a bare FakeTensorMode) has no status to read: the kernel did not run.
    code = int(code) if type(code) is torch.Tensor else -1
    if code < 0:
        return losses, grad, -1, 0
    return losses, grad, code // 4, code % 4
