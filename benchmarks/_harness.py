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
* ``row(op, impl, shape, dtype, time_ms=..., peak_mem_mib=...)``: one measurement in the shared
  record schema (below); ``write_records(path, detail, rows=rows)``: the results file.

The record schema (``SCHEMA``), one row per (op, implementation, shape, dtype) measured::

    op, impl, shape, dtype          what ran: the public op, the implementation (ours or a peer's
                                    name), the shape as a list of ints, the dtype's name
    time_ms                         {p10, p50, p90, min, max, n} of the timed calls, or None
    peak_mem_mib                    the extra peak memory of one call (MiB), or None
    cpu_model, cpu_flags, build     the machine: /proc/cpuinfo's model name, the flags that
                                    choose kernels (``CPU_FLAGS``), the native build that ran
    torch_version, commit           the software: torch, and this repository's commit
                                    (``+dirty`` with uncommitted changes)
    extra                           what the script adds (peer, ratios, errors, ...)

A results file is ``{"schema", "benchmark", "rows", "detail"}``, where ``detail`` is the
script's own record of the run. ``benchmarks/render_docs.py`` turns the rows of any number of
results files, from any number of machines, into docs/benchmarks.md, one section per machine.

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
ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SCHEMA = "logitlab-bench/1"
ROW_FIELDS = ("op", "impl", "shape", "dtype", "time_ms", "peak_mem_mib", "cpu_model", "cpu_flags", "build",
              "torch_version", "commit", "extra")
TIME_FIELDS = ("p10", "p50", "p90", "min", "max", "n")


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


def _percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between order statistics."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(times_ms: list[float]) -> dict:
    """``{"median_ms", "min_ms", "max_ms", "p10_ms", "p90_ms", "n"}`` of times in milliseconds."""
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms),
            "p10_ms": _percentile(times_ms, 0.1), "p90_ms": _percentile(times_ms, 0.9), "n": len(times_ms)}


def time_stats(times: list[float] | dict | None) -> dict | None:
    """The schema's ``time_ms`` from a list of times (ms) or a :func:`summarize` dict (None: None).

    A summary without percentiles (a script that kept only median, min and max) gives None for
    p10 and p90 rather than inventing them.
    """
    if times is None:
        return None
    if not isinstance(times, dict):
        times = summarize(list(times))
    return {"p10": times.get("p10_ms"), "p50": times["median_ms"], "p90": times.get("p90_ms"),
            "min": times.get("min_ms"), "max": times.get("max_ms"), "n": times.get("n")}


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
            "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
            # The settings that change how fresh memory is served, which large calls' times depend on.
            "memory_env": {key: value for key, value in sorted(os.environ.items())
                           if key.startswith("MALLOC_") or key == "LOGITLAB_BUFFER_CACHE"}}


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


_CONTEXT: dict = {}


def commit() -> str:
    """This repository's commit (``+dirty`` when tracked files differ from it), or ``unknown``."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--"], capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty.returncode else "")


def context() -> dict:
    """The machine and software fields every row carries (read once per process)."""
    if not _CONTEXT:
        import torch

        from logitlab import _native

        _CONTEXT.update(cpu_model=cpu_model(), cpu_flags=sorted(_native.cpu_flags() & CPU_FLAGS),
                        build=_native.selected_build()[0], torch_version=torch.__version__, commit=commit())
    return dict(_CONTEXT)


def row(op: str, impl: str, shape, dtype: str, *, time_ms: list[float] | dict | None = None,
        peak_mem_mib: float | None = None, build: str | None = None, **extra) -> dict:
    """One measurement in the record schema (see the module docstring).

    ``time_ms``: the timed calls in ms, or a :func:`summarize` dict; ``build``: the native build
    that ran when the script forced one (default: the build selected in this process); ``extra``:
    anything else the script records (JSON-serializable).
    """
    out = {"op": op, "impl": impl, "shape": [int(s) for s in shape], "dtype": str(dtype).replace("torch.", ""),
           "time_ms": time_stats(time_ms), "peak_mem_mib": None if peak_mem_mib is None else float(peak_mem_mib),
           **context(), "extra": extra}
    if build:
        out["build"] = build
    return out


def check_rows(rows: list[dict]) -> None:
    """Raise ValueError naming the first row that lacks a schema field or has a malformed one."""
    for i, r in enumerate(rows):
        missing = [f for f in ROW_FIELDS if f not in r]
        if missing:
            raise ValueError(f"write_records(): row {i} ({r.get('op')}, {r.get('impl')}) lacks {missing}")
        if r["time_ms"] is not None and set(r["time_ms"]) != set(TIME_FIELDS):
            raise ValueError(f"write_records(): row {i} time_ms expected the fields {TIME_FIELDS}, got "
                             f"{sorted(r['time_ms'])}")
        if r["time_ms"] is None and r["peak_mem_mib"] is None and "status" not in r["extra"]:
            raise ValueError(f"write_records(): row {i} ({r['op']}, {r['impl']}) has neither a time nor a memory "
                             "figure nor a status saying why")


def write_records(path: str | os.PathLike, detail: object, *, rows: list[dict], benchmark: str | None = None) -> Path:
    """Write the results file ``{"schema", "benchmark", "rows", "detail"}`` to ``path``; return the path.

    ``rows`` are :func:`row` records (checked against the schema); ``detail`` is the script's own
    record of the run; ``benchmark`` defaults to the file's stem.
    """
    check_rows(rows)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": SCHEMA, "benchmark": benchmark or out.stem, "rows": rows, "detail": detail}
    out.write_text(json.dumps(data, indent=1))
    return out
