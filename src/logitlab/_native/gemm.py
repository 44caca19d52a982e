"""Python side of ``gemm_bf16.c`` and ``gemm_f32.c``: the chunk products of
``linear_cross_entropy`` that torch runs slowly on this CPU with few rows c. bfloat16: grad_weight
(V, D) += grad.T @ h (into float32 or bfloat16), grad_hidden (c, D) = grad @ weight and the logits
(c, V) = h @ weight.T (+ bias); float32: grad_hidden."""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from logitlab._native import symbol, threads_for

__all__ = ["grad_hidden_bf16", "grad_hidden_f32", "grad_weight_bf16", "logits_bf16"]

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_ARGTYPES = [_P, _I64, _P, _I64, _P, _I64, _I64, _I64, _I64, _INT]


def _available() -> bool:
    probe = symbol("gemm_bf16", "ll_gw_bf16_available", [], _INT)
    return probe is not None and bool(probe())


def _f32_available() -> bool:
    probe = symbol("gemm_f32", "ll_gemm_f32_available", [], _INT)
    return probe is not None and bool(probe())


def grad_weight_bf16(grad_w: Tensor, grad: Tensor, h: Tensor) -> bool:
    """grad_w += grad.T @ h in place, for float32 or bfloat16 grad_w (V, D) and bfloat16 grad (c, V),
    h (c, D); a bfloat16 grad_w is widened, summed with the products in float32 and rounded once.

    Returns False (nothing done) when the kernel does not take these tensors: not on the CPU,
    other dtypes, strided columns, or a CPU without AVX512-BF16 (the caller then uses torch).
    """
    if not (grad_w.dtype in (torch.float32, torch.bfloat16) and grad.dtype == h.dtype == torch.bfloat16
            and grad_w.device.type == grad.device.type == h.device.type == "cpu"
            and grad_w.dim() == grad.dim() == h.dim() == 2):
        return False
    rows, vocab = grad.shape
    dim = h.shape[1]
    if tuple(grad_w.shape) != (vocab, dim) or h.shape[0] != rows:
        raise ValueError(f"grad_weight_bf16: shapes {tuple(grad_w.shape)} += {tuple(grad.shape)}.T @ {tuple(h.shape)}")
    if any(t.shape[1] > 1 and t.stride(1) != 1 for t in (grad_w, grad, h)) or not _available():
        return False
    fn = symbol("gemm_bf16", "ll_gw_bf16", [*_ARGTYPES, _INT], _I64)
    code = fn(grad_w.data_ptr(), grad_w.stride(0), grad.data_ptr(), grad.stride(0), h.data_ptr(), h.stride(0),
              rows, vocab, dim, threads_for(vocab * dim), int(grad_w.dtype == torch.bfloat16))
    return code == 0


def grad_hidden_bf16(out: Tensor, grad: Tensor, weight: Tensor) -> bool:
    """out (c, D) = grad (c, V) @ weight (V, D) for bfloat16 tensors, summed in float32 and rounded
    once. Returns False (nothing done) for what the kernel does not take, like
    :func:`grad_weight_bf16`."""
    if not (out.dtype == grad.dtype == weight.dtype == torch.bfloat16
            and out.device.type == grad.device.type == weight.device.type == "cpu"
            and out.dim() == grad.dim() == weight.dim() == 2):
        return False
    rows, vocab = grad.shape
    dim = weight.shape[1]
    if tuple(out.shape) != (rows, dim) or weight.shape[0] != vocab:
        raise ValueError(f"grad_hidden_bf16: shapes {tuple(out.shape)} = {tuple(grad.shape)} @ {tuple(weight.shape)}")
    if any(t.shape[1] > 1 and t.stride(1) != 1 for t in (out, grad, weight)) or not _available():
        return False
    fn = symbol("gemm_bf16", "ll_gh_bf16", _ARGTYPES, _I64)
    code = fn(out.data_ptr(), out.stride(0), grad.data_ptr(), grad.stride(0), weight.data_ptr(), weight.stride(0),
              rows, vocab, dim, threads_for(vocab * dim))
    return code == 0


def logits_bf16(out: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """out (c, V) = h (c, D) @ weight.T (+ bias) for bfloat16 tensors, summed in float32 from the
    bias and rounded once. Returns False (nothing done) for what the kernel does not take."""
    if not (out.dtype == h.dtype == weight.dtype == torch.bfloat16
            and out.device.type == h.device.type == weight.device.type == "cpu"
            and out.dim() == h.dim() == weight.dim() == 2 and (bias is None or bias.dim() == 1)):
        return False
    rows, dim = h.shape
    vocab = weight.shape[0]
    if tuple(out.shape) != (rows, vocab) or weight.shape[1] != dim or (bias is not None and bias.shape[0] != vocab):
        raise ValueError(f"logits_bf16: shapes {tuple(out.shape)} = {tuple(h.shape)} @ {tuple(weight.shape)}.T")
    if any(t.shape[1] > 1 and t.stride(1) != 1 for t in (out, h, weight)) or not _available():
        return False
    bias32 = None if bias is None else bias.to(device="cpu", dtype=torch.float32).contiguous()
    fn = symbol("gemm_bf16", "ll_logits_bf16", [_P, _I64, _P, _I64, _P, _I64, _P, _I64, _I64, _I64, _INT], _I64)
    code = fn(out.data_ptr(), out.stride(0), h.data_ptr(), h.stride(0), weight.data_ptr(), weight.stride(0),
              None if bias32 is None else bias32.data_ptr(), rows, vocab, dim, threads_for(vocab * dim))
    return code == 0


def grad_hidden_f32(out: Tensor, grad: Tensor, weight: Tensor) -> bool:
    """out (c, D) = grad (c, V) @ weight (V, D) for float32 tensors (``gemm_f32.c``). Returns False
    (nothing done) for what the kernel does not take, like :func:`grad_weight_bf16`."""
    if not (out.dtype == grad.dtype == weight.dtype == torch.float32
            and out.device.type == grad.device.type == weight.device.type == "cpu"
            and out.dim() == grad.dim() == weight.dim() == 2):
        return False
    rows, vocab = grad.shape
    dim = weight.shape[1]
    if tuple(out.shape) != (rows, dim) or weight.shape[0] != vocab:
        raise ValueError(f"grad_hidden_f32: shapes {tuple(out.shape)} = {tuple(grad.shape)} @ {tuple(weight.shape)}")
    if any(t.shape[1] > 1 and t.stride(1) != 1 for t in (out, grad, weight)) or not _f32_available():
        return False
    fn = symbol("gemm_f32", "ll_gh_f32", _ARGTYPES, _I64)
    code = fn(out.data_ptr(), out.stride(0), grad.data_ptr(), grad.stride(0), weight.data_ptr(), weight.stride(0),
              rows, vocab, dim, threads_for(vocab * dim))
    return code == 0
