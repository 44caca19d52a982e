"""The Triton cross-entropy rows as an autograd Function (eager) and as a custom op (compiled).

``triton_cross_entropy`` has the signature of ``logitlab.losses._xent_kernel.fused_cross_entropy``
(checked rows, the option record ``XentOptions``) and returns the same values:

* eager: ``_TritonCrossEntropy``, the twin of the CPU's fused Function. The forward computes
  the losses and the finished gradient in one launch (into a new tensor, or over the logits
  with ``inplace_backward``); the backward scales it in place by the incoming gradient and
  hands it over. It never reads a value on the host: the scaling kernel reads the incoming
  gradient on the device and skips rows whose factor is 1 (no memory traffic for the usual
  ``loss.backward()``), and the data checks run only when ``opts.validate`` (``validate=None``
  turns them off for CUDA tensors).
* under ``torch.compile``: the custom op ``logitlab::triton_xent_rows`` (per-row losses and
  the gradient, with a fake for tracing and an autograd formula), so a compiled caller has no
  graph break; the reduction around it is plain torch. Its backward multiplies the saved
  gradient out of place (a compiled graph may not scale a saved tensor in place), and
  ``inplace_backward`` is not available there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab._compiled_backward import no_double_backward
from logitlab._triton.xent import scale_rows_, xent_rows
from logitlab.losses._xent_kernel import XentOptions, check_row_max, saved_gradient

__all__ = ["triton_cross_entropy"]


def _contiguous_rows(rows: Tensor) -> Tensor:
    return rows if rows.shape[1] <= 1 or rows.stride(1) == 1 else rows.contiguous()


def _forward(rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor, scale: Tensor,
             opts: XentOptions, want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """(N,) scaled losses in the compute dtype and, if asked, the (N, C) gradient."""
    x = _contiguous_rows(rows)
    grad = None
    if want_grad:
        grad = x if opts.inplace_backward else torch.empty_like(x, memory_format=torch.contiguous_format)
    losses, lse = xent_rows(x, target, weight, keep, scale, index_target=opts.index_target,
                            label_smoothing=opts.label_smoothing, z_loss=opts.z_loss,
                            temperature=opts.temperature, validate=opts.validate, grad=grad)
    if opts.validate:
        check_row_max(opts, lse, 0, keep)  # reads the row statistics on the host (CPU default only)
    if grad is not None and opts.inplace_backward and x is not rows:
        rows.copy_(grad)  # logits whose classes were not contiguous: the gradient goes back into them
        grad = rows
    return losses, grad


class _TritonCrossEntropy(torch.autograd.Function):
    """Loss and gradient in one launch; the backward scales the saved gradient in place.

    A second backward through a retained graph recomputes the gradient from the saved logits
    (with ``inplace_backward`` they are gone, so it raises); no double backward.
    """

    @staticmethod
    def forward(ctx, rows, target, weight, keep, scale, opts):  # type: ignore[override]
        want_grad = ctx.needs_input_grad[0]
        losses, grad = _forward(rows, target, weight, keep, scale, opts, want_grad)
        ctx.grad, ctx.opts = grad, opts
        if want_grad and not opts.inplace_backward:
            ctx.save_for_backward(rows, target, weight, keep, scale)
        out = losses if opts.per_row else losses.sum()
        return out.to(rows.dtype)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad = saved_gradient(ctx, _forward, "impl='triton'")
        scale_rows_(grad, grad_output)
        return grad, None, None, None, None, None


# ---- the custom op, for torch.compile ---------------------------------------------------------

@torch.library.custom_op("logitlab::triton_xent_rows", mutates_args=())
def _xent_rows_op(rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor, scale: Tensor,
                  index_target: bool, label_smoothing: float, z_loss: float, temperature: float,
                  want_grad: bool) -> tuple[Tensor, Tensor]:
    """(N,) scaled row losses in the compute dtype and the (N, C) gradient ((0, C) without)."""
    x = _contiguous_rows(rows)
    grad = torch.empty_like(x, memory_format=torch.contiguous_format) if want_grad else x.new_empty(0, x.shape[1])
    losses, _ = xent_rows(x, target, weight, keep, scale, index_target=index_target,
                          label_smoothing=label_smoothing, z_loss=z_loss, temperature=temperature,
                          grad=grad if want_grad else None)
    return losses, grad


@_xent_rows_op.register_fake
def _(rows, target, weight, keep, scale, index_target, label_smoothing, z_loss, temperature, want_grad):
    cd = torch.float64 if rows.dtype == torch.float64 else torch.float32
    grad = rows.new_empty(rows.shape if want_grad else (0, rows.shape[1]))
    return rows.new_empty(rows.shape[0], dtype=cd), grad


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_losses, _grad_grad):
    if torch.is_grad_enabled():
        raise RuntimeError("logitlab::triton_xent_rows: no double backward (create_graph=True); "
                           "impl='torch' has higher-order gradients, eagerly")
    (grad,) = ctx.saved_tensors
    # Traced into the compiled backward: raises there when it runs with create_graph=True.
    grad_losses = no_double_backward(grad_losses, "cross_entropy", "impl='torch' has higher-order gradients, eagerly")
    return grad * grad_losses.to(grad.dtype).unsqueeze(1), None, None, None, None, None, None, None, None, None


_xent_rows_op.register_autograd(_backward, setup_context=_setup_context)


def triton_cross_entropy(rows: Tensor, target: Tensor, weight: Tensor | None, keep: Tensor,
                         scale: Tensor, opts: XentOptions) -> Tensor:
    """(N,) losses for reduction 'none', else their scaled sum, in the logits' dtype."""
    if not torch.compiler.is_compiling():
        return _TritonCrossEntropy.apply(rows, target, weight, keep, scale, opts)
    if opts.inplace_backward:
        raise RuntimeError(f"{opts.fn}(): inplace_backward=True is not available under torch.compile "
                           "with impl='triton'")
    losses, _ = _xent_rows_op(rows, target, weight, keep, scale, opts.index_target, opts.label_smoothing,
                              opts.z_loss, opts.temperature, rows.requires_grad)
    out = losses if opts.per_row else losses.sum()
    return out.to(rows.dtype)
