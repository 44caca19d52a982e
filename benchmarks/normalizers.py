"""Forward + backward time and peak memory of every registered normalizer beside its peer.

Peers: ``torch.softmax`` for every map (the baseline all alternatives are compared against),
and the ``entmax`` package's ``sparsemax`` / ``entmax15`` / ``entmax_bisect`` for the sparse
maps when it is installed. ``log_softmax`` is timed too, against ``torch.log_softmax``.

Method (see shared BENCHMARKING.md): one fresh process per case, 2 threads, fixed seed; ours and
the peer interleaved in that process (A B, then B A, ...), warm-up then repeats, median time
reported with min and max; correctness checked in the same process (against the peer when it
computes the same map, else against ``logitlab.reference`` on a few rows). Peak memory of one
call is measured in another fresh process per implementation: after warm-up, glibc is trimmed and
the kernel's high-water mark reset (``/proc/self/clear_refs``), so the figure is the extra
memory the call needs, next to what it must return (output and input gradient).

Usage::

    PYTHONPATH=src python benchmarks/normalizers.py            # full: (4096, 1000), (1024, 32768)
    PYTHONPATH=src python benchmarks/normalizers.py --quick    # tiny shapes, one process, no memory

Records are written as JSON (units in field names); a table is printed; the last line is the
path of the records.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from _harness import forward_backward, machine_info, peak_extra_mib, row, run_worker, summarize, write_records

FULL_SHAPES = [(4096, 1000), (1024, 32768)]
QUICK_SHAPES = [(64, 100), (16, 2048)]
# Extra rows: log_softmax, and softmax without its NaN/+inf check (validate=False).
EXTRA = {"log_softmax": "logitlab.normalizers.softmax:log_softmax",
         "softmax_unchecked": "logitlab.normalizers.softmax:softmax"}
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------------
# Inside a worker process
# --------------------------------------------------------------------------------------------

def _setup(name: str, shape: tuple[int, int]):
    """Return (ours, peer, peer_name, same_map, reference, x, grad_out)."""
    import torch

    from logitlab import reference, registry

    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(shape) * 2
    if name == "standard":
        x = x.abs() + 0.1  # standard normalization needs non-negative scores
    grad_out = torch.randn(shape)
    try:
        import entmax as entmax_pkg  # a peer, only here
    except ImportError:
        entmax_pkg = None

    if name == "softmax_unchecked":
        fn = registry.resolve(EXTRA[name])
        return (lambda z: fn(z, validate=False)), (lambda z: torch.softmax(z, -1)), "torch.softmax", True, \
            (lambda z: reference.softmax(z, -1)), x, grad_out
    if name in EXTRA:
        ours = registry.resolve(EXTRA[name])
        return ours, (lambda z: torch.log_softmax(z, -1)), "torch.log_softmax", True, \
            (lambda z: reference.log_softmax(z, -1)), x, grad_out
    ours = registry.get_normalizer(name)
    peer, peer_name, same = (lambda z: torch.softmax(z, -1)), "torch.softmax", name == "softmax"
    if entmax_pkg is not None and name == "sparsemax":
        peer, peer_name, same = (lambda z: entmax_pkg.sparsemax(z, dim=-1)), "entmax.sparsemax", True
    elif entmax_pkg is not None and name == "entmax15":
        peer, peer_name, same = (lambda z: entmax_pkg.entmax15(z, dim=-1)), "entmax.entmax15", True
    elif entmax_pkg is not None and name == "entmax":
        alpha = registry.NORMALIZERS[name].params.get("alpha", 1.5)
        peer, peer_name, same = (lambda z: entmax_pkg.entmax_bisect(z, alpha=alpha, dim=-1)), \
            "entmax.entmax_bisect", True
    ref_fn = getattr(reference, registry.NORMALIZERS[name].fn.__name__, None)
    params = dict(registry.NORMALIZERS[name].params)
    if ref_fn is not None and name == "standard":
        ref_fn_row = lambda z: reference.standard_normalize(z, -1)  # noqa: E731
    elif ref_fn is not None and name == "sigmoid":
        ref_fn_row = reference.sigmoid
    elif ref_fn is not None:
        ref_fn_row = lambda z: ref_fn(z, -1, **params)  # noqa: E731
    else:
        ref_fn_row = None
    return ours, peer, peer_name, same, ref_fn_row, x, grad_out


def worker_time(name: str, shape: tuple[int, int], repeats: int, warmup: int) -> dict:
    import torch

    ours, peer, peer_name, same, ref_fn, x, grad_out = _setup(name, shape)
    for _ in range(warmup):
        forward_backward(ours, x, grad_out)
        forward_backward(peer, x, grad_out)
    t_ours, t_peer = [], []
    for r in range(repeats):
        pair = [(ours, t_ours), (peer, t_peer)]
        for fn, bucket in (pair if r % 2 == 0 else pair[::-1]):
            seconds, _, _ = forward_backward(fn, x, grad_out)
            bucket.append(seconds)
    _, out, grad = forward_backward(ours, x, grad_out)
    if same:
        _, out_peer, grad_peer = forward_backward(peer, x, grad_out)
        err = float((out - out_peer).abs().max())
        grad_err = float((grad - grad_peer).abs().max())
        checked = peer_name
    elif ref_fn is not None:
        rows = slice(0, 8)
        xr = x[rows].double().requires_grad_()
        truth = ref_fn(xr)
        truth.backward(grad_out[rows].double())
        err = float((out[rows].double() - truth.detach()).abs().max())
        grad_err = float((grad[rows].double() - xr.grad).abs().max())
        checked = "reference (8 rows, float64)"
    else:
        err = grad_err = float("nan")
        checked = "none"
    ours_s, peer_s = summarize([t * 1e3 for t in t_ours]), summarize([t * 1e3 for t in t_peer])
    return {
        "normalizer": name, "shape": list(shape), "dtype": "float32", "peer": peer_name,
        "ours_median_ms": ours_s["median_ms"], "ours_min_ms": ours_s["min_ms"], "ours_max_ms": ours_s["max_ms"],
        "peer_median_ms": peer_s["median_ms"], "peer_min_ms": peer_s["min_ms"], "peer_max_ms": peer_s["max_ms"],
        "ratio_ours_over_peer": ours_s["median_ms"] / peer_s["median_ms"],
        "ours_time": ours_s, "peer_time": peer_s,
        "repeats": repeats, "warmup": warmup, "checked_against": checked,
        "max_abs_err_probs": err, "max_abs_err_grad": grad_err,
        "finite": bool(torch.isfinite(out).all() and torch.isfinite(grad).all()),
    }


def worker_memory(name: str, shape: tuple[int, int], which: str) -> dict:
    ours, peer, peer_name, _, _, x, grad_out = _setup(name, shape)
    fn = ours if which == "ours" else peer
    for _ in range(2):
        forward_backward(fn, x, grad_out)
    gc.collect()
    extra_mib, (_, out, grad), method = peak_extra_mib(lambda: forward_backward(fn, x, grad_out))
    returned = out.numel() * out.element_size() + grad.numel() * grad.element_size()
    return {"normalizer": name, "shape": list(shape), "impl": which, "name": name if which == "ours" else peer_name,
            "extra_peak_mib": extra_mib, "returned_mib": returned / 2**20, "method": method}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def _table(records: list[dict], memory: dict) -> str:
    head = (f"{'normalizer':<18} {'shape':<13} {'peer':<21} {'ours ms':>9} {'peer ms':>9} {'ratio':>6} "
            f"{'ours MiB':>9} {'peer MiB':>9} {'ret MiB':>8} {'max err':>8}")
    lines = [head, "-" * len(head)]
    for r in records:
        key = (r["normalizer"], tuple(r["shape"]))
        mem_o, mem_p = memory.get(key + ("ours",)), memory.get(key + ("peer",))

        def mib(mem, field):
            return (f"{mem[field]:>{9 if field != 'returned_mib' else 8}.1f}" if mem
                    else f"{'-':>{9 if field != 'returned_mib' else 8}}")

        lines.append(
            f"{r['normalizer']:<18} {'x'.join(map(str, r['shape'])):<13} {r['peer']:<21} "
            f"{r['ours_median_ms']:>9.2f} {r['peer_median_ms']:>9.2f} {r['ratio_ours_over_peer']:>6.2f} "
            f"{mib(mem_o, 'extra_peak_mib')} {mib(mem_p, 'extra_peak_mib')} {mib(mem_o, 'returned_mib')} "
            f"{max(r['max_abs_err_probs'], r['max_abs_err_grad']):>8.1e}")
    return "\n".join(lines)


def _rows(records: list[dict], memory: dict) -> list[dict]:
    """The records in the shared schema: one row for ours and one for the peer per (map, shape)."""
    rows = []
    for r in records:
        key = (r["normalizer"], tuple(r["shape"]))
        for which, impl in (("ours", "logitlab"), ("peer", r["peer"])):
            mem = memory.get(key + (which,))
            rows.append(row(r["normalizer"], impl, r["shape"], r["dtype"], time_ms=r[f"{which}_time"],
                            peak_mem_mib=mem["extra_peak_mib"] if mem else None,
                            returned_mib=mem["returned_mib"] if mem else None,
                            checked_against=r["checked_against"] if which == "ours" else None,
                            max_abs_err=max(r["max_abs_err_probs"], r["max_abs_err_grad"]) if which == "ours"
                            else None))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per implementation (>= 5)")
    parser.add_argument("--only", nargs="*", default=None, help="normalizer names to run")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "normalizers.json")
    parser.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        shape = tuple(int(s) for s in args.shape.split("x"))
        if args.worker == "time":
            record = worker_time(args.case, shape, args.repeats, 2)
        else:
            record = worker_memory(args.case, shape, args.impl)
        print(json.dumps(record))
        return 0

    sys.path.insert(0, str(HERE.parent / "src"))
    from logitlab import registry

    names = list(registry.NORMALIZERS) + list(EXTRA)
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown normalizer(s) {unknown}; expected some of: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    repeats = max(5, args.repeats or (15 if args.quick else 7))
    records, memory = [], {}
    for shape in shapes:
        for name in names:
            tag = "x".join(map(str, shape))
            print(f"[{tag}] {name} ...", file=sys.stderr, flush=True)
            try:
                if args.quick:  # a smoke run: in this process, no memory figures
                    records.append(worker_time(name, shape, repeats, 2))
                else:
                    records.append(run_worker(__file__, ["--worker", "time", "--case", name, "--shape", tag,
                                           "--repeats", str(repeats)]))
                if not (args.no_memory or args.quick):
                    for which in ("ours", "peer"):
                        memory[(name, shape, which)] = run_worker(__file__,
                            ["--worker", "memory", "--case", name, "--shape", tag, "--impl", which])
            except (RuntimeError, ImportError) as error:  # e.g. a normalizer not on this branch
                last = str(error).strip().splitlines()[-1]
                print(f"  skipped: {last}", file=sys.stderr)
    result = {
        "benchmark": "normalizers forward+backward", **machine_info(), "threads": 2,
        "quick": args.quick, "time_unix_s": time.time(),
        "records": records, "memory": list(memory.values()),
    }
    print(_table(records, memory))
    print(write_records(args.out, result, rows=_rows(records, memory), benchmark="normalizers"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
