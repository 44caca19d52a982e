"""Triton kernels for CUDA tensors (and for CPU tensors under Triton's interpreter).

The kernels use ``tl.*`` math only (no libdevice), so that every one of them also runs on CPU
tensors with ``TRITON_INTERPRET=1``: that is how CPU CI holds them to the float64 reference.

Each kernel is created (``triton.jit``) on first use and once per mode, compiled or interpreted:
Triton decides which when a function is decorated, from ``TRITON_INTERPRET`` at that moment, so a
process (a test session) that turns the interpreter on for some calls and off for others gets the
kernel it asks for each time.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from logitlab._validation import fail

__all__ = ["available", "interpreting", "usable_on", "check_usable", "jit"]


_IMPORT: list[str | None] = []  # [None] once triton imported, [message] once it failed


def _import_error() -> str | None:
    if not _IMPORT:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
        except Exception as error:  # ImportError, or a broken install raising something else
            _IMPORT.append(f"{type(error).__name__}: {error}")
        else:
            _IMPORT.append(None)
    return _IMPORT[0]


def available() -> bool:
    """Whether ``import triton`` works in this process."""
    return _import_error() is None


def interpreting() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def usable_on(tensor: Tensor) -> bool:
    """Whether the Triton kernels can run on ``tensor``: triton imports, and the tensor is on a
    CUDA device, or on the CPU with the interpreter on."""
    if not available():
        return False
    if tensor.device.type == "cuda":
        return True
    return tensor.device.type == "cpu" and interpreting()


def check_usable(fn: str, name: str, tensor: Tensor) -> None:
    """Raise (naming ``fn`` and the argument ``name``) where impl='triton' cannot run on ``tensor``."""
    if not available():
        fail(fn, "impl", "an impl other than 'triton' (triton does not import here)", "triton",
             kind=RuntimeError, detail=_import_error())
    if not usable_on(tensor):
        fail(fn, name, "a CUDA tensor for impl='triton' (CPU tensors only under TRITON_INTERPRET=1)",
             f"<tensor on {tensor.device}>")


_CACHE: dict[tuple[str, bool], object] = {}


def jit(fn):
    """A getter of ``triton.jit(fn)`` for the current mode (compiled / interpreted), decorated
    once per mode. ``fn`` is a plain module-level function written in Triton's language."""

    def get():
        key = (f"{fn.__module__}.{fn.__qualname__}", interpreting())
        kernel = _CACHE.get(key)
        if kernel is None:
            import triton

            kernel = _CACHE[key] = triton.jit(fn)
        return kernel

    get.__name__ = fn.__name__
    get.__doc__ = fn.__doc__
    return get


def is_cuda(tensor: Tensor) -> bool:
    return tensor.device.type == "cuda"


def compute_tl_dtype(dtype: torch.dtype):
    """The Triton dtype a kernel computes in for inputs of ``dtype``: float64 stays float64,
    everything else (float32, bfloat16, float16) is computed in float32."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32
