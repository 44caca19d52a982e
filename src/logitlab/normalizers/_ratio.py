"""The ratio maps p_i = g(x_i) / Σ_k g(x_k) as one autograd Function, with few full-size tensors.

Standard normalization, spherical softmax and Taylor softmax are all of this form. Written as a
chain of torch ops, each elementwise step (g, the division, and in the backward the broadcast
product, the quotient rule's two terms and their sum) allocates a tensor of the input's size,
and on CPU a fresh large allocation costs more than the arithmetic (page faults; see
BENCHMARKING.md). Here the forward allocates one tensor (g, divided in place by the row sum) and
the backward one more (the input gradient), like ``torch.softmax``:

    ∂p_i/∂x_j = g'(x_j) (δ_ij − p_i) / S,   S = Σ_k g(x_k),
    so grad_x_j = g'(x_j) (G_j − Σ_i G_i p_i) / S   for an upstream gradient G.

The backward is written in torch ops. Without ``create_graph`` it works in place on the tensor it
returns; with ``create_graph`` (grad mode on inside backward) it recomputes g, S and p from the
saved input with out-of-place differentiable ops, so double backward is exact.

``excluded`` (a bool mask of ``-inf`` entries, or None) gets g = 0 and gradient 0; the input
passed with it must hold a finite value there (0). A row with S = 0 (all excluded, or all-zero
scores without validation) maps to zeros and its gradient is G·g'(x), the limit of the quotient
rule with S replaced by 1 (what ``values / safe_denominator(S)`` gives).
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab._validation import compiling
from logitlab.normalizers._masking import safe_denominator

__all__ = ["Score", "ratio_normalize"]


class Score:
    """g and g' of a ratio map: the hooks :class:`_Ratio` calls.

    ``value(x)`` returns g(x) as a new tensor it owns (may use in-place ops; grad mode is off) or
    ``x`` itself when g is the identity; ``graph_value(x)`` and ``derivative(x)`` return g and g'
    with out-of-place differentiable ops; ``scale_by_derivative_(out, x)`` multiplies ``out`` by
    g'(x) in place.
    """

    def value(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def graph_value(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def scale_by_derivative_(self, out: Tensor, x: Tensor) -> Tensor:
        return out.mul_(self.derivative(x))


def _row_dot(grad: Tensor, probs: Tensor, dim: int) -> Tensor:
    """Σ_i grad_i probs_i along ``dim`` (keepdim), without a full-size temporary when rows are last."""
    if dim == probs.ndim - 1 and grad.is_contiguous() and probs.is_contiguous():
        return torch.matmul(grad.unsqueeze(-2), probs.unsqueeze(-1)).squeeze(-1)
    return (grad * probs).sum(dim, keepdim=True)


class _Ratio(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, excluded: Tensor | None, score: Score, dim: int):
        values = score.value(x)
        owned = values is not x
        if excluded is not None:
            values = values.masked_fill_(excluded, 0.0) if owned else values.masked_fill(excluded, 0.0)
            owned = True
        total = values.sum(dim, keepdim=True)
        denominator = safe_denominator(total)
        if compiling() or (total.device.type != "meta" and bool(torch.isinf(total).any())):
            # Σ g overflowed (finite scores near the dtype's largest value): those rows are divided
            # by their maximum first. Their saved denominator stays inf: the gradient, at most
            # 1 / S, is 0 at this precision. Under torch.compile every row takes this branch (no host
            # branch; the other rows' peak is 1, so they are divided by their total as below).
            peak = torch.where(torch.isinf(total), values.amax(dim, keepdim=True), total.new_ones(()))
            values = values.div_(peak) if owned else values / peak
            probs = values.div_(safe_denominator(values.sum(dim, keepdim=True)))
        else:
            probs = values.div_(denominator) if owned else values / denominator
        ctx.save_for_backward(x, probs, denominator, excluded)
        ctx.score, ctx.dim = score, dim
        ctx.mark_non_differentiable(total)
        return probs, total

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_total: Tensor | None):
        x, probs, denominator, excluded = ctx.saved_tensors
        score, dim = ctx.score, ctx.dim
        if torch.is_grad_enabled():  # create_graph: differentiable ops only, recomputed from x
            values = score.graph_value(x)
            if excluded is not None:
                values = torch.where(excluded, values.new_zeros(()), values)
            denominator = safe_denominator(values.sum(dim, keepdim=True))
            probs = values / denominator
            inner = (grad * probs).sum(dim, keepdim=True)
            out = score.derivative(x) * (grad - inner) / denominator
            if excluded is not None:
                out = torch.where(excluded, out.new_zeros(()), out)
            return out, None, None, None
        out = torch.sub(grad, _row_dot(grad, probs, dim))
        score.scale_by_derivative_(out, x)
        out.div_(denominator)
        if excluded is not None:
            out.masked_fill_(excluded, 0.0)
        return out, None, None, None


def ratio_normalize(x: Tensor, excluded: Tensor | None, score: Score, dim: int) -> tuple[Tensor, Tensor]:
    """(g(x) / Σ g(x), Σ g(x)) along ``dim`` (keepdim sum, no gradient), excluded entries 0."""
    return _Ratio.apply(x, excluded, score, dim)
