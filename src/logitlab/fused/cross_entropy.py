"""linear_cross_entropy: the loss of a linear head without materializing its logits."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from logitlab import _reduction, backend
from logitlab import _validation as v
from logitlab._dtensor import any_dtensor, head_locals, replicated_output
from logitlab._native import xent as native_xent
from logitlab._reduction import shift_target
from logitlab.fused._engine import (
    NAIVE_MAX_ELEMENTS,
    FusedLinearLoss,
    Plan,
    accumulation_dtype,
    chunk_rows,
    gpu_chunk_rows,
    gradient_dtype,
    needs_wide_block,
)
from logitlab.fused._kernel import CrossEntropyKernel, all_gather, all_reduce
from logitlab.fused._ops import linear_xent as compiled_linear_xent
from logitlab.losses._inputs import check_group, check_head, check_head_values, loss_rows

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_lse", "LinearCrossEntropyResult"]


def check_options(fn: str, *, reduction, label_smoothing, z_loss, softcap, chunk_size, impl,
                  accum_dtype=torch.float32) -> None:
    v.check_reduction(fn, reduction)
    v.check_float_dtype(fn, "accum_dtype", accum_dtype)
    v.check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
    v.check_range(fn, "z_loss", z_loss, 0.0, float("inf"))
    if softcap is not None:
        v.check_positive(fn, "softcap", softcap)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        v.fail(fn, "chunk_size", "None or an int >= 1", chunk_size)
    backend.check_impl(fn, impl, warn=False)


def choose_impl(fn: str, impl: str, hidden: Tensor, rows: int, vocab: int, chunk_size: int | None,
                group=None) -> str:
    """The implementation of a fused head loss (:func:`logitlab.backend.resolve`): "auto" takes
    "composite" (the logits materialized) when they would hold at most 2^20 elements and no
    ``chunk_size`` was asked for, else "triton" (the chunk loop with the Triton row kernel) for
    CUDA tensors where triton imports and there is no process ``group``, else "native" (the chunk
    loop with the native row kernel) where the kernel takes the hidden states' dtype, else
    "torch" (the chunk loop in torch ops)."""
    small = chunk_size is None and rows * vocab <= NAIVE_MAX_ELEMENTS
    explicit = impl == "triton"
    mode = backend.resolve(fn, impl, hidden, composite=small,
                           native=lambda: native_xent.supports(hidden.new_empty(0, 0)))
    if mode == "triton" and group is not None:
        if explicit:
            v.fail(fn, "process_group", "None with impl='triton' (a sharded head runs impl='torch')",
                   "<a process group>")
        mode = "torch"  # the Triton kernel has no all-reduce between its passes
    return mode


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None = None,
                         class_weight: Tensor | None = None, ignore_index: int = -100,
                         reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                         softcap: float | None = None, chunk_size: int | None = None, impl: str = "auto",
                         accum_dtype: torch.dtype = torch.float32, process_group=None,
                         validate: bool | None = None, shift: int = 0, _record: Tensor | None = None,
                         _layout=None) -> Tensor:
    r"""Cross-entropy of a linear head, computed without holding the (N, V) logits.

    Equivalent to ``cross_entropy(hidden @ weight.T + bias, target, weight=class_weight, ...)``
    (with z = softcap·tanh(z / softcap) first when ``softcap`` is set) in value and in the
    gradients for ``hidden``, ``weight`` and ``bias``. Per kept row, with lse = log Σ_c exp z_c,

        loss = (1 − ε)·w_t·(lse − z_t) + (ε / V)·Σ_c w_c·(lse − z_c) + z_loss·w_t·lse²,

    i.e. D(target ‖ softmax(z)) up to the target's entropy, plus the z-loss of PaLM weighted
    like its row (as ``logitlab.cross_entropy``).
    ``reduction="mean"`` divides the sum by Σ w_t over the kept rows (their number without
    class weights); a batch whose rows are all ignored has mean 0 and zero gradients.

    The chunked implementations process ``chunk_size`` rows at a time: their logits, log-sum-exp,
    loss and gradient contributions (grad_hidden of the chunk, grad_weight accumulated in
    ``accum_dtype``) in one pass, so that backward only scales the stored gradients (for
    reduction 'none' the chunks are recomputed in backward instead). Rows whose target is
    ``ignore_index`` are left out of the chunks (their loss and gradient are 0), so padding
    costs no matmul. ``impl`` (the values of every op, :mod:`logitlab.backend`): "native" runs the
    chunks with the native row kernel (CPU float32/bfloat16/float16), "torch" with torch ops on
    any device, "composite" materializes the logits (autograd differentiates it: higher-order
    gradients); "triton" (CUDA tensors; CPU tensors only under Triton's interpreter) runs the
    chunks with cuBLAS matmuls and the Triton row kernel, which turns each chunk's block of logits
    (in the input's dtype) into its gradient in place, bias and softcap included, in one launch;
    its default chunk is :func:`logitlab.fused._engine.gpu_chunk_rows`, and the call reads on the
    host only which rows are kept, to leave ignored rows out of the chunks (``keep.all()``, then
    their indices when some are ignored); nothing else with ``validate`` off: no data checks, no
    test of the incoming gradient. "auto" takes "composite"
    for at most 2^20 logits when no ``chunk_size`` is given, else "triton" for CUDA tensors where
    triton imports (no ``process_group``), else "native" where it runs, else "torch". With
    ``process_group`` the chunks always run (an all-reduce is not differentiable by autograd).

    With ``process_group``, ``weight`` (and ``bias``, ``class_weight``) are this rank's
    contiguous rows of the vocabulary, in rank order; ``hidden`` and ``target`` (global class
    indices) are the same on every rank. The loss of the full vocabulary comes out on every
    rank, logits are never gathered, and grad_hidden is summed over the ranks.

    DTensors (tensor parallelism, as torchtitan shards an LM head): ``weight`` may be a DTensor
    of the full (V, D) head sharded on the vocabulary (``Shard(0)`` on one mesh dimension,
    ``Replicate()`` on any other: a column-parallel head), with ``bias`` and ``class_weight``
    DTensors sharded like it or plain slices, and ``hidden`` and ``target`` replicated DTensors
    on its mesh or plain tensors (the same on every rank). The mesh dimension gives the process
    group (``process_group`` may be omitted; given, it must hold the same ranks) and the shard's
    offset (torch.chunk's layout), the loss comes back as a DTensor replicated over the mesh,
    and each DTensor argument's gradient has its placements (a replicated ``hidden``'s is the
    sum over the shards). A head sharded on D, a sharded ``hidden`` (sequence parallelism:
    redistribute it to ``Replicate()`` first) or DTensors beside a plain ``weight`` raise.
    With ``validate=False`` such a call reads nothing back to the host: no device
    synchronisation, ignored rows go through the chunks (masked, at the cost of their matmuls)
    instead of being found and left out, and target indices are not checked (one out of range
    selects no logit: its row's loss counts a target logit of 0).

    Under ``torch.compile`` the chunk loop of 'native', 'torch' and 'triton' runs inside one
    custom op (``logitlab::fused_linear_xent``, and for 'none' a second one in backward;
    :mod:`logitlab.fused._ops`): no graph break (``fullgraph=True`` holds), the same chunks,
    values and gradients as the eager call, which hands its precomputed gradients over in place
    where the compiled backward multiplies them out of place. A sharded head too: the op carries
    the group's name and runs the row statistics' all-reduces itself; with a DTensor head the
    shard's place comes from its metadata, so the compiled call reads nothing on the host
    (ignored rows go through the chunks masked); with a plain ``process_group`` the op finds it
    from every rank's shard size when it runs (one all-gather, read on the host, as eagerly).
    No double backward through a compiled call: ``create_graph=True`` raises (the eager call's
    Function is once-differentiable too; 'composite' has higher-order gradients eagerly).

    ``shift=k`` scores position t of the sequence (the last dimension of ``target``, the
    second-to-last of ``hidden``) against ``target[..., t + k]``, as a causal LM predicts the
    next token: the same as ``target = cat([target[..., k:], full(k, ignore_index)], -1)``, so
    the last k positions do not count, and 'none' returns the shape of ``target`` (0 there).
    Only the integer targets move; ``hidden`` is not sliced or copied (Hugging Face's
    ``labels`` go in unshifted with ``shift=1``). Each row's log-sum-exp and the token accuracy
    come from the sibling :func:`linear_cross_entropy_with_lse`.

    Note the names: here ``weight`` is the HEAD (V, D) and the class weights are
    ``class_weight``. In torch's ``F.linear_cross_entropy(input, linear_weight, target, *,
    linear_bias, weight)`` the head is ``linear_weight`` and ``weight=`` means the class weights
    (as in ``F.cross_entropy``). A ported call ``(hidden, head, target, weight=class_weights)``
    fails here with "got multiple values for argument 'weight'": rename it ``class_weight=``
    (and ``linear_bias=`` to ``bias=``).

    Args:
        hidden: (*batch, D) features.
        weight: (V, D) the head (V the vocabulary size); this rank's rows with
            ``process_group``, or a DTensor ``Shard(0)`` of the whole head.
        target: (*batch) class indices in [0, V) or ``ignore_index``.
        bias: (V,) optional.
        class_weight: (V,) optional per-class weights, as ``weight`` of ``F.cross_entropy``.
        ignore_index: target value of rows that do not count.
        reduction: 'none' | 'mean' | 'sum'.
        label_smoothing: ε in [0, 1]; the uniform part spreads over the whole vocabulary.
        z_loss: coefficient of lse² (0 turns it off).
        softcap: optional c > 0: logits become c·tanh(z / c) before the loss.
        chunk_size: rows per chunk (default: :func:`logitlab.fused._engine.chunk_rows`).
        impl: 'auto' | 'native' | 'torch' | 'composite' | 'triton' (the old 'chunked' is 'auto',
            'naive' 'composite').
        accum_dtype: dtype in which grad_weight and grad_bias are summed over chunks (the row
            kernel computes in float32 at least, whatever it is). With bf16 inputs, float32 (the
            default) costs 2 bytes per element of the head beyond its gradient (the float32
            sum's lower halves; its upper halves live in the returned gradient's buffer), 4 with
            float16 or without the native kernel (a float32 copy), and the default chunk then
            grows to up to 512 rows; the input's own dtype saves that memory at one rounding per
            chunk. (With three matmuls, an exact float32 sum over chunks needs min(V·D, N·V)·2
            bytes beyond the gradients: more than 5% of the bf16 logits' N·V·2 bytes unless
            D < N/20.)
        process_group: a torch.distributed group for a vocabulary-sharded head, or None (with
            a DTensor ``weight``: its mesh's group).
        validate: check that the rows of ``hidden`` that count (target not ``ignore_index``),
            ``weight``, ``bias`` and ``class_weight`` hold no NaN or inf (a pass over each; rows
            that do not count may hold anything). ``None`` (the default): True except for CUDA
            tensors (the checks read values on the host). Class indices are checked whatever it
            says, except by impl='triton' with the checks off: its kernel reads nothing for an
            index outside [0, V) and gives that row a NaN loss. Under ``torch.compile`` the data
            checks are skipped (the chunk loop then runs as a custom op: no graph break).
        shift: k >= 0 (True = 1): next-token targets, see above; k must be smaller than the
            sequence length target.shape[-1].
        _record: internal, for :func:`linear_cross_entropy_with_lse` (a (2, N) sink).
        _layout: internal, for :func:`linear_cross_entropy_with_lse`: the DTensor layout of the
            local tensors it passes.

    Returns:
        A scalar (or (*batch) for 'none') in the dtype of ``hidden``; a DTensor replicated over
        the mesh when ``weight`` is a DTensor.

    Raises:
        ValueError/TypeError: shapes or dtypes that do not fit, bad options, indices out of range,
        DTensors placed otherwise than above.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> hidden, weight = torch.randn(6, 4), torch.randn(10, 4)
        >>> target = torch.tensor([1, 2, 3, -100, 9, 0])
        >>> loss = linear_cross_entropy(hidden, weight, target, chunk_size=4)
        >>> naive = torch.nn.functional.cross_entropy(hidden @ weight.T, target)
        >>> bool(torch.allclose(loss, naive))
        True

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (2024);
        Chowdhery et al., "PaLM" (2022) for the z-loss.
    """
    fn = "linear_cross_entropy"
    layout, wrap = _layout, False
    if layout is None and any_dtensor(hidden, weight, target, bias, class_weight):
        hidden, weight, target, bias, class_weight, layout = head_locals(fn, hidden, weight, target, bias,
                                                                         class_weight, process_group)
        wrap = True
    if layout is not None:
        process_group = layout.group
    check_head(fn, hidden, weight, bias)
    target = shift_target(fn, target, shift, ignore_index)
    check_options(fn, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                  softcap=softcap, chunk_size=chunk_size, impl=impl, accum_dtype=accum_dtype)
    process_group = check_group(fn, process_group)
    compiling = torch.compiler.is_compiling()
    validate = v.default_validate(hidden, validate) and not compiling  # (no data checks in a compiled graph)
    # The indices are checked below, against the full vocabulary, once the implementation is known.
    loss_rows(fn, hidden, target, name="hidden", head=weight, weight=class_weight, weight_name="class_weight",
              ignore_index=ignore_index, reduction=reduction, validate=validate, kinds=("index",),
              check_indices=False)
    vocab_local = weight.shape[0]
    vocab_start, vocab_total = 0, vocab_local
    if layout is not None:  # from the DTensor's metadata: no collective, nothing read on the host
        vocab_start, vocab_total = layout.start, layout.total
    elif process_group is not None and compiling:  # (-1: the compiled op finds them when it runs)
        vocab_start = vocab_total = -1
    elif process_group is not None:
        vocab_start, vocab_total = vocab_offsets(vocab_local, process_group, weight.device,
                                                 rows=target.numel(), fn=fn)
    # Rows that do not count are left out of the chunks after a read on the host (which rows);
    # a sharded DTensor head with validate=False reads nothing back: they go through, masked.
    sync_free = layout is not None and process_group is not None and not validate
    flat_target = target.reshape(-1).long()
    rows = flat_target.numel()
    mode = choose_impl(fn, impl, hidden, rows, vocab_total, chunk_size, process_group)
    # Whatever `validate` says: an index addresses memory (of the head, the logits, the weights);
    # the Triton kernel reads none for an index out of range, nor does a sharded DTensor head's row
    # kernel (it masks the index: no host read with validate=False). (On meta tensors: nothing to check.)
    if (validate or not (mode == "triton" or sync_free)) and vocab_total >= 0:
        v.check_index_target(fn, "target", flat_target, vocab_total, ignore_index=ignore_index)

    if not v.has_data(hidden, weight, target, bias, class_weight):  # meta: the output's shape only
        out = v.meta_output(hidden, tuple(target.shape), reduction)
        return replicated_output(out, layout) if wrap else out
    if validate:
        check_head_values(fn, hidden.reshape(rows, hidden.shape[-1]), flat_target != ignore_index,
                          weight=weight, bias=bias, class_weight=class_weight)
    if mode == "triton" and _record is not None:
        mode = "torch"  # the statistics of linear_cross_entropy_with_lse come from the eager kernel
    if mode == "composite" and process_group is None:
        out = _naive(hidden, weight, target, bias=bias, class_weight=class_weight, ignore_index=ignore_index,
                     reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                     record=_record)
        return replicated_output(out, layout) if wrap else out

    triton = mode == "triton"
    if chunk_size is None and triton:
        chunk_size = gpu_chunk_rows(rows, vocab_total)
    elif chunk_size is None and vocab_total < 0:
        chunk_size = 0  # the compiled op's default chunk, once it knows the full vocabulary
    elif chunk_size is None:
        wide = needs_wide_block(hidden, softcap, process_group, native=mode == "native")
        summed = weight.requires_grad and torch.is_grad_enabled()  # a (V, D) grad_weight sum exists
        chunk_size = chunk_rows(rows, vocab_total, hidden.dtype, wide_block=wide, dim=hidden.shape[-1],
                                sum_dtype=gradient_dtype(weight.dtype, accum_dtype) if summed else None)
    hidden2d = hidden.reshape(rows, hidden.shape[-1])
    if compiling:  # the chunk loop inside a custom op (a sharded head's group by name): no graph break
        out = compiled_linear_xent(hidden2d, weight, bias, flat_target, class_weight, ignore_index=ignore_index,
                                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, chunk=chunk_size,
                                   accum_dtype=accum_dtype, reduction=reduction,
                                   impl="torch" if mode == "composite" else mode, record=_record,
                                   group=process_group, vocab_start=vocab_start, vocab_total=vocab_total)
        out = out.reshape(target.shape) if reduction == "none" else out
        return replicated_output(out, layout) if wrap else out
    acc = accumulation_dtype(hidden.dtype, accum_dtype)
    kernel = build_kernel(flat_target, class_weight, ignore_index=ignore_index, vocab_start=vocab_start,
                          vocab_total=vocab_total, label_smoothing=label_smoothing, z_loss=z_loss,
                          dtype=acc, group=process_group, sync=not triton)
    kernel.record = _record  # linear_cross_entropy_with_lse: the forward writes lse and hits into it
    scale = reduction_scale(kernel, reduction, sync=not triton)
    plan = Plan(chunk=chunk_size, accum_dtype=accum_dtype, softcap=softcap, group=process_group,
                native=mode == "native", triton=triton, skip_ignored=not sync_free)
    out = FusedLinearLoss.apply(hidden2d, weight, bias, kernel, scale, plan)
    kernel.record = None  # a backward that recomputes the chunks leaves the returned statistics alone
    out = out.reshape(target.shape) if reduction == "none" else out
    return replicated_output(out, layout) if wrap else out


class LinearCrossEntropyResult(NamedTuple):
    """What :func:`linear_cross_entropy_with_lse` returns."""

    loss: Tensor      # as linear_cross_entropy, differentiable
    lse: Tensor       # (*batch) log Σ_c exp z_c of each row (0 for rows that do not count)
    accuracy: Tensor  # token accuracy, reduced like the loss (see the function)


def linear_cross_entropy_with_lse(hidden: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None = None,
                                  class_weight: Tensor | None = None, ignore_index: int = -100,
                                  reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                                  softcap: float | None = None, chunk_size: int | None = None,
                                  impl: str = "auto", accum_dtype: torch.dtype = torch.float32,
                                  process_group=None, validate: bool | None = None,
                                  shift: int = 0) -> LinearCrossEntropyResult:
    r""":func:`linear_cross_entropy`, plus each row's log-sum-exp and the token accuracy.

    The same loss (same arguments, same gradients), and from the same pass over the chunks of
    logits, with no further matmul: ``lse`` (*batch), lse_n = log Σ_c exp z_nc of the logits the
    loss sees (after ``softcap``), for z-loss logging; ``accuracy``, whether z_{n,t} is the
    largest logit of row n (ties count as hits), unweighted by ``class_weight``: per row (1.0 or
    0.0) for ``reduction="none"``, the number of hits for 'sum', the fraction of kept rows that
    are hits for 'mean' (0 when none is kept). Rows that do not count (``ignore_index``, and
    the last ``shift`` positions) have lse 0 and are no hits. ``lse`` and ``accuracy`` carry no
    gradient. The chunks run the torch row kernel whatever ``impl`` says (it records the
    statistics), so the loss may be slower than :func:`linear_cross_entropy`.

    Naive equivalent: with ``z = hidden @ weight.T + bias``, ``lse = z.logsumexp(-1)`` and
    ``accuracy = (z.argmax(-1) == target)`` averaged over the kept rows.

    Returns:
        ``LinearCrossEntropyResult(loss, lse, accuracy)``; ``lse`` and ``accuracy`` in float32
        (float64 for float64 inputs or ``accum_dtype``); all three DTensors replicated over the
        mesh when ``weight`` is a DTensor (see :func:`linear_cross_entropy`).

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> hidden, weight = torch.randn(2, 4, 8), torch.randn(10, 8)
        >>> target = torch.tensor([[1, 2, 3, 4], [5, 6, -100, -100]])
        >>> out = linear_cross_entropy_with_lse(hidden, weight, target, shift=1)
        >>> logits = hidden @ weight.T
        >>> bool(torch.allclose(out.lse[0, :3], logits[0, :3].logsumexp(-1)))  # row 1 counts 1 position
        True
        >>> naive = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 10), target[:, 1:].reshape(-1))
        >>> bool(torch.allclose(out.loss, naive))
        True
    """
    fn = "linear_cross_entropy_with_lse"
    layout = None
    if any_dtensor(hidden, weight, target, bias, class_weight):
        hidden, weight, target, bias, class_weight, layout = head_locals(fn, hidden, weight, target, bias,
                                                                         class_weight, process_group)
        process_group = layout.group
    v.check_floating(fn, "hidden", hidden)
    v.check_float_dtype(fn, "accum_dtype", accum_dtype)
    record = hidden.new_zeros(2, hidden.shape[:-1].numel(), dtype=accumulation_dtype(hidden.dtype, accum_dtype))
    loss = linear_cross_entropy(hidden, weight, target, bias=bias, class_weight=class_weight,
                                ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                                z_loss=z_loss, softcap=softcap, chunk_size=chunk_size, impl=impl,
                                accum_dtype=accum_dtype, process_group=process_group, validate=validate,
                                shift=shift, _record=record, _layout=layout)
    lse, hits = record[0].reshape(target.shape), record[1].reshape(target.shape)
    if reduction == "none":
        accuracy = hits
    elif reduction == "sum":
        accuracy = hits.sum()
    else:
        kept = (shift_target(fn, target, shift, ignore_index) != ignore_index).sum()
        accuracy = hits.sum() / kept.clamp(min=1).to(hits.dtype)
    if layout is not None:  # DTensor arguments: each output replicated over the mesh
        loss, lse, accuracy = (replicated_output(x, layout) for x in (loss, lse, accuracy))
    return LinearCrossEntropyResult(loss, lse, accuracy)


def build_kernel(target: Tensor, class_weight: Tensor | None, *, ignore_index: int, vocab_start: int | Tensor,
                 vocab_total: int | Tensor, label_smoothing: float, z_loss: float, dtype: torch.dtype,
                 group=None, sync: bool = True) -> CrossEntropyKernel:
    """The cross-entropy row kernel for flat ``target`` (N,), class weights local to this rank.

    ``sync=False`` keeps Σ_c w_c on the device (a 0-d tensor) instead of reading it on the host.
    ``vocab_start`` and ``vocab_total`` may be 0-d tensors (offsets found in traced code)."""
    keep = target != ignore_index
    if class_weight is None:
        target_weight = keep.to(dtype)
        # (a 0-d tensor from traced code, vocab_parallel.traced_offsets: kept on the device)
        weight_total = vocab_total.to(dtype) if isinstance(vocab_total, Tensor) else float(vocab_total)
    else:
        local = target - vocab_start
        owned = keep & (local >= 0) & (local < class_weight.shape[0])
        picked = class_weight.detach().to(dtype)[torch.where(owned, local, torch.zeros_like(local))]
        target_weight = all_reduce(torch.where(owned, picked, picked.new_zeros(())), "sum", group)
        weight_total = all_reduce(class_weight.detach().to(dtype).sum().reshape(1), "sum", group).reshape(())
        if group is None and sync:  # one process: a number (over a group or on the GPU, a 0-d tensor)
            weight_total = float(weight_total)
    if isinstance(vocab_total, Tensor):  # V only divides ε in the kernel: in its dtype, not the default one
        vocab_total = vocab_total.to(dtype)
    return CrossEntropyKernel(target=target, keep=keep, target_weight=target_weight,
                              class_weight=None if class_weight is None else class_weight.detach(),
                              weight_total=weight_total, vocab_total=vocab_total, vocab_start=vocab_start,
                              label_smoothing=float(label_smoothing), z_loss=float(z_loss), group=group)


def reduction_scale(kernel: CrossEntropyKernel, reduction: str, sync: bool = True) -> float | Tensor | None:
    """1 for 'sum', 1 / Σ w_t over kept rows for 'mean' (0 when none is kept), None for 'none'.

    The mean's factor is a 0-d tensor, never read on the host (no device synchronisation, and
    ``torch.compile`` traces it); ``sync`` is accepted for the callers that pass it. (The factor
    is :func:`logitlab._reduction.reduction_scale` of the kept rows' total weight.)
    """
    return _reduction.reduction_scale(reduction, kernel.target_weight.sum())


def vocab_offsets(vocab_local: int, group, device, *, rows: int | None = None,
                  fn: str = "vocab-parallel loss") -> tuple[int, int]:
    """(start of this rank's slice, full vocabulary size) from every rank's slice size.

    With ``rows``, every rank must pass the same number of rows (the row statistics are
    all-reduced row by row): a mismatch raises on every rank, naming each rank's count, instead
    of leaving the ranks waiting on collectives of different sizes.
    """
    import torch.distributed as dist

    mine = torch.tensor([vocab_local, -1 if rows is None else rows], dtype=torch.int64, device=device)
    sizes = [[int(n) for n in s] for s in all_gather(mine, group)]
    counts = [s[0] for s in sizes]
    row_counts = [s[1] for s in sizes]
    if len(set(row_counts)) > 1:
        v.fail(fn, "target", "the same number of rows on every rank of the group",
               f"<rows per rank {row_counts}>")
    rank = dist.get_rank(group)
    return sum(counts[:rank]), sum(counts)


def _naive(hidden, weight, target, *, bias, class_weight, ignore_index, reduction, label_smoothing,
           z_loss, softcap, record=None) -> Tensor:
    """The baseline: materialize the logits, then torch's cross_entropy (+ z-loss by hand).

    Ignored rows of ``hidden`` are zeroed first: their gradient rows are 0, but a NaN there
    (padding) would still enter grad_weight = Σ_n grad_n ⊗ hidden_n as 0 · NaN.
    """
    hidden = torch.where((target != ignore_index).unsqueeze(-1), hidden, hidden.new_zeros(()))
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(v.compute_dtype(logits))
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits2d, flat = logits.reshape(-1, weight.shape[0]), target.reshape(-1).long()
    cw = None if class_weight is None else class_weight.to(logits.dtype)
    rows = F.cross_entropy(logits2d, flat, weight=cw, ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing)
    keep = flat != ignore_index
    if record is not None:
        with torch.no_grad():
            lse = torch.logsumexp(logits2d, dim=1)
            z_t = logits2d.gather(1, torch.where(keep, flat, torch.zeros_like(flat)).unsqueeze(1)).squeeze(1)
            record[0] = torch.where(keep, lse, lse.new_zeros(()))
            record[1] = keep & (z_t >= logits2d.amax(dim=1))
    if z_loss:
        row_weight = 1.0 if cw is None else cw[torch.where(keep, flat, torch.zeros_like(flat))]
        rows = rows + z_loss * torch.where(keep, row_weight * torch.logsumexp(logits2d, dim=1).square(),
                                           rows.new_zeros(()))
    row_weight = None if cw is None else cw[torch.where(keep, flat, torch.zeros_like(flat))]
    out = _reduction.reduce_loss(rows, reduction, keep=keep, row_weight=row_weight)
    return (out.reshape(target.shape) if reduction == "none" else out).to(hidden.dtype)
