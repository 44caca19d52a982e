"""Forward + backward of logitlab's sparse maps beside the entmax package and torch.softmax.

For each shape, one fresh process times every implementation interleaved (the order rotates
each repeat): ``torch.softmax`` (the speed baseline), and for each of sparsemax, 1.5-entmax and
α-entmax (α = 1.5 by the general solver) ours and the ``entmax`` package's
(``sparsemax`` / ``entmax15`` / ``entmax_bisect``). Ours runs the native kernel
(``_native/sparse.c``) on float32 CPU logits where it builds, else the torch top-k path; the
record's ``ours_path`` says which. The native kernel of every other build the CPU executes (the
AVX2 and portable builds on an AVX-512 machine) is timed too, as ``ours@<build>``, and checked
equal to the selected build's output. Warm-up, then ``--repeats`` (>= 5) timed
calls; median, min and max are recorded. Correctness is checked in the same process: ours
against the package (probabilities, gradients, support) and against ``logitlab.reference``
(float64, sort-based) on a few rows. Peak memory of one call is measured per implementation in
another fresh process (glibc trimmed, kernel high-water mark reset via ``/proc/self/clear_refs``:
the extra memory the call needs, beside the output and gradient it must return).

Usage::

    PYTHONPATH=src python benchmarks/sparse_normalizers.py           # (4096, 1000), (1024, 32768)
    PYTHONPATH=src python benchmarks/sparse_normalizers.py --quick   # tiny shapes, seconds

Logits are ``scale * randn`` (``--scale``, default 1; a small scale gives wide supports, the
worst case for the threshold search). Records go to JSON (units in field names), a table is
printed, and the last line is the path of the records.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from pathlib import Path

from _harness import forward_backward, machine_info, peak_extra_mib, row, run_worker, summarize, write_records

HERE = Path(__file__).resolve().parent
FULL_SHAPES = [(4096, 1000), (1024, 32768)]
QUICK_SHAPES = [(64, 100), (16, 2048)]
ALPHA = 1.5
MAPS = ("sparsemax", "entmax15", "entmax_alpha")
# Calls per implementation before timing: the first few page-fault their fresh outputs until
# glibc's mmap threshold adapts (a (1024, 32768) call then runs several times faster).
WARMUP = 3


def _impls():
    """name -> (map, kind, function); kind in 'ours' | 'package' | 'softmax'."""
    import entmax as package  # a peer, only here
    import torch

    import logitlab

    impls = {
        "torch.softmax": (None, "softmax", lambda z: torch.softmax(z, -1)),
        "logitlab.sparsemax": ("sparsemax", "ours", logitlab.sparsemax),
        "entmax.sparsemax": ("sparsemax", "package", lambda z: package.sparsemax(z, dim=-1)),
        "logitlab.entmax15": ("entmax15", "ours", logitlab.entmax15),
        "entmax.entmax15": ("entmax15", "package", lambda z: package.entmax15(z, dim=-1)),
        "logitlab.entmax": ("entmax_alpha", "ours", lambda z: logitlab.entmax(z, ALPHA)),
        "entmax.entmax_bisect": ("entmax_alpha", "package",
                                 lambda z: package.entmax_bisect(z, alpha=ALPHA, dim=-1)),
    }
    # ours@<build>: the native kernel of each other build this CPU executes (the AVX2 build on an
    # AVX-512 machine, the portable one), forced around the whole call (forward and backward).
    for build in _other_builds():
        for name, (map_name, kind, fn) in list(impls.items()):
            if kind == "ours":
                impls[f"{name}@{build}"] = (map_name, "ours_build", fn)
    return impls


def _other_builds() -> list[str]:
    from logitlab import _native

    if not _native.supported_builds():
        return []
    chosen = _native.selected_build()[0]
    same = {chosen, "avx512bf16", "avx512"} if chosen.startswith("avx512") else {chosen, "avx512bf16"}
    return [b for b in _native.supported_builds() if b not in same]  # avx512bf16 is avx512's binary here


def _native_build(path: str) -> str | None:
    from logitlab import _native

    build = _native.selected_build()[0]
    return ("avx512" if build == "avx512bf16" else build) if path == "native" else None


def _timed(name: str, fn, x, grad_out):
    """forward_backward, inside the named build for an ``ours@<build>`` implementation."""
    from logitlab import _native

    build = name.partition("@")[2]
    with _native.use_build(build) if build else contextlib.nullcontext():
        return forward_backward(fn, x, grad_out)


def _inputs(shape, scale):
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    return torch.randn(shape) * scale, torch.randn(shape)


def _check(name, ours_out, ours_grad, peer_out, peer_grad, x, grad_out) -> dict:
    import torch

    from logitlab import reference

    rows = slice(0, 4)
    ref_fn = {"sparsemax": reference.sparsemax, "entmax15": reference.entmax15,
              "entmax_alpha": lambda z, dim: reference.entmax_bisect(z, ALPHA, dim)}[name]
    truth = ref_fn(x[rows].double(), -1)
    return {
        "max_abs_diff_probs_vs_package": float((ours_out - peer_out).abs().max()),
        "max_abs_diff_grad_vs_package": float((ours_grad - peer_grad).abs().max()),
        "support_mismatches_vs_package": int(((ours_out > 0) != (peer_out > 0)).sum()),
        "max_abs_err_probs_vs_reference_4_rows": float((ours_out[rows].double() - truth).abs().max()),
        "support_mismatches_vs_reference_4_rows": int(((ours_out[rows] > 0) != (truth > 0)).sum()),
        "mean_support_size": float((ours_out > 0).sum(-1).float().mean()),
        "finite": bool(torch.isfinite(ours_out).all() and torch.isfinite(ours_grad).all()),
    }


def worker_time(shape, repeats: int, warmup: int, scale: float) -> dict:
    import torch

    from logitlab._native import sparse as native_sparse

    x, grad_out = _inputs(shape, scale)
    ours_path = "native" if native_sparse.supports(x) else "torch"
    impls = _impls()
    names = list(impls)
    for _ in range(warmup):
        for name in names:
            _timed(name, impls[name][2], x, grad_out)
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no fixed position
        for name in order:
            times[name].append(_timed(name, impls[name][2], x, grad_out)[0] * 1e3)
    stats = {name: summarize(t) for name, t in times.items()}
    results = {name: _timed(name, fn, x, grad_out)[1:] for name, (_, _, fn) in impls.items()}
    softmax_ms = stats["torch.softmax"]["median_ms"]
    records = []
    for map_name in MAPS:
        ours = next(n for n, (m, k, _) in impls.items() if m == map_name and k == "ours")
        peer = next(n for n, (m, k, _) in impls.items() if m == map_name and k == "package")
        others = [n for n, (m, k, _) in impls.items() if m == map_name and k == "ours_build"]
        for other in others:  # every build computes the same map: check it before timing counts
            diff = max((results[other][0] - results[ours][0]).abs().max().item(),
                       (results[other][1] - results[ours][1]).abs().max().item())
            if not diff <= 1e-5:
                raise AssertionError(f"{other} differs from {ours} by {diff}")
        records.append({
            "map": map_name, "shape": list(shape), "dtype": "float32", "logit_scale": scale,
            "ours": ours, "package": peer, "ours_path": ours_path,
            **{f"ours_{k}": v for k, v in stats[ours].items()},
            **{f"package_{k}": v for k, v in stats[peer].items()},
            **{f"softmax_{k}": v for k, v in stats["torch.softmax"].items()},
            "speedup_over_package": stats[peer]["median_ms"] / stats[ours]["median_ms"],
            "ratio_ours_over_softmax": stats[ours]["median_ms"] / softmax_ms,
            "repeats": repeats, "warmup": warmup,
            "times": {name: stats[name] for name in (ours, peer, "torch.softmax", *others)},
            "ours_build": _native_build(ours_path),
            "other_builds_median_ms": {n.partition("@")[2]: stats[n]["median_ms"] for n in others},
            **_check(map_name, *results[ours], *results[peer], x, grad_out),
        })
    return {"records": records, "torch_version": torch.__version__}


def worker_memory(shape, impl: str, scale: float) -> dict:
    x, grad_out = _inputs(shape, scale)
    fn = _impls()[impl][2]
    for _ in range(2):
        forward_backward(fn, x, grad_out)
    gc.collect()
    # The peak of a call whose outputs are new memory, as for the peers: the warm-up's freed
    # outputs would otherwise stay pooled (resident before the call) and be reused.
    import logitlab

    logitlab.empty_cache()
    extra_mib, (_, out, grad), method = peak_extra_mib(lambda: forward_backward(fn, x, grad_out))
    returned = out.numel() * out.element_size() + grad.numel() * grad.element_size()
    return {"impl": impl, "shape": list(shape), "extra_peak_mib": extra_mib,
            "returned_mib": returned / 2**20, "method": method}


def _rows(records: list[dict], memory: dict) -> list[dict]:
    """The records in the shared schema: ours, the entmax package and torch.softmax per (map, shape)."""
    rows = []
    for r in records:
        for impl, stats in r["times"].items():
            mem = memory.get((impl, tuple(r["shape"])))
            ours = impl == r["ours"]
            build = impl.partition("@")[2] or (r.get("ours_build") if ours else None)
            rows.append(row(r["map"], impl, r["shape"], r["dtype"], time_ms=stats, build=build,
                            peak_mem_mib=mem["extra_peak_mib"] if mem else None,
                            returned_mib=mem["returned_mib"] if mem else None, logit_scale=r["logit_scale"],
                            path=r["ours_path"] if ours else None,
                            support_mismatches_vs_package=r["support_mismatches_vs_package"] if ours else None))
    return rows


def _table(records: list[dict], memory: dict) -> str:
    head = (f"{'map':<13} {'shape':<11} {'ours ms':>9} {'pkg ms':>9} {'softmax ms':>10} "
            f"{'pkg/ours':>8} {'ours/smax':>9} {'ours MiB':>8} {'pkg MiB':>8} {'smax MiB':>8} "
            f"{'|S|':>6} {'err pkg':>8} {'err ref':>8}  other builds ms")
    lines = [head, "-" * len(head)]
    for r in records:
        shape = tuple(r["shape"])

        def mib(impl):
            mem = memory.get((impl, shape))
            return f"{mem['extra_peak_mib']:>8.0f}" if mem else f"{'-':>8}"

        err_pkg = max(r["max_abs_diff_probs_vs_package"], r["max_abs_diff_grad_vs_package"])
        lines.append(
            f"{r['map']:<13} {'x'.join(map(str, shape)):<11} {r['ours_median_ms']:>9.1f} "
            f"{r['package_median_ms']:>9.1f} {r['softmax_median_ms']:>10.1f} "
            f"{r['speedup_over_package']:>8.1f} {r['ratio_ours_over_softmax']:>9.2f} "
            f"{mib(r['ours'])} {mib(r['package'])} {mib('torch.softmax')} {r['mean_support_size']:>6.1f} "
            f"{err_pkg:>8.1e} {r['max_abs_err_probs_vs_reference_4_rows']:>8.1e}  "
            + " ".join(f"{b} {ms:.1f}" for b, ms in r["other_builds_median_ms"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, in this process (seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per implementation (>= 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="logits = scale * randn")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sparse_normalizers.json")
    parser.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        shape = tuple(int(s) for s in args.shape.split("x"))
        if args.worker == "time":
            out = worker_time(shape, args.repeats, WARMUP, args.scale)
        else:
            out = worker_memory(shape, args.impl, args.scale)
        print(json.dumps(out))
        return 0

    sys.path.insert(0, str(HERE.parent / "src"))
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    repeats = max(5, args.repeats or 5)
    records, memory = [], {}
    for shape in shapes:
        tag = "x".join(map(str, shape))
        print(f"[{tag}] timing ...", file=sys.stderr, flush=True)
        if args.quick:
            records += worker_time(shape, repeats, WARMUP, args.scale)["records"]
            continue
        records += run_worker(__file__, ["--worker", "time", "--shape", tag, "--repeats", str(repeats),
                           "--scale", str(args.scale)])["records"]
        if not args.no_memory:
            for impl in (name for name in _impls() if "@" not in name):  # a build needs no memory of its own
                print(f"[{tag}] memory {impl} ...", file=sys.stderr, flush=True)
                memory[(impl, shape)] = run_worker(__file__, ["--worker", "memory", "--shape", tag, "--impl", impl,
                                                "--scale", str(args.scale)])
    result = {
        "benchmark": "sparse normalizers forward+backward", **machine_info(), "threads": 2,
        "quick": args.quick, "logit_scale": args.scale, "alpha": ALPHA, "time_unix_s": time.time(),
        "records": records, "memory": list(memory.values()),
    }
    print(_table(records, memory))
    bad = [r["map"] for r in records if r["support_mismatches_vs_reference_4_rows"] or not r["finite"]]
    if bad:
        print(f"CORRECTNESS FAILURE: {bad}", file=sys.stderr)
    print(write_records(args.out, result, rows=_rows(records, memory), benchmark="sparse_normalizers"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
