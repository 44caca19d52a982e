"""Benchmark: logitlab.cross_entropy vs torch.nn.functional.cross_entropy, forward + backward.

Each case runs in a fresh process (``--case``): the implementations are timed interleaved
(A B C A B C ...) after a warm-up, median of ``--repeats`` calls; the same process measures a
STREAM-style copy bandwidth (a large preallocated tensor copied into another) so the achieved
GB/s of each implementation can be read as a fraction of what the memory system gives right now.
Peak memory of one call is measured in another fresh process per (case, implementation)
(``--memory``), as BENCHMARKING.md describes. Correctness against torch is checked and printed
in the timing process.

Usage:
    PYTHONPATH=src python benchmarks/cross_entropy.py            # full run, a few minutes
    PYTHONPATH=src python benchmarks/cross_entropy.py --quick    # tiny shapes, seconds

Records (one JSON object per case and implementation) go to ``--out``; the table is printed and
the last line is the path of the records.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import logitlab  # noqa: E402
from _harness import machine_info, peak_extra_mib, write_records  # noqa: E402
from _harness import row as schema_row  # noqa: E402
from logitlab import _native  # noqa: E402

FULL_CASES = {
    "idx_4096x1000": dict(n=4096, v=1000, kind="index"),
    "idx_4096x32768": dict(n=4096, v=32768, kind="index"),
    "idx_1024x131072": dict(n=1024, v=131072, kind="index"),
    "ls0.1_4096x32768": dict(n=4096, v=32768, kind="index", label_smoothing=0.1),
    "probs_4096x32768": dict(n=4096, v=32768, kind="probs"),
    "bf16_4096x32768": dict(n=4096, v=32768, kind="index", dtype="bfloat16"),
}
QUICK_CASES = {
    "idx_256x1000": dict(n=256, v=1000, kind="index"),
    "ls0.1_64x8192": dict(n=64, v=8192, kind="index", label_smoothing=0.1),
    "probs_64x8192": dict(n=64, v=8192, kind="probs"),
    "bf16_64x8192": dict(n=64, v=8192, kind="index", dtype="bfloat16"),
}
# logitlab_eager: the same op with impl='torch' (logitlab's one-pass algorithm in torch ops);
# logitlab@<build>: the native kernel of each other build this CPU executes (e.g. the AVX2 build
# on an AVX-512 machine), forced with _native.use_build.
BUILDS = [b for b in _native.supported_builds()[1:] if b != "avx512"]
IMPLS = ("torch", "logitlab", "logitlab_inplace", "logitlab_eager", *(f"logitlab@{b}" for b in BUILDS))


def _inputs(spec: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    torch.manual_seed(0)
    dtype = getattr(torch, spec.get("dtype", "float32"))
    logits = (torch.randn(spec["n"], spec["v"]) * 2).to(dtype)
    if spec["kind"] == "index":
        target = torch.randint(0, spec["v"], (spec["n"],))
    else:
        target = torch.softmax(torch.randn(spec["n"], spec["v"]), 1).to(dtype)
    options = {"label_smoothing": spec["label_smoothing"]} if "label_smoothing" in spec else {}
    return logits, target, options


def _runner(impl: str, logits: torch.Tensor, target: torch.Tensor, options: dict):
    """A callable doing one forward + backward; returns (loss, grad). Its ``release()`` drops the
    gradient after the timed call, as a training step does before the next: every implementation
    then starts with its previous gradient freed (logitlab reuses that buffer, torch's allocator
    returns it to the OS), not with one per implementation still alive."""
    leaf = logits.clone().requires_grad_()
    scratch = logits.clone()

    if impl == "torch":
        def run():
            leaf.grad = None
            loss = F.cross_entropy(leaf, target, **options)
            loss.backward()
            return loss, leaf.grad
    elif impl == "logitlab":
        def run():
            leaf.grad = None
            loss = logitlab.cross_entropy(leaf, target, validate=False, **options)
            loss.backward()
            return loss, leaf.grad
    elif impl.startswith("logitlab@"):
        def run():
            leaf.grad = None
            with _native.use_build(impl.partition("@")[2]):
                loss = logitlab.cross_entropy(leaf, target, validate=False, **options)
            loss.backward()
            return loss, leaf.grad
    elif impl == "logitlab_eager":
        def run():
            leaf.grad = None
            loss = logitlab.cross_entropy(leaf, target, validate=False, impl="torch", **options)
            loss.backward()
            return loss, leaf.grad
    else:  # the gradient overwrites the logits: refill them before each timed call
        inner = scratch.requires_grad_()

        def prepare():
            with torch.no_grad():
                inner.copy_(logits)

        def run():
            inner.grad = None
            loss = logitlab.cross_entropy(inner, target, validate=False, inplace_backward=True, **options)
            loss.backward()
            return loss, inner.grad

        run.prepare = prepare  # type: ignore[attr-defined]
        run.release = lambda: setattr(inner, "grad", None)  # type: ignore[attr-defined]
        return run
    run.release = lambda: setattr(leaf, "grad", None)  # type: ignore[attr-defined]
    return run


def _stream_copy_gbs(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times) / 1e9


def _bytes_moved(spec: dict, itemsize: int) -> int:
    """What fwd+bwd must move at least: read logits, write the gradient (+ read target probs)."""
    nv = spec["n"] * spec["v"]
    return nv * itemsize * (3 if spec["kind"] == "probs" else 2)


def run_case(name: str, spec: dict, repeats: int, warmup: int, threads: int = 2) -> list[dict]:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    native = _native.load("xent") is not None
    load_s = time.perf_counter() - start
    build = _native.status().get("xent", {})
    logits, target, options = _inputs(spec)
    runs = {impl: _runner(impl, logits, target, options) for impl in IMPLS}
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    first_call: dict[str, float] = {}
    results = {}
    stream = []
    for rep in range(warmup + repeats):
        if rep == warmup:
            stream.append(_stream_copy_gbs())
        for impl, run in runs.items():
            if hasattr(run, "prepare"):
                run.prepare()
            t = time.perf_counter()
            loss, grad = run()
            dt = time.perf_counter() - t
            if rep == 0:
                first_call[impl] = dt
                results[impl] = (loss.detach().float(),
                                 grad.detach().float().clone() if impl != "torch" else grad.detach().float())
            elif rep >= warmup:
                times[impl].append(dt)
            del loss, grad
            run.release()
    stream.append(_stream_copy_gbs())
    stream_gbs = statistics.median(stream)
    ref_loss, ref_grad = results["torch"]
    scale = float(ref_grad.abs().max())
    itemsize = logits.element_size()
    moved = _bytes_moved(spec, itemsize)
    records = []
    med_torch = statistics.median(times["torch"])
    for impl in IMPLS:
        loss, grad = results[impl]
        med = statistics.median(times[impl])
        records.append({
            "case": name, "impl": impl, "n": spec["n"], "v": spec["v"], "kind": spec["kind"],
            "dtype": str(logits.dtype).replace("torch.", ""), "options": options,
            "time_ms": med * 1e3, "time_min_ms": min(times[impl]) * 1e3, "time_max_ms": max(times[impl]) * 1e3,
            "first_call_ms": first_call[impl] * 1e3, "repeats": repeats, "times_ms": [t * 1e3 for t in times[impl]],
            "ratio_to_torch": med / med_torch, "speedup_vs_torch": med_torch / med,
            "bytes_moved_min": moved, "gb_per_s": moved / med / 1e9,
            "stream_copy_gb_per_s": stream_gbs, "stream_fraction": moved / med / 1e9 / stream_gbs,
            "max_abs_loss_diff_vs_torch": float((loss - ref_loss).abs()),
            "max_rel_grad_diff_vs_torch": float((grad - ref_grad).abs().max()) / scale,
            "native_kernel": native, "native_compiled_now": bool(build.get("compiled")),
            "native_build": impl.partition("@")[2] if "@" in impl else (
                build.get("build", "") if impl in ("logitlab", "logitlab_inplace") else ""),
            "native_compile_s": build.get("compile_s", 0.0), "native_load_s": load_s,
            "threads": torch.get_num_threads(), **machine_info(),
        })
    return records


def measure_memory(name: str, spec: dict, impl: str) -> dict:
    """Extra resident memory (MiB) of one forward+backward, after warm-up, in this fresh process."""
    torch.set_num_threads(2)
    logits, target, options = _inputs(spec)
    run = _runner(impl, logits, target, options)
    for _ in range(2):
        if hasattr(run, "prepare"):
            run.prepare()
        loss, grad = run()
        del loss, grad
    if hasattr(run, "prepare"):
        run.prepare()
    extra_mib, (loss, grad), _ = peak_extra_mib(run)
    grad_mib = grad.numel() * grad.element_size() / 2**20 if impl != "logitlab_inplace" else 0.0
    return {"case": name, "impl": impl, "peak_extra_mib": extra_mib, "grad_mib": grad_mib}


def _subprocess(args: list[str]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads in the timing process")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-implementation memory processes")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cross_entropy.json"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.case:
        spec = {**FULL_CASES, **QUICK_CASES}[args.case]
        if args.memory:
            print(json.dumps([measure_memory(args.case, spec, args.memory)]))
        else:
            print(json.dumps(run_case(args.case, spec, args.repeats, args.warmup, args.threads)))
        return
    names = [c for c in args.cases.split(",") if c] or list(cases)
    unknown = [c for c in names if c not in cases]
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; the {'quick' if args.quick else 'full'} cases are "
                     f"{', '.join(cases)}")
    records = []
    for name in names:
        print(f"[{name}] timing ...", file=sys.stderr, flush=True)
        rows = _subprocess(["--case", name, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                            "--threads", str(args.threads)])
        if not args.no_memory:
            for row in rows:
                print(f"[{name}] memory {row['impl']} ...", file=sys.stderr, flush=True)
                row.update(_subprocess(["--case", name, "--memory", row["impl"]])[0])
        records.extend(rows)
    info = machine_info()
    print(f"CPU: {info['cpu_model']} (flags {' '.join(info['cpu_flags'])}); builds {', '.join(info['native_builds'])}")
    header = (f"{'case':18s} {'impl':17s} {'time ms':>9s} {'min..max':>13s} {'speedup':>8s} {'GB/s':>6s} "
              f"{'STREAM%':>8s} {'peak+MiB':>9s} {'grad MiB':>9s} {'first ms':>9s} {'|Δloss|':>8s} {'rel|Δgrad|':>10s}")
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r['case']:18s} {r['impl']:17s} {r['time_ms']:9.1f} {r['time_min_ms']:6.0f}..{r['time_max_ms']:<6.0f} "
              f"{r['speedup_vs_torch']:7.2f}x {r['gb_per_s']:6.1f} {100 * r['stream_fraction']:7.0f}% "
              f"{r.get('peak_extra_mib', float('nan')):9.0f} {r.get('grad_mib', float('nan')):9.0f} "
              f"{r['first_call_ms']:9.0f} {r['max_abs_loss_diff_vs_torch']:8.1e} "
              f"{r['max_rel_grad_diff_vs_torch']:10.1e}")
    builds = [r for r in records if r["impl"] == "logitlab"]
    compiled = [r["native_compile_s"] for r in builds if r["native_compiled_now"]]
    print("native kernel: " + ("unavailable (eager fallback timed as logitlab)"
                               if not builds or not builds[0]["native_kernel"]
          else (f"compiled in {compiled[0]:.1f} s by the first process (cached after that); "
                if compiled else "from the cache; ")
          + f"load {1e3 * max(r['native_load_s'] for r in builds):.0f} ms per process (not in the times)"))
    stream = [r["stream_copy_gb_per_s"] for r in records]
    print(f"STREAM copy bandwidth measured in the case processes: {min(stream):.1f}..{max(stream):.1f} GB/s; "
          "GB/s counts the minimum traffic (read logits, write gradient, read target probabilities)")
    rows = [schema_row("cross_entropy", r["impl"], (r["n"], r["v"]), r["dtype"], time_ms=r["times_ms"],
                peak_mem_mib=r.get("peak_extra_mib"), build=r["native_build"] or None, case=r["case"],
                speedup_vs_torch=r["speedup_vs_torch"], stream_fraction=r["stream_fraction"]) for r in records]
    print(write_records(args.out, records, rows=rows, benchmark="cross_entropy"))


if __name__ == "__main__":
    main()
