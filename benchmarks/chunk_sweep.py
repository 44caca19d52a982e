"""Benchmark: linear_cross_entropy's chunk size on each native build, against the naive
computation and the three-GEMM floor, forward + backward.

The question it answers (issue 18, item 4): on a CPU without the AVX-512 matmul kernels (forced
here with ``_native.use_build``, so an AVX-512 machine measures the AVX2 build's torch-matmul
path too), which chunk size makes the chunked path fast, and how far is it from the floor (the
bare torch matmuls at full size: logits, grad_hidden, grad_weight)? Every configuration runs in
the same process, interleaved (A B C ... A B C ...), median of ``--repeats`` calls after a warm-up;
the loss is checked against naive in the same run.

Usage:
    PYTHONPATH=src python benchmarks/chunk_sweep.py --shape 4096x1024x32768 --builds avx2,avx512
    PYTHONPATH=src python benchmarks/chunk_sweep.py --quick

Records go to ``--out``; the table is printed and the last line is the path of the records.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import logitlab  # noqa: E402
from _harness import machine_info, row, write_records  # noqa: E402
from logitlab import _native  # noqa: E402


def _case(n: int, d: int, v: int, dtype: torch.dtype):
    torch.manual_seed(0)
    hidden = (torch.randn(n, d) / d ** 0.5).to(dtype)
    weight = torch.randn(v, d).to(dtype)
    target = torch.randint(0, v, (n,))
    return hidden, weight, target


def _runner(h, w, target, build: str, chunk: int | None, impl: str, accum_dtype: torch.dtype):
    """One configuration on the shared leaves ``h``, ``w`` (one copy of the head for every
    configuration: at (2048, 2048, 131072) float32 a copy and its gradient are 2 GiB)."""

    def run():
        h.grad = w.grad = None
        with _native.use_build(build):
            loss = logitlab.linear_cross_entropy(h, w, target, impl=impl, chunk_size=chunk, validate=False,
                                                 accum_dtype=accum_dtype)
            loss.backward()
        return loss.detach()

    return run


def _floor(hidden, weight):
    """The three bare matmuls at full size (logits, grad_hidden, grad_weight), the logits standing
    in for their gradient: what any implementation of the op must at least compute."""
    @torch.no_grad()
    def run():
        logits = hidden @ weight.T
        logits @ weight
        logits.T @ hidden
        return None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x1024x32768", help="N x D x V")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--builds", default="", help="comma-separated builds (default: every one the CPU runs)")
    parser.add_argument("--chunks", default="64,128,256,512", help="comma-separated chunk rows (plus the default)")
    parser.add_argument("--impls", default="native,torch", help="comma-separated chunked impls: native, torch")
    parser.add_argument("--accum-dtype", default="float32",
                        help="linear_cross_entropy's accum_dtype (bfloat16: grad_weight summed in bf16)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tiny shape (seconds)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "chunk_sweep.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    shape = "256x64x2048" if args.quick else args.shape
    chunks = "32,64" if args.quick else args.chunks
    n, d, v = (int(x) for x in shape.split("x"))
    dtype = getattr(torch, args.dtype)
    builds = [b for b in args.builds.split(",") if b] or [b for b in _native.supported_builds() if b != "avx512bf16"
                                                          or dtype == torch.bfloat16]
    hidden, weight, target = _case(n, d, v, dtype)
    calls = {"floor": _floor(hidden, weight)}
    hidden, weight = hidden.requires_grad_(), weight.requires_grad_()
    accum = getattr(torch, args.accum_dtype)
    calls["composite"] = _runner(hidden, weight, target, builds[0], None, "composite", accum)
    for impl in args.impls.split(","):
        for build in builds if impl == "native" else builds[:1]:
            where = f"{build}/{impl}" if impl == "native" else impl
            calls[f"{where}/default"] = _runner(hidden, weight, target, build, None, impl, accum)
            for c in chunks.split(","):
                calls[f"{where}/c{c}"] = _runner(hidden, weight, target, build, int(c), impl, accum)
    times: dict[str, list[float]] = {k: [] for k in calls}
    losses: dict[str, float] = {}
    for rep in range(1 + args.repeats):
        for name, run in calls.items():
            start = time.perf_counter()
            loss = run()
            elapsed = time.perf_counter() - start
            if rep:
                times[name].append(elapsed)
            elif loss is not None:
                losses[name] = float(loss)
    floor = statistics.median(times["floor"])
    info = machine_info()
    records = []
    naive = losses.get("composite")
    for name, values in times.items():
        parts = name.split("/")
        build = parts[0] if parts[0] in builds else ""
        config = parts[-1] if len(parts) > 1 else ""
        med = statistics.median(values)
        records.append({"case": f"{shape} {args.dtype}", "impl": name, "build": build,
                        "config": config or name, "time_s": med, "time_min_s": min(values),
                        "time_max_s": max(values), "ratio_to_floor": med / floor, "accum_dtype": args.accum_dtype,
                        "loss_diff_vs_naive": abs(losses[name] - naive) if name in losses and naive is not None
                        else None, "repeats": args.repeats, "times_ms": [v * 1e3 for v in values], **info})
    print(f"CPU: {info['cpu_model']} (flags {' '.join(info['cpu_flags'])}); shape {shape} {args.dtype}, "
          f"accum_dtype {args.accum_dtype}")
    print(f"{'impl':24s} {'time s':>8s} {'min..max':>15s} {'/floor':>7s} {'|Δloss| vs naive':>17s}")
    for r in records:
        diff = "" if r["loss_diff_vs_naive"] is None else f"{r['loss_diff_vs_naive']:.1e}"
        print(f"{r['impl']:24s} {r['time_s']:8.3f} {r['time_min_s']:7.3f}..{r['time_max_s']:<7.3f} "
              f"{r['ratio_to_floor']:7.2f} {diff:>17s}")
    rows = [row("linear_cross_entropy", r["impl"], (n, d, v), args.dtype, time_ms=r["times_ms"],
                build=r["build"] or None, config=r["config"], ratio_to_floor=r["ratio_to_floor"],
                accum_dtype=args.accum_dtype) for r in records]
    print(write_records(args.out, records, rows=rows, benchmark="chunk_sweep"))


if __name__ == "__main__":
    main()
