"""The three matmuls of a chunk, arranged for the CPU's BLAS, and their scratch.

For a chunk of c rows: logits (c, V) = h @ weight.T (+ bias), grad_hidden (c, D) = grad @ weight
and grad_weight (V, D) += grad.T @ h. Which arrangement of the same product is fastest depends
on the BLAS (torch 2.13's CPU build: MKL for float32, oneDNN for bfloat16); the comments below
give the reasons, and benchmarks/chunk_sweep.py and benchmarks/fused.py time the arrangements
(``impl="torch"`` against ``impl="native"``) beside the bare matmuls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab._native import gemm as native_gemm

# MKL's float32/float64 matmuls run fastest with the chunk's few rows as the output's leading
# dimension, that is with class-major output: hidden @ weight.T is written as (1024, chunk)
# class-major tiles, each of which stays in L2, then transposed into the block. grad @ weight,
# whose inner dimension is the whole vocabulary, runs fastest split over the vocabulary into a
# batch of independent matmuls (one per thread or more) whose results are then added: a single
# matmul with a long inner dimension runs on fewer threads, and less of it stays in cache.
# bfloat16/float16 matmuls (oneDNN) are faster row-major and keep it; bfloat16 logits and
# grad_hidden run in native kernels where the CPU has AVX512-BF16 (see the functions).
_CLASS_MAJOR = (torch.float32, torch.float64)
_TILE = 1024


@torch.compiler.assume_constant_result
def _threads() -> int:
    """``torch.get_num_threads()``, a constant to torch.compile (Dynamo does not trace it; the
    split only arranges the same sum)."""
    return torch.get_num_threads()


def vocab_splits(vocab: int, features: int) -> int:
    """Parts of the vocabulary for :func:`grad_hidden_into`: 4 per thread, at most 16, and few
    enough that their (parts, chunk, D) partial sums take at most a quarter of the block."""
    return max(1, min(4 * _threads(), 16, vocab // (4 * features)))


def matmul_scratch(chunk: int, vocab: int, features: int, dtype: torch.dtype, device, *,
                   native: bool = False) -> Tensor | None:
    """The scratch of :func:`logits_into` and :func:`grad_hidden_into` for float32/float64 inputs
    (a class-major tile, or the partial sums of grad_hidden), else None; None too for float32
    when the native kernels run (``native``), as they do not use it (up to 4 MiB saved per call)."""
    if dtype not in _CLASS_MAJOR or (native and dtype == torch.float32 and native_gemm._f32_available()):
        return None
    size = max(min(_TILE, vocab), vocab_splits(vocab, features) * features) * chunk
    return torch.empty(size, dtype=dtype, device=device)


def logits_into(out: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None, scratch: Tensor | None, *,
                native: bool = False) -> Tensor:
    """out (c, V) ← h (c, D) @ weight.T (+ bias), in class-major tiles when ``scratch`` is given.

    ``native``: the native matmul kernels may run (impl "native").

    bfloat16 runs in the native kernel (``_native/gemm_bf16_logits.c``) where the CPU has
    AVX512-BF16: it reads the weight in place instead of repacking it on every call as oneDNN
    does. float32 runs in its AVX-512 twin (``_native/gemm_f32_logits.c``), faster than the
    class-major tiles below, which remain the path without the kernels.
    """
    if native and (native_gemm.logits_bf16(out, h, weight, bias) or native_gemm.logits_f32(out, h, weight, bias)):
        return out
    if scratch is None or out.dtype != scratch.dtype:
        return torch.mm(h, weight.t(), out=out) if bias is None else torch.addmm(bias, h, weight.t(), out=out)
    rows, vocab = out.shape
    for v in range(0, vocab, _TILE):
        w = weight[v: v + _TILE]
        tile = scratch[: w.shape[0] * rows].view(w.shape[0], rows)
        if bias is None:
            torch.mm(w, h.t(), out=tile)
        else:
            torch.addmm(bias[v: v + _TILE, None], w, h.t(), out=tile)
        out[:, v: v + _TILE].copy_(tile.t())
    return out


def grad_hidden_into(out: Tensor, grad: Tensor, weight: Tensor, scratch: Tensor | None, *,
                     native: bool = False) -> Tensor:
    """out (c, D) ← grad (c, V) @ weight (V, D); with ``scratch``, as the sum of a batch of
    matmuls over :func:`vocab_splits` parts of the vocabulary.

    bfloat16 runs in the native kernel (``_native/gemm_bf16_gh.c``) where the CPU has AVX512-BF16:
    oneDNN repacks the whole weight on every call, while the kernel packs a 256 × 64 piece at a
    time, prefetching the next, and reads the chunk's gradient from a copy of each tile's columns.
    float32 runs in its AVX-512 twin (``_native/gemm_f32_gh.c``), with sums over spans of 512
    classes, so its rounding matches torch.mm's. The batch over parts of the vocabulary is the
    path without the kernels.
    """
    if native and (native_gemm.grad_hidden_bf16(out, grad, weight) or native_gemm.grad_hidden_f32(out, grad, weight)):
        return out
    if scratch is None or out.dtype != scratch.dtype:
        return torch.mm(grad, weight, out=out)
    rows, features = out.shape
    vocab = weight.shape[0]
    splits = vocab_splits(vocab, features)
    part = vocab // splits
    even = splits * part
    parts = scratch[: splits * rows * features].view(splits, rows, features)
    torch.bmm(grad[:, :even].view(rows, splits, part).transpose(0, 1), weight[:even].view(splits, part, features),
              out=parts)
    torch.sum(parts, 0, out=out)
    return out.addmm_(grad[:, even:], weight[even:]) if even < vocab else out


def grad_weight_into(grad_w: Tensor, grad: Tensor, h: Tensor) -> Tensor:
    """grad_w (V, D) += grad.T @ h in torch, for grad (c, V) and h (c, D): where the bfloat16
    kernel of :class:`GradWeightSum` declines.

    When grad_w is wider than the chunk, the product runs in grad_w's dtype one (c, 1024) tile of
    the gradient at a time, widened (as fast as through a float32 twin of the whole block), so
    half-precision chunks need no float32 copy of the block and keep three times the rows.
    """
    if grad_w.dtype == grad.dtype:
        return grad_w.addmm_(grad.t(), h.to(grad.dtype))
    if grad.is_cuda and grad.dtype == h.dtype and _wide_addmm_cuda(grad_w, grad, h):
        return grad_w
    h_wide = h.to(grad_w.dtype)
    tile = grad.new_empty(grad.shape[0], min(_TILE, grad.shape[1]), dtype=grad_w.dtype)
    for v in range(0, grad.shape[1], _TILE):
        g = grad[:, v: v + _TILE]
        grad_w[v: v + _TILE].addmm_(tile[:, : g.shape[1]].copy_(g).t(), h_wide)
    return grad_w


_WIDE_ADDMM: list[bool] = []  # whether torch's addmm(..., out_dtype=) ran here (tried once)


def _wide_addmm_cuda(grad_w: Tensor, grad: Tensor, h: Tensor) -> bool:
    """grad_w += grad.T @ h by cuBLAS with half-precision inputs and a wider (float32) sum, no
    widened copy (``torch.addmm(..., out_dtype=)``, CUDA only); False where torch has no such
    kernel for these dtypes."""
    if _WIDE_ADDMM and not _WIDE_ADDMM[0]:
        return False
    try:
        torch.addmm(grad_w, grad.t(), h, out_dtype=grad_w.dtype, out=grad_w)
    except (RuntimeError, TypeError):
        if _WIDE_ADDMM:
            raise
        _WIDE_ADDMM.append(False)
        return False
    if not _WIDE_ADDMM:
        _WIDE_ADDMM.append(True)
    return True


class GradWeightSum:
    """grad_weight (V, D), summed over the chunks in ``dtype`` and returned in ``weight``'s dtype.

    bfloat16 chunks run in the native kernel (``_native/gemm_bf16_gw.c``), which sums the exact
    products of bfloat16 pairs in float32, fetching the next tile of the sum while it works on one
    (into float32 about as fast as oneDNN's bfloat16 addmm into bfloat16). The sum starts from
    nothing rather than from a zero-filled tensor: the first chunk writes it (``torch.mm``, or the
    kernel reading no source). For a bfloat16 head summed in float32 (the default ``accum_dtype``)
    the bfloat16 kernel keeps that sum split in halves: the upper 16 bits of each float32 in the
    buffer of the bfloat16 gradient it will return, the lower 16 in a (V, D) int16 buffer. The sum
    is the same float32 sum, bit for bit, at 2 bytes per element beyond the gradient instead of 4,
    and the last chunk rounds it into that buffer in place (no conversion pass); a single chunk
    never makes the lower halves at all. At (2048, 2048, 131072) that is 512 MiB less memory than a
    1 GiB float32 sum, and neither its zero fill nor its conversion pass. Where the kernel declines,
    the halves are joined into a float32 tensor and the sum goes on in torch.
    """

    def __init__(self, weight: Tensor, dtype: torch.dtype, *, native: bool = False):
        self.weight, self.dtype, self.native = weight, dtype, native
        self.split = weight.dtype == torch.bfloat16 and dtype == torch.float32
        self.sum: Tensor | None = None  # the running sum in ``dtype``; None while it is zero or split
        self.halves: tuple[Tensor, Tensor] | None = None  # the split float32 sum (``split`` only)
        self.final: Tensor | None = None  # the gradient, when the last chunk wrote it directly

    def add(self, grad: Tensor, h: Tensor, *, last: bool) -> None:
        """Add grad.T @ h for grad (c, V) and h (c, D); ``last`` for the last chunk."""
        if self.final is not None:
            raise RuntimeError("GradWeightSum.add: the last chunk was already added")
        if self.native and grad.dtype == h.dtype == torch.bfloat16 and self._native(grad, h, last):
            return
        if self.sum is None and self.halves is None and grad.dtype == self.dtype:
            self.sum = torch.mm(grad.t(), h.to(grad.dtype))
        else:
            grad_weight_into(self.total(), grad, h)

    def _native(self, grad: Tensor, h: Tensor, last: bool) -> bool:
        """The chunk through the bfloat16 kernel; False (nothing changed) when it declines."""
        shape = self.weight.shape
        if self.split and self.sum is None:  # the halves, or at the last chunk the rounded gradient
            upper = self.halves[0] if self.halves is not None else self.weight.new_empty(shape)
            out = upper if last else self.halves or (upper, self.weight.new_empty(shape, dtype=torch.int16))
            src = self.halves
        else:
            out = self.sum if self.sum is not None else self.weight.new_empty(shape, dtype=self.dtype)
            src = self.sum
        if not native_gemm.grad_weight_bf16(out, grad, h, src=src):
            return False
        if isinstance(out, tuple):
            self.halves = out
        elif out.dtype == self.dtype:
            self.sum = out
        else:
            self.final, self.halves = out, None
        return True

    def total(self) -> Tensor:
        """The running sum as one tensor in ``dtype``: joined from its halves, or zero-filled."""
        if self.sum is None:
            if self.halves is not None:
                upper, lower = (x.view(torch.int16).to(torch.int32) for x in self.halves)
                self.sum = ((upper << 16) | (lower & 0xFFFF)).view(torch.float32)
                self.halves = None
            else:
                self.sum = self.weight.new_zeros(self.weight.shape, dtype=self.dtype)
        return self.sum

    def result(self) -> Tensor:
        """The summed gradient in ``weight``'s dtype (zeros if nothing was added)."""
        if self.final is not None:
            return self.final
        total = self.total()
        return total if total.dtype == self.weight.dtype else total.to(self.weight.dtype)
