"""Python side of ``xent.c``: which inputs it takes, and the call over row ranges."""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from logitlab._native import DTYPE_CODES as _CODES
from logitlab._native import plain_cpu, symbol, threads_for

__all__ = ["supports", "xent_rows"]

_P, _I64, _F64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_float, ctypes.c_int
_ARGTYPES = [_P, _I64, _P, _I64, _I64, _I64, _P, _P, _I64, _P, _F64, _P, _P, _F64, _F64, _F32, _INT, _INT, _P, _INT]


def _function(x_code: str, p_code: str):
    return symbol("xent", f"ll_xent_{x_code}_{p_code}", _ARGTYPES, ctypes.c_int64)


def supports(rows: Tensor) -> bool:
    """Whether the native kernel takes these (N, C) logits (it builds on first use)."""
    if not plain_cpu(rows) or rows.dtype not in _CODES or rows.dim() != 2:
        return False
    if rows.shape[1] > 1 and rows.stride(1) != 1:
        return False
    return _function(_CODES[rows.dtype], "f32") is not None


def xent_rows(rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor, scale: Tensor, *,
              index_target: bool, label_smoothing: float, z_loss: float, temperature: float,
              validate: bool, grad: Tensor | None, scale_loss: bool = True) -> tuple[Tensor, int, int]:
    """Per-row losses (N,) float32 (times ``scale`` if ``scale_loss``), writing the gradient
    (times ``scale``) into ``grad`` if given; ``grad`` may be ``rows`` itself.

    Returns ``(losses, bad_row, kind)``: ``bad_row`` is -1, or the first row holding NaN/+inf
    (kind 1) or the first kept row that is all -inf (kind 2); the caller raises.
    """
    n_rows, n_classes = rows.shape
    for tensor in (target, weight, keep, scale, grad):
        # The kernel reads raw pointers: a tensor elsewhere (meta, CUDA) would be read as host memory.
        if tensor is not None and not plain_cpu(tensor):
            raise RuntimeError(f"xent_rows: every tensor must be a plain CPU tensor, got a {type(tensor).__name__} "
                               f"on {tensor.device}")
    x_code = _CODES[rows.dtype]
    if index_target:
        tgt = target.to(torch.int64).contiguous()
        prob, p_code, ldp = None, "f32", 0
    else:
        tgt = None
        prob = target if target.dtype in _CODES else target.to(torch.float32)
        if n_classes > 1 and prob.stride(1) != 1:
            prob = prob.contiguous()
        p_code, ldp = _CODES[prob.dtype], prob.stride(0)
    fn = _function(x_code, p_code)
    cw = weight.to(torch.float32).contiguous() if weight is not None else None
    w_sum = float(cw.double().sum()) if cw is not None else float(n_classes)
    scale32 = scale.to(torch.float32).contiguous()
    keep8 = keep.contiguous().view(torch.uint8)
    losses = torch.empty(n_rows, dtype=torch.float32)
    code = fn(rows.data_ptr(), rows.stride(0), grad.data_ptr() if grad is not None else None,
              grad.stride(0) if grad is not None else 0, n_rows, n_classes,
              tgt.data_ptr() if tgt is not None else None, prob.data_ptr() if prob is not None else None,
              ldp, cw.data_ptr() if cw is not None else None, w_sum, scale32.data_ptr(), keep8.data_ptr(),
              float(label_smoothing), float(z_loss), 1.0 / float(temperature), int(bool(validate)),
              int(bool(scale_loss)), losses.data_ptr(), threads_for(n_rows * n_classes))
    if code < 0:
        return losses, -1, 0
    return losses, code // 4, code % 4
