"""Losses over logits sharded by vocabulary: each rank holds a contiguous slice of the classes.

Every rank passes its (*batch, V_local) slice; row statistics (max, Σ exp, the target logit,
Σ_c z_c) are all-reduced, so every rank gets the loss of the full vocabulary and the gradient
with respect to its own slice, without ever gathering logits. Slices may be uneven; their
offsets are found from every rank's slice size when ``vocab_start`` is not given.

The logits may instead be a ``torch.distributed.tensor.DTensor`` sharded on the vocabulary
(``Shard(-1)``, as a column-parallel LM head produces them, the input of torch's
``loss_parallel``): the mesh gives the group and the shard's offset, and the loss comes back as
a DTensor replicated over the mesh (see :mod:`logitlab._dtensor`). With ``validate=False`` such
a call reads nothing back to the host (its collectives are functional ones), so
``torch.compile(fullgraph=True)`` traces it whole. Plain slices with a group trace whole too:
under ``torch.compile`` the slices' offsets come from a functional all-gather of their sizes,
kept on the device (:func:`traced_offsets`), instead of the eager call's read on the host.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
from torch import Tensor

from logitlab import _divergence_rows as divergence_rows
from logitlab import _validation as v
from logitlab import backend
from logitlab._dtensor import (
    any_dtensor,
    is_dtensor,
    refuse_plain_primary,
    replicated_local,
    replicated_output,
    sharded_local,
    vocab_layout,
)
from logitlab.fused._kernel import collective_timeout
from logitlab.fused.cross_entropy import build_kernel, check_options, vocab_offsets
from logitlab.fused.divergence import log_softmax_full, row_totals, triton_sharded_kl
from logitlab.losses._inputs import check_group, loss_rows

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_kl_divergence", "resolve_group"]


def resolve_group(group):
    """The default group when torch.distributed is initialized, else None (one process)."""
    if group is None and dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return group


def check_timeout(fn: str, timeout) -> datetime.timedelta | None:
    """None, a number of seconds > 0, or a positive datetime.timedelta, as a timedelta."""
    if timeout is None:
        return None
    seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
    v.check_positive(fn, "timeout", seconds)
    return datetime.timedelta(seconds=float(seconds))


def _offsets(fn: str, local: int, group, vocab_start, device, rows: int) -> tuple[int | Tensor, int | Tensor]:
    if group is None:
        start = 0 if vocab_start is None else int(vocab_start)
        return start, start + local
    if torch.compiler.is_compiling():  # traced: 0-d tensors, nothing read on the host
        start, total = traced_offsets(local, group, device, rows=rows, fn=fn)
        if vocab_start is not None:
            torch._assert_async(start == int(vocab_start), f"{fn}: vocab_start must be the sum of the slice sizes "
                                                           "of the lower ranks")
        return start, total
    start, total = vocab_offsets(local, group, device, rows=rows, fn=fn)
    if vocab_start is not None and int(vocab_start) != start:
        v.fail(fn, "vocab_start", f"{start} (the sum of the slice sizes of the lower ranks)", vocab_start)
    return start, total


def traced_offsets(vocab_local: int, group, device, *, rows: int, fn: str) -> tuple[Tensor, Tensor]:
    """(start of this rank's slice, full vocabulary size) as 0-d int64 tensors, for traced code.

    :func:`~logitlab.fused.cross_entropy.vocab_offsets` reads every rank's slice size on the
    host; under ``torch.compile`` the sizes come from a functional all-gather, which the
    compiler traces, and stay on the device. Every rank must pass the same number of rows: a
    mismatch fails an assertion in the graph (``torch._assert_async``, naming ``fn``) instead
    of raising the eager call's message.
    """
    import torch.distributed._functional_collectives as funcol

    mine = torch.tensor([vocab_local, rows], dtype=torch.int64, device=device)
    sizes = funcol.all_gather_tensor(mine, 0, group).reshape(-1, 2)  # (ranks, 2), in rank order
    torch._assert_async((sizes[:, 1] == rows).all(), f"{fn}: every rank of the group must pass the same number "
                                                     "of rows")
    return sizes[: dist.get_rank(group), 0].sum(), sizes[:, 0].sum()


class _PrecomputedRows(torch.autograd.Function):
    """Rows of losses whose gradient with respect to the (local) logits is already known.

    The gradient was computed in the forward, so there is no second derivative: a backward with
    ``create_graph=True`` raises, naming the loss ``fn``."""

    @staticmethod
    def forward(ctx, logits, loss, grad, scale, fn):
        ctx.grad, ctx.scale, ctx.shape, ctx.dtype, ctx.fn = grad, scale, logits.shape, logits.dtype, fn
        out = loss if scale is None else loss.sum() * scale
        return out.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():  # (compiled: a detached backward)
            raise RuntimeError(f"{ctx.fn}(): no double backward (create_graph=True): the gradient with respect "
                               "to the local logits is computed in the forward")
        grad = ctx.grad
        if ctx.scale is None:
            grad = grad * grad_out.reshape(-1, 1).to(grad.dtype)
        else:
            grad = grad * (grad_out.to(grad.dtype) * ctx.scale)
        return grad.reshape(ctx.shape).to(ctx.dtype), None, None, None, None


def vocab_parallel_cross_entropy(local_logits: Tensor, target: Tensor, *, group=None, vocab_start: int | None = None,
                                 ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                                 z_loss: float = 0.0, validate: bool | None = None,
                                 timeout: float | datetime.timedelta | None = None, impl: str = "auto") -> Tensor:
    r"""Cross-entropy over a vocabulary split across ranks, equal on every rank to the full one.

    With z the full logits (the concatenation of every rank's slice in rank order) and
    lse = log Σ_c exp z_c, each kept row's loss is
    (1 − ε)·(lse − z_t) + (ε / V)·Σ_c (lse − z_c) + z_loss·lse², V the GLOBAL vocabulary size
    (smoothing over the local slice would make the ranks disagree). The value equals
    ``cross_entropy(full_logits, target, ...)`` on every rank; the gradient with respect to
    ``local_logits`` is this rank's slice of the full gradient. Two all-reduces per call, of
    what the math needs: the row maxima (N values), then Σ exp(z − max), the target logit and,
    with smoothing, Σ_c z_c (3N values); plus an all-gather of the slice sizes without DTensors,
    read on the host (under ``torch.compile``, kept on the device: the local work then runs in
    torch ops, since the Triton kernels take the slice's offset as a number). On CUDA tensors
    (``impl='triton'``, which 'auto' picks where triton imports) the local work is two Triton
    passes over the slice: its row statistics (maximum
    and Σ exp by the online log-sum-exp, the owned target logit, Σ_c z_c) and, after the
    all-reduces, its gradient, written in the logits' dtype; ignored rows are never read. The
    'torch' path copies the slice into the compute dtype and makes five passes over it.

    DTensors: ``local_logits`` may be a DTensor of the full (*batch, V) logits sharded on the
    vocabulary (``Shard(-1)`` on one mesh dimension, ``Replicate()`` on any other), and
    ``target`` a replicated DTensor on its mesh or a plain tensor. The mesh dimension gives the
    group (``group`` may be omitted; given, it must hold the same ranks) and the shard's offset
    (torch.chunk's layout), so no collective finds them; the loss is returned as a DTensor
    replicated over the mesh, like ``F.cross_entropy`` under torch's ``loss_parallel``
    (``loss.backward()`` works on it; ``loss.to_local()`` or ``loss.full_tensor()`` is the
    plain value), and the gradient of ``local_logits`` is a DTensor with its placements. A
    DTensor sharded on another dimension raises. With ``validate=False`` nothing is read back
    to the host (no device synchronisation; ``torch.compile(fullgraph=True)`` traces the call),
    and the target indices are not checked either: one out of range selects no logit, and its
    row's loss counts a target logit of 0.

    Args:
        local_logits: (*batch, V_local) this rank's contiguous slice of the logits, or the
            (*batch, V) logits as a DTensor ``Shard(-1)``.
        target: (*batch) global class indices (or ``ignore_index``), the same on every rank.
        group: the process group (default: the world when initialized; one process otherwise;
            with a DTensor, its mesh's).
        vocab_start: the first class of this slice; found from the slice sizes when None.
        ignore_index, reduction, label_smoothing, z_loss: as in ``cross_entropy``.
        validate: check the logits for NaN and +inf (-inf excludes a class; rows whose target is
            ``ignore_index`` are not checked). Class indices are checked against the global
            vocabulary whatever it says, except on DTensors with validate=False (see above).
            None (the default): on for CPU tensors, off for CUDA ones (the checks read values
            back to the host, a synchronization a GPU step should not pay).
        timeout: seconds (or a ``datetime.timedelta``) that each collective of this call may
            wait; None leaves the group's own timeout (30 min by default for gloo). A rank that
            fails but stays alive then makes the others raise within it instead of hanging.
            (Under ``torch.compile`` the collectives are functional ones: the group's timeout.)
        impl: 'auto' | 'torch' | 'triton' (:mod:`logitlab.backend`): the local work in torch
            ops, or in the Triton kernels (CUDA tensors; the kernels are custom ops, so a
            compiled caller traces them); 'auto' picks 'triton' for CUDA tensors where triton
            imports. The collectives are the same either way.

    Returns:
        A scalar (or (*batch) for 'none') in the dtype of ``local_logits``; a DTensor
        replicated over the mesh when ``local_logits`` is a DTensor.

    Raises:
        ValueError/TypeError: bad shapes or options, ranks passing different numbers of rows
        (on every rank); a DTensor sharded on another dimension than the vocabulary, a target
        DTensor that is not replicated, a DTensor target beside plain logits, a ``group`` or
        ``vocab_start`` that disagrees with the DTensor's mesh; RuntimeError naming the
        collective when another rank fails, does not call it within ``timeout``, or the group
        times out.

    Example:
        >>> logits, target = torch.randn(4, 6), torch.tensor([0, 5, -100, 2])
        >>> loss = vocab_parallel_cross_entropy(logits, target)  # one process: the plain loss
        >>> bool(torch.allclose(loss, torch.nn.functional.cross_entropy(logits, target)))
        True

    References:
        Shoeybi et al., "Megatron-LM" (2019), vocabulary-parallel cross-entropy.
    """
    fn = "vocab_parallel_cross_entropy"
    layout = None
    if any_dtensor(local_logits, target):
        if not is_dtensor(local_logits):
            refuse_plain_primary(fn, "target", "local_logits", "group")
        layout = vocab_layout(fn, "local_logits", local_logits, -1, group=group, vocab_start=vocab_start,
                              shape="(*batch, V)")
        target = replicated_local(fn, "target", target, layout, "local_logits")
        local_logits = local_logits.to_local()
    check_options(fn, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=None,
                  chunk_size=None, impl="auto")
    validate = v.default_validate(local_logits, validate)
    group = check_group(fn, resolve_group(group)) if layout is None else layout.group
    # The indices are checked below against the full vocabulary; a slice may be empty on a rank.
    r = loss_rows(fn, local_logits, target, ignore_index=ignore_index, reduction=reduction, validate=validate,
                  kinds=("index",), name="local_logits", check_scores=True, sharded=group is not None,
                  check_indices=False)
    impl = backend.resolve(fn, impl, local_logits, native=lambda: False)
    if impl == "triton" and group is not None and layout is None and torch.compiler.is_compiling():
        impl = "torch"  # traced offsets are tensors; the Triton kernels take the slice's offset as a number
    timeout = check_timeout(fn, timeout)
    local = local_logits.shape[-1]
    flat = target.reshape(-1).long()
    if not v.has_data(local_logits, target):  # meta: the output's shape only (no collective either)
        return _output(v.meta_output(local_logits, tuple(target.shape), reduction), layout)
    with collective_timeout(timeout):
        if layout is None:
            start, total = _offsets(fn, local, group, vocab_start, local_logits.device, flat.numel())
        else:  # from the DTensor's metadata: no collective, nothing read on the host
            start, total = layout.start, layout.total
        # An index out of range selects no logit of any shard (the kernel reads no memory with
        # it), so a DTensor call with validate=False skips this read on the host.
        if layout is None or validate:
            v.check_index_target(fn, "target", flat, total, ignore_index=ignore_index)
        acc = v.compute_dtype(local_logits)
        kernel = build_kernel(flat, None, ignore_index=ignore_index, vocab_start=start, vocab_total=total,
                              label_smoothing=label_smoothing, z_loss=z_loss, dtype=acc, group=group)
        rows = r.rows.detach()
        if impl == "triton":  # two Triton passes over the slice; ignored rows are not read
            loss, grad = kernel.triton_sharded(rows, need_grad=local_logits.requires_grad)
        else:
            z = rows.to(acc, copy=True).masked_fill_((flat == ignore_index).unsqueeze(1), 0.0)  # padding: anything
            loss, grad = kernel(z, 0, flat.numel(), need_grad=local_logits.requires_grad)
    out = _PrecomputedRows.apply(local_logits, loss, grad, r.total_scale(acc), fn)
    return _output(out.reshape(target.shape) if reduction == "none" else out, layout)


def _output(out: Tensor, layout) -> Tensor:
    """The loss as computed (plain arguments), or replicated over the mesh (DTensor arguments)."""
    return out if layout is None else replicated_output(out, layout)


def vocab_parallel_kl_divergence(local_logits: Tensor, local_teacher_logits: Tensor, *, group=None,
                                 temperature: float = 1.0, reduction: str = "mean", validate: bool | None = None,
                                 timeout: float | datetime.timedelta | None = None, impl: str = "auto") -> Tensor:
    r"""D(p ‖ q) with p = softmax(teacher / T), q = softmax(student / T) over a sharded vocabulary.

    D(p ‖ q) = Σ_c p_c (log p_c − log q_c), with the conventions of the KL row function of
    :mod:`logitlab._divergence_rows` (0 · log 0 = 0; +inf where some p_c > 0 has q_c = 0, e.g. a
    −inf student logit). The teacher is constant (no gradient); the gradient with respect to
    this rank's student slice is (q − p) / T on it. 'mean' averages over rows (the 'batchmean'
    of ``kl_div``).

    Collectives per call: on the 'torch' path both log-softmaxes over the full vocabulary (the
    ranks' log-sum-exps combined in two all-reduces) and that row function with its sums
    all-reduced in a third. On CUDA tensors (``impl='triton'``, which 'auto' picks where triton
    imports) the local work is two Triton passes over both slices, and two all-reduces, of what
    the math needs: the row maxima of z / T and u / T (2N values), then Σ e^{z/T − max},
    Σ e^{u/T − max}, Σ e^{u/T − max}·(u − z) / T and the count of classes with q = 0 < p (4N
    values); D = Σ p (u − z) / T − lse(u / T) + lse(z / T). Without DTensors, an all-gather of
    the ranks' row counts, read on the host, comes first (a mismatch raises on every rank) on the
    'torch' path, and on the Triton path with ``validate=True``: with ``validate=False`` the
    Triton path reads nothing back to the host (no device synchronisation), and ranks passing
    different numbers of rows fail in the all-reduces instead.

    DTensors as in :func:`vocab_parallel_cross_entropy`: ``local_logits`` a DTensor
    ``Shard(-1)``, ``local_teacher_logits`` a DTensor with the same placements or a plain
    tensor holding this rank's slice; the loss comes back replicated over the mesh, and with
    ``validate=False`` nothing is read back to the host.

    Args:
        local_logits: (*batch, V_local) student logits, this rank's slice (or a DTensor
            ``Shard(-1)`` of the (*batch, V) logits).
        local_teacher_logits: (*batch, V_local) teacher logits, the same slice (or a DTensor
            sharded like ``local_logits``).
        group: the process group (default: the world when initialized; with a DTensor, its
            mesh's).
        temperature: T > 0.
        reduction: 'none' | 'mean' | 'sum'.
        validate: check both slices for NaN and +inf (-inf excludes a class), and (with a group
            and plain tensors) that every rank passes the same number of rows. None (the
            default): on for CPU tensors, off for CUDA ones, as in
            :func:`vocab_parallel_cross_entropy`.
        timeout: as in :func:`vocab_parallel_cross_entropy`.
        impl: 'auto' | 'torch' | 'triton', as in :func:`vocab_parallel_cross_entropy`.

    Returns:
        A scalar (or (*batch)) in the dtype of ``local_logits``; a replicated DTensor for
        DTensor logits.

    Raises:
        ValueError/TypeError: bad shapes or options, NaN/+inf logits, ranks passing different
        numbers of rows (on every rank; see ``validate``), DTensors placed otherwise than above;
        RuntimeError naming the collective as above, or for a double backward
        (``create_graph=True``: the gradient is computed in the forward).

    Example:
        >>> z, u = torch.randn(3, 5), torch.randn(3, 5)
        >>> kl = vocab_parallel_kl_divergence(z, u)
        >>> p = torch.softmax(u, -1)
        >>> bool(torch.allclose(kl, (p * (p.log() - torch.log_softmax(z, -1))).sum(-1).mean()))
        True
    """
    fn = "vocab_parallel_kl_divergence"
    layout = None
    if any_dtensor(local_logits, local_teacher_logits):
        if not is_dtensor(local_logits):
            refuse_plain_primary(fn, "local_teacher_logits", "local_logits", "group")
        layout = vocab_layout(fn, "local_logits", local_logits, -1, group=group, shape="(*batch, V)")
        local_teacher_logits = sharded_local(fn, "local_teacher_logits", local_teacher_logits, layout, local_logits,
                                             "local_logits", -1)
        local_logits = local_logits.to_local()
    group = check_group(fn, resolve_group(group)) if layout is None else layout.group
    v.check_floating(fn, "local_logits", local_logits)
    validate = v.default_validate(local_logits, validate)
    impl = backend.resolve(fn, impl, local_logits, native=lambda: False)
    # The torch path takes both slices divided by T in the compute dtype; the Triton kernels read
    # them as given (and divide as they load). A slice may be empty on a rank.
    r = loss_rows(fn, local_logits, local_teacher_logits, temperature=temperature, reduction=reduction,
                  validate=validate, kinds=("logits",), name="local_logits", target_name="local_teacher_logits",
                  dense=impl == "torch", check_scores=True, sharded=group is not None)
    if not v.has_data(local_logits, local_teacher_logits):
        return _output(v.meta_output(local_logits, r.batch_shape, reduction), layout)
    timeout = check_timeout(fn, timeout)
    local = r.rows.shape[1]
    z, u = r.rows.detach(), r.target.detach()
    rows = z.shape[0]
    with collective_timeout(timeout):
        if group is not None and layout is None and (validate or impl == "torch"):  # the same rows everywhere,
            # or the all-reduces below mismatch (a DTensor's shape says so); traced, an assertion in the graph
            (traced_offsets if torch.compiler.is_compiling() else vocab_offsets)(local, group, z.device, rows=rows,
                                                                                  fn=fn)
        if impl == "triton":  # two Triton passes over the slices (as given), two all-reduces
            loss, grad = triton_sharded_kl(z, u, temperature=r.temperature, group=group,
                                           need_grad=local_logits.requires_grad)
        else:  # (the rows come divided by T in the compute dtype)
            log_q, log_p = log_softmax_full([z, u], group)  # over the full vocabulary
            total, _ = row_totals(group)
            loss, grad = divergence_rows.kl(log_p.exp(), log_p, log_q.exp(), log_q, total=total, grad=True)
            grad = grad.div_(r.temperature)
    out = _PrecomputedRows.apply(local_logits, loss, grad, r.total_scale(loss.dtype), fn)
    return _output(out.reshape(r.batch_shape) if reduction == "none" else out, layout)
