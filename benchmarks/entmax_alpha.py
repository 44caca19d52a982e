"""Forward + backward of α-entmax across α (below, at and above 1): the native kernel, the torch
path and the entmax package, in one process.

For each shape and α, one process times ``logitlab.entmax(x, α, impl="native")`` (per native
build asked for), ``impl="torch"`` and ``entmax.entmax_bisect`` (the peer; it has no α = 1, where
``torch.softmax`` is timed instead) interleaved, after a warm-up, on float32 CPU logits ``randn``.
α < 1.0625 takes logitlab's q-exponential solver (native: ``_native/qexp.c``; torch: float64
torch ops over whole rows), α >= 1.0625 the threshold engine (native: ``_native/sparse.c``;
torch: the ``torch.topk`` path): the record's ``ours_path`` says which. At α = 1 logitlab gets α
as a per-row tensor (what a learned α is), so the q-exponential solver runs; a float 1.0 would
be torch's softmax. Correctness is checked in the same run (native against torch and against the
peer, or softmax at α = 1). Records go to JSON (units in field names), a table is printed, and
the last line is the path of the records; the table's ``/<build>`` column is each build's time
over the first build's in ``--builds`` (the AVX2/AVX-512 ratio with ``--builds avx512 avx2``).
``--note`` is stored with the records (say "under load" when the machine was shared).

Usage::

    PYTHONPATH=src python benchmarks/entmax_alpha.py            # (1024, 1024), (256, 32768)
    PYTHONPATH=src python benchmarks/entmax_alpha.py --quick    # tiny shapes, seconds
    PYTHONPATH=src python benchmarks/entmax_alpha.py --builds avx512 avx2 portable --note "under load"
    PYTHONPATH=src python benchmarks/entmax_alpha.py --shapes 256x4096 --alphas 0.5 1.0
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from _harness import machine_info, row, time_interleaved, write_records

HERE = Path(__file__).resolve().parent
FULL_SHAPES = [(1024, 1024), (256, 32768)]
QUICK_SHAPES = [(32, 100)]
ALPHAS = (0.5, 0.9, 1.0, 1.03, 1.3, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    parser.add_argument("--shapes", nargs="+", default=None, help="ROWSxCLASSES each (default: the full set)")
    parser.add_argument("--builds", nargs="+", default=None,
                        help="native builds to time (default: the one selected in this process)")
    parser.add_argument("--note", default="", help="stored with the records, e.g. 'under load'")
    parser.add_argument("--out", default=str(HERE / "results" / "entmax_alpha.json"))
    args = parser.parse_args()

    import entmax as peer
    import torch

    import logitlab
    from logitlab import _native
    from logitlab.normalizers._qexp import DENSE_BELOW

    builds = args.builds or [_native.selected_build()[0]]
    torch.manual_seed(0)
    records = []
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else None
    for rows, n in shapes or (QUICK_SHAPES if args.quick else FULL_SHAPES):
        x = torch.randn(rows, n)
        grad_out = torch.randn(rows, n)
        for alpha in args.alphas:
            # α = 1 as a tensor per row: the q-exponential solver, not the float shortcut to softmax.
            ours_alpha = torch.full((rows, 1), alpha, dtype=torch.float64) if alpha == 1.0 else alpha

            def ours(impl, build=None, alpha=ours_alpha):
                with _native.use_build(build) if build else contextlib.nullcontext():
                    leaf = x.detach().requires_grad_()
                    out = logitlab.entmax(leaf, alpha, impl=impl)
                    out.backward(grad_out)
                return out.detach(), leaf.grad

            def other(alpha=alpha):
                leaf = x.detach().requires_grad_()
                out = torch.softmax(leaf, -1) if alpha == 1.0 else peer.entmax_bisect(leaf, alpha, n_iter=50)
                out.backward(grad_out)
                return out.detach(), leaf.grad

            calls = {f"native[{b}]": (lambda b=b: ours("native", b)) for b in builds}
            calls.update(torch=lambda: ours("torch"), peer=other)
            times = time_interleaved(calls, args.repeats)
            (p_torch, g_torch), (p_peer, g_peer) = ours("torch"), other()
            checks = {}
            for b in builds:
                p_nat, g_nat = ours("native", b)
                checks[b] = {"max_abs_diff_probs_vs_torch": float((p_nat - p_torch).abs().max()),
                             "max_abs_diff_grad_vs_torch": float((g_nat - g_torch).abs().max()),
                             "max_abs_diff_probs_vs_peer": float((p_nat - p_peer).abs().max()),
                             "max_abs_diff_grad_vs_peer": float((g_nat - g_peer).abs().max())}
            records.append({
                "rows": rows, "classes": n, "alpha": alpha, "dtype": "float32", "note": args.note,
                "alpha_as": "tensor (rows, 1)" if alpha == 1.0 else "float",
                "ours_path": "qexp" if alpha < DENSE_BELOW else "threshold engine",
                "peer": "torch.softmax" if alpha == 1.0 else "entmax.entmax_bisect(n_iter=50)",
                "native_ms": {b: times[f"native[{b}]"] for b in builds}, "torch_ms": times["torch"],
                "peer_ms": times["peer"], "checks": checks,
            })
    label = f" ({args.note})" if args.note else ""
    print(f"forward + backward, float32, ms (median){label}")
    first = f"/{builds[0]}"  # each build's time over the first build's, from the same process
    print(f"{'shape':>12} {'alpha':>6} {'path':>16} {'build':>10} {'native':>8} {first:>11} {'torch':>8} "
          f"{'peer':>8} {'torch/native':>12} {'peer/native':>11}  |dp| vs torch, peer")
    for r in records:
        t, p = r["torch_ms"]["median_ms"], r["peer_ms"]["median_ms"]
        base = r["native_ms"][builds[0]]["median_ms"]
        for b, nat in r["native_ms"].items():
            o, c = nat["median_ms"], r["checks"][b]
            print(f"{r['rows']:>5}x{r['classes']:<6} {r['alpha']:>6} {r['ours_path']:>16} {b:>10} {o:>8.1f} "
                  f"{o / base:>11.2f} {t:>8.1f} {p:>8.1f} {t / o:>12.2f} {p / o:>11.2f}  "
                  f"{c['max_abs_diff_probs_vs_torch']:.1e}, {c['max_abs_diff_probs_vs_peer']:.1e}")
    out_rows = []
    for r in records:
        shape, extra = (r["rows"], r["classes"]), {"alpha": r["alpha"], "path": r["ours_path"], "note": r["note"]}
        for b, nat in r["native_ms"].items():
            out_rows.append(row("entmax", "native", shape, r["dtype"], time_ms=nat, build=b, **extra))
        out_rows.append(row("entmax", "torch", shape, r["dtype"], time_ms=r["torch_ms"], **extra))
        out_rows.append(row("entmax", r["peer"], shape, r["dtype"], time_ms=r["peer_ms"], alpha=r["alpha"],
                            note=r["note"]))
    out = write_records(args.out, {"machine": machine_info(), "repeats": args.repeats, "records": records},
                        rows=out_rows, benchmark="entmax_alpha")
    print(out)


if __name__ == "__main__":
    main()
