"""Measuring machinery shared by the benchmark scripts (see /work/shared/BENCHMARKING.md).

* ``reset_peak()`` / ``rss_kib()`` / ``peak_extra_mib(fn)``: the extra resident memory of one
  call, in a fresh process after warm-up: glibc trimmed (fixed mmap threshold, ``malloc_trim``),
  the kernel's high-water mark reset by writing ``5`` to ``/proc/self/clear_refs``, RSS read
  before the call and the high-water mark after it.
* ``time_interleaved(calls, repeats, warmup)``: A B A B ... timing after a warm-up, median, min
  and max in milliseconds; ``summarize(times_ms)`` for scripts that collect their own times.
* ``forward_backward(fn, x, grad_out)``: one timed forward + backward of a map of one tensor.
* ``run_worker(script, args)``: run ``script`` in a fresh process with ``src`` on PYTHONPATH and
  return the JSON object on the last line of its output.
* ``machine_info()``: the fields about the machine and torch that the JSON records carry.
* ``write_records(path, data)``: JSON to ``path`` (parent made), returning the path.

Only the standard library at import time (torch is imported where needed), so a script's worker
process pays for nothing it does not use.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

M_MMAP_THRESHOLD = -3
SRC = Path(__file__).resolve().parents[1] / "src"


def reset_peak() -> str:
    """Trim glibc and reset the kernel's RSS high-water mark; return the method that worked.

    ``"clear_refs"`` when both steps worked, ``"no-trim"`` without glibc, ``"lifetime-peak"`` when
    the high-water mark could not be reset (then a later peak is the process's lifetime peak).
    """
    method = "clear_refs"
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)  # fixed at 1 MiB: big blocks go back to the OS on free
        libc.malloc_trim(0)
    except OSError:
        method = "no-trim"
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        method = "lifetime-peak"
    return method


def rss_kib(field: str = "VmRSS") -> int:
    """A memory field of /proc/self/status in KiB: ``VmRSS`` (now) or ``VmHWM`` (peak)."""
    field = field.rstrip(":")
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn: Callable[[], object]) -> tuple[float, object, str]:
    """Run ``fn()`` once after ``reset_peak()``; return (extra peak MiB, fn's result, method)."""
    method = reset_peak()
    before = rss_kib("VmRSS")
    result = fn()
    peak = rss_kib("VmHWM")
    return (peak - before) / 1024, result, method


def summarize(times_ms: list[float]) -> dict:
    """``{"median_ms", "min_ms", "max_ms"}`` of a list of times in milliseconds."""
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms)}


def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time zero-argument callables interleaved (A B A B ...) after ``warmup`` rounds of each.

    Returns ``{name: {"median_ms", "min_ms", "max_ms"}}``.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: summarize(t) for name, t in times.items()}


def forward_backward(fn, x, grad_out):
    """``fn(x)`` then backward of ``grad_out``, on a fresh leaf: (seconds, output, input gradient)."""
    xi = x.detach().requires_grad_()
    start = time.perf_counter()
    out = fn(xi)
    out.backward(grad_out)
    return time.perf_counter() - start, out.detach(), xi.grad


def run_worker(script: str | os.PathLike, args: list[str]) -> dict:
    """Run ``script args`` in a fresh Python (``src`` first on PYTHONPATH); its last stdout line as JSON.

    Raises RuntimeError with the worker's stderr when it exits non-zero.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), *args], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    """Machine and torch fields for a results file (torch imported here, not at module import)."""
    import torch

    from logitlab import _native

    return {"torch_version": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(), "cpu_flags": sorted(_native.cpu_flags() & CPU_FLAGS),
            "native_builds": _native.supported_builds(),
            "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE", "")}


# The CPU flags that decide which kernels and builds run (recorded with every benchmark).
CPU_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16", "asimd"})


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def write_records(path: str | os.PathLike, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path`` (its folder made if missing); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    return out
