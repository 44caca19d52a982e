"""The chunk loop of the fused heads as ``torch.library`` custom ops, for callers under torch.compile.

Eager calls run :class:`logitlab.fused._engine.FusedLinearLoss` (the gradients precomputed in the
forward pass, handed over and scaled in place by the backward). That Function cannot be traced:
its state is Python objects (the row kernel, the plan), and the loop reads on the host which
rows count (to leave ignored rows out of the chunks, so their number sizes the loop), Σ w_c, and
whether the incoming gradient is 1. Under ``torch.compile`` the same loop
(:func:`~logitlab.fused._engine.forward_pass`, :func:`~logitlab.fused._engine.run_chunks`) runs
inside opaque custom ops whose outputs have shapes fixed by the inputs' (the number of kept rows
stays inside the op), with fakes for tracing and an autograd formula:

* ``logitlab::fused_linear_xent`` (``linear_cross_entropy``, ``linear_cross_entropy_with_lse``)
  and ``logitlab::fused_linear_divergence`` (``linear_divergence_loss``): the loss (reduced, or
  per row for 'none') and, for 'mean' and 'sum', the gradients of hidden, weight and bias from
  the same pass; their autograd formula multiplies those by the incoming gradient, out of place
  (a compiled graph may not scale saved tensors in place).
* ``logitlab::fused_linear_xent_grads`` and ``logitlab::fused_linear_divergence_grads``: for
  'none', the backward's second pass over the chunks, each row weighted by its incoming gradient
  (the forward's arguments, then that gradient).

``impl`` is the implementation the public op resolved: "native" (the native row and matmul
kernels, CPU), "torch" (torch ops) or "triton" (the Triton row kernels). The chunk size is
resolved by the caller too, so a compiled call runs the same chunks as the eager one.

A vocabulary-sharded head (``process_group``, or a DTensor weight ``Shard(0)``) runs through the
same ops: a schema cannot carry a ProcessGroup, but it can carry its *name* (``group_name``, the
string the functional collectives take), and the op resolves the group from it when it runs. The
row kernel's all-reduces then run inside the op, as in the eager Function: the op is opaque to
the compiler, so no collective needs to be traced, and every rank runs the same chunks because
the chunk size depends on the full vocabulary, never on the local shard. ``vocab_start`` and
``vocab_total`` place the shard: given (a DTensor's metadata), the op reads nothing on the host,
and rows that do not count go through the chunks masked instead of being found and left out
(the eager call with ``validate=False`` does the same); -1 (a plain ``process_group``) makes the
op find them from every rank's shard size, a host read, as the eager call does, and then check
the target indices against the full vocabulary and leave ignored rows out. ``chunk`` 0 asks the
op for the default chunk of that full vocabulary (:func:`~logitlab.fused._engine.chunk_rows`),
when the caller could not know it.

A second derivative raises (``create_graph=True`` through the op's backward, eagerly or in a
compiled backward: :mod:`logitlab._compiled_backward`): the eager Function is
``once_differentiable`` too; ``impl="composite"`` has higher-order gradients (eagerly).
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab import _validation as v
from logitlab._compiled_backward import no_double_backward
from logitlab.fused._engine import (
    Plan,
    accumulation_dtype,
    chunk_rows,
    forward_pass,
    gradient_dtype,
    needs_wide_block,
    run_chunks,
)

__all__ = ["linear_xent", "linear_divergence", "group_name_of", "OPS"]


def _plan(chunk: int, accum_dtype: torch.dtype, softcap: float | None, impl: str, group=None,
          skip_ignored: bool = True) -> Plan:
    if impl not in ("native", "torch", "triton"):
        raise ValueError(f"logitlab fused op: impl must be 'native', 'torch' or 'triton', got {impl!r}")
    if group is not None and impl == "triton":
        raise ValueError("logitlab fused op: impl 'triton' has no process group (a sharded head runs 'torch')")
    return Plan(chunk=chunk, accum_dtype=accum_dtype, softcap=softcap, native=impl == "native",
                triton=impl == "triton", group=group, skip_ignored=skip_ignored)


def group_name_of(group) -> str | None:
    """The name of a ProcessGroup (None for None): what an op's schema can carry, and what the
    functional collectives resolve a group from (a traced call reads it at trace time)."""
    if group is None:
        return None
    import torch.distributed._functional_collectives as funcol

    return str(funcol._resolve_group_name(group))


def _shard(fn: str, group_name: str | None, weight: Tensor, target: Tensor, vocab_start: int, vocab_total: int,
           ignore_index: int, check: bool):
    """(group, vocab_start, vocab_total, skip_ignored) of a call: without a group the whole
    vocabulary; with one, the layout given, or (-1) found from every rank's shard size, then the
    indices checked against the full vocabulary when ``check``."""
    if group_name is None:
        return None, 0, weight.shape[0], True
    from torch.distributed.distributed_c10d import _resolve_process_group

    from logitlab.fused.cross_entropy import vocab_offsets

    group = _resolve_process_group(group_name)
    if vocab_total >= 0:  # a DTensor's layout: nothing read on the host
        return group, vocab_start, vocab_total, False
    start, total = vocab_offsets(weight.shape[0], group, weight.device, rows=target.numel(), fn=fn)
    if check:
        v.check_index_target(fn, "target", target, total, ignore_index=ignore_index)
    return group, start, total, True


def _chunk(chunk: int, hidden: Tensor, weight: Tensor, vocab_total: int, softcap: float | None, group,
           accum_dtype: torch.dtype, impl: str, need_weight: bool) -> int:
    """``chunk``, or for 0 the eager call's default over the full vocabulary (the same on every
    rank: the ranks must run the same number of chunks, each with its all-reduces)."""
    if chunk > 0:
        return chunk
    wide = needs_wide_block(hidden, softcap, group, native=impl == "native")
    return chunk_rows(hidden.shape[0], vocab_total, hidden.dtype, wide_block=wide, dim=hidden.shape[1],
                      sum_dtype=gradient_dtype(weight.dtype, accum_dtype) if need_weight else None)


def _filled(t: Tensor | None, like: Tensor) -> Tensor:
    """An op's output may not be None: an empty tensor stands for a gradient not computed."""
    return like.new_empty(0) if t is None else t


def _grad_fakes(hidden: Tensor, weight: Tensor, bias: Tensor | None, computed: bool, need_hidden: bool,
                need_weight: bool, need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    gh = hidden.new_empty(hidden.shape) if computed and need_hidden else hidden.new_empty(0)
    gw = weight.new_empty(weight.shape) if computed and need_weight else hidden.new_empty(0)
    gb = bias.new_empty(bias.shape) if computed and need_bias and bias is not None else hidden.new_empty(0)
    return gh, gw, gb


def _grads_out(hidden: Tensor, grads) -> tuple[Tensor, Tensor, Tensor]:
    gh, gw, gb = grads if grads is not None else (None, None, None)
    return _filled(gh, hidden), _filled(gw, hidden), _filled(gb, hidden)


# ---- linear_cross_entropy ------------------------------------------------------------------------

_XENT_ARGS = ("hidden", "weight", "bias", "target", "class_weight", "ignore_index", "label_smoothing", "z_loss",
              "softcap", "chunk", "accum_dtype", "reduction", "impl", "record", "need_hidden", "need_weight",
              "need_bias", "group_name", "vocab_start", "vocab_total")


def _xent_setup(hidden, weight, target, class_weight, ignore_index, label_smoothing, z_loss, softcap, chunk,
                accum_dtype, impl, need_weight, group_name, vocab_start, vocab_total, *, check: bool):
    """The row kernel and the plan of a call (see the module's docstring for the sharded head)."""
    from logitlab.fused.cross_entropy import build_kernel

    group, start, total, skip = _shard("linear_cross_entropy", group_name, weight, target, vocab_start, vocab_total,
                                       ignore_index, check)
    kernel = build_kernel(target, class_weight, ignore_index=ignore_index, vocab_start=start, vocab_total=total,
                          label_smoothing=label_smoothing, z_loss=z_loss,
                          dtype=accumulation_dtype(hidden.dtype, accum_dtype), group=group, sync=impl != "triton")
    chunk = _chunk(chunk, hidden, weight, total, softcap, group, accum_dtype, impl, need_weight)
    return kernel, _plan(chunk, accum_dtype, softcap, impl, group, skip)


@torch.library.custom_op("logitlab::fused_linear_xent", mutates_args=())
def _linear_xent(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, class_weight: Tensor | None,
                 ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None, chunk: int,
                 accum_dtype: torch.dtype, reduction: str, impl: str, record: bool, need_hidden: bool,
                 need_weight: bool, need_bias: bool, group_name: str | None, vocab_start: int,
                 vocab_total: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_hidden, grad_weight, grad_bias, record): the gradients of the reduced loss for
    'mean'/'sum' where asked (else empty), and with ``record`` the (2, N) per-row log-sum-exp and
    hits of :func:`~logitlab.fused.cross_entropy.linear_cross_entropy_with_lse` (else empty).
    With ``group_name`` the head is this rank's shard of the vocabulary (see the module)."""
    from logitlab.fused.cross_entropy import reduction_scale

    kernel, plan = _xent_setup(hidden, weight, target, class_weight, ignore_index, label_smoothing, z_loss, softcap,
                               chunk, accum_dtype, impl, need_weight, group_name, vocab_start, vocab_total,
                               check=True)
    sink = hidden.new_zeros(2, hidden.shape[0], dtype=accumulation_dtype(hidden.dtype, accum_dtype)) if record else None
    kernel.record = sink
    loss, grads = forward_pass(hidden, weight, bias, kernel, reduction_scale(kernel, reduction), plan,
                               need=(need_hidden, need_weight, need_bias))
    return (loss, *_grads_out(hidden, grads), _filled(sink, hidden))


@_linear_xent.register_fake
def _(hidden, weight, bias, target, class_weight, ignore_index, label_smoothing, z_loss, softcap, chunk,
      accum_dtype, reduction, impl, record, need_hidden, need_weight, need_bias, group_name, vocab_start,
      vocab_total):
    loss = hidden.new_empty(hidden.shape[0] if reduction == "none" else ())
    grads = _grad_fakes(hidden, weight, bias, reduction != "none", need_hidden, need_weight, need_bias)
    sink = (hidden.new_empty(2, hidden.shape[0], dtype=accumulation_dtype(hidden.dtype, accum_dtype)) if record
            else hidden.new_empty(0))
    return (loss, *grads, sink)


@torch.library.custom_op("logitlab::fused_linear_xent_grads", mutates_args=())
def _linear_xent_grads(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                       class_weight: Tensor | None, ignore_index: int, label_smoothing: float, z_loss: float,
                       softcap: float | None, chunk: int, accum_dtype: torch.dtype, reduction: str, impl: str,
                       record: bool, need_hidden: bool, need_weight: bool, need_bias: bool,
                       group_name: str | None, vocab_start: int, vocab_total: int,
                       grad_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of reduction 'none' (``reduction`` and ``record`` are not read), each row
    weighted by ``grad_rows`` (N,): the chunks run again, as in the eager backward."""
    kernel, plan = _xent_setup(hidden, weight, target, class_weight, ignore_index, label_smoothing, z_loss, softcap,
                               chunk, accum_dtype, impl, need_weight, group_name, vocab_start, vocab_total,
                               check=False)
    _, *grads = run_chunks(hidden, weight, bias, kernel, plan, row_scale=grad_rows,
                           need=(need_hidden, need_weight, need_bias))
    return _grads_out(hidden, grads)


@_linear_xent_grads.register_fake
def _(hidden, weight, bias, target, class_weight, ignore_index, label_smoothing, z_loss, softcap, chunk,
      accum_dtype, reduction, impl, record, need_hidden, need_weight, need_bias, group_name, vocab_start,
      vocab_total, grad_rows):
    return _grad_fakes(hidden, weight, bias, True, need_hidden, need_weight, need_bias)


# ---- linear_divergence_loss ----------------------------------------------------------------------

_DIVERGENCE_ARGS = ("hidden", "weight", "bias", "teacher_hidden", "teacher_weight", "teacher_bias", "keep", "target",
                    "divergence", "beta", "temperature", "hard_label_weight", "chunk", "accum_dtype", "reduction",
                    "impl", "need_hidden", "need_weight", "need_bias")


def _divergence_kernel(teacher_hidden, teacher_weight, teacher_bias, keep, target, divergence, beta, temperature,
                       hard_label_weight, impl):
    from logitlab.fused.divergence import DivergenceKernel

    return DivergenceKernel(teacher_hidden=teacher_hidden, teacher_weight=teacher_weight, teacher_bias=teacher_bias,
                            keep=keep, target=target, divergence=divergence, beta=beta, temperature=temperature,
                            hard_label_weight=hard_label_weight, native_matmul=impl == "native")


@torch.library.custom_op("logitlab::fused_linear_divergence", mutates_args=())
def _linear_divergence(hidden: Tensor, weight: Tensor, bias: Tensor | None, teacher_hidden: Tensor,
                       teacher_weight: Tensor, teacher_bias: Tensor | None, keep: Tensor, target: Tensor | None,
                       divergence: str, beta: float, temperature: float, hard_label_weight: float, chunk: int,
                       accum_dtype: torch.dtype, reduction: str, impl: str, need_hidden: bool, need_weight: bool,
                       need_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_hidden, grad_weight, grad_bias) of D(teacher ‖ student) rows (``keep`` (N,)
    bool: the rows that count); the gradients for 'mean'/'sum' where asked, else empty."""
    from logitlab.fused.divergence import kept_rows_scale

    kernel = _divergence_kernel(teacher_hidden, teacher_weight, teacher_bias, keep, target, divergence, beta,
                                temperature, hard_label_weight, impl)
    scale = kept_rows_scale(keep, reduction, accumulation_dtype(hidden.dtype, accum_dtype))
    loss, grads = forward_pass(hidden, weight, bias, kernel, scale, _plan(chunk, accum_dtype, None, impl),
                               need=(need_hidden, need_weight, need_bias))
    return (loss, *_grads_out(hidden, grads))


@_linear_divergence.register_fake
def _(hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, keep, target, divergence, beta, temperature,
      hard_label_weight, chunk, accum_dtype, reduction, impl, need_hidden, need_weight, need_bias):
    loss = hidden.new_empty(hidden.shape[0] if reduction == "none" else ())
    return (loss, *_grad_fakes(hidden, weight, bias, reduction != "none", need_hidden, need_weight, need_bias))


@torch.library.custom_op("logitlab::fused_linear_divergence_grads", mutates_args=())
def _linear_divergence_grads(hidden: Tensor, weight: Tensor, bias: Tensor | None, teacher_hidden: Tensor,
                             teacher_weight: Tensor, teacher_bias: Tensor | None, keep: Tensor, target: Tensor | None,
                             divergence: str, beta: float, temperature: float, hard_label_weight: float, chunk: int,
                             accum_dtype: torch.dtype, reduction: str, impl: str, need_hidden: bool,
                             need_weight: bool, need_bias: bool, grad_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of reduction 'none' (``reduction`` is not read), rows weighted by ``grad_rows``."""
    kernel = _divergence_kernel(teacher_hidden, teacher_weight, teacher_bias, keep, target, divergence, beta,
                                temperature, hard_label_weight, impl)
    _, *grads = run_chunks(hidden, weight, bias, kernel, _plan(chunk, accum_dtype, None, impl), row_scale=grad_rows,
                           need=(need_hidden, need_weight, need_bias))
    return _grads_out(hidden, grads)


@_linear_divergence_grads.register_fake
def _(hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, keep, target, divergence, beta, temperature,
      hard_label_weight, chunk, accum_dtype, reduction, impl, need_hidden, need_weight, need_bias, grad_rows):
    return _grad_fakes(hidden, weight, bias, True, need_hidden, need_weight, need_bias)


# ---- autograd: the same formula for both ---------------------------------------------------------

def _register(op, grads_op, names: tuple[str, ...], fn: str) -> None:
    """Autograd of a forward op whose first three inputs are (hidden, weight, bias), with
    ``reduction`` and the three ``need_*`` flags among its ``names``."""

    def setup_context(ctx, inputs, output):
        tensors = [i for i, x in enumerate(inputs) if isinstance(x, Tensor)]
        ctx.tensor_at = tensors
        ctx.args = [None if isinstance(x, Tensor) else x for x in inputs]
        ctx.save_for_backward(*(inputs[i] for i in tensors), output[1], output[2], output[3])

    def backward(ctx, grad_loss, *unused):
        if torch.is_grad_enabled():
            raise RuntimeError(f"{fn}(): no double backward (create_graph=True) through the chunk loop under "
                               "torch.compile; impl='composite' has higher-order gradients")
        # Traced into the compiled backward: raises there when it runs with create_graph=True.
        grad_loss = no_double_backward(grad_loss, fn, "impl='composite' has higher-order gradients, eagerly")
        saved = ctx.saved_tensors
        inputs = list(ctx.args)
        for i, t in zip(ctx.tensor_at, saved):
            inputs[i] = t
        args = dict(zip(names, inputs))
        gh, gw, gb = saved[len(ctx.tensor_at):]
        if args["reduction"] == "none":
            gh, gw, gb = grads_op(*inputs, grad_loss)
        else:
            gh, gw, gb = (g * grad_loss.to(g.dtype) if g.numel() else g for g in (gh, gw, gb))
        need = (args["need_hidden"], args["need_weight"], args["need_bias"] and args["bias"] is not None)
        grads = [g if wanted else None for g, wanted in zip((gh, gw, gb), need)]
        return (*grads, *(None,) * (len(names) - 3))

    op.register_autograd(backward, setup_context=setup_context)


_register(_linear_xent, _linear_xent_grads, _XENT_ARGS, "linear_cross_entropy")
_register(_linear_divergence, _linear_divergence_grads, _DIVERGENCE_ARGS, "linear_divergence_loss")

# name -> (forward op, backward op of reduction 'none'), for the tests' opcheck
OPS = {"fused_linear_xent": (_linear_xent, _linear_xent_grads),
       "fused_linear_divergence": (_linear_divergence, _linear_divergence_grads)}


def _needs(*tensors: Tensor | None) -> tuple[bool, ...]:
    grad = torch.is_grad_enabled()
    return tuple(grad and t is not None and t.requires_grad for t in tensors)


def linear_xent(hidden2d: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                class_weight: Tensor | None, *, ignore_index: int, label_smoothing: float, z_loss: float,
                softcap: float | None, chunk: int, accum_dtype: torch.dtype, reduction: str, impl: str,
                record: Tensor | None = None, group=None, vocab_start: int = -1, vocab_total: int = -1) -> Tensor:
    """:func:`~logitlab.fused.cross_entropy.linear_cross_entropy`'s chunk loop through the op: the
    loss (reduced, or (N,) for 'none') in hidden's dtype; ``record`` (a (2, N) sink) receives
    each row's log-sum-exp and hit. With ``group`` (a ProcessGroup), ``weight``, ``bias`` and
    ``class_weight`` are this rank's shard of the vocabulary, placed by ``vocab_start`` and
    ``vocab_total`` (-1: found by the op from every rank's shard size); ``chunk`` 0: the default."""
    loss, _, _, _, sink = _linear_xent(
        hidden2d, weight, bias, target, None if class_weight is None else class_weight.detach(), int(ignore_index),
        float(label_smoothing), float(z_loss), None if softcap is None else float(softcap), int(chunk), accum_dtype,
        reduction, impl, record is not None, *_needs(hidden2d, weight, bias), group_name_of(group),
        int(vocab_start), int(vocab_total))
    if record is not None:
        record.copy_(sink.detach())  # statistics, with no gradient (as in the eager call)
    return loss


def linear_divergence(hidden2d: Tensor, weight: Tensor, bias: Tensor | None, teacher_hidden: Tensor,
                      teacher_weight: Tensor, teacher_bias: Tensor | None, keep: Tensor, target: Tensor | None, *,
                      divergence: str, beta: float, temperature: float, hard_label_weight: float, chunk: int,
                      accum_dtype: torch.dtype, reduction: str, impl: str) -> Tensor:
    """:func:`~logitlab.fused.divergence.linear_divergence_loss`'s chunk loop through the op (the
    teacher's tensors detached: no gradient reaches them)."""
    loss, *_ = _linear_divergence(
        hidden2d, weight, bias, teacher_hidden.detach(), teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(), keep,
        target, divergence, float(beta), float(temperature), float(hard_label_weight), int(chunk), accum_dtype,
        reduction, impl, *_needs(hidden2d, weight, bias))
    return loss
