"""Python side of the ``gemm_*.c`` kernels: the products of ``linear_cross_entropy``'s chunks (few
rows c) that torch runs slowly on this CPU. bfloat16, summed in float32: grad_weight (V, D) =
src + grad.T @ h with float32, bfloat16 or split float32 src (or zeros) and result (``gemm_bf16_gw.c``),
grad_hidden (c, D) = grad @ weight (``gemm_bf16_gh.c``) and the logits (c, V) = h @ weight.T
(+ bias) (``gemm_bf16_logits.c``);
float32: grad_hidden and the logits (``gemm_f32_gh.c``, ``gemm_f32_logits.c``).

Each function returns False (nothing done) when its kernel does not take the tensors: not on the
CPU, other dtypes, strided columns, or a CPU without the instructions (AVX512-BF16 for bfloat16,
AVX-512 for float32), or where torch's matmul wins (bfloat16 on a CPU with AMX, unless a build is
forced: :func:`_torch_wins`); the caller then uses torch. Mismatched shapes raise ValueError.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab._native import cpu_flags, plain_cpu, selected_build, symbol
from logitlab._native import ops as _ops  # noqa: F401  (defines torch.ops.logitlab.*)

__all__ = ["grad_hidden_bf16", "grad_hidden_f32", "grad_weight_bf16", "logits_bf16", "logits_f32"]

BF16 = torch.bfloat16


def _available(lib: str = "gemm_bf16_gw") -> bool:
    """Whether ``lib`` compiled with the instructions its kernel needs."""
    probe = symbol(lib, "ll_available")
    return probe is not None and bool(probe())


def _f32_available() -> bool:
    return _available("gemm_f32_gh") and _available("gemm_f32_logits")


def _torch_wins(lib: str) -> bool:
    """Whether torch's own matmul beats kernel ``lib`` on this CPU, so that the default build
    leaves the product to torch: on a CPU with AMX, oneDNN runs bfloat16 matmuls on its tile
    units, which the AVX512-BF16 kernels do not use (benchmarks/chunk_sweep.py measures both).
    A forced build (``use_build``, ``LOGITLAB_NATIVE_BUILD``) runs its kernels regardless, so
    tests and benchmarks still exercise them there."""
    if not lib.startswith("gemm_bf16") or "amx_bf16" not in cpu_flags():
        return False
    return not selected_build()[1].startswith("forced")


def _preferred(lib: str) -> bool:
    """Whether the chunk loop should use kernel ``lib``: it is built and torch does not win."""
    return _available(lib) and not _torch_wins(lib)


def _takes(tensors: tuple[Tensor, ...], dtypes: tuple) -> bool:
    return all(t.dtype == d and plain_cpu(t) and t.dim() == 2 for t, d in zip(tensors, dtypes))


def _done(status: Tensor) -> bool:
    """Whether a matmul operator wrote its output (status 0); a fake output (a trace) counts as done."""
    return type(status) is not torch.Tensor or int(status) == 0


def _unit_columns(*tensors: Tensor) -> bool:
    return all(t.shape[1] <= 1 or t.stride(1) == 1 for t in tensors)


def _shape_error(name: str, *shapes) -> ValueError:
    return ValueError(f"{name}: mismatched shapes " + ", ".join(str(tuple(s)) for s in shapes))


# A float32 sum split in halves: (upper 16 bits as bfloat16, lower 16 bits as int16), two tensors
# of one shape and strides; the upper halves alone are the value truncated to bfloat16.
Halves = tuple[Tensor, Tensor]


def grad_weight_bf16(out: Tensor | Halves, grad: Tensor, h: Tensor, *, src: Tensor | Halves | None) -> bool:
    """out (V, D) = src + grad.T @ h, for bfloat16 grad (c, V) and h (c, D), summed in float32.

    ``out`` and ``src`` are float32, bfloat16 (rounded once into ``out``) or a float32 split in
    :data:`Halves`; ``src`` may be ``out`` itself (in place, also a split ``src`` rounded into its
    own upper halves), None for zeros (no fill beforehand), or another tensor of ``out``'s shape
    and strides. False (nothing written) also for c = 0 or a ``src`` laid out otherwise.
    """
    parts_out = out if isinstance(out, tuple) else (out,)
    parts_src = () if src is None else src if isinstance(src, tuple) else (src,)
    every = (*parts_out, *parts_src)
    if not (_sum_dtypes_ok(out) and (src is None or _sum_dtypes_ok(src)) and _takes((grad, h), (BF16, BF16))
            and all(plain_cpu(t) and t.dim() == 2 for t in every)):
        return False
    (rows, vocab), dim = grad.shape, h.shape[1]
    if any(tuple(t.shape) != (vocab, dim) for t in every) or h.shape[0] != rows:
        raise _shape_error("grad_weight_bf16", *(t.shape for t in every), grad.shape, h.shape)
    if any(t.stride() != parts_out[0].stride() for t in every):
        return False
    if not (_unit_columns(parts_out[0], grad, h) and _preferred("gemm_bf16_gw")):
        return False
    status = torch.ops.logitlab.matmul_grad_weight_(
        parts_out[0], parts_out[1] if len(parts_out) == 2 else None, grad, h,
        parts_src[0] if parts_src else None, parts_src[1] if len(parts_src) == 2 else None)
    return _done(status)


def _sum_dtypes_ok(x: Tensor | Halves) -> bool:
    if isinstance(x, tuple):
        return len(x) == 2 and x[0].dtype == BF16 and x[1].dtype == torch.int16
    return x.dtype in (torch.float32, BF16)


# The storage dtypes of the grad_hidden and logits kernels, by the suffix of their names.
_SUFFIX = {BF16: "bf16", torch.float32: "f32"}


def _grad_hidden(out: Tensor, grad: Tensor, weight: Tensor, dtype: torch.dtype) -> bool:
    name = _SUFFIX[dtype]
    if not _takes((out, grad, weight), (dtype,) * 3):
        return False
    (rows, vocab), dim = grad.shape, weight.shape[1]
    if tuple(out.shape) != (rows, dim) or weight.shape[0] != vocab:
        raise _shape_error(f"grad_hidden_{name}", out.shape, grad.shape, weight.shape)
    if not (_unit_columns(out, grad, weight) and _preferred(f"gemm_{name}_gh")):
        return False
    return _done(torch.ops.logitlab.matmul_grad_hidden_(out, grad, weight))


def _logits(out: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> bool:
    name = _SUFFIX[dtype]
    if not (_takes((out, h, weight), (dtype,) * 3) and (bias is None or bias.dim() == 1)):
        return False
    (rows, dim), vocab = h.shape, weight.shape[0]
    if tuple(out.shape) != (rows, vocab) or weight.shape[1] != dim or (bias is not None and bias.shape[0] != vocab):
        raise _shape_error(f"logits_{name}", out.shape, h.shape, weight.shape, () if bias is None else bias.shape)
    if not (_unit_columns(out, h, weight) and _preferred(f"gemm_{name}_logits")):
        return False
    return _done(torch.ops.logitlab.matmul_logits_(out, h, weight, bias))


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
