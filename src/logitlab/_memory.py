"""Fresh large CPU buffers backed by transparent huge pages where the kernel allows it.

On Linux, writing into freshly allocated memory costs one page fault per 4 KiB page; for an
(N, V) gradient those faults, not the arithmetic, are most of a fused loss's time.
When transparent huge pages are in ``madvise`` mode, advising the new buffer with
``MADV_HUGEPAGE`` before its first write makes each fault map 2 MiB instead, so a fresh buffer
is written several times faster (``benchmarks/cross_entropy.py`` measures it: ``logitlab``, whose
gradient is such a buffer, against ``logitlab_inplace``). Where that is unavailable (another OS, a GPU tensor,
THP disabled, a small buffer) this is plain ``torch.empty``: the values and the result are the
same either way; only the speed of the first write differs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch
from torch import Tensor

__all__ = ["empty_like_huge"]

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
# Below this size the page faults are cheap and the buffer may come from the allocator's pool.
_MIN_BYTES = 64 << 20


@functools.lru_cache(maxsize=1)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


def empty_like_huge(tensor: Tensor) -> Tensor:
    """``torch.empty_like(tensor)`` (contiguous), advised to use huge pages when large on CPU.

    Example:
        >>> x = torch.ones(3, 4)
        >>> empty_like_huge(x).shape, empty_like_huge(x).dtype
        (torch.Size([3, 4]), torch.float32)
    """
    out = torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
    size = out.numel() * out.element_size()
    if out.device.type != "cpu" or size < _MIN_BYTES or torch.compiler.is_compiling():
        return out
    madvise = _madvise()
    if madvise is not None:
        ptr = out.data_ptr()
        start = -(-ptr // _HUGE_PAGE) * _HUGE_PAGE
        end = (ptr + size) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)  # advice only: failure changes nothing
    return out
