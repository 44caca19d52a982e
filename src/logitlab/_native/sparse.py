"""Python side of ``sparse.c``: which inputs it takes, and the forward and backward calls."""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from logitlab._memory import empty_like_huge
from logitlab._native import DTYPE_CODES as _CODES
from logitlab._native import plain_cpu, symbol, threads_for

__all__ = ["KIND_CODES", "supports", "sparse_forward", "sparse_backward"]

KIND_CODES = {"sparsemax": 0, "entmax15": 1, "bisect": 2}
_P, _I64, _F64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
_FWD_ARGTYPES = [_P, _I64, _P, _I64, _I64, _I64, _INT, _P, _I64, _F64, _INT, _INT, _INT, _P, _P, _P, _P, _INT]
_BWD_ARGTYPES = [_P, _I64, _P, _I64, _P, _I64, _I64, _I64, _INT, _P, _I64, _P, _INT]


def _function(direction: str, code: str):
    if direction == "fwd":
        return symbol("sparse", f"ll_sparse_fwd_{code}", _FWD_ARGTYPES, ctypes.c_int64)
    return symbol("sparse", f"ll_sparse_bwd_{code}", _BWD_ARGTYPES, None)


def supports(rows: Tensor) -> bool:
    """Whether the native kernel takes these (N, C) logits (it builds on first use).

    Depends only on the device, the dtype and the rank (other strides are made contiguous), so
    that a fake tensor under ``torch.compile`` gets the same answer as the real one.
    """
    if not plain_cpu(rows) or rows.dtype not in _CODES or rows.dim() != 2:
        return False
    return _function("fwd", _CODES[rows.dtype]) is not None


def _rowmajor(t: Tensor) -> Tensor:
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def _alpha_arg(alpha: float | Tensor | None) -> tuple[Tensor | None, int]:
    """A float64 tensor of α and its row stride (0: one α shared by every row)."""
    if alpha is None:
        return None, 0
    if isinstance(alpha, float):
        return torch.tensor([alpha], dtype=torch.float64), 0
    return alpha.detach().reshape(-1).to(torch.float64).contiguous(), 1


# Certification passes of the closed-form kinds before a row takes the sorted fallback.
MAX_PASSES = 64


def sparse_forward(rows: Tensor, kind: str, alpha: float | Tensor | None, tol: float, max_iter: int,
                   validate: bool, *, max_passes: int = MAX_PASSES
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """probs (N, C), τ (N,) float32, support (N,), n_iter (N,) int64, violation (N,) float32,
    and -1 or the first row holding NaN or +inf (with ``validate``; the caller raises).

    ``max_passes=0`` sends every sparsemax / 1.5-entmax row to the sorted fallback (for tests).
    """
    x = _rowmajor(rows)
    n_rows, n_classes = x.shape
    probs = empty_like_huge(x)
    tau = torch.empty(n_rows, dtype=torch.float32)
    support = torch.empty(n_rows, dtype=torch.int64)
    n_iter = torch.empty(n_rows, dtype=torch.int64)
    violation = torch.empty(n_rows, dtype=torch.float32)
    a, lda = _alpha_arg(alpha if kind == "bisect" else None)
    fn = _function("fwd", _CODES[x.dtype])
    code = fn(x.data_ptr(), x.stride(0), probs.data_ptr(), probs.stride(0), n_rows, n_classes,
              KIND_CODES[kind], a.data_ptr() if a is not None else None, lda, float(tol), int(max_iter),
              int(max_passes), int(bool(validate)), tau.data_ptr(), support.data_ptr(), n_iter.data_ptr(),
              violation.data_ptr(), threads_for(n_rows * n_classes))
    if code == -2:
        raise MemoryError("logitlab: the sparse kernel could not allocate its scratch rows")
    return probs, tau, support, n_iter, violation, int(code)


def sparse_backward(grad: Tensor, probs: Tensor, kind: str, alpha: float | Tensor | None,
                    need_alpha: bool) -> tuple[Tensor, Tensor | None]:
    """∂L/∂z (N, C) in the dtype of ``probs`` and, if asked, ∂L/∂α per row (N, 1) float32."""
    p = _rowmajor(probs)
    g = _rowmajor(grad.to(p.dtype))
    n_rows, n_classes = p.shape
    out = empty_like_huge(p)
    grad_alpha = torch.empty(n_rows, 1, dtype=torch.float32) if need_alpha else None
    a, lda = _alpha_arg(alpha if kind == "bisect" else None)
    fn = _function("bwd", _CODES[p.dtype])
    fn(g.data_ptr(), g.stride(0), p.data_ptr(), p.stride(0), out.data_ptr(), out.stride(0), n_rows, n_classes,
       KIND_CODES[kind], a.data_ptr() if a is not None else None, lda,
       grad_alpha.data_ptr() if grad_alpha is not None else None, threads_for(n_rows * n_classes))
    return out, grad_alpha
