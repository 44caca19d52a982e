"""Forward + backward of α-entmax across α (below, at and above 1), ours beside the entmax package.

For each shape and α, one process times ``logitlab.entmax(x, α)`` and ``entmax.entmax_bisect``
(the peer; it has no α = 1, where ``torch.softmax`` is timed instead) interleaved, after a
warm-up, on float32 CPU logits ``randn``. α < 1.0625 takes logitlab's q-exponential solver
(torch, float64, whole rows); α >= 1.0625 the threshold engine (native kernel where it builds):
the record's ``ours_path`` says which. Correctness is checked in the same run (ours against
the peer, or softmax at α = 1). Records go to JSON (units in field names), a table is printed,
and the last line is the path of the records.

Usage::

    PYTHONPATH=src python benchmarks/entmax_alpha.py            # (1024, 1024), (256, 32768)
    PYTHONPATH=src python benchmarks/entmax_alpha.py --quick    # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--out", default=str(HERE / "results" / "entmax_alpha.json"))
    args = parser.parse_args()

    import entmax as peer
    import torch

    import logitlab
    from logitlab.normalizers._qexp import DENSE_BELOW

    torch.manual_seed(0)
    records = []
    for rows, n in QUICK_SHAPES if args.quick else FULL_SHAPES:
        x = torch.randn(rows, n)
        grad_out = torch.randn(rows, n)
        for alpha in ALPHAS:
            def ours(alpha=alpha):
                leaf = x.detach().requires_grad_()
                out = logitlab.entmax(leaf, alpha)
                out.backward(grad_out)
                return out.detach(), leaf.grad

            def other(alpha=alpha):
                leaf = x.detach().requires_grad_()
                out = torch.softmax(leaf, -1) if alpha == 1.0 else peer.entmax_bisect(leaf, alpha, n_iter=50)
                out.backward(grad_out)
                return out.detach(), leaf.grad

            times = time_interleaved({"ours": ours, "peer": other}, args.repeats)
            (p_ours, g_ours), (p_peer, g_peer) = ours(), other()
            records.append({
                "rows": rows, "classes": n, "alpha": alpha, "dtype": "float32",
                "ours_path": "qexp (torch, float64)" if alpha < DENSE_BELOW else "threshold engine",
                "peer": "torch.softmax" if alpha == 1.0 else "entmax.entmax_bisect(n_iter=50)",
                "ours_ms": times["ours"], "peer_ms": times["peer"],
                "max_abs_diff_probs": float((p_ours - p_peer).abs().max()),
                "max_abs_diff_grad": float((g_ours - g_peer).abs().max()),
            })
    print(f"{'shape':>12} {'alpha':>6} {'ours ms':>9} {'peer ms':>9} {'peer/ours':>9}  ours path / peer")
    for r in records:
        o, p = r["ours_ms"]["median_ms"], r["peer_ms"]["median_ms"]
        print(f"{r['rows']:>5}x{r['classes']:<6} {r['alpha']:>6} {o:>9.1f} {p:>9.1f} {p / o:>9.2f}  "
              f"{r['ours_path']} / {r['peer']} (|dp| {r['max_abs_diff_probs']:.1e})")
    rows = [row("entmax", impl, (r["rows"], r["classes"]), r["dtype"], time_ms=r[f"{which}_ms"], alpha=r["alpha"],
                path=r["ours_path"] if which == "ours" else None)
            for r in records for which, impl in (("ours", "logitlab"), ("peer", r["peer"]))]
    out = write_records(args.out, {"machine": machine_info(), "repeats": args.repeats, "records": records},
                        rows=rows, benchmark="entmax_alpha")
    print(out)


if __name__ == "__main__":
    main()
