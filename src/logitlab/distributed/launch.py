"""Run a function on several local processes joined by a gloo group on 127.0.0.1.

Used by the tests and examples: ``run_ranks(fn, world_size)`` starts one process per rank
(the 'spawn' start method), each with ``torch.distributed`` initialized and a short collective
timeout, and returns every rank's result. A rank that raises makes the call raise a
RuntimeError naming each failing rank and its error; ranks left waiting in a collective fail
at the group's timeout (or sooner when the failed peer's connection closes) instead of hanging,
and any process still alive past the deadline is killed.
"""

from __future__ import annotations

import datetime
import os
import queue as queue_module
import socket
import time
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["free_port", "run_ranks"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world_size, port, fn, args, results, group_timeout, threads):
    import torch

    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=group_timeout))
        try:
            results.put((rank, "ok", fn(rank, world_size, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException as error:  # reported to the parent, which raises
        results.put((rank, "error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}"))


def run_ranks(fn, world_size: int, *, args: tuple = (), timeout: float = 60.0, group_timeout: float = 10.0,
              threads: int = 1) -> list:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` processes; return the results by rank.

    ``fn`` must be importable by name (a module-level function) and its result picklable.

    Raises:
        RuntimeError: one line per failing rank (its exception), or the ranks that did not
        report within ``timeout`` seconds (those are killed).
    """
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        procs = [context.Process(target=_worker, args=(r, world_size, port, fn, args, results, group_timeout, threads),
                                 daemon=True) for r in range(world_size)]
        for proc in procs:
            proc.start()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    outcome: dict[int, tuple[str, object]] = {}
    deadline = time.monotonic() + timeout
    while len(outcome) < world_size and time.monotonic() < deadline:
        try:
            rank, status, value = results.get(timeout=0.2)
            outcome[rank] = (status, value)
        except queue_module.Empty:
            if all(not p.is_alive() for p in procs) and results.empty():
                break
    for proc in procs:
        proc.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
        if proc.is_alive():
            proc.kill()
            proc.join()
    errors = [f"rank {r}: {value}" for r, (status, value) in sorted(outcome.items()) if status == "error"]
    missing = [r for r in range(world_size) if r not in outcome]
    if missing:
        errors.append(f"ranks {missing} did not report within {timeout:.0f} s (killed)")
    if errors:
        raise RuntimeError(f"run_ranks({getattr(fn, '__name__', fn)}, world_size={world_size}) failed:\n"
                           + "\n".join(errors))
    return [outcome[r][1] for r in range(world_size)]
