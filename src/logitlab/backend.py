"""Which implementation runs an op: one vocabulary for every op, decided in one place.

Every op with more than one implementation takes ``impl=`` with these values, which mean the same
everywhere:

* ``"auto"`` (the default): chosen by :func:`resolve` from the device, the dtype, the CPU's
  capability, the tensor kind and the op's needs (the table :data:`AUTO` and ``logitlab env``).
* ``"native"``: logitlab's compiled CPU kernels (C, built once per machine for the CPU's
  instruction-set level, see :mod:`logitlab._native`), called through ``torch.library`` ops.
  Plain CPU tensors of float32, bfloat16 or float16 only; anything else is an error naming the op.
* ``"torch"``: logitlab's own algorithm (one pass over the rows, chunks of a linear head)
  written in torch ops; any device, any floating dtype.
* ``"composite"``: the plain composition of differentiable torch ops (the naive computation:
  every intermediate materialized, e.g. the (N, V) logits of a linear head); autograd
  differentiates it, so it has higher-order gradients, gradients for target probabilities and
  class weights, and ``torch.func`` transforms.
* ``"triton"``: Triton kernels for CUDA tensors, where an op has them.

``LOGITLAB_NATIVE=0`` switches the native kernels off for the whole process ("auto" then picks
"torch"; an explicit ``impl="native"`` is an error). ``LOGITLAB_NATIVE_BUILD`` forces one build
of them (:func:`logitlab._native.selected_build`).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable

import torch
from torch import Tensor

from logitlab import _native
from logitlab._validation import fail, transforms_active

__all__ = ["IMPLS", "OPS", "AUTO", "resolve", "check_impl", "native_enabled", "triton_available",
           "auto_choices"]

IMPLS = ("auto", "native", "torch", "composite", "triton")

# The implementations each op has (besides "auto"). An op missing here has one implementation.
OPS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("native", "torch", "composite", "triton"),
    "poly1_cross_entropy": ("native", "torch", "composite"),
    "linear_cross_entropy": ("native", "torch", "composite", "triton"),
    "linear_cross_entropy_with_lse": ("native", "torch", "composite"),
    "linear_divergence_loss": ("native", "torch", "composite", "triton"),
    "sparsemax": ("native", "torch", "triton"),
    "entmax15": ("native", "torch", "triton"),
    "entmax": ("native", "torch"),
    "entmax_with_info": ("native", "torch"),
    # The Fenchel–Young losses of the sparse maps: ``impl`` is their map's.
    "sparsemax_loss": ("native", "torch"),
    "entmax15_loss": ("native", "torch"),
    "entmax_loss": ("native", "torch"),
    "vocab_parallel_cross_entropy": ("torch", "triton"),
    "vocab_parallel_kl_divergence": ("torch", "triton"),
}

# What "auto" picks, in the order :func:`resolve` tries it (the README's table says the same).
AUTO = (
    ("composite", "the call needs what only autograd gives: higher-order or target/class-weight gradients, a "
                  "torch.func transform, or (fused heads) logits small enough to materialize"),
    ("triton", "CUDA tensors, where the op has Triton kernels and triton imports"),
    ("native", "plain CPU tensors of float32/bfloat16/float16, the kernels built, and not listed in "
               "NATIVE_LOSES for the selected build"),
    ("torch", "everything else: other devices and dtypes, tensor subclasses, LOGITLAB_NATIVE=0"),
)

# (op, build) where "auto" leaves the op to "torch" because the native kernel does not win there
# (benchmarks/cross_entropy.py, benchmarks/sparse_normalizers.py and benchmarks/entmax_alpha.py
# measure each build). An op served by more than one kernel is keyed by the kernel instead
# (resolve's ``kernel``): α-entmax's rows below normalizers._qexp.DENSE_BELOW by "qexp".
NATIVE_LOSES: dict[tuple[str, str], str] = {}

# Names that earlier versions took, and what they are now.
_RENAMED = {"fused": "auto", "chunked": "auto", "naive": "composite"}


def native_enabled() -> bool:
    """Whether the native kernels may run at all (``LOGITLAB_NATIVE`` is not 0/false/no/off)."""
    return os.environ.get("LOGITLAB_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def triton_available() -> bool:
    """Whether the Triton package imports (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def check_impl(fn: str, impl: str, *, warn: bool = True, op: str | None = None) -> str:
    """``impl`` checked against what op ``op`` (default ``fn``, the name errors give) has; an
    earlier name maps to today's (with a ``FutureWarning`` if ``warn``)."""
    have = ("auto",) + OPS.get(op or fn, ())
    if isinstance(impl, str) and impl in _RENAMED and impl not in have:
        new = _RENAMED[impl]
        if warn:
            warnings.warn(f"{fn}(): impl={impl!r} is now impl={new!r} (impl takes 'auto', 'native', 'torch', "
                      f"'composite' on every op); the old name will be removed", FutureWarning, stacklevel=4)
        return new
    if not isinstance(impl, str) or impl not in have:
        fail(fn, "impl", "one of " + ", ".join(repr(x) for x in have), impl)
    return impl


def resolve(fn: str, impl: str, sample: Tensor, *, native: Callable[[], bool],
            composite: bool = False, op: str | None = None, kernel: str | None = None) -> str:
    """The implementation op ``fn`` runs for ``impl``: "native", "torch", "composite" or "triton".

    Args:
        fn: the public op's name (its row of :data:`OPS`).
        impl: the caller's choice, checked with :func:`check_impl`.
        sample: the tensor whose device, dtype and kind decide (the logits, or the hidden states).
        native: whether the native kernel takes these inputs (called only when it matters; it may
            build the kernel on first use, so it must not be called for tensors that are not
            plain CPU tensors).
        composite: the call needs the composite implementation ("auto" then picks it; an explicit
            "native" or "torch" is the caller's responsibility).
        op: the row of :data:`OPS` when it is not ``fn``'s (a loss that runs a map's kernels).
        kernel: the key of :data:`NATIVE_LOSES` when it is not the op's (an op whose inputs go to
            one of several kernels, e.g. "qexp" for α-entmax near and below α = 1).

    Raises:
        ValueError: an unknown ``impl``, or ``impl="native"`` / ``"triton"`` where it cannot run
            (naming the reason: the device, the tensor kind, the dtype, LOGITLAB_NATIVE=0, or a
            kernel that could not be built).
    """
    chosen = impl in ("fused", "chunked")  # the old names of the one-pass paths: never composite for size
    impl = check_impl(fn, impl, op=op)
    have = OPS.get(op or fn, ())
    if impl == "auto":
        if composite and "composite" in have and not (chosen and (op or fn).startswith("linear_")):
            return "composite"
        if transforms_active():
            return "composite" if "composite" in have else "torch"
        if sample.device.type == "cuda" and "triton" in have and triton_available():
            return "triton"
        if "native" in have and _native_ready(kernel or op or fn, sample, native):
            return "native"
        return "torch"
    if impl == "native":
        _require_native(fn, sample, native)
    elif impl == "triton":
        _require_triton(fn, sample)
    return impl


def _native_ready(op: str, sample: Tensor, native: Callable[[], bool]) -> bool:
    if not (_native.plain_cpu(sample) and sample.dtype in _native.DTYPE_CODES and _native_allowed(op)):
        return False
    return bool(native())


@torch.compiler.assume_constant_result
def _native_allowed(op: str) -> bool:
    """LOGITLAB_NATIVE allows the kernels and the selected build is not one where ``op``'s loses
    (a constant to torch.compile, which would otherwise trace the environment and /proc reads)."""
    return native_enabled() and (op, _native.selected_build()[0]) not in NATIVE_LOSES


def _require_native(fn: str, sample: Tensor, native: Callable[[], bool]) -> None:
    if not native_enabled():
        fail(fn, "impl", "'auto', 'torch' or 'composite' while LOGITLAB_NATIVE=0 switches the native kernels off",
             "native")
    if transforms_active():
        fail(fn, "impl", "'auto' or 'composite' inside a torch.func transform (the native kernels read raw "
             "memory, which a transform's wrapped tensors do not have)", "native")
    if not _native.plain_cpu(sample):
        where = (f"a {type(sample).__name__}" if type(sample) not in (Tensor, torch.nn.Parameter)
                 else f"a tensor on {sample.device}")
        fail(fn, "impl", "'native' only for plain CPU tensors", "native", detail=f"got {where}; use impl='auto'")
    if sample.dtype not in _native.DTYPE_CODES:
        fail(fn, "impl", "'native' only for float32, bfloat16 or float16 inputs", "native",
             detail=f"got {sample.dtype}; use impl='auto' or 'torch'")
    if not native():
        errors = [i.get("error") for i in _native.status().values() if i.get("error")]
        fail(fn, "impl", "'native' where the native kernel is built", "native",
             detail=(errors[0] if errors else "the kernel does not take these inputs") + "; use impl='auto'")


def _require_triton(fn: str, sample: Tensor) -> None:
    if not triton_available():
        fail(fn, "impl", "'triton' only where the triton package is installed", "triton")
    interpreted = sample.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if sample.device.type != "cuda" and not interpreted:
        fail(fn, "impl", "'triton' only for CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)", "triton",
             detail=f"got a tensor on {sample.device}")


def auto_choices(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float64)
                 ) -> dict[str, dict[str, str]]:
    """What "auto" picks for each op of :data:`OPS` on plain CPU tensors of each dtype on this machine
    (the fused heads' logits taken large, so not materialized): {op: {dtype name: impl}}; α-entmax
    has a second row per op for its α below ``normalizers._qexp.DENSE_BELOW`` (the qexp kernel).
    It builds the native kernels it asks about (``logitlab env`` prints it)."""
    from logitlab._native import qexp as native_qexp
    from logitlab._native import sparse as native_sparse
    from logitlab._native import xent as native_xent
    from logitlab.normalizers._qexp import DENSE_BELOW

    def row(op: str, probe: Callable[[Tensor], bool], kernel: str | None = None) -> dict[str, str]:
        picks = {}
        for dtype in dtypes:
            sample = torch.empty(0, 0, dtype=dtype)
            picks[str(dtype).removeprefix("torch.")] = resolve(op, "auto", sample, native=lambda s=sample: probe(s),
                                                               kernel=kernel)
        return picks

    table: dict[str, dict[str, str]] = {}
    for op in OPS:
        probe = native_sparse.supports if op.startswith(("sparsemax", "entmax")) else native_xent.supports
        table[op] = row(op, probe)
        if op in ("entmax", "entmax_with_info"):
            table[f"{op} (alpha < {DENSE_BELOW})"] = row(op, native_qexp.supports, kernel="qexp")
    return table
