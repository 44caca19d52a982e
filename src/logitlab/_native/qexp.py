"""Python side of ``qexp.c``: which inputs it takes, and the forward and backward calls (through
the ``logitlab::qexp_*`` operators of :mod:`logitlab._native.ops`)."""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab._native import kernel_ready, plain_cpu
from logitlab._native import ops as _ops

__all__ = ["supports", "qexp_forward", "qexp_backward"]

_CODES = _ops.QEXP_CODES


def supports(rows: Tensor) -> bool:
    """Whether the native kernel takes these (N, C) logits (it builds on first use).

    Float32, bfloat16, float16 and float64 (which :mod:`logitlab.backend` still sends to the torch
    path, as for every kernel); depends only on the device, the dtype and the rank, so that a fake
    tensor gets the answer of the real one.
    """
    if not plain_cpu(rows) or rows.dtype not in _CODES or rows.dim() != 2:
        return False
    return kernel_ready("qexp", f"ll_qexp_fwd_{_CODES[rows.dtype]}")


def _alpha_arg(alpha: Tensor) -> Tensor:
    """α (rows, 1) or (1, 1) as the kernel reads it: float64, one element per row or one for all."""
    return alpha.detach().reshape(-1).to(torch.float64).contiguous()


def qexp_forward(rows: Tensor, alpha: Tensor, tol: float, max_iter: int, validate: bool
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """probs (N, C) in the dtype of ``rows``, τ (N,) float64, n_iter (N,) int64, |Σp − 1| (N,)
    float64 before the renormalization, and -1 or the first row holding NaN or +inf (with
    ``validate``; the caller raises)."""
    probs, tau, n_iter, violation, code = torch.ops.logitlab.qexp_forward(
        rows, _alpha_arg(alpha), float(tol), int(max_iter), bool(validate))
    return probs, tau, n_iter, violation, int(code)


def qexp_backward(grad: Tensor, probs: Tensor, alpha: Tensor, need_alpha: bool) -> tuple[Tensor, Tensor | None]:
    """∂L/∂z (N, C) in the dtype of ``probs`` and, if asked, ∂L/∂α per row (N, 1) float64."""
    out, grad_alpha = torch.ops.logitlab.qexp_backward(grad.to(probs.dtype), probs, _alpha_arg(alpha),
                                                       bool(need_alpha))
    return out, (grad_alpha.unsqueeze(1) if need_alpha else None)
