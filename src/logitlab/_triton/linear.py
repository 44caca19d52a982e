"""linear_cross_entropy(impl='triton') as custom ops, for callers under torch.compile.

Eager calls go through :class:`logitlab.fused._engine.FusedLinearLoss` (the chunk loop, the
gradients handed over and scaled in place). Under ``torch.compile`` that Function's Python state
(the row kernel, the plan, the loop over a data-dependent number of kept rows) cannot be traced,
so the same loop runs inside two opaque custom ops, with fakes for tracing:

* ``logitlab::triton_linear_xent``: the loss (reduced, or per row for 'none') and, for 'mean'
  and 'sum', the gradients of hidden, weight and bias computed in the same pass; its autograd
  formula multiplies them by the incoming gradient (out of place: a compiled graph may not scale
  saved tensors in place).
* ``logitlab::triton_linear_xent_grads``: for 'none', the backward's second pass over the chunks
  with each row's incoming gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["compiled_linear_cross_entropy"]


def _run(hidden, weight, bias, target, class_weight, row_scale, ignore_index, label_smoothing, z_loss, softcap,
         chunk, accum_dtype, reduction, need):
    from logitlab.fused._engine import Plan, accumulation_dtype, run_chunks
    from logitlab.fused.cross_entropy import build_kernel, reduction_scale

    acc = accumulation_dtype(hidden.dtype, accum_dtype)
    kernel = build_kernel(target, class_weight, ignore_index=ignore_index, vocab_start=0,
                          vocab_total=weight.shape[0], label_smoothing=label_smoothing, z_loss=z_loss, dtype=acc,
                          sync=False)
    scale = reduction_scale(kernel, reduction, sync=False) if row_scale is None else row_scale
    plan = Plan(chunk=chunk, accum_dtype=accum_dtype, softcap=softcap, triton=True)
    loss_rows, gh, gw, gb = run_chunks(hidden, weight, bias, kernel, plan, row_scale=scale, need=need)
    return loss_rows, scale, gh, gw, gb


def _empty_like(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


@torch.library.custom_op("logitlab::triton_linear_xent", mutates_args=())
def _linear_xent(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, class_weight: Tensor | None,
                 ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None, chunk: int,
                 accum_dtype: torch.dtype, reduction: str, need_hidden: bool, need_weight: bool,
                 need_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_hidden, grad_weight, grad_bias); the gradients (of the reduced loss) only for
    'mean'/'sum' and where asked, else empty."""
    need = (need_hidden, need_weight, need_bias) if reduction != "none" else (False, False, False)
    loss_rows, scale, gh, gw, gb = _run(hidden, weight, bias, target, class_weight, None, ignore_index,
                                        label_smoothing, z_loss, softcap, chunk, accum_dtype, reduction, need)
    loss = loss_rows if reduction == "none" else loss_rows.sum() * scale
    return (loss.to(hidden.dtype), _empty_like(gh, hidden), _empty_like(gw, hidden),
            _empty_like(gb, bias if bias is not None else hidden))


@_linear_xent.register_fake
def _(hidden, weight, bias, target, class_weight, ignore_index, label_smoothing, z_loss, softcap, chunk,
      accum_dtype, reduction, need_hidden, need_weight, need_bias):
    loss = hidden.new_empty(hidden.shape[0] if reduction == "none" else ())
    grads = reduction != "none"
    gh = hidden.new_empty(hidden.shape if grads and need_hidden else (0,))
    gw = weight.new_empty(weight.shape if grads and need_weight else (0,))
    gb = hidden.new_empty(bias.shape if grads and need_bias and bias is not None else (0,))
    if bias is not None:
        gb = gb.to(bias.dtype)
    return loss, gh, gw, gb


@torch.library.custom_op("logitlab::triton_linear_xent_grads", mutates_args=())
def _linear_xent_grads(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                       class_weight: Tensor | None, grad_rows: Tensor, ignore_index: int, label_smoothing: float,
                       z_loss: float, softcap: float | None, chunk: int, accum_dtype: torch.dtype, need_hidden: bool,
                       need_weight: bool, need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients for reduction 'none', each row weighted by ``grad_rows``: the chunks again."""
    _, _, gh, gw, gb = _run(hidden, weight, bias, target, class_weight, grad_rows, ignore_index, label_smoothing,
                            z_loss, softcap, chunk, accum_dtype, "none", (need_hidden, need_weight, need_bias))
    return _empty_like(gh, hidden), _empty_like(gw, hidden), _empty_like(gb, bias if bias is not None else hidden)


@_linear_xent_grads.register_fake
def _(hidden, weight, bias, target, class_weight, grad_rows, ignore_index, label_smoothing, z_loss, softcap, chunk,
      accum_dtype, need_hidden, need_weight, need_bias):
    gh = hidden.new_empty(hidden.shape if need_hidden else (0,))
    gw = weight.new_empty(weight.shape if need_weight else (0,))
    gb = hidden.new_empty(bias.shape if need_bias and bias is not None else (0,))
    return gh, gw, gb if bias is None else gb.to(bias.dtype)


_ARGS = ("hidden", "weight", "bias", "target", "class_weight", "ignore_index", "label_smoothing", "z_loss",
         "softcap", "chunk", "accum_dtype", "reduction", "need_hidden", "need_weight", "need_bias")


def _setup(ctx, inputs, output):
    args = dict(zip(_ARGS, inputs))
    ctx.args = {k: args[k] for k in _ARGS if k not in ("hidden", "weight", "bias", "target", "class_weight")}
    ctx.has_bias = args["bias"] is not None
    ctx.has_weights = args["class_weight"] is not None
    saved = [args["hidden"], args["weight"], args["target"]]
    saved += [args["bias"]] if ctx.has_bias else []
    saved += [args["class_weight"]] if ctx.has_weights else []
    ctx.save_for_backward(*saved, output[1], output[2], output[3])


def _backward(ctx, grad_loss, _gh, _gw, _gb):
    a = ctx.args
    saved = list(ctx.saved_tensors)
    hidden, weight, target = saved[:3]
    rest = saved[3:]
    bias = rest.pop(0) if ctx.has_bias else None
    class_weight = rest.pop(0) if ctx.has_weights else None
    gh, gw, gb = rest
    if a["reduction"] == "none":
        gh, gw, gb = _linear_xent_grads(hidden, weight, bias, target, class_weight, grad_loss, a["ignore_index"],
                                        a["label_smoothing"], a["z_loss"], a["softcap"], a["chunk"],
                                        a["accum_dtype"], a["need_hidden"], a["need_weight"], a["need_bias"])
    else:
        gh, gw, gb = (g * grad_loss.to(g.dtype) if g.numel() else g for g in (gh, gw, gb))
    out = [gh if a["need_hidden"] else None, gw if a["need_weight"] else None,
           gb if a["need_bias"] and ctx.has_bias else None]
    return (*out, None, None, None, None, None, None, None, None, None, None, None, None)


_linear_xent.register_autograd(_backward, setup_context=_setup)


def compiled_linear_cross_entropy(hidden2d: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                                  class_weight: Tensor | None, *, ignore_index: int, label_smoothing: float,
                                  z_loss: float, softcap: float | None, chunk: int, accum_dtype: torch.dtype,
                                  reduction: str) -> Tensor:
    """The loss through the custom op (reduced, or (N,) for 'none'), in hidden's dtype."""
    loss, *_ = _linear_xent(hidden2d, weight, bias, target, None if class_weight is None else class_weight.detach(),
                            ignore_index, float(label_smoothing), float(z_loss),
                            None if softcap is None else float(softcap), int(chunk), accum_dtype, reduction,
                            hidden2d.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    return loss
