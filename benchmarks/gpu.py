"""GPU benchmark: the Triton paths against the naive computation and the GPU peers (issue 20).

One process, one GPU. First a correctness check on CUDA against the float64 reference
(``logitlab.reference``) at small shapes: cross_entropy and linear_cross_entropy with
impl='triton' in bfloat16, each error held to the naive bfloat16 computation's error plus a
slack; the benchmark runs only when every check passes (``--no-check`` skips it). Then, per shape,
the implementations run interleaved (A B C … A B C …) after a warm-up, each call a forward and a
backward timed with CUDA events:

* linear_cross_entropy, bf16, (N, D, V) in (8192, 4096, 128256) (a Llama-3-8B head),
  (8192, 2304, 256000) (Gemma 2), (16384, 2048, 32768): logitlab triton; the naive computation
  (logits = h @ Wᵀ, F.cross_entropy in float32) eager and torch.compile'd;
  torch.nn.functional.linear_cross_entropy; Liger-Kernel's LigerFusedLinearCrossEntropyLoss and
  cut-cross-entropy's linear_cross_entropy where installed; the three-GEMM floor (the bare bf16
  matmuls h·Wᵀ, G·W and Gᵀ·h). Time ÷ floor is reported.
* cross_entropy, bf16 (8192, 128256): logitlab triton, naive eager and compiled, Liger's
  LigerCrossEntropyLoss, and a device-to-device copy of the logits (the bandwidth ceiling). The
  achieved bandwidth counts the minimum traffic (read the logits once, write the gradient once:
  4 bytes per logit) over the time, as a fraction of the copy's.

Peak memory is measured per implementation and shape in a call of its own: the peak of
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated
before (the inputs), minus the returned gradients. Records carry the GPU's name, the driver and the
torch/triton/CUDA versions; the last line printed is the path of the JSON records.

    python benchmarks/gpu.py                 # on one GPU (about 6 minutes on an H200)
    python benchmarks/gpu.py --quick         # tiny shapes; on a CPU only with TRITON_INTERPRET=1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import logitlab  # noqa: E402
from _harness import row, write_records  # noqa: E402
from logitlab import reference  # noqa: E402

LCE_SHAPES = [(8192, 4096, 128256), (8192, 2304, 256000), (16384, 2048, 32768)]
CE_SHAPE = (8192, 128256)
QUICK_LCE = [(48, 16, 300)]
QUICK_CE = (48, 300)
LCE_IMPLS = ["floor", "logitlab_triton", "naive", "naive_compile", "torch_lce", "liger", "cce"]
CE_IMPLS = ["copy", "logitlab_triton", "naive", "naive_compile", "liger"]
RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
IGNORED_EVERY = 17  # every 17th target is ignore_index, as padding would be
SLACK = 4e-3        # bf16, as tests/conftest.py's ERROR_SLACK


# ---- the machine ------------------------------------------------------------------------------

def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "cuda": torch.version.cuda, "load_avg_1min": os.getloadavg()[0]}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as error:  # noqa: BLE001 (recorded)
        info["triton"] = f"not importable: {error}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, sm_count=props.multi_processor_count, memory_gib=props.total_memory / 2**30)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info["driver"] = "unknown"
    else:
        info.update(gpu="none (CPU, Triton interpreter)", driver="none")
    return info


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(call, device) -> float:
    if device.type != "cuda":
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1e3
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    call()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end)


# ---- correctness on the device ------------------------------------------------------------------

def _err(a, b):
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())


def check(device) -> list[dict]:
    """Triton vs the float64 reference at small odd shapes, bf16, every option at once."""
    gen = torch.Generator().manual_seed(0)
    out = []
    n, v = 67, 1031
    logits = torch.randn(n, v, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, v, (n,), generator=gen)
    target[::IGNORED_EVERY] = -100
    weight = torch.rand(v, generator=gen, dtype=torch.float64) + 0.5
    opts = dict(weight=weight, label_smoothing=0.1, z_loss=1e-3, temperature=1.3)
    x64 = logits.clone().requires_grad_()
    reference.cross_entropy(x64, target, **opts).backward()
    truth, g_truth = reference.cross_entropy(logits, target, **opts), x64.grad
    low = logits.to(torch.bfloat16)
    for name in ("triton", "naive"):
        x = low.to(device).requires_grad_()
        if name == "triton":
            loss = logitlab.cross_entropy(x, target.to(device), impl="triton",
                                          **{**opts, "weight": weight.float().to(device)})
        else:
            loss = logitlab.cross_entropy(x, target.to(device), impl="composite",
                                          **{**opts, "weight": weight.float().to(device)})
        loss.backward()
        out.append({"check": "cross_entropy", "impl": name, "loss_err": _err(loss, truth),
                    "grad_err": _err(x.grad, g_truth)})
    n, d, v = 67, 48, 1031
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64)
    head = torch.randn(v, d, generator=gen, dtype=torch.float64) / d ** 0.5
    bias = torch.randn(v, generator=gen, dtype=torch.float64)
    lopts = dict(label_smoothing=0.1, z_loss=1e-3, softcap=15.0)
    leaves = [t.clone().requires_grad_() for t in (hidden, head, bias)]
    truth = reference.linear_cross_entropy(leaves[0], leaves[1], target, bias=leaves[2], **lopts)
    truth.backward()
    for name in ("triton", "composite"):
        lows = [t.to(torch.bfloat16).to(device).requires_grad_() for t in (hidden, head, bias)]
        loss = logitlab.linear_cross_entropy(lows[0], lows[1], target.to(device), bias=lows[2], impl=name,
                                             chunk_size=16 if name == "triton" else None, **lopts)
        loss.backward()
        out.append({"check": "linear_cross_entropy", "impl": name, "loss_err": _err(loss, truth),
                    "grad_err": max(_err(a.grad, b.grad) for a, b in zip(lows, leaves))})
    for kind in ("cross_entropy", "linear_cross_entropy"):
        ours, naive = (r for r in out if r["check"] == kind)
        ok = ours["loss_err"] <= naive["loss_err"] + SLACK and ours["grad_err"] <= naive["grad_err"] + SLACK
        ours["ok"] = naive["ok"] = ok
    return out


# ---- the implementations ----------------------------------------------------------------------

def _peer(module: str, name: str):
    try:
        return getattr(__import__(module, fromlist=[name]), name), None
    except Exception as error:  # noqa: BLE001 (the reason goes into the record)
        return None, f"{module}.{name} is not importable ({type(error).__name__}: {error})"


def lce_calls(h, w, t, impls, device):
    """{impl: zero-argument fwd+bwd call} for linear_cross_entropy; {impl: why not} for the rest."""
    calls, missing = {}, {}

    def naive_fn(h, w, t):
        return F.cross_entropy((h @ w.t()).float(), t, ignore_index=-100)

    def leaf_call(fn):
        def call():
            h.grad = w.grad = None
            fn().backward()
        return call

    for impl in impls:
        if impl == "floor":
            g = torch.randn(h.shape[0], w.shape[0], device=device, dtype=h.dtype)
            gh, gw, z = torch.empty_like(h), torch.empty_like(w), torch.empty_like(g)
            hd, wd = h.detach(), w.detach()

            def floor():
                torch.mm(hd, wd.t(), out=z)
                torch.mm(g, wd, out=gh)
                torch.mm(g.t(), hd, out=gw)
            calls[impl] = floor
        elif impl == "logitlab_triton":
            calls[impl] = leaf_call(lambda: logitlab.linear_cross_entropy(h, w, t, impl="triton"))
        elif impl == "naive":
            calls[impl] = leaf_call(lambda: naive_fn(h, w, t))
        elif impl == "naive_compile":
            compiled = torch.compile(naive_fn, dynamic=False)
            calls[impl] = leaf_call(lambda: compiled(h, w, t))
        elif impl == "torch_lce":
            if hasattr(F, "linear_cross_entropy"):
                calls[impl] = leaf_call(lambda: F.linear_cross_entropy(h, w, t))
            else:
                missing[impl] = f"torch {torch.__version__} has no F.linear_cross_entropy"
        elif impl == "liger":
            cls, why = _peer("liger_kernel.transformers", "LigerFusedLinearCrossEntropyLoss")
            if cls is None:
                missing[impl] = why
            else:
                loss_fn = cls()
                calls[impl] = leaf_call(lambda: loss_fn(w, h, t))
        elif impl == "cce":
            fn, why = _peer("cut_cross_entropy", "linear_cross_entropy")
            if fn is None:
                missing[impl] = why
            else:
                calls[impl] = leaf_call(lambda: fn(h, w, t))
    return calls, missing


def ce_calls(z, t, impls):
    calls, missing = {}, {}

    def naive_fn(z, t):
        return F.cross_entropy(z.float(), t)

    def leaf_call(fn):
        def call():
            z.grad = None
            fn().backward()
        return call

    for impl in impls:
        if impl == "copy":
            dst, src = torch.empty_like(z), z.detach()
            calls[impl] = lambda: dst.copy_(src)
        elif impl == "logitlab_triton":
            calls[impl] = leaf_call(lambda: logitlab.cross_entropy(z, t, impl="triton"))
        elif impl == "naive":
            calls[impl] = leaf_call(lambda: naive_fn(z, t))
        elif impl == "naive_compile":
            compiled = torch.compile(naive_fn, dynamic=False)
            calls[impl] = leaf_call(lambda: compiled(z, t))
        elif impl == "liger":
            cls, why = _peer("liger_kernel.transformers", "LigerCrossEntropyLoss")
            if cls is None:
                missing[impl] = why
            else:
                loss_fn = cls()
                calls[impl] = leaf_call(lambda: loss_fn(z, t))
    return calls, missing


def measure(calls, grads, device, repeats, warmup):
    """Interleaved times (ms) and, on CUDA, each call's extra peak memory (MiB)."""
    first = {}
    for name, call in calls.items():  # warm-up (compilation happens here: the first call is kept apart)
        first[name] = timed_ms(call, device)
        for _ in range(warmup - 1):
            call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(timed_ms(call, device))
    memory = {}
    for name, call in calls.items():
        if device.type != "cuda":
            memory[name] = None
            continue
        for g in grads():
            g.grad = None
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        returned = sum(g.grad.numel() * g.grad.element_size() for g in grads() if g.grad is not None)
        memory[name] = (peak - base - returned) / 2**20
    return first, times, memory


def record(kind, shape, name, first, times, memory, info, extra=None):
    ts = times[name]
    rec = {"op": kind, "shape": list(shape), "dtype": "bfloat16", "impl": name, "first_call_ms": first[name],
           "time_ms_median": statistics.median(ts), "time_ms_min": min(ts), "time_ms_max": max(ts),
           "timed_calls": len(ts), "times_ms": list(ts), "extra_peak_mib": memory[name], **info}
    rec.update(extra or {})
    return rec


def render(records) -> str:
    lines = [f"{'op':>22} {'shape':>22} {'impl':>16} {'ms':>9} {'min..max':>17} {'/floor':>7} {'GB/s':>7} "
             f"{'%copy':>6} {'extra MiB':>10}"]
    for r in records:
        if "check" in r:
            lines.append(f"{'check ' + r['check']:>22} {'':>22} {r['impl']:>16} loss err {r['loss_err']:.2e} "
                         f"grad err {r['grad_err']:.2e} {'ok' if r['ok'] else 'FAILED'}")
            continue
        shape = "x".join(str(s) for s in r["shape"])
        if "status" in r:
            lines.append(f"{r['op']:>22} {shape:>22} {r['impl']:>16} {r['status']}")
            continue
        mem = "-" if r["extra_peak_mib"] is None else f"{r['extra_peak_mib']:.0f}"
        lines.append(f"{r['op']:>22} {shape:>22} {r['impl']:>16} {r['time_ms_median']:9.3f} "
                     f"{r['time_ms_min']:8.3f}..{r['time_ms_max']:<8.3f} {r.get('ratio_to_floor', float('nan')):7.3f} "
                     f"{r.get('min_traffic_gb_s', float('nan')):7.0f} {r.get('pct_of_copy', float('nan')):6.1f} "
                     f"{mem:>10}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CPU: needs TRITON_INTERPRET=1)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--skip", default="", help="comma-separated impls to leave out (e.g. naive_compile)")
    parser.add_argument("--no-check", action="store_true", help="benchmark without the correctness check")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("no CUDA device: run on a GPU, or with TRITON_INTERPRET=1 and --quick on a CPU")
    info = machine(device)
    skipped = set(filter(None, args.skip.split(",")))
    repeats = args.repeats or (2 if args.quick else 10)
    warmup = 1 if args.quick else 2
    records = []
    if not args.no_check:
        checks = check(device)
        records += [{**c, **info} for c in checks]
        if not all(c["ok"] for c in checks):
            out = write_records(args.out, records)
            print(render(records))
            print("# correctness check FAILED: no benchmark run", flush=True)
            print(out)
            return 1
    gen = torch.Generator(device=device).manual_seed(0)
    for shape in (QUICK_LCE if args.quick else LCE_SHAPES):
        rows, dim, vocab = shape
        print(f"# linear_cross_entropy {shape} bf16 ...", flush=True)
        h = (torch.randn(rows, dim, device=device, generator=gen) / dim ** 0.25).to(torch.bfloat16).requires_grad_()
        w = (torch.randn(vocab, dim, device=device, generator=gen) / dim ** 0.25).to(torch.bfloat16).requires_grad_()
        t = torch.randint(0, vocab, (rows,), device=device, generator=gen)
        t[::IGNORED_EVERY] = -100
        calls, missing = lce_calls(h, w, t, [i for i in LCE_IMPLS if i not in skipped], device)
        first, times, memory = measure(calls, lambda h=h, w=w: (h, w), device, repeats, warmup)
        floor = statistics.median(times["floor"]) if "floor" in times else None
        for name in LCE_IMPLS:
            if name in calls:
                rec = record("linear_cross_entropy", shape, name, first, times, memory, info)
                if floor:
                    rec["ratio_to_floor"] = rec["time_ms_median"] / floor
                records.append(rec)
            else:
                records.append({"op": "linear_cross_entropy", "shape": list(shape), "impl": name,
                                "status": "not measured: " + ("skipped (--skip)" if name in skipped else missing[name]),
                                **info})
        del h, w, t, calls
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows, vocab = QUICK_CE if args.quick else CE_SHAPE
    print(f"# cross_entropy {(rows, vocab)} bf16 ...", flush=True)
    z = (torch.randn(rows, vocab, device=device, generator=gen) * 2).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, vocab, (rows,), device=device, generator=gen)
    calls, missing = ce_calls(z, t, [i for i in CE_IMPLS if i not in skipped])
    first, times, memory = measure(calls, lambda: (z,), device, repeats, warmup)
    copy_ms = statistics.median(times["copy"]) if "copy" in times else None
    traffic = rows * vocab * 4  # read the bf16 logits once, write the bf16 gradient once
    for name in CE_IMPLS:
        if name not in calls:
            records.append({"op": "cross_entropy", "shape": [rows, vocab], "impl": name,
                            "status": "not measured: " + ("skipped (--skip)" if name in skipped else missing[name]),
                            **info})
            continue
        rec = record("cross_entropy", (rows, vocab), name, first, times, memory, info)
        rec["min_traffic_gb_s"] = traffic / rec["time_ms_median"] / 1e6
        if copy_ms:
            rec["pct_of_copy"] = 100 * rec["min_traffic_gb_s"] / (traffic / copy_ms / 1e6)
        records.append(rec)
    rows = [row(r["op"], r["impl"], r["shape"], r.get("dtype", "bfloat16"), time_ms=r.get("times_ms"),
                peak_mem_mib=r.get("extra_peak_mib"), **({"status": r["status"]} if "status" in r else {}))
            for r in records if {"op", "impl", "shape"} <= set(r)]  # (the correctness checks stay in the detail)
    out = write_records(args.out, records, rows=rows)
    print(render(records))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
