"""The threshold engine behind sparsemax, 1.5-entmax and α-entmax: no full-row sort.

Every map here has the form p_i = [x_i − τ]_+^{1/(α−1)} with x = (α−1)(z − max z), and τ the
unique threshold with Σ_i p_i = 1. Two implementations give the same answer (to rounding):

* the native kernel (``logitlab._native.sparse``, C with OpenMP over rows) for float32, bfloat16
  and float16 logits on the CPU: since p ≤ 1 forces τ ≥ −1, only the entries with x > −1 are
  candidates; τ is solved on them (a closed form certified against every other entry for
  sparsemax and 1.5-entmax, safeguarded Newton with a convergence report for a general α), then
  p is written in one pass. See ``_native/sparse.c``.
* the Triton kernels (``logitlab._triton.sparse``) for sparsemax and 1.5-entmax on CUDA tensors
  (``impl="triton"``, or "auto" where triton imports): the same certified closed form, reached
  by Newton (Michelot's step for sparsemax) and bisection passes over each row in blocks, so
  any vocabulary size; nothing is read on the host but, with ``validate``, whether a row held
  NaN or +inf. (CPU tensors take them only under ``TRITON_INTERPRET=1``, for the tests.)
* the torch path (``_threshold_topk``): τ from each row's ``torch.topk``, verified against the
  rest of the row, retried wider, finally sorted. It serves float64 (the ``gradcheck`` target),
  other devices, and machines where the native kernel cannot be built.

In eager mode forward and backward run in a ``torch.autograd.Function``; under ``torch.compile``
the same code runs as ``torch.library`` custom ops (opaque to the compiler, so a compiled caller
has no graph break; the custom op's first eager call would import torch._dynamo, seconds of
start-up, hence the two paths). The backward uses the closed form on the support:
∂p/∂z = diag(s) − s sᵀ/Σs with s = p^{2−α} on the support (sparsemax: s = 1[p > 0]), and for α
∂p_i/∂α = q (q p_i − p_i log p_i) − q p_i^{2−α} (q − Σ p log p)/Σs, q = 1/(α − 1).

Double backward: with ``create_graph=True`` the backward runs as differentiable torch ops on the
saved output p (and α), so its own graph reaches the logits through p's ∂p/∂z: Hessian-vector
products and gradient penalties get their second-order term (the fast kernels run only when no
graph is being built). On the support the second derivative is exact; sparsemax's s = 1[p > 0]
is piecewise constant, so its second derivative is 0 wherever it exists.

Validation costs no extra pass: both paths read each row's maximum anyway, which is NaN or +inf
exactly when the row holds one; with ``validate`` such a row raises (inside the op, so it also
works, without a graph break, under ``torch.compile``), otherwise it comes out NaN. α is checked
(> 1, finite) there too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitlab import backend
from logitlab._compiled_backward import no_double_backward
from logitlab._native import sparse as native_sparse
from logitlab._validation import fail, has_data
from logitlab.normalizers._threshold_topk import (  # noqa: F401  (tests size the retries)
    FIRST_K,
    GROW,
    compute_dtype,
    first_k,
    reject_logits,
    topk_backward,
    topk_forward,
    uniform_alpha,
)

__all__ = ["KINDS", "threshold_map", "ConvergenceError", "check_converged"]

KINDS = ("sparsemax", "entmax15", "bisect")


class ConvergenceError(RuntimeError):
    """An iterative threshold solve stopped at ``max_iter`` before reaching ``tol``."""


def check_converged(fn: str, violation: Tensor, tol: float, max_iter: int) -> None:
    """Raise :class:`ConvergenceError` if a row's |Σp − 1| exceeds ``tol`` (NaN rows pass)."""
    unconverged = violation > tol  # NaN rows (NaN / +inf logits) come out NaN, unreported
    if bool(unconverged.any()):
        worst = float(violation.max())
        raise ConvergenceError(
            f"{fn}(): the threshold solve did not converge within max_iter={max_iter} "
            f"(tol={tol:g}; {int(unconverged.sum())} row(s), worst |Σp − 1| = {worst:.3g}); "
            f"raise max_iter or tol, or call entmax_with_info() to inspect the rows")


_OPS = {"sparsemax": "sparsemax", "entmax15": "entmax15", "bisect": "entmax"}


def _engine(logits: Tensor, kind: str, impl: str = "auto", fn: str = "threshold_map") -> str:
    """Which kernels solve these (rows, n) logits for ``impl``: "native", "triton" or "torch" (the
    same answer on fake tensors; an explicit "native" or "triton" that cannot run raises, naming
    ``fn``). The Triton kernels exist for sparsemax and 1.5-entmax (the rows of
    :data:`logitlab.backend.OPS` say which op has which)."""
    if logits.shape[1] == 0:
        return "torch"
    choice = backend.resolve(fn, impl, logits, native=lambda: native_sparse.supports(logits), op=_OPS[kind])
    return choice if choice in ("native", "triton") else "torch"


def _index_width(logits: Tensor, kind: str, impl: str = "auto", fn: str = "threshold_map") -> int:
    """Columns of the saved top-k indices: 0 on the native and Triton paths, which need none."""
    return 0 if _engine(logits, kind, impl, fn) != "torch" else first_k(kind, logits.shape[1])


def _check_alpha_values(fn: str, alpha: float | Tensor) -> None:
    if isinstance(alpha, float):
        if not (alpha > 1 and math.isfinite(alpha)):
            fail(fn, "alpha", "values > 1 (finite)", alpha)
        return
    good = (alpha > 1) & torch.isfinite(alpha)
    if not bool(good.all()):
        fail(fn, "alpha", "values > 1 (finite)", float(alpha[~good][0]))


def _forward(logits: Tensor, alpha: Tensor, kind: str, tol: float, max_iter: int,
             raise_on_failure: bool, validate: bool = False, fn: str = "threshold_map", impl: str = "auto"
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    rows, n = logits.shape
    alpha_u = uniform_alpha(alpha) if rows and n else 1.5
    if validate and kind == "bisect" and rows and n:
        _check_alpha_values(fn, alpha_u)
    engine = _engine(logits, kind, impl, fn) if rows else "torch"
    if engine == "native":
        probs, tau, support, n_iter, violation, bad = native_sparse.sparse_forward(
            logits, kind, alpha_u, tol, max_iter, validate)
        if bad >= 0:
            top = logits.amax(-1)
            reject_logits(fn, logits, torch.isnan(top) | (top == math.inf))
        first_idx = logits.new_zeros((rows, 0), dtype=torch.int64)
    elif engine == "triton":
        from logitlab._triton import sparse as triton_sparse

        probs, tau, support, n_iter, violation = triton_sparse.sparse_forward(logits, kind)
        if validate:  # the one host read of this path: a NaN τ marks a row holding NaN or +inf
            broken = torch.isnan(tau)
            if bool(broken.any()):
                reject_logits(fn, logits, broken)
        first_idx = logits.new_zeros((rows, 0), dtype=torch.int64)
    else:
        probs, tau, first_idx, support, n_iter, violation = topk_forward(
            logits, alpha_u, kind, tol, max_iter, validate, fn)

    if kind == "bisect" and raise_on_failure:
        check_converged(fn, violation, tol, max_iter)
    return probs, tau, first_idx, support, n_iter, violation


def _differentiable_backward(grad: Tensor, probs: Tensor, alpha: Tensor, kind: str, need_alpha: bool
                             ) -> tuple[Tensor, Tensor]:
    """The closed-form backward in differentiable torch ops (dense rows), for double backward.

    ∂L/∂z = s ⊙ (g − c), c = Σ s g / Σ s, s = p^{2−α} on the support; ∂L/∂α =
    q Σ_i (g_i − c)(q p_i − p_i log p_i). Every op is safe at p = 0 (no inf · 0 in its own backward).
    """
    cdtype = compute_dtype(grad.dtype)
    g, p = grad.to(cdtype), probs.to(cdtype)
    positive = p > 0
    safe = p.clamp_min(torch.finfo(cdtype).tiny)
    a = alpha.to(cdtype)
    if kind == "sparsemax":  # + 0·p keeps the graph, as torch's relu does: a zero second derivative
        s = positive.to(cdtype) + 0 * p
    elif kind == "entmax15":
        s = torch.where(positive, safe.sqrt(), 0)
    else:
        s = torch.where(positive, safe.pow(2 - a), 0)
    s_sum = s.sum(-1, keepdim=True)
    centre = (s * g).sum(-1, keepdim=True) / torch.where(s_sum > 0, s_sum, 1)
    grad_logits = (s * (g - centre)).to(grad.dtype)
    if not need_alpha:
        return grad_logits, g.new_zeros((g.shape[0], 1))
    q = 1 / (a - 1)
    plogp = torch.where(positive, p * safe.log(), 0)
    return grad_logits, q * ((g - centre) * (q * p - plogp)).sum(-1, keepdim=True)


def _backward(grad: Tensor, probs: Tensor, alpha: Tensor, first_idx: Tensor, support: Tensor,
              kind: str, need_alpha: bool, engine: str = "torch") -> tuple[Tensor, Tensor]:
    rows, n = grad.shape
    if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
        return _differentiable_backward(grad, probs, alpha, kind, need_alpha)
    if rows and n and engine == "triton" and kind != "bisect":  # no α: sparsemax and 1.5-entmax only
        from logitlab._triton import sparse as triton_sparse

        no_alpha = grad.new_zeros((rows, 1), dtype=compute_dtype(grad.dtype))
        return triton_sparse.sparse_backward(grad, probs, kind), no_alpha
    if rows and n and first_idx.shape[1] == 0 and native_sparse.supports(probs):
        out, grad_alpha = native_sparse.sparse_backward(grad, probs, kind, uniform_alpha(alpha), need_alpha)
        if grad_alpha is None:
            grad_alpha = grad.new_zeros((rows, 1), dtype=compute_dtype(grad.dtype))
        return out, grad_alpha
    return topk_backward(grad, probs, alpha, first_idx, support, kind, need_alpha)


@torch.library.custom_op("logitlab::threshold_map", mutates_args=())
def _threshold_op(logits: Tensor, alpha: Tensor, kind: str, tol: float, max_iter: int,
                  raise_on_failure: bool, validate: bool, fn: str, impl: str
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward(logits, alpha, kind, tol, max_iter, raise_on_failure, validate, fn, impl)


@_threshold_op.register_fake
def _(logits, alpha, kind, tol, max_iter, raise_on_failure, validate, fn, impl):
    rows, n = logits.shape
    cdtype = compute_dtype(logits.dtype)
    first_k = _index_width(logits, kind, impl, fn)
    vec = logits.new_empty(rows, dtype=cdtype)
    ints = logits.new_empty(rows, dtype=torch.int64)
    return (torch.empty_like(logits), vec, logits.new_empty(rows, first_k, dtype=torch.int64),
            ints, torch.empty_like(ints), torch.empty_like(vec))


@torch.library.custom_op("logitlab::threshold_map_backward", mutates_args=())
def _threshold_backward_op(grad: Tensor, probs: Tensor, alpha: Tensor, first_idx: Tensor,
                           support: Tensor, kind: str, need_alpha: bool, engine: str) -> tuple[Tensor, Tensor]:
    return _backward(grad.contiguous(), probs, alpha, first_idx, support, kind, need_alpha, engine)


@_threshold_backward_op.register_fake
def _(grad, probs, alpha, first_idx, support, kind, need_alpha, engine):
    return torch.empty_like(grad), grad.new_empty(grad.shape[0], 1, dtype=compute_dtype(grad.dtype))


def _backward_engine(logits: Tensor, kind: str, impl: str, fn: str) -> str:
    """The engine the backward names: "triton" where the forward ran the Triton kernels, else
    "torch" (native and torch are told apart by ``first_idx``). Only where Triton can run is
    resolve() asked again: for a CPU tensor it would refuse impl="native" on the
    FunctionalTensors of a torch.compile trace."""
    triton_possible = impl == "triton" or logits.device.type == "cuda"
    return _engine(logits, kind, impl, fn) if logits.shape[0] and triton_possible else "torch"


def _setup_context(ctx, inputs, output):
    logits, alpha, kind, _, _, _, _, fn, impl = inputs
    probs, _, first_idx, support, _, _ = output
    ctx.save_for_backward(probs, alpha, first_idx, support)
    ctx.kind, ctx.fn = kind, fn
    ctx.engine = _backward_engine(logits, kind, impl, fn)


def _backward_rule(ctx, grad_probs, *unused):
    probs, alpha, first_idx, support = ctx.saved_tensors
    need_alpha = bool(ctx.needs_input_grad[1])
    if torch.is_grad_enabled():  # create_graph=True: the custom op would cut the graph
        grad_logits, grad_alpha = _differentiable_backward(grad_probs, probs, alpha, ctx.kind, need_alpha)
    else:
        # Traced into a compiled backward (this op runs only under torch.compile): raises there
        # when it runs with create_graph=True, instead of a first derivative cut from the logits.
        alpha = no_double_backward(grad_probs, ctx.fn, f"call {ctx.fn} eagerly for higher-order gradients",
                                   carry=alpha)
        grad_logits, grad_alpha = _threshold_backward_op(
            grad_probs, probs, alpha, first_idx, support, ctx.kind, need_alpha, ctx.engine)
    return (grad_logits, (grad_alpha.to(alpha.dtype) if need_alpha else None),
            None, None, None, None, None, None, None)


_threshold_op.register_autograd(_backward_rule, setup_context=_setup_context)


class _ThresholdFunction(torch.autograd.Function):
    """The eager path: the same forward and backward as the custom ops, without their dispatch
    (whose first call imports torch._dynamo: seconds of start-up)."""

    # forward and setup_context apart: the form torch.func.grad (and jacrev, ...) accepts.
    @staticmethod
    def forward(logits, alpha, kind, tol, max_iter, raise_on_failure, validate, fn, impl):
        return _forward(logits, alpha, kind, tol, max_iter, raise_on_failure, validate, fn, impl)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, alpha, kind, *_, fn, impl = inputs
        probs, tau, first_idx, support, n_iter, violation = output
        ctx.save_for_backward(probs, alpha, first_idx, support)
        ctx.kind = kind
        ctx.engine = _backward_engine(logits, kind, impl, fn)
        ctx.mark_non_differentiable(tau, first_idx, support, n_iter, violation)

    @staticmethod
    def backward(ctx, grad_probs, *unused):
        probs, alpha, first_idx, support = ctx.saved_tensors
        need_alpha = bool(ctx.needs_input_grad[1])
        grad_logits, grad_alpha = _backward(grad_probs.contiguous(), probs, alpha, first_idx, support,
                                            ctx.kind, need_alpha, ctx.engine)
        return (grad_logits, (grad_alpha.to(alpha.dtype) if need_alpha else None),
                None, None, None, None, None, None, None)


def threshold_map(rows: Tensor, kind: str, alpha: Tensor | None = None, *, tol: float = 0.0,
                  max_iter: int = 1, raise_on_failure: bool = True, validate: bool = True,
                  fn: str = "threshold_map", impl: str = "auto") -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Apply the map of ``kind`` to (rows, n) logits.

    With ``validate``, NaN or +inf logits and α not > 1 raise ``ValueError`` naming ``fn``
    (found from the row maxima the solve computes anyway); without, such rows come out NaN.

    Returns probs (rows, n), τ (rows,), iterations (rows,), |Σp − 1| before the final
    renormalization (rows,), support size (rows,). ``alpha`` is (rows, 1) or (1, 1) (only for
    ``kind='bisect'``). ``impl`` ('auto' | 'native' | 'torch', :mod:`logitlab.backend`) is
    resolved inside the op, on the real or the fake tensors alike, for the op named ``fn``.
    """
    if alpha is None:
        alpha = rows.new_full((1, 1), 2.0 if kind == "sparsemax" else 1.5,
                              dtype=compute_dtype(rows.dtype))
    if alpha.shape[0] != rows.shape[0]:
        alpha = alpha.expand(rows.shape[0], 1)
    args = (rows, alpha, kind, float(tol), int(max_iter), bool(raise_on_failure), bool(validate), fn, impl)
    # Opaque to the compiler (no graph break); on meta tensors the op's fake gives the shapes.
    if torch._C._functorch.is_batchedtensor(rows):
        fail(fn, "logits", "a tensor outside torch.func.vmap (the threshold solve branches on the values)",
             "<a vmap-batched tensor>", detail=f"call {fn} on the whole batch: it is row-wise along dim already")
    if torch.compiler.is_compiling() or not has_data(rows):  # meta, bare fake tensors: the op's fake
        probs, tau, _, support, n_iter, violation = _threshold_op(*args)
    else:
        probs, tau, _, support, n_iter, violation = _ThresholdFunction.apply(*args)
    return probs, tau, n_iter, violation, support
