"""A compiled backward run with ``create_graph=True`` raises, naming logitlab's function.

torch.compile differentiates a compiled graph once (AOTAutograd has no double backward). When
the backward of a compiled graph runs with ``create_graph=True``, AOTAutograd runs the compiled
backward inside an autograd Function of its own (``CompiledFunctionBackward``), whose backward
raises, with a placeholder input so that the first derivative reports ``requires_grad``. That
first derivative is not connected to the inputs: ``torch.autograd.grad(first.sum(), x)`` then
says that ``x`` "appears to not have been used in the graph", with ``allow_unused=True`` it
returns None, and a Hessian-vector product or a gradient penalty built on it fails far from the
cause, or (None taken as zero) silently.

The backward formulas of logitlab's custom ops pass one of their tensors through
:func:`no_double_backward`, an operator that returns a copy of it (pick a small one: a scalar,
one value per row) and, when it runs inside that wrapper, that is, in a compiled backward asked
for a graph, raises a ``RuntimeError`` naming the public function instead. Eagerly the same
formulas already raise on ``create_graph=True`` (``torch.is_grad_enabled()`` in the backward),
so both paths fail at the same place with the same kind of message.

The wrapper is recognised by its frame on the Python stack (its ``forward`` takes
``double_ctx``, in AOTAutograd's runtime wrappers): torch has no public flag for "this backward
builds a graph" that code inside the compiled backward could read (grad mode is off inside any
autograd Function's forward). If a torch release renames the wrapper, the check finds nothing and
torch's own behaviour comes back; ``tests/test_compile.py`` then fails, naming this module.

Defined with ``torch.library.Library`` (not ``custom_op``), like the native operators: the first
eager call of a ``custom_op`` imports ``torch._dynamo``, and eager backward formulas call this.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

__all__ = ["no_double_backward", "in_compiled_double_backward"]

_LIBRARY = torch.library.Library("logitlab", "FRAGMENT")
_LIBRARY.define("no_double_backward(Tensor tangent, Tensor carry, str fn, str hint) -> Tensor")

# Frames between the operator's kernel and the wrapper: the compiled backward's call chain (the
# FX module or Inductor's generated code, the dispatcher's Python entry) is well under this.
_MAX_DEPTH = 96


def in_compiled_double_backward() -> bool:
    """Whether the caller runs inside AOTAutograd's wrapper of a compiled backward that was
    asked for a graph (``create_graph=True``)."""
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name == "forward" and code.co_varnames[:1] == ("double_ctx",) \
                and "_aot_autograd" in code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


def _kernel(tangent: Tensor, carry: Tensor, fn: str, hint: str) -> Tensor:
    if in_compiled_double_backward():
        raise RuntimeError(f"{fn}(): no double backward (create_graph=True) through a torch.compile'd call: "
                           f"torch.compile differentiates a compiled graph once, so the first derivative would "
                           f"not be connected to the inputs; {hint}")
    return carry.clone()


_LIBRARY.impl("no_double_backward", _kernel, "CompositeExplicitAutograd")
torch.library.register_fake("logitlab::no_double_backward", lambda tangent, carry, fn, hint: torch.empty_like(carry),
                            lib=_LIBRARY)


def no_double_backward(tangent: Tensor, fn: str, hint: str, carry: Tensor | None = None) -> Tensor:
    """``carry`` (default ``tangent``), copied, or a RuntimeError naming ``fn`` in a compiled
    backward asked for a graph (see the module). ``tangent`` must be an incoming gradient of
    the backward formula, so that the operator lands in the backward graph (and runs when the
    backward runs); ``carry`` a small tensor the formula then uses in its place."""
    return torch.ops.logitlab.no_double_backward(tangent, tangent if carry is None else carry, fn, hint)
