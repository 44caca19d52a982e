"""The native kernels as ``torch.library`` operators: the only way Python reaches compiled code.

Each C entry point is wrapped in an operator of the ``logitlab`` namespace with a CPU kernel (the
ctypes call, with the argument types parsed from the C prototype: :mod:`.prototypes`) and a fake
kernel (shapes only). So a call under ``torch.compile`` is one opaque node of the graph, a
FakeTensor or a meta tensor gets outputs of the right shapes without any C running, a tensor on
another device is refused by the dispatcher (no CPU kernel is registered for it, and no host code
is compiled for it), and a tensor subclass such as a DTensor goes through its own dispatch, which
has no rule for these operators and raises, instead of handing a null pointer to C.

The operators are defined with ``torch.library.Library`` rather than ``torch.library.custom_op``:
both make the same dispatcher entries, but the first eager call of a ``custom_op`` imports
``torch._dynamo`` (seconds of start-up in every process that calls a loss once).

Autograd: ``xent_rows`` (losses and their gradient in one pass), ``sparse_forward`` and
``qexp_forward`` register their derivative (the saved gradient scaled by the incoming one; the
sparse maps' closed-form backward through ``sparse_backward``; the q-exponential map's, for the
logits and α, through ``qexp_backward``); a second derivative through them raises. The in-place,
backward and matmul operators are steps inside logitlab's own autograd Functions, called with
gradients off; they register none.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab._memory import empty_like_huge
from logitlab._native import DTYPE_CODES, symbol, threads_for

__all__ = ["LIBRARY"]

LIBRARY = torch.library.Library("logitlab", "FRAGMENT")
_CODES = DTYPE_CODES
_KINDS = ("sparsemax", "entmax15", "bisect")


def _ptr(t: Tensor | None):
    return None if t is None else t.data_ptr()


def _status(code: int, like: Tensor) -> Tensor:
    return torch.tensor(code, dtype=torch.int64, device=like.device)


def _define(schema: str, cpu, fake) -> None:
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, cpu, "CPU")
    torch.library.register_fake(f"logitlab::{name}", fake, lib=LIBRARY)


# --- cross-entropy rows (xent.c) ------------------------------------------------------------------

_XENT_ARGS = ("Tensor? target, Tensor? prob, Tensor? weight, Tensor keep, Tensor scale, float label_smoothing, "
              "float z_loss, float temperature, bool validate, bool scale_loss")


def _xent_call(rows: Tensor, grad: Tensor | None, target, prob, weight, keep, scale, label_smoothing, z_loss,
               temperature, validate, scale_loss) -> tuple[Tensor, int]:
    n_rows, n_classes = rows.shape
    p_code = "f32" if prob is None else _CODES[prob.dtype]
    fn = symbol("xent", f"ll_xent_{_CODES[rows.dtype]}_{p_code}")
    if fn is None:
        raise RuntimeError("logitlab::xent_rows: the native kernel 'xent' is unavailable (see logitlab env)")
    w_sum = float(weight.double().sum()) if weight is not None else float(n_classes)
    losses = torch.empty(n_rows, dtype=torch.float32)
    code = fn(rows.data_ptr(), rows.stride(0), _ptr(grad), grad.stride(0) if grad is not None else 0, n_rows,
              n_classes, _ptr(target), _ptr(prob), prob.stride(0) if prob is not None else 0, _ptr(weight), w_sum,
              scale.data_ptr(), keep.data_ptr(), float(label_smoothing), float(z_loss), 1.0 / float(temperature),
              int(bool(validate)), int(bool(scale_loss)), losses.data_ptr(), threads_for(n_rows * n_classes))
    return losses, int(code)


def _xent_rows(rows, target, prob, weight, keep, scale, label_smoothing, z_loss, temperature, validate,
               scale_loss, want_grad):
    grad = empty_like_huge(rows) if want_grad else rows.new_empty((0, rows.shape[1]))
    losses, code = _xent_call(rows, grad if want_grad else None, target, prob, weight, keep, scale,
                              label_smoothing, z_loss, temperature, validate, scale_loss)
    return losses, grad, _status(code, rows)


def _xent_rows_fake(rows, target, prob, weight, keep, scale, label_smoothing, z_loss, temperature, validate,
                    scale_loss, want_grad):
    grad = torch.empty_like(rows) if want_grad else rows.new_empty((0, rows.shape[1]))
    return rows.new_empty(rows.shape[0], dtype=torch.float32), grad, rows.new_empty((), dtype=torch.int64)


_define(f"xent_rows(Tensor rows, {_XENT_ARGS}, bool want_grad) -> (Tensor, Tensor, Tensor)",
        _xent_rows, _xent_rows_fake)


def _xent_rows_inplace(rows, target, prob, weight, keep, scale, label_smoothing, z_loss, temperature, validate,
                       scale_loss):
    losses, code = _xent_call(rows, rows, target, prob, weight, keep, scale, label_smoothing, z_loss,
                              temperature, validate, scale_loss)
    return losses, _status(code, rows)


def _xent_rows_inplace_fake(rows, *args):
    return rows.new_empty(rows.shape[0], dtype=torch.float32), rows.new_empty((), dtype=torch.int64)


_define(f"xent_rows_(Tensor(a!) rows, {_XENT_ARGS}) -> (Tensor, Tensor)", _xent_rows_inplace,
        _xent_rows_inplace_fake)


def _xent_setup(ctx, inputs, output):
    _, grad, _ = output
    ctx.save_for_backward(grad)
    ctx.want_grad = inputs[-1]


def _xent_backward(ctx, grad_losses, *unused):
    if torch.is_grad_enabled():
        raise RuntimeError("logitlab::xent_rows: no double backward (create_graph=True); "
                           "use impl='composite' for higher-order gradients")
    (grad,) = ctx.saved_tensors
    if not ctx.want_grad:
        raise RuntimeError("logitlab::xent_rows: called with want_grad=False, so it has no gradient")
    return (grad * grad_losses.to(grad.dtype).unsqueeze(1),) + (None,) * 11


torch.library.register_autograd("logitlab::xent_rows", _xent_backward, setup_context=_xent_setup, lib=LIBRARY)


# --- sparse maps (sparse.c) -------------------------------------------------------------------------

def _check_alpha(fn: str, alpha: Tensor | None, n_rows: int) -> None:
    # The kernel reads one α per row (or one for all): a shorter tensor would be read past its end.
    if alpha is not None and (alpha.dtype != torch.float64 or alpha.numel() not in (1, n_rows)
                              or not alpha.is_contiguous()):
        raise ValueError(f"logitlab::{fn}: alpha must be a contiguous float64 tensor of 1 or {n_rows} elements, "
                         f"got {alpha.dtype} with {alpha.numel()}")


def _sparse_forward(rows, kind, alpha, tol, max_iter, max_passes, validate):
    n_rows, n_classes = rows.shape
    _check_alpha("sparse_forward", alpha, n_rows)
    fn = symbol("sparse", f"ll_sparse_fwd_{_CODES[rows.dtype]}")
    if fn is None:
        raise RuntimeError("logitlab::sparse_forward: the native kernel 'sparse' is unavailable (see logitlab env)")
    probs = empty_like_huge(rows)
    tau = torch.empty(n_rows, dtype=torch.float32)
    support = torch.empty(n_rows, dtype=torch.int64)
    n_iter = torch.empty(n_rows, dtype=torch.int64)
    violation = torch.empty(n_rows, dtype=torch.float32)
    lda = 0 if alpha is None or alpha.numel() == 1 else 1
    code = fn(rows.data_ptr(), rows.stride(0), probs.data_ptr(), probs.stride(0), n_rows, n_classes, kind,
              _ptr(alpha), lda, float(tol), int(max_iter), int(max_passes), int(bool(validate)), tau.data_ptr(),
              support.data_ptr(), n_iter.data_ptr(), violation.data_ptr(), threads_for(n_rows * n_classes))
    if code == -2:
        raise MemoryError("logitlab::sparse_forward: the sparse kernel could not allocate its scratch rows")
    return probs, tau, support, n_iter, violation, _status(int(code), rows)


def _sparse_forward_fake(rows, kind, alpha, tol, max_iter, max_passes, validate):
    n = rows.shape[0]
    vec = rows.new_empty(n, dtype=torch.float32)
    ints = rows.new_empty(n, dtype=torch.int64)
    return (torch.empty_like(rows), vec, ints, torch.empty_like(ints), torch.empty_like(vec),
            rows.new_empty((), dtype=torch.int64))


_define("sparse_forward(Tensor rows, int kind, Tensor? alpha, float tol, int max_iter, int max_passes, "
        "bool validate) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", _sparse_forward, _sparse_forward_fake)


def _sparse_backward(grad, probs, kind, alpha, need_alpha):
    n_rows, n_classes = probs.shape
    _check_alpha("sparse_backward", alpha, n_rows)
    if grad.shape != probs.shape or grad.dtype != probs.dtype:
        raise ValueError(f"logitlab::sparse_backward: grad must match probs, got {tuple(grad.shape)} {grad.dtype} "
                         f"and {tuple(probs.shape)} {probs.dtype}")
    fn = symbol("sparse", f"ll_sparse_bwd_{_CODES[probs.dtype]}")
    if fn is None:
        raise RuntimeError("logitlab::sparse_backward: the native kernel 'sparse' is unavailable")
    out = empty_like_huge(probs)
    grad_alpha = torch.empty(n_rows if need_alpha else 0, 1, dtype=torch.float32)
    lda = 0 if alpha is None or alpha.numel() == 1 else 1
    fn(grad.data_ptr(), grad.stride(0), probs.data_ptr(), probs.stride(0), out.data_ptr(), out.stride(0), n_rows,
       n_classes, kind, _ptr(alpha), lda, grad_alpha.data_ptr() if need_alpha else None,
       threads_for(n_rows * n_classes))
    return out, grad_alpha


def _sparse_backward_fake(grad, probs, kind, alpha, need_alpha):
    return torch.empty_like(probs), probs.new_empty(probs.shape[0] if need_alpha else 0, 1, dtype=torch.float32)


_define("sparse_backward(Tensor grad, Tensor probs, int kind, Tensor? alpha, bool need_alpha) -> (Tensor, Tensor)",
        _sparse_backward, _sparse_backward_fake)


def _sparse_setup(ctx, inputs, output):
    _, kind, alpha, *_ = inputs
    ctx.save_for_backward(output[0], alpha)
    ctx.kind = kind


def _sparse_derivative(ctx, grad_probs, *unused):
    if torch.is_grad_enabled():
        raise RuntimeError("logitlab::sparse_forward: no double backward through the kernel op; the public maps "
                           "(sparsemax, entmax15, entmax) have it")
    probs, alpha = ctx.saved_tensors
    grad = grad_probs.to(probs.dtype).contiguous()
    out, _ = torch.ops.logitlab.sparse_backward(grad, probs, ctx.kind, alpha, False)
    return (out,) + (None,) * 6


torch.library.register_autograd("logitlab::sparse_forward", _sparse_derivative, setup_context=_sparse_setup,
                                lib=LIBRARY)


# --- α-entmax near and below α = 1, the q-exponential form (qexp.c) --------------------------------
# Instantiated for float64 too: the op itself is gradchecked in float64 (the public maps send
# float64 to the torch path, like the other kernels).

QEXP_CODES = {**DTYPE_CODES, torch.float64: "f64"}


def _qexp_symbol(op: str, prefix: str, dtype: torch.dtype):
    if dtype not in QEXP_CODES:
        raise ValueError(f"logitlab::{op}: expected float32, bfloat16, float16 or float64 rows, got {dtype}")
    fn = symbol("qexp", f"{prefix}{QEXP_CODES[dtype]}")
    if fn is None:
        raise RuntimeError(f"logitlab::{op}: the native kernel 'qexp' is unavailable (see logitlab env)")
    return fn


def _qexp_forward(rows, alpha, tol, max_iter, validate):
    n_rows, n_classes = rows.shape
    _check_alpha("qexp_forward", alpha, n_rows)
    fn = _qexp_symbol("qexp_forward", "ll_qexp_fwd_", rows.dtype)
    rows = rows if n_classes <= 1 or rows.stride(1) == 1 else rows.contiguous()
    probs = empty_like_huge(rows)
    tau = torch.empty(n_rows, dtype=torch.float64)
    n_iter = torch.empty(n_rows, dtype=torch.int64)
    violation = torch.empty(n_rows, dtype=torch.float64)
    lda = 0 if alpha.numel() == 1 else 1
    code = fn(rows.data_ptr(), rows.stride(0), probs.data_ptr(), probs.stride(0), n_rows, n_classes,
              alpha.data_ptr(), lda, float(tol), int(max_iter), int(bool(validate)), tau.data_ptr(),
              n_iter.data_ptr(), violation.data_ptr(), threads_for(n_rows * n_classes))
    if code == -2:
        raise MemoryError("logitlab::qexp_forward: the qexp kernel could not allocate its scratch rows")
    return probs, tau, n_iter, violation, _status(int(code), rows)


def _qexp_forward_fake(rows, alpha, tol, max_iter, validate):
    n = rows.shape[0]
    vec = rows.new_empty(n, dtype=torch.float64)
    return (torch.empty_like(rows), vec, rows.new_empty(n, dtype=torch.int64), torch.empty_like(vec),
            rows.new_empty((), dtype=torch.int64))


_define("qexp_forward(Tensor rows, Tensor alpha, float tol, int max_iter, bool validate) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)", _qexp_forward, _qexp_forward_fake)


def _qexp_backward(grad, probs, alpha, need_alpha):
    n_rows, n_classes = probs.shape
    _check_alpha("qexp_backward", alpha, n_rows)
    if grad.shape != probs.shape or grad.dtype != probs.dtype:
        raise ValueError(f"logitlab::qexp_backward: grad must match probs, got {tuple(grad.shape)} {grad.dtype} "
                         f"and {tuple(probs.shape)} {probs.dtype}")
    fn = _qexp_symbol("qexp_backward", "ll_qexp_bwd_", probs.dtype)
    grad = grad if n_classes <= 1 or grad.stride(1) == 1 else grad.contiguous()
    probs = probs if n_classes <= 1 or probs.stride(1) == 1 else probs.contiguous()
    out = empty_like_huge(probs)
    grad_alpha = torch.empty(n_rows if need_alpha else 0, dtype=torch.float64)
    lda = 0 if alpha.numel() == 1 else 1
    code = fn(grad.data_ptr(), grad.stride(0), probs.data_ptr(), probs.stride(0), out.data_ptr(), out.stride(0),
              n_rows, n_classes, alpha.data_ptr(), lda, grad_alpha.data_ptr() if need_alpha else None,
              threads_for(n_rows * n_classes))
    if code == -2:
        raise MemoryError("logitlab::qexp_backward: the qexp kernel could not allocate its scratch rows")
    return out, grad_alpha


def _qexp_backward_fake(grad, probs, alpha, need_alpha):
    return torch.empty_like(probs), probs.new_empty(probs.shape[0] if need_alpha else 0, dtype=torch.float64)


_define("qexp_backward(Tensor grad, Tensor probs, Tensor alpha, bool need_alpha) -> (Tensor, Tensor)",
        _qexp_backward, _qexp_backward_fake)


def _qexp_setup(ctx, inputs, output):
    _, alpha, *_ = inputs
    ctx.save_for_backward(output[0], alpha)


def _qexp_derivative(ctx, grad_probs, *unused):
    if torch.is_grad_enabled():
        raise RuntimeError("logitlab::qexp_forward: no double backward through the kernel op; the public maps "
                           "(entmax, entmax_with_info) have it")
    probs, alpha = ctx.saved_tensors
    need_alpha = bool(ctx.needs_input_grad[1])
    grad = grad_probs.to(probs.dtype).contiguous()
    out, grad_alpha = torch.ops.logitlab.qexp_backward(grad, probs, alpha, need_alpha)
    if not need_alpha:
        return out, None, None, None, None
    grad_alpha = grad_alpha.sum().reshape(alpha.shape) if alpha.numel() == 1 else grad_alpha.reshape(alpha.shape)
    return out, grad_alpha.to(alpha.dtype), None, None, None


torch.library.register_autograd("logitlab::qexp_forward", _qexp_derivative, setup_context=_qexp_setup,
                                lib=LIBRARY)


# --- the matmuls of linear_cross_entropy's chunks (gemm_*.c) ----------------------------------------
# Each writes into ``out`` and returns a 0-d int64 status: 0 done, otherwise declined (the
# caller then runs torch's matmul); the tensors are checked by the Python side (_native/gemm.py).

def _gemm(lib: str, function: str, tensors: tuple[Tensor, ...], sizes: tuple[int, int, int], extra: tuple) -> int:
    fn = symbol(lib, function)
    if fn is None:
        return -1
    matrices = [x for t in tensors for x in (t.data_ptr(), t.stride(0))]
    return int(fn(*matrices, *sizes, threads_for(sizes[1] * sizes[2]), *extra))


def _matmul_logits(out, h, weight, bias):
    name = _CODES[out.dtype]
    bias32 = None if bias is None else bias.to(torch.float32).contiguous()
    code = _gemm(f"gemm_{name}_logits", f"ll_logits_{name}", (out, h, weight), (h.shape[0], weight.shape[0],
                 h.shape[1]), (_ptr(bias32),))
    return _status(code, out)


def _matmul_grad_hidden(out, grad, weight):
    name = _CODES[out.dtype]
    code = _gemm(f"gemm_{name}_gh", f"ll_gh_{name}", (out, grad, weight), (grad.shape[0], grad.shape[1],
                 weight.shape[1]), ())
    return _status(code, out)


def _matmul_grad_weight(out, out_lo, grad, h, src, src_lo):
    rows, vocab = grad.shape
    extra = (_ptr(src), _ptr(src_lo), int(src is not None and src.dtype == torch.bfloat16), _ptr(out_lo),
             int(out.dtype == torch.bfloat16))
    return _status(_gemm("gemm_bf16_gw", "ll_gw_bf16", (out, grad, h), (rows, vocab, h.shape[1]), extra), out)


def _status_fake(out, *args):
    return out.new_empty((), dtype=torch.int64)


_define("matmul_logits_(Tensor(a!) out, Tensor h, Tensor weight, Tensor? bias) -> Tensor", _matmul_logits,
        _status_fake)
_define("matmul_grad_hidden_(Tensor(a!) out, Tensor grad, Tensor weight) -> Tensor", _matmul_grad_hidden,
        _status_fake)
_define("matmul_grad_weight_(Tensor(a!) out, Tensor(b!)? out_lo, Tensor grad, Tensor h, Tensor? src, "
        "Tensor? src_lo) -> Tensor", _matmul_grad_weight, _status_fake)
