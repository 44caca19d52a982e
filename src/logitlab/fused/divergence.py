"""linear_divergence_loss: distillation between two linear heads, chunk by chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from logitlab import _divergence_rows as divergence_rows
from logitlab import _validation as v
from logitlab import backend
from logitlab._reduction import reduction_scale
from logitlab.fused._engine import FusedLinearLoss, Plan, accumulation_dtype, chunk_rows, gpu_chunk_rows
from logitlab.fused._kernel import all_reduce, all_reduce_online, triton_row_scale
from logitlab.fused._matmul import logits_into, matmul_scratch
from logitlab.fused._ops import linear_divergence as compiled_linear_divergence
from logitlab.fused.cross_entropy import choose_impl, vocab_offsets
from logitlab.losses._inputs import check_group, check_head, check_head_values, loss_rows

__all__ = ["linear_divergence_loss", "DIVERGENCES", "log_softmax_full", "row_totals", "triton_sharded_kl"]

DIVERGENCES = ("kl", "reverse_kl", "js")


def log_softmax_full(blocks: list[Tensor], group) -> list[Tensor]:
    """Log-softmax over the FULL vocabulary of each (rows, V_local) block of this rank's columns.

    Each rank's log-sum-exp ℓ_r over its own columns (read off its local log-softmax at the row
    maximum, where that is accurate) is combined as lse = M + log Σ_r exp(ℓ_r − M), M = max_r ℓ_r:
    two all-reduces of (blocks, rows) statistics whatever the number of blocks, the maxima
    (MAX) then the sums (SUM). The local log-softmax is then shifted by ℓ_r − lse. Without a
    group this is torch's log_softmax (differentiable: the naive path runs through autograd).
    Nothing is read on the host (``torch.compile`` traces it with functional collectives).
    """
    log_probs = [torch.log_softmax(b, 1) for b in blocks]
    if group is None:
        return log_probs
    rows, local = blocks[0].shape
    if local:
        own = []
        for b, lp in zip(blocks, log_probs):
            peak, at = b.max(1, keepdim=True)  # a row of only -inf here: ℓ_r = -inf (its lp is NaN)
            own.append(torch.where(torch.isneginf(peak), peak, peak - lp.gather(1, at)).squeeze(1))
        own = torch.stack(own)
    else:
        own = blocks[0].new_full((len(blocks), rows), -math.inf)
    peaks = all_reduce(own.clone(), "max", group)
    peaks = torch.where(torch.isfinite(peaks), peaks, peaks.new_zeros(()))
    lse = peaks + all_reduce((own - peaks).exp(), "sum", group).log()
    empty = torch.isneginf(own)  # rows whose columns on this rank are all -inf: log-probability -inf
    for lp, shift, none_here in zip(log_probs, lse - own, empty):
        lp.sub_(shift.unsqueeze(1))
        lp.masked_fill_(none_here.unsqueeze(1), -math.inf)
    return log_probs


def row_totals(group, extra: Tensor | None = None):
    """The ``total`` of the divergence row functions over a vocabulary split across ``group``.

    The (rows, V_local) terms are summed over this rank's columns and all-reduced in one
    collective; the (rows,) tensor ``extra``, when given, rides on the first one. Returns
    ``(total, reduced)``: ``reduced()`` is the all-reduced ``extra`` (None without it).
    """
    parts = [] if extra is None else [extra]
    reduced: list[Tensor] = []

    def total(*terms: Tensor) -> tuple[Tensor, ...]:
        out = all_reduce(torch.stack([*(t.sum(1) for t in terms), *parts]), "sum", group)
        if parts:
            reduced.append(out[-1])
            parts.clear()
        return tuple(out[:len(terms)])

    return total, lambda: reduced[0] if reduced else None


def triton_sharded_kl(student: Tensor, teacher: Tensor, *, temperature: float, group,
                      need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Rows of D(p ‖ q), p = softmax(u / T), q = softmax(z / T) over the full vocabulary, from this
    rank's (N, V_local) slices ``student`` (z) and ``teacher`` (u), through the Triton kernels of
    ``logitlab/_triton/sharded.py``; and with ``need_grad`` the gradient (q − p) / T of the slice.

    One pass over both slices for their row statistics, two all-reduces (the maxima of z / T and
    u / T, (2, N); then Σ e^{s − M_s}, Σ e^{t − M_t}, Σ e^{t − M_t} (t − s) and the count of
    classes with t > −inf = s, (4, N)), one pass for the gradient, written in z's dtype. The
    values follow ``_divergence_rows.kl``: +inf where some p > 0 meets q = 0 (the gradient stays
    q − p), and 0 where the teacher's row is all −inf. Nothing is read on the host.
    """
    from logitlab._triton.sharded import kl_shard_grad, kl_shard_stats

    stats = kl_shard_stats(student, teacher, temperature=temperature)
    peak, (sum_s, sum_t, gap), (n_infinite,) = all_reduce_online(stats[:2], stats[2:5], (0, 1, 1), stats[5:],
                                                                 group)
    # Σ p (t − s) − lse(t) + lse(s), with lse(s) − lse(t) = M_s − M_t + log(S_s / S_t): no cancellation
    value = gap / sum_t + (peak[0] - peak[1]) + torch.log(sum_s / sum_t)
    value = torch.where(n_infinite > 0, torch.full_like(value, math.inf), value)
    value = torch.where(sum_t > 0, value, torch.zeros_like(value))  # a teacher row without mass
    if not need_grad:
        return value, None
    lse = peak + torch.stack([sum_s, sum_t]).log()
    return value, kl_shard_grad(student, teacher, lse, temperature=temperature)


def _divergence_rows(log_p: Tensor, log_q: Tensor, divergence: str, beta: float, group=None,
                     need_grad: bool = True, extra: Tensor | None = None):
    """Per-row D between teacher p and student q, given as log-probabilities (rows along dim 1).

    The row function of the divergence (:data:`logitlab._divergence_rows.DIVERGENCES`) gives
    the value and the gradient; the columns may be this rank's slice of the vocabulary
    (log-probabilities normalized over the full one): its sums over the columns are then
    all-reduced over ``group``, in one all-reduce that also sums the (rows,) tensor ``extra``.

    Returns (value of the full rows, gradient with respect to s = z / T on these columns or None
    without ``need_grad``, the reduced ``extra`` or None).
    """
    total, reduced = row_totals(group, None if extra is None else extra.reshape(log_q.shape[0]))
    record = divergence_rows.DIVERGENCES[divergence]
    row = record(log_p.exp(), log_p, log_q.exp(), log_q, beta if record.param == "beta" else None,
                 total=total, grad=need_grad)
    return row.value, row.grad, reduced()


@dataclass
class DivergenceKernel:
    """Rows of D(teacher ‖ student) at temperature T (+ α·cross-entropy on hard labels).

    With a ``group``, both heads hold this rank's columns [vocab_start, vocab_start + V_local)
    of the vocabulary, and per chunk three all-reduces of (rows,)-sized statistics give every
    rank the rows of the full vocabulary: the maxima of the ranks' log-sum-exps of z / T, u / T
    (and of z when T ≠ 1 and the hard-label term is on), then their sums of exponentials, then
    the divergence's own sums over the columns with the target's −log-probability.
    """

    teacher_hidden: Tensor   # (N, D_t)
    teacher_weight: Tensor   # (V_local, D_t)
    teacher_bias: Tensor | None
    keep: Tensor             # (N,) bool
    target: Tensor | None    # (N,) global class indices, or None
    divergence: str
    beta: float
    temperature: float
    hard_label_weight: float
    vocab_start: int = 0
    group: object = None
    rows: Tensor | None = None  # row r of this kernel is row rows[r] of teacher_hidden (None: r)
    native_matmul: bool = False  # impl "native": the teacher's logits through the native matmul kernels

    def take(self, index: Tensor) -> DivergenceKernel:
        """The same kernel over rows ``index`` of this one, in that order (teacher rows gathered
        a chunk at a time)."""
        return replace(self, keep=self.keep[index], target=None if self.target is None else self.target[index],
                       rows=index if self.rows is None else self.rows[index])

    def _teacher_rows(self, start: int, stop: int) -> Tensor:
        return (self.teacher_hidden[start:stop] if self.rows is None
                else self.teacher_hidden.index_select(0, self.rows[start:stop]))

    def triton(self, z: Tensor, start: int, stop: int, need_grad: bool, row_scale, *, bias: Tensor | None = None,
               softcap: float | None = None):
        """The same rows through the Triton row kernel (``logitlab/_triton/divergence.py``).

        ``z`` is the student's block of raw logits (without the bias) in the input's dtype; the
        teacher's block comes from one matmul in its own dtype; the kernel adds the biases and
        overwrites ``z`` with the gradient times ``row_scale``, in one launch. Full vocabulary
        only (no process group); reads nothing on the host.
        """
        from logitlab._triton.divergence import divergence_rows

        if self.group is not None or softcap is not None:
            raise RuntimeError("DivergenceKernel.triton: no process group or softcap on the Triton path")
        keep = self.keep[start:stop]
        teacher = torch.mm(self._teacher_rows(start, stop), self.teacher_weight.t())
        losses = divergence_rows(
            z, teacher, keep, triton_row_scale(keep, row_scale, start, stop, z.dtype), divergence=self.divergence,
            beta=self.beta, temperature=self.temperature, hard_label_weight=self.hard_label_weight,
            target=None if self.target is None else self.target[start:stop] - self.vocab_start, bias=bias,
            teacher_bias=self.teacher_bias, want_grad=need_grad)
        return losses, (z if need_grad else None)

    def __call__(self, z: Tensor, start: int, stop: int, need_grad: bool):
        keep = self.keep[start:stop]
        t, alpha, group = self.temperature, self.hard_label_weight, self.group
        rows, local = z.shape
        th = self._teacher_rows(start, stop)
        if th.dtype == z.dtype:  # the student block's own arrangement (native kernel or class-major tiles)
            teacher = logits_into(torch.empty_like(z), th, self.teacher_weight, None,
                                  matmul_scratch(rows, local, th.shape[1], th.dtype, th.device,
                                                 native=self.native_matmul), native=self.native_matmul)
        else:
            teacher = (th @ self.teacher_weight.t()).to(z.dtype)
        if self.teacher_bias is not None:
            teacher.add_(self.teacher_bias.to(z.dtype))
        u = teacher.div_(t) if t != 1 else teacher
        s = z / t if t != 1 else z
        blocks = [s, u] + ([z] if alpha and t != 1 else [])  # the hard-label term is at T = 1
        log_q, log_p, *log_softmax_z = log_softmax_full(blocks, group)
        nll = None  # − log softmax(z)_target, from the rank that owns the target's column
        if alpha:
            log_probs = log_softmax_z[0] if t != 1 else log_q
            index = self.target[start:stop] - self.vocab_start
            owned = keep & (index >= 0) & (index < local)
            index = torch.where(owned, index, torch.zeros_like(index)).unsqueeze(1)
            nll = log_probs.new_zeros(rows)
            if local:
                nll = torch.where(owned, -log_probs.gather(1, index).squeeze(1), nll)
        loss, grad, nll = _divergence_rows(log_p, log_q, self.divergence, self.beta, group, need_grad, extra=nll)
        if alpha:
            loss = loss + alpha * nll
        loss = torch.where(keep, loss, loss.new_zeros(()))
        if not need_grad:
            return loss, None
        grad.div_(t)
        if alpha:  # + α (softmax(z) − onehot(target)) on these columns
            grad.add_(log_probs.exp_().mul_(alpha))  # softmax(z); log_probs is spent
            if local:
                hit = torch.where(owned, grad.new_full((), -alpha), grad.new_zeros(()))
                grad.scatter_add_(1, index, hit.unsqueeze(1))
        return loss, grad.masked_fill_(~keep.unsqueeze(1), 0.0)


def linear_divergence_loss(hidden: Tensor, weight: Tensor, *, teacher_hidden: Tensor, teacher_weight: Tensor,
                           divergence: str = "kl", beta: float = 0.5, temperature: float = 1.0,
                           target: Tensor | None = None, hard_label_weight: float = 0.0,
                           bias: Tensor | None = None, teacher_bias: Tensor | None = None,
                           ignore_index: int = -100, reduction: str = "mean", chunk_size: int | None = None,
                           impl: str = "auto", accum_dtype: torch.dtype = torch.float32,
                           process_group=None, validate: bool | None = None) -> Tensor:
    r"""Distillation loss between a student head and a frozen teacher head, logits never materialized.

    With student logits z = hidden @ weight.T + bias, teacher logits u = teacher_hidden @
    teacher_weight.T + teacher_bias, q = softmax(z / T) and p = softmax(u / T), each row's loss is

    * ``"kl"``: D(p ‖ q) = Σ p (log p − log q)  (forward KL, mean-seeking);
    * ``"reverse_kl"``: D(q ‖ p) = Σ q (log q − log p)  (mode-seeking);
    * ``"js"``: JS_β = β·D(p ‖ m) + (1 − β)·D(q ‖ m), m = β p + (1 − β) q  (β = 0.5: Jensen–Shannon),

    plus ``hard_label_weight``·cross_entropy(z, target) when ``target`` is given. No T² factor is
    applied (multiply by it yourself to follow Hinton et al.). Equivalent to computing both logit
    matrices and the divergence row by row; here only a chunk of rows of each exists at a time.
    Gradients flow to the student (hidden, weight, bias) only; the teacher is treated as
    constant. Rows whose target is ``ignore_index`` count in neither term (and cost no matmul).

    With ``process_group``, ``weight`` and ``teacher_weight`` (and ``bias``, ``teacher_bias``)
    are this rank's contiguous rows of the vocabulary, in rank order (shards may be uneven);
    ``hidden``, ``teacher_hidden`` and ``target`` (global class indices) are the same on every
    rank. Per chunk of rows, only (rows,)-sized statistics cross the group: the maxima of the
    ranks' log-sum-exps of z / T and u / T, their sums of exponentials, then the divergence's
    sums over each rank's columns (with −log softmax(z)_target from the rank that owns the
    target); logits and weights are never gathered. Every rank gets the
    loss of the full vocabulary, the same grad_hidden (summed over the ranks), and for its
    shard the matching rows of the full grad_weight and grad_bias.

    Under ``torch.compile`` without a process group the chunk loop runs inside a custom op
    (``logitlab::fused_linear_divergence``, :mod:`logitlab.fused._ops`), with every impl: no
    graph break, and the 'mean' factor (1 / the number of kept rows) stays on the device.

    Args:
        hidden: (*batch, D) student features. weight: (V, D) student head. bias: (V,) optional.
        teacher_hidden: (*batch, D_t). teacher_weight: (V, D_t). teacher_bias: (V,) optional.
            (With ``process_group``, V is V_local, this rank's number of vocabulary rows.)
        divergence: 'kl' | 'reverse_kl' | 'js'.
        beta: β in (0, 1) of the generalized JS divergence (used by 'js' only; at β = 0 or 1
            JS_β is 0 for every pair, so they are refused, as by ``divergence_loss``).
        temperature: T > 0 applied to both heads' logits.
        target: (*batch) class indices (or ``ignore_index``), optional.
        hard_label_weight: α >= 0, weight of the cross-entropy term (needs ``target``).
        reduction: 'none' | 'mean' (over kept rows) | 'sum'.
        chunk_size, impl, accum_dtype: as in :func:`linear_cross_entropy`.
        process_group: a torch.distributed group over which both heads are sharded by
            vocabulary rows, or None (one process holds the whole vocabulary). With a group,
            ``impl="composite"`` also runs chunked (autograd cannot differentiate an all-reduce).
            "native" runs the matmuls of the chunks in the native kernels where the CPU has them
            (the divergence's rows are torch ops either way). "triton" (CUDA tensors; CPU tensors
            only under Triton's interpreter; no process group) runs each chunk's rows in one
            Triton launch on the cuBLAS blocks of both heads (the student's turned into its
            gradient in place), its chunk :func:`logitlab.fused._engine.gpu_chunk_rows`, reading
            on the host only which rows are kept (to leave ignored rows out); "auto" picks it
            for CUDA tensors where triton imports.
        validate: check that the rows that count of ``hidden`` and ``teacher_hidden``, and the
            heads and biases, hold no NaN or inf (rows whose target is ``ignore_index`` may
            hold anything). ``None`` (the default): True except for CUDA tensors (the checks read
            values on the host). Class indices are checked whatever it says, except by
            impl='triton' with the checks off, whose kernel reads nothing for an index outside
            [0, V) and gives that row a NaN loss.

    Returns:
        A scalar (or (*batch) for 'none') in the dtype of ``hidden``, the same on every rank.

    Raises:
        ValueError/TypeError: shapes that do not fit, bad options, indices out of range (of the
        full vocabulary); RuntimeError naming the collective when another rank fails.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> h, w, th, tw = torch.randn(5, 3), torch.randn(8, 3), torch.randn(5, 4), torch.randn(8, 4)
        >>> loss = linear_divergence_loss(h, w, teacher_hidden=th, teacher_weight=tw, chunk_size=2)
        >>> p, log_q = torch.softmax(th @ tw.T, 1), torch.log_softmax(h @ w.T, 1)
        >>> bool(torch.allclose(loss, (p * (p.log() - log_q)).sum(1).mean()))
        True

    References:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015);
        Agarwal et al., "On-Policy Distillation of Language Models" (2024) for JS_β.
    """
    fn = "linear_divergence_loss"
    check_head(fn, hidden, weight, bias)
    v.check_floating(fn, "teacher_hidden", teacher_hidden)
    v.check_floating(fn, "teacher_weight", teacher_weight)
    if tuple(teacher_hidden.shape[:-1]) != tuple(hidden.shape[:-1]):
        v.fail(fn, "teacher_hidden", f"batch shape {tuple(hidden.shape[:-1])} (hidden.shape[:-1])",
               f"<shape {tuple(teacher_hidden.shape)}>")
    if teacher_weight.ndim != 2 or tuple(teacher_weight.shape) != (weight.shape[0], teacher_hidden.shape[-1]):
        v.fail(fn, "teacher_weight", f"shape ({weight.shape[0]}, {teacher_hidden.shape[-1]})",
               f"<shape {tuple(teacher_weight.shape)}>")
    if teacher_bias is not None and tuple(teacher_bias.shape) != (weight.shape[0],):
        v.fail(fn, "teacher_bias", f"shape ({weight.shape[0]},)", f"<shape {tuple(teacher_bias.shape)}>")
    v.check_same_device(fn, "hidden", hidden, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                        teacher_bias=teacher_bias)
    v.check_choice(fn, "divergence", divergence, DIVERGENCES)
    if divergence == "js":
        if not 0.0 < v.check_range(fn, "beta", beta, 0.0, 1.0) < 1.0:
            v.fail(fn, "beta", "a number in (0, 1) for divergence='js'", float(beta),
                   detail="JS_β is 0 for every pair at β = 0 or 1; use divergence='kl' or 'reverse_kl'")
    v.check_float_dtype(fn, "accum_dtype", accum_dtype)
    process_group = check_group(fn, process_group)
    v.check_positive(fn, "temperature", temperature)
    v.check_range(fn, "hard_label_weight", hard_label_weight, 0.0, float("inf"))
    v.check_reduction(fn, reduction)
    backend.check_impl(fn, impl, warn=False)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        v.fail(fn, "chunk_size", "None or an int >= 1", chunk_size)
    vocab_start, vocab = 0, weight.shape[0]
    if process_group is not None:
        vocab_start, vocab = vocab_offsets(weight.shape[0], process_group, weight.device,
                                           rows=hidden.numel() // max(hidden.shape[-1], 1), fn=fn)
    rows = hidden.numel() // max(hidden.shape[-1], 1)
    validate = v.default_validate(hidden, validate)
    mode = choose_impl(fn, impl, hidden, rows, vocab, chunk_size, process_group)
    if target is None and hard_label_weight:
        v.fail(fn, "target", "class indices when hard_label_weight > 0", None)
    r = loss_rows(fn, hidden, target, name="hidden", head=weight, n_classes=vocab, ignore_index=ignore_index,
                  reduction=reduction, validate=validate, kinds=("index",), target_optional=True,
                  check_indices=validate or mode != "triton")  # the Triton kernel reads nothing for a bad index
    flat_target, keep = None if target is None else target.reshape(-1).long(), r.keep
    if not v.has_data(hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, target):
        return v.meta_output(hidden, tuple(hidden.shape[:-1]), reduction)
    if validate:
        check_head_values(fn, hidden.reshape(rows, hidden.shape[-1]), keep, weight=weight, bias=bias,
                          teacher_weight=teacher_weight, teacher_bias=teacher_bias)
        check_head_values(fn, teacher_hidden.reshape(rows, teacher_hidden.shape[-1]), keep)

    kernel = DivergenceKernel(
        teacher_hidden=teacher_hidden.detach().reshape(rows, teacher_hidden.shape[-1]),
        teacher_weight=teacher_weight.detach(),
        teacher_bias=None if teacher_bias is None else teacher_bias.detach(), keep=keep, target=flat_target,
        divergence=divergence, beta=float(beta), temperature=float(temperature),
        hard_label_weight=float(hard_label_weight), vocab_start=vocab_start, group=process_group)
    scale = r.total_scale(accumulation_dtype(hidden.dtype, accum_dtype))
    hidden2d = hidden.reshape(rows, hidden.shape[-1])

    kernel = replace(kernel, native_matmul=mode == "native")
    if mode == "composite" and process_group is None:
        acc = accumulation_dtype(hidden.dtype, accum_dtype)
        # Rows that do not count are zeroed: a NaN there (padding) would reach grad_weight as 0 · NaN.
        hidden2d = torch.where(keep.unsqueeze(1), hidden2d, hidden2d.new_zeros(()))
        kernel = replace(kernel, teacher_hidden=torch.where(keep.unsqueeze(1), kernel.teacher_hidden,
                                                            kernel.teacher_hidden.new_zeros(())))
        z = torch.nn.functional.linear(hidden2d, weight, bias).to(acc)
        row_losses, _ = kernel(z, 0, rows, need_grad=False)
        out = row_losses if scale is None else row_losses.sum() * scale
        return (out.reshape(target.shape if target is not None else hidden.shape[:-1]) if scale is None
                else out).to(hidden.dtype)

    # The chunk depends only on what every rank shares (rows, full vocabulary): the ranks must
    # run the same number of chunks, since each chunk's statistics are all-reduced.
    triton = mode == "triton"
    default_chunk = gpu_chunk_rows(rows, vocab) if triton else chunk_rows(rows, vocab, hidden.dtype)
    if torch.compiler.is_compiling() and process_group is None:  # the chunk loop inside a custom op
        out = compiled_linear_divergence(
            hidden2d, weight, bias, kernel.teacher_hidden, kernel.teacher_weight, kernel.teacher_bias, keep,
            flat_target, divergence=divergence, beta=beta, temperature=temperature,
            hard_label_weight=hard_label_weight, chunk=chunk_size or default_chunk, accum_dtype=accum_dtype,
            reduction=reduction, impl=mode)
    else:
        plan = Plan(chunk=chunk_size or default_chunk, accum_dtype=accum_dtype, group=process_group,
                    native=mode == "native", triton=triton)
        out = FusedLinearLoss.apply(hidden2d, weight, bias, kernel, scale, plan)
    return out.reshape(hidden.shape[:-1]) if reduction == "none" else out


def kept_rows_scale(keep: Tensor, reduction: str, dtype: torch.dtype) -> Tensor | float | None:
    """The factor of the reduction: None for 'none', 1 for 'sum', and for 'mean' 1 / (number of
    kept rows), 0 when none is kept, as a 0-d tensor of ``dtype`` (the loop's accumulation dtype):
    never read on the host, so nothing waits for the device and ``torch.compile`` traces it."""
    return reduction_scale(reduction, keep.sum().to(dtype))  # as LossRows.total_scale
