"""Python side of the ``gemm_*.c`` kernels: the products of ``linear_cross_entropy``'s chunks (few
rows c) that torch runs slowly on this CPU. bfloat16, summed in float32: grad_weight (V, D) =
src + grad.T @ h with float32 or bfloat16 src (or zeros) and result (``gemm_bf16_gw.c``),
grad_hidden (c, D) = grad @ weight (``gemm_bf16_gh.c``) and the logits (c, V) = h @ weight.T
(+ bias) (``gemm_bf16_logits.c``);
float32: grad_hidden and the logits (``gemm_f32_gh.c``, ``gemm_f32_logits.c``).

Each function returns False (nothing done) when its kernel does not take the tensors: not on the
CPU, other dtypes, strided columns, or a CPU without the instructions (AVX512-BF16 for bfloat16,
AVX-512 for float32); the caller then uses torch. Mismatched shapes raise ValueError.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from logitlab._native import symbol, threads_for

__all__ = ["grad_hidden_bf16", "grad_hidden_f32", "grad_weight_bf16", "logits_bf16", "logits_f32"]

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
BF16 = torch.bfloat16


def _available(lib: str = "gemm_bf16_gw") -> bool:
    """Whether ``lib`` compiled with the instructions its kernel needs."""
    probe = symbol(lib, "ll_available", [], _INT)
    return probe is not None and bool(probe())


def _f32_available() -> bool:
    return _available("gemm_f32_gh") and _available("gemm_f32_logits")


def _takes(tensors: tuple[Tensor, ...], dtypes: tuple) -> bool:
    return all(t.dtype == d and t.device.type == "cpu" and t.dim() == 2 for t, d in zip(tensors, dtypes))


def _launch(lib: str, function: str, tensors: tuple[Tensor, ...], sizes: tuple[int, int, int],
            extra: tuple = (), extra_types: tuple = ()) -> bool:
    """``function(t0, ld0, t1, ld1, ..., rows, vocab, dim, threads, *extra)`` when every tensor has
    unit column stride and the kernel is available; True when it ran."""
    if any(t.shape[1] > 1 and t.stride(1) != 1 for t in tensors) or not _available(lib):
        return False
    fn = symbol(lib, function, [_P, _I64] * len(tensors) + [_I64, _I64, _I64, _INT, *extra_types], _I64)
    matrices = [x for t in tensors for x in (t.data_ptr(), t.stride(0))]
    return fn(*matrices, *sizes, threads_for(sizes[1] * sizes[2]), *extra) == 0


def _shape_error(name: str, *shapes) -> ValueError:
    return ValueError(f"{name}: mismatched shapes " + ", ".join(str(tuple(s)) for s in shapes))


def grad_weight_bf16(out: Tensor, grad: Tensor, h: Tensor, *, src: Tensor | None) -> bool:
    """out (V, D) = src + grad.T @ h, for bfloat16 grad (c, V) and h (c, D); ``out`` and ``src``
    float32 or bfloat16 (the sum is float32 and rounded once into a bfloat16 ``out``). ``src`` is
    ``out`` itself to sum in place, None for zeros (no fill beforehand), or another tensor of
    ``out``'s shape and strides (the last chunk: a float32 sum into the bfloat16 result).
    False (nothing written) also for c = 0 or a ``src`` laid out otherwise."""
    wide = (torch.float32, BF16)
    if not (out.dtype in wide and (src is None or src.dtype in wide) and _takes((out, grad, h), (out.dtype, BF16, BF16))):
        return False
    (rows, vocab), dim = grad.shape, h.shape[1]
    if tuple(out.shape) != (vocab, dim) or h.shape[0] != rows or (src is not None and src.shape != out.shape):
        raise _shape_error("grad_weight_bf16", out.shape, grad.shape, h.shape, () if src is None else src.shape)
    if src is not None and (src.stride() != out.stride() or src.device != out.device):
        return False
    src_args = (None if src is None else src.data_ptr(), int(src is not None and src.dtype == BF16), int(out.dtype == BF16))
    return _launch("gemm_bf16_gw", "ll_gw_bf16", (out, grad, h), (rows, vocab, dim), src_args, (_P, _INT, _INT))


# The storage dtypes of the grad_hidden and logits kernels, by the suffix of their names.
_SUFFIX = {BF16: "bf16", torch.float32: "f32"}


def _grad_hidden(out: Tensor, grad: Tensor, weight: Tensor, dtype: torch.dtype) -> bool:
    name = _SUFFIX[dtype]
    if not _takes((out, grad, weight), (dtype,) * 3):
        return False
    (rows, vocab), dim = grad.shape, weight.shape[1]
    if tuple(out.shape) != (rows, dim) or weight.shape[0] != vocab:
        raise _shape_error(f"grad_hidden_{name}", out.shape, grad.shape, weight.shape)
    return _launch(f"gemm_{name}_gh", f"ll_gh_{name}", (out, grad, weight), (rows, vocab, dim))


def _logits(out: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> bool:
    name = _SUFFIX[dtype]
    if not (_takes((out, h, weight), (dtype,) * 3) and (bias is None or bias.dim() == 1)):
        return False
    (rows, dim), vocab = h.shape, weight.shape[0]
    if tuple(out.shape) != (rows, vocab) or weight.shape[1] != dim or (bias is not None and bias.shape[0] != vocab):
        raise _shape_error(f"logits_{name}", out.shape, h.shape, weight.shape, () if bias is None else bias.shape)
    bias32 = None if bias is None else bias.to(device="cpu", dtype=torch.float32).contiguous()
    return _launch(f"gemm_{name}_logits", f"ll_logits_{name}", (out, h, weight), (rows, vocab, dim),
                   (None if bias32 is None else bias32.data_ptr(),), (_P,))


def grad_hidden_bf16(out: Tensor, grad: Tensor, weight: Tensor) -> bool:
    """out (c, D) = grad (c, V) @ weight (V, D) for bfloat16 tensors, summed in float32 and rounded once."""
    return _grad_hidden(out, grad, weight, BF16)


def logits_bf16(out: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """out (c, V) = h (c, D) @ weight.T (+ bias) for bfloat16 tensors, summed in float32 from the
    bias and rounded once."""
    return _logits(out, h, weight, bias, BF16)


def grad_hidden_f32(out: Tensor, grad: Tensor, weight: Tensor) -> bool:
    """out (c, D) = grad (c, V) @ weight (V, D) for float32 tensors, summed in spans of 512 classes."""
    return _grad_hidden(out, grad, weight, torch.float32)


def logits_f32(out: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """out (c, V) = h (c, D) @ weight.T (+ bias) for float32 tensors, summed from the bias in
    spans of 128 features."""
    return _logits(out, h, weight, bias, torch.float32)
