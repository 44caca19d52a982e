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
resolved by the caller too, so a compiled call runs the same chunks as the eager one. Without a
process group only: the collectives of a sharded head take a group object, which an operator's
schema cannot carry (such a call runs :class:`FusedLinearLoss`, and Dynamo breaks the graph there).

A second derivative raises (``create_graph=True`` through the op's backward): the eager Function
is ``once_differentiable`` too; ``impl="composite"`` has higher-order gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab.fused._engine import Plan, accumulation_dtype, forward_pass, run_chunks

__all__ = ["linear_xent", "linear_divergence", "OPS"]


def _plan(chunk: int, accum_dtype: torch.dtype, softcap: float | None, impl: str) -> Plan:
    if impl not in ("native", "torch", "triton"):
        raise ValueError(f"logitlab fused op: impl must be 'native', 'torch' or 'triton', got {impl!r}")
    return Plan(chunk=chunk, accum_dtype=accum_dtype, softcap=softcap, native=impl == "native",
                triton=impl == "triton")


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
              "need_bias")


def _xent_kernel(target, class_weight, weight, hidden, ignore_index, label_smoothing, z_loss, accum_dtype, impl):
    from logitlab.fused.cross_entropy import build_kernel

    return build_kernel(target, class_weight, ignore_index=ignore_index, vocab_start=0, vocab_total=weight.shape[0],
                        label_smoothing=label_smoothing, z_loss=z_loss,
                        dtype=accumulation_dtype(hidden.dtype, accum_dtype), sync=impl != "triton")


@torch.library.custom_op("logitlab::fused_linear_xent", mutates_args=())
def _linear_xent(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, class_weight: Tensor | None,
                 ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None, chunk: int,
                 accum_dtype: torch.dtype, reduction: str, impl: str, record: bool, need_hidden: bool,
                 need_weight: bool, need_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_hidden, grad_weight, grad_bias, record): the gradients of the reduced loss for
    'mean'/'sum' where asked (else empty), and with ``record`` the (2, N) per-row log-sum-exp and
    hits of :func:`~logitlab.fused.cross_entropy.linear_cross_entropy_with_lse` (else empty)."""
    from logitlab.fused.cross_entropy import reduction_scale

    kernel = _xent_kernel(target, class_weight, weight, hidden, ignore_index, label_smoothing, z_loss, accum_dtype,
                          impl)
    sink = hidden.new_zeros(2, hidden.shape[0], dtype=accumulation_dtype(hidden.dtype, accum_dtype)) if record else None
    kernel.record = sink
    loss, grads = forward_pass(hidden, weight, bias, kernel, reduction_scale(kernel, reduction),
                               _plan(chunk, accum_dtype, softcap, impl), need=(need_hidden, need_weight, need_bias))
    return (loss, *_grads_out(hidden, grads), _filled(sink, hidden))


@_linear_xent.register_fake
def _(hidden, weight, bias, target, class_weight, ignore_index, label_smoothing, z_loss, softcap, chunk,
      accum_dtype, reduction, impl, record, need_hidden, need_weight, need_bias):
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
                       grad_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of reduction 'none' (``reduction`` and ``record`` are not read), each row
    weighted by ``grad_rows`` (N,): the chunks run again, as in the eager backward."""
    kernel = _xent_kernel(target, class_weight, weight, hidden, ignore_index, label_smoothing, z_loss, accum_dtype,
                          impl)
    _, *grads = run_chunks(hidden, weight, bias, kernel, _plan(chunk, accum_dtype, softcap, impl), row_scale=grad_rows,
                           need=(need_hidden, need_weight, need_bias))
    return _grads_out(hidden, grads)


@_linear_xent_grads.register_fake
def _(hidden, weight, bias, target, class_weight, ignore_index, label_smoothing, z_loss, softcap, chunk,
      accum_dtype, reduction, impl, record, need_hidden, need_weight, need_bias, grad_rows):
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
                record: Tensor | None = None) -> Tensor:
    """:func:`~logitlab.fused.cross_entropy.linear_cross_entropy`'s chunk loop through the op: the
    loss (reduced, or (N,) for 'none') in hidden's dtype; ``record`` (a (2, N) sink) receives
    each row's log-sum-exp and hit."""
    loss, _, _, _, sink = _linear_xent(
        hidden2d, weight, bias, target, None if class_weight is None else class_weight.detach(), int(ignore_index),
        float(label_smoothing), float(z_loss), None if softcap is None else float(softcap), int(chunk), accum_dtype,
        reduction, impl, record is not None, *_needs(hidden2d, weight, bias))
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
