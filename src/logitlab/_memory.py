"""Large CPU output buffers: reused from a small pool, backed by transparent huge pages.

On Linux, the first write into freshly allocated memory costs a page fault per page, and the
kernel zero-fills every page it maps. For a fused loss whose (N, V) gradient is written once,
that first touch costs about as much as the loss itself (``benchmarks/cross_entropy.py``
measures it: ``logitlab`` against ``logitlab_inplace``, which writes into memory already
mapped). Two things cut it:

* **Reuse.** A training step frees its (N, V) gradient before the next step asks for one of the
  same size. :func:`empty_like_huge` keeps up to ``SLOTS`` such buffers (anonymous ``mmap``
  regions, handed out through :func:`torch.frombuffer`) and hands a buffer out again only once no
  tensor uses it any more: every tensor and view made from it holds a reference to it, so a
  buffer is free exactly when the pool's own reference is the only one left. A reused buffer is
  mapped already: no fault, no zero-fill. The cost is that, as with torch's CUDA caching
  allocator, the freed buffers stay resident until :func:`empty_cache` (or
  ``logitlab.empty_cache()``) releases them; ``LOGITLAB_BUFFER_CACHE=0`` turns reuse off.
* **Huge pages.** When transparent huge pages are in ``madvise`` mode, advising a new buffer with
  ``MADV_HUGEPAGE`` before its first write makes each fault map 2 MiB instead of 4 KiB.

Where neither applies (another OS, a GPU or subclass tensor, a trace, a small buffer) this is
plain ``torch.empty``. The contents of the buffer are unspecified either way, as for
``torch.empty``: the kernels that use it write every element.
"""

from __future__ import annotations

import functools
import mmap
import os
import sys
import threading

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["empty_like_huge", "empty_cache", "cache_info"]

_HUGE_PAGE = 2 << 20
# Below this size the page faults are cheap and torch's allocator serves the buffer.
MIN_BYTES = 64 << 20
# Pool size: one for a loss's gradient, one more for a map's output while its gradient is
# written (sparsemax forward output + backward result).
SLOTS = 2
# A free buffer serves a request up to this much smaller than itself (varying sequence lengths).
_SLACK = 1.25

LINUX = sys.platform.startswith("linux")
_lock = threading.Lock()
_pool: list[mmap.mmap] = []  # least recently handed out first


def _ref_counts(bufs: list[mmap.mmap]) -> list[int]:
    return [sys.getrefcount(buf) for buf in bufs]


# The count of a region that only the pool holds: the list's reference, the loop variable's,
# getrefcount's argument. Measured, not assumed, since it differs between Python versions.
_FREE_REFS = _ref_counts([mmap.mmap(-1, mmap.PAGESIZE)])[0]


def _free(bufs: list[mmap.mmap]) -> list[mmap.mmap]:
    """The regions of ``bufs`` (the pool) that no tensor uses."""
    return [buf for buf, count in zip(bufs, _ref_counts(bufs)) if count == _FREE_REFS]


def _enabled() -> bool:
    return LINUX and os.environ.get("LOGITLAB_BUFFER_CACHE", "1") != "0"


@functools.lru_cache(maxsize=1)
def _thp() -> bool:
    """Whether advising huge pages can work here (read once, on the first large buffer)."""
    if not (LINUX and hasattr(mmap, "MADV_HUGEPAGE")):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def _new_region(nbytes: int) -> mmap.mmap:
    # Private (not mmap's default MAP_SHARED: shared memory has its own huge-page setting, and a
    # forked child would write into the parent's buffer); + one huge page, to start the tensor
    # on a 2 MiB boundary.
    buf = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if _thp():
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # advice only: failure changes nothing
            pass
    return buf


def _take(nbytes: int) -> mmap.mmap | None:
    """A free pooled region of at least ``nbytes`` (+ alignment), a new one, or None if all are in use."""
    with _lock:
        free = _free(_pool)
        fits = [buf for buf in free if nbytes + _HUGE_PAGE <= len(buf) <= _SLACK * nbytes + _HUGE_PAGE]
        if fits:
            best = min(fits, key=len)
            _pool.remove(best)
        else:
            if len(_pool) >= SLOTS:
                if not free:
                    return None
                _pool.remove(free[0])  # the least recently handed out
                free[0].close()
            best = _new_region(nbytes)
        _pool.append(best)
        return best


def _pooled(buf: mmap.mmap, shape: torch.Size, dtype: torch.dtype, numel: int) -> Tensor:
    address = torch.frombuffer(buf, dtype=torch.uint8, count=1).data_ptr()
    offset = -address % _HUGE_PAGE
    return torch.frombuffer(buf, dtype=dtype, count=numel, offset=offset).view(shape)


def _transformed() -> bool:
    """Whether a trace, a dispatch mode (FakeTensorMode, ...) or a torch.func transform is active:
    there torch.empty gives what the mode or transform expects, and a buffer of ours would not."""
    return (torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None
            or torch._C._functorch.peek_interpreter_stack() is not None)


def empty_like_huge(tensor: Tensor) -> Tensor:
    """``torch.empty_like(tensor)`` (contiguous); when large on CPU, a reused or huge-page buffer.

    Example:
        >>> x = torch.ones(3, 4)
        >>> empty_like_huge(x).shape, empty_like_huge(x).dtype
        (torch.Size([3, 4]), torch.float32)
    """
    shape, dtype = tensor.shape, tensor.dtype
    numel = tensor.numel()
    nbytes = numel * tensor.element_size()
    if (nbytes < MIN_BYTES or type(tensor) not in (torch.Tensor, torch.nn.Parameter)
            or tensor.device.type != "cpu" or not LINUX or _transformed()):
        return torch.empty(shape, dtype=dtype, device=tensor.device)
    buf = _take(nbytes) if _enabled() else None
    if buf is None:  # reuse off, or every pooled region in use: a region of its own, freed with it
        buf = _new_region(nbytes)
    return _pooled(buf, shape, dtype, numel)


def empty_cache() -> None:
    """Release the pooled CPU output buffers that no tensor uses (those in use stay pooled).

    logitlab's fused losses and sparse maps write their large CPU outputs (an (N, V) gradient,
    say) into buffers it reuses from one call to the next, as torch's CUDA caching allocator does
    for GPU memory; a freed buffer stays resident until this releases it.

    Example:
        >>> import logitlab
        >>> logitlab.empty_cache()
        >>> logitlab.cache_info()["free_bytes"]
        0
    """
    with _lock:
        for buf in _free(_pool):
            _pool.remove(buf)
            buf.close()


def cache_info() -> dict[str, int | bool]:
    """The pool of reused CPU output buffers: ``enabled``, ``buffers``, ``free_bytes`` (resident
    but unused, what :func:`empty_cache` would release) and ``used_bytes``.

    Example:
        >>> import logitlab
        >>> sorted(logitlab.cache_info())
        ['buffers', 'enabled', 'free_bytes', 'used_bytes']
    """
    with _lock:
        free = sum(map(len, _free(_pool)))
        return {"enabled": _enabled(), "buffers": len(_pool), "free_bytes": free,
                "used_bytes": sum(map(len, _pool)) - free}
