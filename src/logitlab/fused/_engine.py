"""The chunk loop: linear layer + row kernel without ever holding the (N, V) logits.

For each chunk of rows: logits = hidden_chunk @ weight.T (+ bias) into a reused buffer, the
row kernel turns them into losses and (in place) into the gradient G with respect to the
logits, then the two gradient matmuls run at once: grad_hidden[chunk] = G @ weight and
grad_weight += G.T @ hidden_chunk. Three matmuls in total, the same as the naive computation,
and only a (chunk, V) block of logits alive at a time. Rows that count for nothing (ignored
targets: padding) are left out of the chunks altogether, so they cost no matmul.

The row kernel of a chunk is the native C kernel (CPU), the eager torch kernel, or, with
``Plan.triton`` (CUDA tensors, or CPU tensors under Triton's interpreter), the Triton row kernel
(``logitlab/_triton/xent.py``): cuBLAS writes the block of logits in the input's dtype, the
kernel turns it in place into the gradient (bias and softcap applied inside it), and cuBLAS runs
the two gradient matmuls on that block. On that path the loop reads nothing on the host but
which rows count (``kept_index``: to size the loop over the kept rows).

Two strategies share this loop:

* ``precompute`` (used for reduction 'mean' and 'sum'): the forward pass also computes the
  gradients, already scaled by the reduction; backward only multiplies them by the incoming
  scalar. One pass over the data, three matmuls.
* ``recompute`` (reduction 'none', where each row has its own incoming gradient): the forward
  pass computes only the losses; backward runs the loop again with the per-row scale. Four
  matmuls, and nothing but the inputs is held between forward and backward.

Under ``torch.compile`` the same loop runs inside custom ops (``fused/_ops.py``): the reads on the
host above stay inside the op, whose outputs have shapes fixed by its inputs'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from logitlab._native import xent as native_xent
from logitlab.fused._kernel import all_reduce, apply_softcap, kept_index, softcap_backward
from logitlab.fused._matmul import GradWeightSum, grad_hidden_into, logits_into, matmul_scratch

# Elements of the (chunk, V) block of logits chosen by chunk_rows: 1/32 of the naive logits
# (so about 3% of their size), but at least 64 rows and 2^18 elements (1 MiB in float32: thin
# chunks make inefficient matmuls, a few rows per chunk being slower than the naive computation)
# and at most 2^24 elements (64 MiB). benchmarks/chunk_sweep.py times the loop over chunk sizes
# against the naive computation and the bare three matmuls.
# Half-precision inputs that need a float32 twin of the block (6 bytes per block element against
# 2 per naive logit) take a block three times smaller for the same fraction of the naive logits'
# size (``wide_block``).
# When grad_weight is summed in a dtype wider than the head's (bf16 inputs, float32 accum_dtype),
# every chunk streams that (V, D) sum through memory once (read and written: 4 bytes per element,
# its upper and lower halves, see _matmul.GradWeightSum), 4/c bytes per flop of the chunk's
# grad_weight product, so fewer chunks save that traffic; and the sum is extra memory whatever the
# chunk (its lower halves, V·D·2 bytes). The block may then grow to 512 rows (_SUM_ROWS), but to
# no more than 1/4 of the float32 sum's bytes (half its lower halves): D·4/8 rows of a bf16 block.
# Beyond 512 rows the time stays flat while the block keeps growing (benchmarks/chunk_sweep.py
# --accum-dtype float32 sweeps it).
_MIN_BLOCK, _MAX_BLOCK, _FRACTION, _MIN_ROWS, _SUM_SHARE, _SUM_ROWS = 1 << 18, 1 << 24, 32, 64, 4, 512
# impl="auto" materializes logits only when they are small: at most 2^20 elements (4 MiB).
NAIVE_MAX_ELEMENTS = 1 << 20
# The GPU's chunk (impl="triton"): grad_weight += G.T @ h reads and writes the (V, D) sum once per
# chunk (8 bytes per element in float32, 4 in bfloat16) for 2·c flops per element, c/4 (c/2)
# flops per byte; an H100/H200-class GPU does about 200 bf16 flops per byte of HBM traffic (by
# its datasheet's rates), so the sum stays compute-bound from c ≈ 800 (400) rows.
# 1024 rows clear both; the block is at most 2^28 elements (512 MiB in bfloat16), fewer rows for
# vocabularies beyond 262144.
_GPU_ROWS, _GPU_MAX_BLOCK = 1024, 1 << 28


def gpu_chunk_rows(rows: int, vocab: int) -> int:
    """Rows per chunk for impl="triton" when ``chunk_size`` is not given (see _GPU_ROWS).

    Example:
        >>> gpu_chunk_rows(8192, 128256), gpu_chunk_rows(100, 50), gpu_chunk_rows(8192, 1 << 20)
        (1024, 100, 256)
    """
    size = min(_GPU_ROWS, max(1, _GPU_MAX_BLOCK // max(vocab, 1)))
    if size >= 8:
        size -= size % 8
    return max(1, min(size, rows))


def chunk_rows(rows: int, vocab: int, dtype: torch.dtype = torch.float32, *, wide_block: bool = True,
               dim: int = 0, sum_dtype: torch.dtype | None = None) -> int:
    """Rows per chunk of the chunked implementations when ``chunk_size`` is not given.

    Deterministic in the shape and dtype: the block of logits holds N·V/32 elements, but at least
    64 rows and 2^18 elements and at most 2^24 elements, rounded down to a multiple of 8 rows when
    that is at least 8. float16/bfloat16 inputs whose block needs a float32 twin (``wide_block``:
    the eager row kernel) take N·V/96 elements, the same bytes; without it (the native kernel
    works on the half-precision block in place) they take N·V/32, three times the rows.

    When a half-precision head (V, ``dim``) has its grad_weight summed in a wider ``sum_dtype``,
    every chunk streams that sum through memory, which is partly extra memory anyway, and the
    block may grow to 512 rows but no more than 1/4 of the sum's V·D·itemsize bytes: fewer chunks
    stream the sum fewer times. The rows then depend on D and the dtypes, not on V, so the ranks
    of a vocabulary-sharded head agree. A wide block's twin is counted in ``sum_dtype`` when that
    is wider than float32 (its dtype then), in both rules.

    Example:
        >>> chunk_rows(4096, 32768), chunk_rows(2048, 131072), chunk_rows(256, 50000), chunk_rows(10, 50)
        (128, 64, 64, 10)
        >>> chunk_rows(16384, 32768, torch.bfloat16), chunk_rows(16384, 32768, torch.bfloat16, wide_block=False)
        (168, 512)
        >>> chunk_rows(2048, 131072, torch.bfloat16, wide_block=False, dim=2048, sum_dtype=torch.float32)
        512
    """
    half = dtype in (torch.float16, torch.bfloat16)
    # Bytes per block element: the input's dtype, plus a half-precision block's twin in the
    # accumulation dtype (float32, or sum_dtype when that is wider). Both shares count these bytes.
    twin = max(4, sum_dtype.itemsize if sum_dtype is not None else 0) if half and wide_block else 0
    block_bytes = dtype.itemsize + twin
    naive_share = rows * vocab * dtype.itemsize // (_FRACTION * block_bytes)
    block = min(max(naive_share, _MIN_ROWS * vocab, _MIN_BLOCK), _MAX_BLOCK)
    size = max(1, block // max(vocab, 1))
    if half and sum_dtype is not None and sum_dtype.itemsize > dtype.itemsize:
        size = max(size, min(_SUM_ROWS, dim * sum_dtype.itemsize // (_SUM_SHARE * block_bytes)))
    if size >= 8:
        size -= size % 8
    return max(1, min(size, rows))


def needs_wide_block(hidden: Tensor, softcap: float | None, group, *, native: bool = True) -> bool:
    """Whether a half-precision block of logits needs a float32 twin (see :func:`chunk_rows`).

    It does not when the native row kernel can work on the block in place: no softcap, no
    process group, the kernel built and chosen (``native``). (A float32 grad_weight is then summed
    straight from the half-precision block, see :class:`logitlab.fused._matmul.GradWeightSum`.)
    """
    return not (native and softcap is None and group is None and native_xent.supports(hidden.new_empty(0, 0)))


def accumulation_dtype(dtype: torch.dtype, accum_dtype: torch.dtype) -> torch.dtype:
    """The dtype of logit blocks: at least float32, ``accum_dtype`` or the input's if wider."""
    return torch.promote_types(torch.promote_types(dtype, accum_dtype), torch.float32)


def gradient_dtype(dtype: torch.dtype, accum_dtype: torch.dtype) -> torch.dtype:
    """The dtype grad_weight and grad_bias are summed in over chunks: ``accum_dtype`` or wider."""
    return torch.promote_types(dtype, accum_dtype)


@dataclass
class Plan:
    """How to run the loop (everything but the tensors)."""

    chunk: int
    accum_dtype: torch.dtype
    softcap: float | None = None
    precompute: bool = True
    group: object = None
    native: bool = False  # impl "native": the native row and matmul kernels, where they take the chunk
    # Leave rows that do not count out of the chunks (finding them is a read on the host).
    skip_ignored: bool = True
    triton: bool = False  # impl "triton": the Triton row kernel (see the module's docstring)


def run_chunks(hidden: Tensor, weight: Tensor, bias: Tensor | None, kernel, plan: Plan, *,
               row_scale: Tensor | float | None, need: tuple[bool, bool, bool]):
    """One pass of the chunk loop.

    Rows that do not count (``kept_index`` of a kernel's ``keep``, for kernels that can ``take``
    a subset of their rows: ignored targets) have zero loss and zero gradient, so the loop skips
    them: each chunk gathers the next ``chunk`` kept rows of hidden, and its grad_hidden rows are
    scattered back into a zero-filled grad_hidden. Finding them reads ``keep`` on the host;
    ``plan.skip_ignored=False`` (a DTensor head with validate=False) runs every row instead, the
    kernel masking those that do not count.

    Args:
        hidden: (N, D). weight: (V, D). bias: (V,) or None.
        kernel: a row kernel ``(z, start, stop, need_grad) -> (loss_rows, grad_z)``.
        row_scale: multiplies the gradient of each row: a number or an (N,) tensor.
        need: which of (grad_hidden, grad_weight, grad_bias) to compute.

    Returns:
        (loss_rows (N,) in the accumulation dtype, grad_hidden, grad_weight, grad_bias), the
        gradients in the dtypes of their inputs (None where not needed).
    """
    index = kept_index(kernel.keep) if hasattr(kernel, "take") and plan.skip_ignored else None
    if index is not None:
        kernel = kernel.take(index)
        if isinstance(row_scale, Tensor) and row_scale.ndim:
            row_scale = row_scale[index]
    rows = hidden.shape[0] if index is None else index.numel()
    vocab = weight.shape[0]
    acc = accumulation_dtype(hidden.dtype, plan.accum_dtype)
    low = hidden.dtype != acc
    # accum_dtype=bfloat16 with bfloat16 inputs: grad_weight is summed in place in bfloat16
    # (no float32 copy of the head; one rounding per chunk).
    sum_dtype = gradient_dtype(weight.dtype, plan.accum_dtype)
    sum_low = low and sum_dtype == weight.dtype
    chunk = max(1, min(plan.chunk, rows))

    # The native row kernel, where it takes the block (decided before any chunk's logits exist).
    native = (plan.native and not plan.triton and plan.softcap is None and plan.group is None
              and hasattr(kernel, "native")
              and native_xent.supports(hidden.new_empty(0, 0)))
    # Without a float32 twin the block is made only if a chunk falls back to the eager kernel.
    narrow = native and low and not needs_wide_block(hidden, plan.softcap, plan.group)
    z_buf = None if narrow or plan.triton else hidden.new_empty(chunk, vocab, dtype=acc)
    # The Triton kernel works on the block in the input's dtype (cuBLAS's output), in place.
    low_buf = hidden.new_empty(chunk, vocab) if low or plan.triton else None
    loss_rows = hidden.new_empty(rows, dtype=acc)
    grad_h = None
    if need[0]:
        grad_h = hidden.new_empty(hidden.shape) if index is None else hidden.new_zeros(hidden.shape)
    grad_w = GradWeightSum(weight, weight.dtype if sum_low else acc, native=plan.native) if need[1] else None
    grad_b = hidden.new_zeros(vocab, dtype=acc) if need[2] else None
    bias_acc = bias.to(acc) if bias is not None and not plan.triton else None
    scratch = None if plan.triton else matmul_scratch(chunk, vocab, hidden.shape[1], hidden.dtype, hidden.device,
                                                      native=plan.native)
    out = _Outputs(loss_rows, grad_h, grad_w, grad_b)
    # The kept rows of a chunk, gathered, and their grad_hidden before it is scattered back.
    h_buf = hidden.new_empty(chunk, hidden.shape[1]) if index is not None else None
    gh_buf = hidden.new_empty(chunk, hidden.shape[1]) if index is not None and need[0] else None

    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        if index is None:
            h, gh = hidden[start:stop], grad_h[start:stop] if need[0] else None
        else:
            h = torch.index_select(hidden, 0, index[start:stop], out=h_buf[: stop - start])
            gh = gh_buf[: stop - start] if need[0] else None
        if plan.triton:
            _triton_chunk(h, weight, bias, kernel, plan, start, stop, row_scale, need,
                          low_buf[: stop - start], gh, out)
            if index is not None and need[0]:
                grad_h.index_copy_(0, index[start:stop], gh)
            continue
        block = (low_buf if low else z_buf)[: stop - start] if native else None
        if not (native and _native_chunk(h, weight, bias, kernel, start, stop, row_scale, need, block, gh,
                                         scratch, out)):
            native = False
            if z_buf is None:
                z_buf = hidden.new_empty(chunk, vocab, dtype=acc)
            _eager_chunk(h, weight, bias_acc, kernel, plan, start, stop, row_scale, need,
                         z_buf[: stop - start], low_buf[: stop - start] if low else None, sum_low, gh, scratch, out)
        if index is not None and need[0]:
            grad_h.index_copy_(0, index[start:stop], gh)

    if index is not None:
        loss_rows = loss_rows.new_zeros(hidden.shape[0]).index_copy_(0, index, loss_rows)
    if grad_h is not None:
        grad_h = all_reduce(grad_h, "sum", plan.group)
    if grad_w is not None:
        grad_w = grad_w.result()
    if grad_b is not None and bias is not None and grad_b.dtype != bias.dtype:
        grad_b = grad_b.to(bias.dtype)
    return loss_rows, grad_h, grad_w, grad_b


@dataclass
class _Outputs:
    """What the chunk loop fills: (N,) row losses and the gradients (None where not needed)."""

    loss_rows: Tensor
    grad_h: Tensor | None
    grad_w: GradWeightSum | None
    grad_b: Tensor | None


def _eager_chunk(h: Tensor, weight: Tensor, bias_acc: Tensor | None, kernel, plan: Plan, start: int, stop: int,
                 row_scale, need: tuple[bool, bool, bool], z: Tensor, g_low: Tensor | None, sum_low: bool,
                 gh: Tensor | None, scratch: Tensor | None, out: _Outputs) -> None:
    """One chunk with the eager row kernel on a block ``z`` in the accumulation dtype (with
    half-precision inputs, ``g_low`` is the block in their dtype: the logits come from their
    matmul and the gradient goes back into it for the matmuls that run in that dtype)."""
    if g_low is not None:
        torch.mm(h, weight.t(), out=g_low)
        z.copy_(g_low)
        if bias_acc is not None:
            z.add_(bias_acc)
    else:
        logits_into(z, h, weight, bias_acc, scratch, native=plan.native)
    tanh = apply_softcap(z, plan.softcap)
    loss, grad = kernel(z, start, stop, any(need))
    out.loss_rows[start:stop] = loss
    if grad is None:
        return
    softcap_backward(grad, tanh)
    if isinstance(row_scale, Tensor) and row_scale.ndim:
        grad.mul_(row_scale[start:stop].to(z.dtype).unsqueeze(1))
    elif row_scale is not None:
        grad.mul_(row_scale)
    if g_low is not None and (need[0] or (need[1] and sum_low)):
        g_low.copy_(grad)
    if need[0]:
        grad_hidden_into(gh, g_low if g_low is not None else grad, weight, scratch, native=plan.native)
    if need[1]:
        out.grad_w.add(g_low if sum_low else grad, h, last=stop == out.loss_rows.shape[0])
    if need[2]:
        out.grad_b.add_(grad.sum(0))


def _native_chunk(h: Tensor, weight: Tensor, bias: Tensor | None, kernel, start: int, stop: int, row_scale,
                  need: tuple[bool, bool, bool], block: Tensor, gh: Tensor | None, scratch: Tensor | None,
                  out: _Outputs) -> bool:
    """One chunk with the native row kernel; False (nothing done) when the kernel declines.

    The block of logits stays in the input's dtype (bfloat16 logits come straight out of the
    bfloat16 matmul, as in the naive computation) and the kernel turns it into the gradient in
    place, in one pass: no float32 copy, no separate scaling pass. With bfloat16 inputs and a
    float32 ``accum_dtype``, grad_weight is still summed in float32, straight from the bfloat16
    block (:class:`~logitlab.fused._matmul.GradWeightSum`). ``gh`` receives the chunk's grad_hidden.
    """
    if bias is not None and bias.dtype != block.dtype:
        return False
    logits_into(block, h, weight, bias, scratch, native=True)
    result = kernel.native(block, start, stop, any(need), row_scale)
    if result is None:
        return False
    loss, grad = result
    out.loss_rows[start:stop] = loss
    if grad is None:
        return True
    if need[0]:
        grad_hidden_into(gh, grad, weight, scratch, native=True)
    if need[1]:
        out.grad_w.add(grad, h, last=stop == out.loss_rows.shape[0])
    if need[2]:
        out.grad_b.add_(grad.sum(0, dtype=out.grad_b.dtype))
    return True


def _triton_chunk(h: Tensor, weight: Tensor, bias: Tensor | None, kernel, plan: Plan, start: int, stop: int,
                  row_scale, need: tuple[bool, bool, bool], block: Tensor, gh: Tensor | None,
                  out: _Outputs) -> None:
    """One chunk with the Triton row kernel: logits by cuBLAS into ``block`` (the input's dtype),
    then one launch turns them in place into the gradient times ``row_scale`` (bias and softcap
    applied inside the kernel, in float32), then cuBLAS's gradient matmuls on that block."""
    torch.mm(h, weight.t(), out=block)
    loss, grad = kernel.triton(block, start, stop, any(need), row_scale, bias=bias, softcap=plan.softcap)
    out.loss_rows[start:stop] = loss
    if grad is None:
        return
    if need[0]:
        torch.mm(grad, weight, out=gh)
    if need[1]:
        out.grad_w.add(grad, h, last=stop == out.loss_rows.shape[0])
    if need[2]:
        out.grad_b.add_(grad.sum(0, dtype=out.grad_b.dtype))


def forward_pass(hidden: Tensor, weight: Tensor, bias: Tensor | None, kernel, scale, plan: Plan, *,
                 need: tuple[bool, bool, bool]) -> tuple[Tensor, list | None]:
    """The forward of :class:`FusedLinearLoss` (and of the compiled ops, ``fused/_ops.py``).

    Returns the loss in hidden's dtype (the (N,) row losses for ``scale`` None, else their sum
    times ``scale``) and, with ``plan.precompute`` for a reduced loss where a gradient is
    ``need``-ed, the gradients [grad_hidden, grad_weight, grad_bias] of that loss computed in the
    same pass (None where not needed); otherwise None (backward runs the loop again).
    """
    grads = None
    if plan.precompute and scale is not None and any(need):
        loss_rows, *grads = run_chunks(hidden, weight, bias, kernel, plan, row_scale=scale, need=need)
    else:
        loss_rows, *_ = run_chunks(hidden, weight, bias, kernel, plan, row_scale=None, need=(False, False, False))
    out = loss_rows if scale is None else loss_rows.sum() * scale
    return out.to(hidden.dtype), grads


class FusedLinearLoss(torch.autograd.Function):
    """loss = reduce(kernel(hidden @ weight.T + bias)) with the chunk loop for forward and backward.

    ``scale`` is the factor of the reduction (1 for 'sum', 1 / denominator for 'mean'), or None
    for reduction 'none' (then the output is the (N,) vector of row losses).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, kernel, scale, plan):  # noqa: D401
        ctx.plan, ctx.kernel, ctx.scale = plan, kernel, scale
        out, grads = forward_pass(hidden, weight, bias, kernel, scale, plan, need=tuple(ctx.needs_input_grad[:3]))
        if grads is not None:
            ctx.grads = grads
        # The inputs are saved in both cases (references, no copies): a second backward through a
        # retained graph recomputes, since the precomputed gradients are handed over only once.
        ctx.save_for_backward(hidden, weight, bias)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grads = getattr(ctx, "grads", None)
        if grads is not None:
            # Drop our reference so autograd can keep these tensors as .grad without a copy.
            ctx.grads = None
            if ctx.plan.triton:
                # Comparing grad_out to 1 would read it on the host: the Triton scaling kernel reads
                # it on the device and touches nothing when it is 1.
                from logitlab._triton.xent import scale_rows_

                grads = [scale_rows_(g, grad_out) if g is not None else None for g in grads]
            # Over a group the factor is applied whatever it is: no read on the host.
            elif ctx.plan.group is not None or not bool(grad_out == 1):
                grads = [g.mul_(grad_out.to(g.dtype)) if g is not None else None for g in grads]
        else:
            hidden, weight, bias = ctx.saved_tensors
            scale = grad_out if ctx.scale is None else grad_out * ctx.scale
            _, *grads = run_chunks(hidden, weight, bias, ctx.kernel, ctx.plan, row_scale=scale,
                                   need=tuple(ctx.needs_input_grad[:3]))
        return grads[0], grads[1], grads[2], None, None, None
