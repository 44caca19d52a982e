"""Native (C) kernels: compiled once per machine on first use, cached, loaded with ctypes.

Why C through ctypes rather than torch.compile or a torch C++ extension: the kernels are
plain loops over raw memory (one file each, portable SIMD through GCC/Clang vector
extensions, see ``vec.h``), so they need no torch headers and one quick compile covers every
option set, where an inductor kernel pays a much longer cold compile for each (a C++ extension
would compile torch's headers as well).
Builds: each kernel is compiled for a named instruction-set level, not ``-march=native`` (which
made a different binary on every host, and left the AVX2 code untested on AVX-512 machines):
on x86-64 ``avx512bf16`` (x86-64-v4 + AVX512-BF16), ``avx512`` (x86-64-v4), ``avx2``
(x86-64-v3: AVX2, FMA, F16C, BMI) and ``portable`` (baseline x86-64); elsewhere (ARM, ...)
``portable`` alone. The best build the CPU can execute is used (:func:`selected_build`), unless
:func:`use_build` or ``LOGITLAB_NATIVE_BUILD`` forces another one it can execute: so tests and
benchmarks on an AVX-512 machine also run the AVX2 and portable builds. The AVX-512 matmul
kernels (``gemm_*.c``) exist only in the builds that have their instructions; in the others
they report themselves unavailable and torch's matmuls run.

The compiled library is cached under ``$LOGITLAB_CACHE_DIR`` (default
``$XDG_CACHE_HOME/logitlab`` or ``~/.cache/logitlab``), keyed by the source, the compiler, the
build's flags and the platform, so a first call on a machine pays the compile once and every
later process loads it in milliseconds. The size and SHA-256 of each
library are recorded beside it at build time and checked before it is loaded: a truncated or
damaged file (which would crash the loading process) is rebuilt, not trusted. Builds hold a
lock file, so that processes sharing an empty cache compile once; the files are readable by
every user of a shared cache.

Where compiling is impossible (no C compiler, an unsupported platform, a read-only cache) or
``LOGITLAB_NATIVE=0`` is set, :func:`load` returns None after one warning and the ops use
their eager torch path, which gives the same results (tests hold both to the same float64
truth).

Threads: the kernels are built with ``-fopenmp``. torch's CPU wheels ship libgomp, and a
library loaded into the same process binds to that same runtime (same soname), so a kernel's
parallel loop runs on the threads torch's own ops use, with ``torch.get_num_threads()`` of
them; a second thread pool would fight torch's spinning OpenMP workers for the cores (measured:
3x slower end to end on 2 cores). Where ``-fopenmp`` does not build, the kernel runs serially.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = ["load", "symbol", "status", "threads_for", "cache_dir", "source_dir", "DTYPE_CODES",
           "NativeUnavailableWarning", "plain_cpu", "Build", "builds", "supported_builds", "selected_build",
           "use_build", "cpu_flags", "kernel_ready"]

_HERE = Path(__file__).resolve().parent
FLAGS = ("-O3", "-fPIC", "-shared", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math")
OPENMP = "-fopenmp"
_V4 = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"})
_V3 = frozenset({"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm"})


class Build(NamedTuple):
    """A named instruction-set level: its compiler flags and the CPU flags it needs."""

    name: str
    flags: tuple[str, ...]
    needs: frozenset[str]


# Best first. The names are what `use_build`, LOGITLAB_NATIVE_BUILD and `logitlab env` use.
X86_BUILDS = (
    Build("avx512bf16", ("-march=x86-64-v4", "-mavx512bf16"), _V4 | {"avx512_bf16"}),
    Build("avx512", ("-march=x86-64-v4",), _V4),
    Build("avx2", ("-march=x86-64-v3",), _V3),
    Build("portable", ("-march=x86-64",), frozenset()),
)
OTHER_BUILDS = (Build("portable", (), frozenset()),)

_lock = threading.Lock()
_libs: dict[tuple[str, str], ctypes.CDLL | None] = {}
_info: dict[tuple[str, str], dict] = {}  # by (kernel, selected build)
_warned: set[str] = set()
_symbols: dict[tuple[str, str, str], object] = {}
_forced: list[str] = []  # the stack of use_build() overrides
# The storage types the kernels are instantiated for, by the suffix of their C names.
DTYPE_CODES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


class NativeUnavailableWarning(RuntimeWarning):
    """The native kernels could not be built or loaded; the eager torch path is used instead."""


def cache_dir() -> Path:
    """Where compiled kernels are kept (created on demand)."""
    root = os.environ.get("LOGITLAB_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "logitlab"


def source_dir() -> Path:
    """Where the kernels' C sources live (inside the installed package)."""
    return _HERE


def _enabled() -> bool:
    return os.environ.get("LOGITLAB_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where it cannot be read); read
    once per process, since every kernel call asks which build is selected."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def builds() -> tuple[Build, ...]:
    """Every build of this platform, best first."""
    return X86_BUILDS if platform.machine().lower() in ("x86_64", "amd64") else OTHER_BUILDS


def supported_builds() -> list[str]:
    """The builds this CPU can execute, best first (``portable`` always)."""
    return list(_supported())


@functools.lru_cache(maxsize=None)
def _supported() -> tuple[str, ...]:
    have = cpu_flags()
    return tuple(b.name for b in builds() if b.needs <= have)


def selected_build() -> tuple[str, str]:
    """The build the kernels use now, and why: forced by :func:`use_build`, forced by
    ``LOGITLAB_NATIVE_BUILD`` (read at each call, so a benchmark's subprocess can set it), or
    the best one the CPU can execute."""
    supported = _supported()
    if _forced:
        return _forced[-1], "forced by use_build()"
    wanted = os.environ.get("LOGITLAB_NATIVE_BUILD", "").strip()
    if wanted:
        if wanted not in supported:
            raise ValueError(f"LOGITLAB_NATIVE_BUILD={wanted!r}: expected one of the builds this CPU can "
                             f"execute ({', '.join(supported)})")
        return wanted, "forced by LOGITLAB_NATIVE_BUILD"
    return supported[0], _best_reason(supported[0])


@functools.lru_cache(maxsize=None)
def _best_reason(best: str) -> str:
    needs = sorted(next(b for b in builds() if b.name == best).needs)
    return "the best this CPU executes" + (f" (it has {', '.join(needs)})" if needs else "")


@contextlib.contextmanager
def use_build(name: str):
    """Run the kernels of build ``name`` inside the block (tests and benchmarks force each build
    the CPU can execute this way).

    Example:
        >>> with use_build("portable"):
        ...     selected_build()[0]
        'portable'
    """
    supported = supported_builds()
    if name not in supported:
        raise ValueError(f"use_build(): argument 'name' expected one of the builds this CPU can execute "
                         f"({', '.join(supported)}), got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def _for_kernel(name: str, build: Build) -> Build:
    """The build a kernel is compiled as: AVX512-BF16 changes only the bf16 matmul kernels, so
    the others share the plain AVX-512 binary instead of compiling a copy."""
    if build.name == "avx512bf16" and not name.startswith("gemm_bf16"):
        return next(b for b in builds() if b.name == "avx512")
    return build


def _key(name: str, cc: str, build: Build) -> str:
    h = hashlib.sha256()
    for path in sorted(_HERE.glob("*.h")) + [_HERE / f"{name}.c"]:
        h.update(path.read_bytes())
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    for part in (version, " ".join(FLAGS + build.flags), OPENMP, sys.platform, platform.machine()):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _digest(path: Path) -> dict:
    """The size and SHA-256 of a compiled file, as recorded beside it at build time."""
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _intact(target: Path, record: Path) -> bool:
    """Whether ``target`` is the file that was built: a truncated or overwritten library (a full
    disk, a crash mid-copy, another tool) would crash the process that loads it (SIGBUS)."""
    try:
        return json.loads(record.read_text()) == _digest(target)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _build_lock(path: Path):
    """An exclusive lock on ``path`` across processes (one compiles, the others wait and load);
    none where the cache is read-only (then a missing or damaged library cannot be rebuilt)."""
    try:
        import fcntl

        handle = open(path, "a+")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile(cc: str, name: str, target: Path, build: Build) -> None:
    """Build ``<name>.c`` into ``target``, then record its size and hash beside it."""
    # Build beside the target and rename: concurrent processes never load a partial file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for extra in ([OPENMP], []):  # without OpenMP (serial) if the compiler lacks it
            done = subprocess.run([cc, *FLAGS, *build.flags, *extra, "-I", str(_HERE), "-o", tmp,
                                   str(_HERE / f"{name}.c"), "-lm"], capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                break
        if done.returncode != 0:
            raise OSError(f"{cc} failed on {name}.c: {done.stderr.strip()[-2000:]}")
        # mkstemp made the file 0600: readable by every user, so that a shared cache works.
        os.chmod(tmp, 0o755)
        record = target.with_suffix(".json")
        record_tmp = Path(tmp).with_suffix(".json")
        record_tmp.write_text(json.dumps(_digest(Path(tmp))))
        os.chmod(record_tmp, 0o644)
        os.replace(record_tmp, record)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, str(Path(tmp).with_suffix(".json"))):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _build(name: str, build: Build, why: str) -> tuple[ctypes.CDLL, dict]:
    if not sys.platform.startswith(("linux", "darwin")):
        raise OSError(f"native kernels are built on Linux and macOS only, not {sys.platform}")
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler found (tried $CC, cc, gcc, clang)")
    target = cache_dir() / f"{name}-{build.name}-{_key(name, cc, build)}.so"
    record = target.with_suffix(".json")
    info = {"name": name, "path": str(target), "compiler": cc, "compiled": False, "compile_s": 0.0,
            "build": build.name, "why": why}
    if not _intact(target, record):
        target.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(target.with_suffix(".lock")):
            if not _intact(target, record):  # another process may have built it meanwhile
                start = time.perf_counter()
                _compile(cc, name, target, build)
                info.update(compiled=True, compile_s=time.perf_counter() - start)
    return ctypes.CDLL(str(target)), info


def load(name: str) -> ctypes.CDLL | None:
    """The compiled library ``<name>.c`` of the selected build, or None (after one warning) when
    it cannot be had."""
    if not _enabled():
        return None
    build_name, why = selected_build()
    lib = _libs.get((name, build_name), False)
    if lib is not False:
        return lib  # type: ignore[return-value]
    with _lock:
        if (name, build_name) in _libs:
            return _libs[(name, build_name)]
        build = _for_kernel(name, next(b for b in builds() if b.name == build_name))
        try:
            lib, info = _build(name, build, why)
        except (OSError, subprocess.SubprocessError) as error:
            lib, info = None, {"name": name, "error": str(error), "build": build_name, "why": why}
            if name not in _warned:
                _warned.add(name)
                warnings.warn(f"logitlab: native kernel '{name}' unavailable ({error}); using the eager "
                              "torch path (same results, slower). Set LOGITLAB_NATIVE=0 to silence.",
                              NativeUnavailableWarning, stacklevel=3)
        _libs[(name, build_name)] = lib
        _info[(name, build_name)] = info
        return lib


def symbol(name: str, function: str):
    """The typed C function ``function`` of library ``<name>.c`` (selected build), or None when it
    is unavailable. Its argument and return types come from its definition in the C source
    (:func:`logitlab._native.prototypes.prototype`), declared nowhere else."""
    key = (name, selected_build()[0], function)
    fn = _symbols.get(key)
    if fn is None:
        lib = load(name)
        if lib is None:
            return None
        from logitlab._native.prototypes import prototype

        restype, argtypes = prototype(name, function)
        fn = getattr(lib, function)
        fn.argtypes = list(argtypes)
        fn.restype = restype
        _symbols[key] = fn
    return fn


@torch.compiler.assume_constant_result
def kernel_ready(name: str, function: str) -> bool:
    """Whether ``function`` of kernel ``name`` is built and loaded for the selected build (building
    it on first use). A constant to ``torch.compile``: the compiler calls it while tracing
    instead of tracing into ctypes."""
    return symbol(name, function) is not None


def status() -> dict[str, dict]:
    """What :func:`load` did per kernel for the selected build: path, build and why, compiler,
    whether it compiled now and how long, or the error."""
    build = selected_build()[0]
    return {name: dict(info) for (name, of), info in _info.items() if of == build}


def plain_cpu(tensor: torch.Tensor) -> bool:
    """Whether a kernel may read ``tensor``'s memory: a plain CPU tensor (or Parameter), or a
    FakeTensor standing for one under ``torch.compile`` (so that tracing takes the same path).

    A tensor subclass such as a DTensor has no storage of its own (``data_ptr()`` is 0): a kernel
    reading it crashed the process, so such tensors take the torch path instead.
    """
    if tensor.device.type != "cpu":
        return False
    if type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return True
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


# Below this many elements a kernel runs on one thread: waking the others costs more.
SERIAL_ELEMENTS = 1 << 16


def threads_for(elements: int) -> int:
    """How many threads a kernel call over ``elements`` values should use."""
    return 1 if elements <= SERIAL_ELEMENTS else max(1, torch.get_num_threads())
