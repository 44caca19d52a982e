"""Benchmark: linear head + cross-entropy, forward + backward, every implementation side by side.

Implementations: logitlab chunked (one pass: gradients computed in forward), logitlab chunked
with recompute in backward (the design alternative), the naive computation (materialized
logits, torch autograd), torch.nn.functional.linear_cross_entropy with chunking options,
cut-cross-entropy's torch_compile implementation (only when importable: the reason is printed
otherwise; its first call, the compilation, is timed apart), and the three-GEMM floor (the bare
matmuls h·Wᵀ, G·W, Gᵀ·h into preallocated outputs). The targets ignore every 17th row, as
padding would: logitlab leaves those rows out of its chunks, the floor and naive multiply them.

Method (see /work/shared/BENCHMARKING.md): times come from one process per case in which the
implementations are interleaved (A B C … A B C …) after a warm-up; the correctness of each is
checked in that process against the naive result. Each memory figure comes from its own fresh
process: after a small warm-up, glibc is trimmed, the kernel's RSS high-water mark reset, one
forward + backward runs, and the extra memory is the peak minus the RSS before the call minus
the gradients that must be returned (grad_hidden and grad_weight).

    PYTHONPATH=src python benchmarks/fused.py --quick     # seconds
    PYTHONPATH=src python benchmarks/fused.py             # the full shapes (long on a small CPU)

Records go to benchmarks/results/fused.json; the last line printed is that path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _harness import peak_extra_mib, row, write_records

FULL_SHAPES = [(4096, 1024, 32768), (2048, 2048, 131072)]
QUICK_SHAPES = [(512, 128, 4096), (256, 256, 16384)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# logitlab_torch: impl="torch" (logitlab's chunk loop in torch ops and torch's matmuls);
# <impl>@avx2: that impl with the native AVX2 build forced (torch's matmuls, the AVX2 row kernels:
# what "auto" runs on a CPU without AVX-512), measured on an AVX-512 machine too.
IMPLS = ["floor", "logitlab", "logitlab@avx2", "logitlab_torch", "logitlab_recompute", "logitlab_bf16_accum",
         "logitlab_bf16_accum@avx2", "naive", "torch_lce", "cce_torch_compile"]
RESULTS = Path(__file__).resolve().parent / "results" / "fused.json"
IGNORED_EVERY = 17  # targets: every 17th row is ignore_index


# Implementations compiled on their first call (torch.compile): warmed up at the measured shape
# and their first call timed separately (the compilation), as BENCHMARKING.md asks.
COMPILED = {"cce_torch_compile"}


def _cce():
    """(cut-cross-entropy's linear_cross_entropy, None), or (None, why it cannot be imported)."""
    try:
        from cut_cross_entropy import linear_cross_entropy as cce  # type: ignore
    except Exception as error:  # ImportError, or a broken dependency (triton) raising on import
        return None, f"cut_cross_entropy is not importable ({type(error).__name__}: {error})"
    return cce, None


def make_inputs(rows, dim, vocab, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(rows, dim, generator=gen) / dim**0.25).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=gen) / dim**0.25).to(dtype).requires_grad_()
    target = torch.randint(0, vocab, (rows,), generator=gen)
    target[::IGNORED_EVERY] = -100  # as padding would be
    return hidden, weight, target


def make_call(impl, hidden, weight, target):
    """A zero-argument callable doing forward + backward; returns the loss (detached)."""
    if "@" in impl:
        from logitlab import _native

        name, _, build = impl.partition("@")
        inner = make_call(name, hidden, weight, target)

        def forced():
            with _native.use_build(build):
                return inner()
        return forced
    if impl == "floor":
        rows, vocab = hidden.shape[0], weight.shape[0]
        h, w = hidden.detach(), weight.detach()
        logits = h.new_empty(rows, vocab)
        grad_h, grad_w = torch.empty_like(h), torch.empty_like(w)

        def floor():
            torch.mm(h, w.t(), out=logits)
            torch.mm(logits, w, out=grad_h)
            torch.mm(logits.t(), h, out=grad_w)
            return None
        return floor
    if impl == "logitlab":
        from logitlab.fused import linear_cross_entropy

        def fn():
            return linear_cross_entropy(hidden, weight, target, impl="auto")
    elif impl == "logitlab_torch":
        from logitlab.fused import linear_cross_entropy

        def fn():
            return linear_cross_entropy(hidden, weight, target, impl="torch")
    elif impl == "logitlab_bf16_accum":  # grad_weight summed in the input's dtype (half precision only)
        from logitlab.fused import linear_cross_entropy

        def fn():
            return linear_cross_entropy(hidden, weight, target, impl="auto", accum_dtype=hidden.dtype)
    elif impl == "logitlab_recompute":
        from logitlab.fused._engine import FusedLinearLoss, Plan, chunk_rows
        from logitlab.fused.cross_entropy import build_kernel, reduction_scale

        def fn():
            kernel = build_kernel(target, None, ignore_index=-100, vocab_start=0, vocab_total=weight.shape[0],
                                  label_smoothing=0.0, z_loss=0.0, dtype=torch.float32)
            plan = Plan(chunk=chunk_rows(*target.shape, weight.shape[0], hidden.dtype), accum_dtype=torch.float32,
                        precompute=False)
            return FusedLinearLoss.apply(hidden, weight, None, kernel, reduction_scale(kernel, "mean"), plan)
    elif impl == "naive":
        def fn():
            return F.cross_entropy(hidden @ weight.t(), target)
    elif impl == "torch_lce":
        options = torch.nn.LinearCrossEntropyOptions()

        def fn():
            return F.linear_cross_entropy(hidden, weight, target, ignore_index=-100, options=options)
    elif impl == "cce_torch_compile":
        cce, _ = _cce()

        def fn():
            return cce(hidden, weight, target, impl="torch_compile")
    else:
        raise ValueError(impl)

    def call():
        hidden.grad = weight.grad = None
        loss = fn()
        loss.backward()
        return loss.detach()
    return call


def measure_memory(impl, rows, dim, vocab, dtype_name, threads=2):
    """Run in a fresh process: extra memory (MiB) of one forward + backward."""
    torch.set_num_threads(threads)
    dtype = DTYPES[dtype_name]
    small = make_inputs(max(rows // 16, 8), dim, vocab, dtype)
    make_call(impl, *small)()  # warm-up: library initialization, thread pools
    del small
    hidden, weight, target = make_inputs(rows, dim, vocab, dtype)
    call = make_call(impl, hidden, weight, target)
    if impl in COMPILED:
        call()  # compile for this very shape: the measured call must not include compilation
        # Drop that call's gradients: the measured call frees them first, so they would count in
        # the RSS before it and the returned gradients would be subtracted twice.
        hidden.grad = weight.grad = None
    peak_mib = peak_extra_mib(call)[0]
    elt = torch.empty((), dtype=dtype).element_size()
    returned = (rows * dim + vocab * dim) * elt
    if impl == "floor":
        returned = 0  # its outputs were allocated before the call
    return {"peak_delta_mib": peak_mib, "extra_mem_mib": peak_mib - returned / 2**20}


def measure_time(rows, dim, vocab, dtype_name, impls, repeats, budget_s=600.0, threads=2):
    """Run in a fresh process: interleaved timings and errors against the naive result."""
    torch.set_num_threads(threads)
    dtype = DTYPES[dtype_name]
    hidden, weight, target = make_inputs(rows, dim, vocab, dtype)
    calls = {impl: make_call(impl, hidden, weight, target) for impl in impls}
    errors, warm, ref = {}, {}, None
    order = ["naive"] + [impl for impl in calls if impl != "naive"]
    first = {}
    for impl in order:  # warm-up doubles as the correctness check (naive first: the reference)
        start = time.perf_counter()
        loss = calls[impl]()
        warm[impl] = time.perf_counter() - start
        if impl in COMPILED:  # that was the compilation: time it apart, warm up once more
            first[impl] = warm[impl]
            start = time.perf_counter()
            loss = calls[impl]()
            warm[impl] = time.perf_counter() - start
        if impl == "naive":
            ref = (loss.float(), hidden.grad.float(), weight.grad.float())
        if impl != "floor":
            got = (loss.float(), hidden.grad.float(), weight.grad.float())
            errors[impl] = [float((a - b).abs().max()) for a, b in zip(got, ref)]
    # Interleaved repeats; an implementation whose warm-up took longer than budget_s / repeats
    # is repeated fewer times (at least once) so that one slow peer cannot stall the run.
    counts = {impl: max(1, min(repeats, int(budget_s / max(warm[impl], 1e-9)))) for impl in impls}
    times = {impl: [] for impl in impls}
    for r in range(repeats):
        for impl, call in calls.items():
            if r >= counts[impl]:
                continue
            start = time.perf_counter()
            call()
            times[impl].append(time.perf_counter() - start)
    return {impl: {"time_ms": [t * 1e3 for t in ts], "max_abs_err_vs_naive": errors.get(impl),
                   **({"first_call_ms": first[impl] * 1e3} if impl in first else {})}
            for impl, ts in times.items()}


def _child(task, timeout=None):
    try:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)], capture_output=True,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--shapes", default=None, help="e.g. 4096x1024x32768,2048x2048x131072")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="per impl: fewer repeats when warm-up time x repeats exceeds this")
    parser.add_argument("--memory-only", action="store_true", help="skip the timing process")
    parser.add_argument("--time-only", action="store_true", help="skip the memory processes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each measuring process")
    parser.add_argument("--skip", default="", help="comma-separated impls to leave out")
    parser.add_argument("--memory-timeout", type=float, default=900.0, help="seconds per memory process")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        task = json.loads(args.child)
        kind = task.pop("kind")
        result = measure_memory(**task) if kind == "memory" else measure_time(**task)
        print(json.dumps(result))
        return

    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    skipped = set(filter(None, args.skip.split(",")))
    if not args.memory_only:
        skipped.discard("naive")  # the reference of every correctness check
    cce_missing = _cce()[1]
    if cce_missing and "cce_torch_compile" not in skipped:
        print(f"# cce_torch_compile not measured: {cce_missing}", flush=True)
    impls = [i for i in IMPLS if (i != "cce_torch_compile" or not cce_missing) and i not in skipped]
    records = []
    for rows, dim, vocab in shapes:
        for dtype_name in args.dtypes.split(","):
            repeats = args.repeats or (3 if args.quick else 5 if rows * dim * vocab <= 2**37 else 3)
            case_impls = [i for i in impls if not i.startswith("logitlab_bf16_accum") or dtype_name != "float32"]
            kept = rows - len(range(0, rows, IGNORED_EVERY))
            print(f"# ({rows}, {dim}, {vocab}) {dtype_name}: timing {len(case_impls)} impls x {repeats} "
                  f"({kept} of {rows} rows kept: logitlab skips the ignored ones, the floor and naive do not) ...",
                  flush=True)
            task = {"kind": "time", "rows": rows, "dim": dim, "vocab": vocab, "dtype_name": dtype_name,
                    "impls": case_impls, "repeats": repeats, "budget_s": args.budget_s,
                    "threads": args.threads}
            timed = {"error": "not timed (--memory-only)"} if args.memory_only else _child(task)
            elt = torch.empty((), dtype=DTYPES[dtype_name]).element_size()
            logits_mib = rows * vocab * elt / 2**20
            for impl in IMPLS:
                rec = {"rows": rows, "dim": dim, "vocab": vocab, "dtype": dtype_name, "impl": impl,
                       "naive_logits_mib": logits_mib, "repeats": repeats, "torch": torch.__version__,
                       "machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                       "load_avg_1min": os.getloadavg()[0]}
                if impl.startswith("logitlab_bf16_accum") and dtype_name == "float32":
                    continue  # the same computation as logitlab in float32
                if impl not in impls:
                    rec["status"] = ("not measured: skipped (--skip)" if impl in skipped
                                     else f"not measured: {cce_missing}")
                    records.append(rec)
                    continue
                if args.memory_only:
                    rec["status"] = "memory only: not timed (--memory-only)"
                elif "error" in timed:
                    rec["status"] = f"timing failed: {timed['error']}"
                else:
                    ts = timed[impl]["time_ms"]
                    rec.update(time_ms_median=statistics.median(ts), time_ms_min=min(ts), time_ms_max=max(ts),
                               timed_calls=len(ts), time_ms_calls=ts,
                               max_abs_err_vs_naive=timed[impl]["max_abs_err_vs_naive"])
                    if "first_call_ms" in timed[impl]:
                        rec["first_call_ms"] = timed[impl]["first_call_ms"]  # includes compilation
                if args.time_only:
                    rec["memory_status"] = "not measured (--time-only)"
                    records.append(rec)
                    continue
                print(f"#   memory of {impl} ...", flush=True)
                mem = _child({"kind": "memory", "impl": impl, "rows": rows, "dim": dim, "vocab": vocab,
                              "dtype_name": dtype_name, "threads": args.threads}, timeout=args.memory_timeout)
                rec.update(mem if "error" not in mem else {"memory_status": f"failed: {mem['error']}"})
                records.append(rec)
    for group in _groups(records):
        floor = next((r.get("time_ms_median") for r in group if r["impl"] == "floor"), None)
        naive = next((r.get("time_ms_median") for r in group if r["impl"] == "naive"), None)
        for r in group:
            if r.get("time_ms_median") and floor:
                r["ratio_to_floor"] = r["time_ms_median"] / floor
                r["ratio_to_naive"] = r["time_ms_median"] / naive
            if "extra_mem_mib" in r:
                r["extra_mem_pct_of_naive_logits"] = 100 * r["extra_mem_mib"] / r["naive_logits_mib"]
    out = write_records(args.out, records, rows=_rows(records), benchmark="fused")
    print(render(records))
    print(out)


def _rows(records):
    """The records in the shared schema (an impl not measured keeps its status in ``extra``)."""
    keep = ("ratio_to_floor", "ratio_to_naive", "max_abs_err_vs_naive", "first_call_ms", "naive_logits_mib",
            "status", "memory_status", "load_avg_1min")
    return [row("linear_cross_entropy", r["impl"], (r["rows"], r["dim"], r["vocab"]), r["dtype"],
                time_ms=r.get("time_ms_calls"), peak_mem_mib=r.get("extra_mem_mib"),
                build=r["impl"].partition("@")[2] or None, **{k: r[k] for k in keep if k in r})
            for r in records]


def _groups(records):
    keys = []
    for r in records:
        key = (r["rows"], r["dim"], r["vocab"], r["dtype"])
        if key not in keys:
            keys.append(key)
    return [[r for r in records if (r["rows"], r["dim"], r["vocab"], r["dtype"]) == k] for k in keys]


def render(records):
    """A text table of stored records (a pure function of them)."""
    head = (f"{'(N, D, V)':>22} {'dtype':>8} {'impl':>19} {'n':>2} {'time ms':>9} {'min..max':>17} {'/floor':>7} "
            f"{'/naive':>7} {'extra MiB':>9} {'% logits':>8}  err(loss, gh, gW) vs naive")
    lines = [head, "-" * len(head)]
    for r in records:
        shape = f"({r['rows']}, {r['dim']}, {r['vocab']})"
        if "time_ms_median" not in r:
            memory = (f"{'':>56}{r['extra_mem_mib']:9.1f} {r['extra_mem_pct_of_naive_logits']:7.1f}%  "
                      if "extra_mem_mib" in r else "")
            lines.append(f"{shape:>22} {r['dtype']:>8} {r['impl']:>19} {memory}{r.get('status', '')}")
            continue
        err = r.get("max_abs_err_vs_naive")
        err_text = "-" if not err else ", ".join(f"{e:.1e}" for e in err)
        lines.append(
            f"{shape:>22} {r['dtype']:>8} {r['impl']:>19} {r.get('timed_calls', 0):2d} {r['time_ms_median']:9.0f} "
            f"{r['time_ms_min']:8.0f}..{r['time_ms_max']:<7.0f} {r.get('ratio_to_floor', float('nan')):7.3f} "
            f"{r.get('ratio_to_naive', float('nan')):7.3f} {r.get('extra_mem_mib', float('nan')):9.1f} "
            f"{r.get('extra_mem_pct_of_naive_logits', float('nan')):7.1f}%  {err_text}"
            + (f"  (first call {r['first_call_ms']:.0f} ms, compiling)" if "first_call_ms" in r else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
