"""Triton kernels for CUDA tensors (and for CPU tensors under Triton's interpreter).

The kernels use ``tl.*`` math only (no libdevice), so that every one of them also runs on CPU
tensors with ``TRITON_INTERPRET=1``: that is how CPU CI holds them to the float64 reference
(tests/triton). Whether an op runs them is decided by :func:`logitlab.backend.resolve`
(``impl="triton"``, or ``"auto"`` for CUDA tensors where triton imports); the modules here are
imported only then, so a machine without triton never imports it.

Each kernel is decorated (``triton.jit``) on first use, once per mode (compiled / interpreted),
so a process that runs both gets the kernel it asks for each time. (Triton's own language
helpers are decorated when ``triton`` is imported, so the interpreter must be on from then:
the tests start a process of their own for it.)
"""

from __future__ import annotations

import os

import torch

__all__ = ["interpreting", "jit", "compute_tl_dtype"]


def interpreting() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_CACHE: dict[tuple[str, bool], object] = {}


def _decorated(fn, mode: bool):
    key = (f"{fn.__module__}.{fn.__qualname__}", mode)
    out = _CACHE.get(key)
    if out is None:
        import triton

        out = _CACHE[key] = triton.jit(fn)
    return out


def jit(fn, *, helpers=()):
    """A getter of ``triton.jit(fn)`` for the current mode (compiled / interpreted), decorated
    once per mode. ``fn`` is a plain module-level function written in Triton's language.

    ``helpers``: the device functions ``fn`` calls (plain functions in Triton's language, such as
    those of :mod:`logitlab._triton.rows`). The kernel finds them by name in its module's globals
    when it is compiled or interpreted, so each call of the getter binds those names there to the
    helpers decorated for the same mode as the kernel."""

    def get():
        mode = interpreting()
        scope = fn.__globals__
        for h in helpers:
            scope[h.__name__] = _decorated(h, mode)
        return _decorated(fn, mode)

    get.__name__ = fn.__name__
    get.__doc__ = fn.__doc__
    return get


def compute_tl_dtype(dtype: torch.dtype):
    """The Triton dtype a kernel computes in for inputs of ``dtype``: float64 stays float64,
    everything else (float32, bfloat16, float16) is computed in float32."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32
