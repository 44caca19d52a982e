"""Native (C) kernels: compiled once per machine on first use, cached, loaded with ctypes.

Why C through ctypes rather than torch.compile or a torch C++ extension: the kernels are
plain loops over raw memory (one file each, portable SIMD through GCC/Clang vector
extensions, see ``vec.h``), so they need no torch headers and compile in about 2 s, against
~20 s per option set measured for an inductor kernel (a C++ extension would compile torch's
headers as well; not measured).
The compiled library is cached under ``$LOGITLAB_CACHE_DIR`` (default
``$XDG_CACHE_HOME/logitlab`` or ``~/.cache/logitlab``), keyed by the source, the compiler, its
flags and the CPU (the code is built with ``-march=native``), so a first call on a machine pays
the compile once and every later process loads it in milliseconds. The size and SHA-256 of each
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

import torch

__all__ = ["load", "symbol", "status", "threads_for", "cache_dir", "source_dir", "DTYPE_CODES",
           "NativeUnavailableWarning", "plain_cpu"]

_HERE = Path(__file__).resolve().parent
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11", "-fno-math-errno",
         "-fno-trapping-math")
OPENMP = "-fopenmp"
_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL | None] = {}
_info: dict[str, dict] = {}
_warned: set[str] = set()
_symbols: dict[tuple[str, str], object] = {}
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


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            keep = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(keep)))
    except OSError:
        return platform.processor() + platform.machine()


def _key(name: str, cc: str) -> str:
    h = hashlib.sha256()
    for path in sorted(_HERE.glob("*.h")) + [_HERE / f"{name}.c"]:
        h.update(path.read_bytes())
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    for part in (version, " ".join(FLAGS), OPENMP, _cpu_identity(), sys.platform, platform.machine()):
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


def _compile(cc: str, name: str, target: Path) -> None:
    """Build ``<name>.c`` into ``target``, then record its size and hash beside it."""
    # Build beside the target and rename: concurrent processes never load a partial file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for extra in ([OPENMP], []):  # without OpenMP (serial) if the compiler lacks it
            done = subprocess.run([cc, *FLAGS, *extra, "-I", str(_HERE), "-o", tmp, str(_HERE / f"{name}.c"),
                                   "-lm"], capture_output=True, text=True, timeout=300)
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


def _build(name: str) -> tuple[ctypes.CDLL, dict]:
    if not sys.platform.startswith(("linux", "darwin")):
        raise OSError(f"native kernels are built on Linux and macOS only, not {sys.platform}")
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler found (tried $CC, cc, gcc, clang)")
    target = cache_dir() / f"{name}-{_key(name, cc)}.so"
    record = target.with_suffix(".json")
    info = {"name": name, "path": str(target), "compiler": cc, "compiled": False, "compile_s": 0.0}
    if not _intact(target, record):
        target.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(target.with_suffix(".lock")):
            if not _intact(target, record):  # another process may have built it meanwhile
                start = time.perf_counter()
                _compile(cc, name, target)
                info.update(compiled=True, compile_s=time.perf_counter() - start)
    return ctypes.CDLL(str(target)), info


def load(name: str) -> ctypes.CDLL | None:
    """The compiled library ``<name>.c``, or None (after one warning) when it cannot be had."""
    if not _enabled():
        return None
    lib = _libs.get(name, False)
    if lib is not False:
        return lib  # type: ignore[return-value]
    with _lock:
        if name in _libs:
            return _libs[name]
        try:
            lib, info = _build(name)
        except (OSError, subprocess.SubprocessError) as error:
            lib, info = None, {"name": name, "error": str(error)}
            if name not in _warned:
                _warned.add(name)
                warnings.warn(f"logitlab: native kernel '{name}' unavailable ({error}); using the eager "
                              "torch path (same results, slower). Set LOGITLAB_NATIVE=0 to silence.",
                              NativeUnavailableWarning, stacklevel=3)
        _libs[name] = lib
        _info[name] = info
        return lib


def symbol(name: str, function: str, argtypes: list, restype):
    """The typed C function ``function`` of library ``<name>.c``, or None when it is unavailable."""
    fn = _symbols.get((name, function))
    if fn is None:
        lib = load(name)
        if lib is None:
            return None
        fn = getattr(lib, function)
        fn.argtypes = argtypes
        fn.restype = restype
        _symbols[(name, function)] = fn
    return fn


def status() -> dict[str, dict]:
    """What :func:`load` did per kernel: path, compiler, whether it compiled now and how long, or the error."""
    return {name: dict(info) for name, info in _info.items()}


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
