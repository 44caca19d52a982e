"""Python side of ``sparse.c``: which inputs it takes, and the forward and backward calls (through
the ``logitlab::sparse_*`` operators of :mod:`logitlab._native.ops`)."""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab._native import DTYPE_CODES as _CODES
from logitlab._native import kernel_ready, plain_cpu
from logitlab._native import ops as _ops  # noqa: F401  (defines torch.ops.logitlab.*)

__all__ = ["KIND_CODES", "supports", "sparse_forward", "sparse_backward"]

KIND_CODES = {"sparsemax": 0, "entmax15": 1, "bisect": 2}


def supports(rows: Tensor) -> bool:
    """Whether the native kernel takes these (N, C) logits (it builds on first use).

    Depends only on the device, the dtype and the rank (other strides are made contiguous), so
    that a fake tensor under ``torch.compile`` gets the same answer as the real one.
    """
    if not plain_cpu(rows) or rows.dtype not in _CODES or rows.dim() != 2:
        return False
    return kernel_ready("sparse", f"ll_sparse_fwd_{_CODES[rows.dtype]}")


def _rowmajor(t: Tensor) -> Tensor:
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def _alpha_arg(alpha: float | Tensor | None) -> Tensor | None:
    """α as a float64 tensor: one element shared by every row, or one per row."""
    if alpha is None:
        return None
    if isinstance(alpha, float):
        return torch.tensor([alpha], dtype=torch.float64)
    return alpha.detach().reshape(-1).to(torch.float64).contiguous()


# Certification passes of the closed-form kinds before a row takes the sorted fallback.
MAX_PASSES = 64


def sparse_forward(rows: Tensor, kind: str, alpha: float | Tensor | None, tol: float, max_iter: int,
                   validate: bool, *, max_passes: int = MAX_PASSES
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """probs (N, C), τ (N,) float32, support (N,), n_iter (N,) int64, violation (N,) float32,
    and -1 or the first row holding NaN or +inf (with ``validate``; the caller raises).

    ``max_passes=0`` sends every sparsemax / 1.5-entmax row to the sorted fallback (for tests).
    """
    a = _alpha_arg(alpha if kind == "bisect" else None)
    probs, tau, support, n_iter, violation, code = torch.ops.logitlab.sparse_forward(
        _rowmajor(rows), KIND_CODES[kind], a, float(tol), int(max_iter), int(max_passes), bool(validate))
    if torch.compiler.is_compiling():
        # No host read in a compiled graph: the status is checked by an assertion in the graph.
        if validate:
            torch._assert_async(code < 0, "logitlab sparse kernel: a row holds NaN or +inf")
        return probs, tau, support, n_iter, violation, -1
    # A fake output (a bare FakeTensorMode) has no status to read: the kernel did not run.
    return probs, tau, support, n_iter, violation, int(code) if type(code) is torch.Tensor else -1


def sparse_backward(grad: Tensor, probs: Tensor, kind: str, alpha: float | Tensor | None,
                    need_alpha: bool) -> tuple[Tensor, Tensor | None]:
    """∂L/∂z (N, C) in the dtype of ``probs`` and, if asked, ∂L/∂α per row (N, 1) float32."""
    p = _rowmajor(probs)
    a = _alpha_arg(alpha if kind == "bisect" else None)
    out, grad_alpha = torch.ops.logitlab.sparse_backward(_rowmajor(grad.to(p.dtype)), p, KIND_CODES[kind], a,
                                                         bool(need_alpha))
    return out, (grad_alpha if need_alpha else None)
