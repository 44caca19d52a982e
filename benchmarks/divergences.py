"""Forward + backward time of the divergence and Fenchel–Young losses against their peers.

Cases (float32, validation off, each in a fresh process, ours and the peer interleaved):

* kl: ``kl_divergence(z, p)`` vs ``F.kl_div(F.log_softmax(z), p, reduction="batchmean")``
* fy_softmax: ``fenchel_young_loss(z, y)`` (index targets) vs ``F.cross_entropy(z, y)``
* sparsemax_loss / entmax15_loss: ours vs ``entmax.SparsemaxLoss`` / ``entmax.Entmax15Loss``

Prints a table and writes JSON records (``--out``); ``--quick`` runs tiny shapes in seconds.
Usage: ``PYTHONPATH=src python benchmarks/divergences.py [--quick] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

from _harness import peak_extra_mib, row, time_interleaved, write_records

CASES = ["kl", "fy_softmax", "sparsemax_loss", "entmax15_loss"]
# case -> (our op, the peer), as the records name them
NAMES = {"kl": ("kl_divergence", "F.kl_div"), "fy_softmax": ("fenchel_young_loss", "F.cross_entropy"),
         "sparsemax_loss": ("sparsemax_loss", "entmax.SparsemaxLoss"),
         "entmax15_loss": ("entmax15_loss", "entmax.Entmax15Loss")}


def _callables(case: str):
    import torch
    import torch.nn.functional as F

    import logitlab

    if case == "kl":
        return (lambda z, p, y: logitlab.kl_divergence(z, p, validate=False),
                lambda z, p, y: F.kl_div(F.log_softmax(z, -1), p, reduction="batchmean"))
    if case == "fy_softmax":
        return (lambda z, p, y: logitlab.fenchel_young_loss(z, y, validate=False),
                lambda z, p, y: F.cross_entropy(z, y))
    import entmax

    if case == "sparsemax_loss":
        peer = entmax.SparsemaxLoss()
        return (lambda z, p, y: logitlab.sparsemax_loss(z, y, validate=False), lambda z, p, y: peer(z, y))
    peer15 = entmax.Entmax15Loss(k=None)
    _ = torch
    return (lambda z, p, y: logitlab.entmax15_loss(z, y, validate=False), lambda z, p, y: peer15(z, y))


def run_case(case: str, rows: int, classes: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    ours, peer = _callables(case)
    logits = torch.randn(rows, classes) * 3
    target = torch.softmax(torch.randn(rows, classes), -1)
    index = torch.randint(0, classes, (rows,))

    def step(fn):
        z = logits.clone().requires_grad_(True)
        value = fn(z, target, index)
        value.backward()
        return value.detach(), z.grad

    # correctness in the same run
    ours_value, ours_grad = step(ours)
    peer_value, peer_grad = step(peer)
    value_err = float((ours_value - peer_value).abs())
    grad_err = float((ours_grad - peer_grad).abs().max())
    timing = time_interleaved({"ours": lambda: step(ours), "peer": lambda: step(peer)}, repeats, warmup=2)
    mem = {name: peak_extra_mib(lambda fn=fn: step(fn))[0] for name, fn in (("ours", ours), ("peer", peer))}
    ours_ms, peer_ms = timing["ours"]["median_ms"], timing["peer"]["median_ms"]
    return {
        "case": case, "rows": rows, "classes": classes, "dtype": "float32",
        "ours_time_ms": ours_ms, "peer_time_ms": peer_ms, "ratio_ours_over_peer": ours_ms / peer_ms,
        "ours_time_ms_min": timing["ours"]["min_ms"], "ours_time_ms_max": timing["ours"]["max_ms"],
        "peer_time_ms_min": timing["peer"]["min_ms"], "peer_time_ms_max": timing["peer"]["max_ms"],
        "ours_peak_extra_mib": mem["ours"], "peer_peak_extra_mib": mem["peer"],
        "value_abs_err": value_err, "grad_max_abs_err": grad_err, "repeats": repeats, "times": timing,
        "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
    }


def _rows(records: list[dict]) -> list[dict]:
    """The records in the shared schema: one row for ours and one for the peer per (case, shape)."""
    return [row(NAMES[r["case"]][0], impl, (r["rows"], r["classes"]), r["dtype"], time_ms=r["times"][which],
                peak_mem_mib=r[f"{which}_peak_extra_mib"], case=r["case"],
                max_abs_err=max(r["value_abs_err"], r["grad_max_abs_err"]) if which == "ours" else None)
            for r in records for which, impl in (("ours", "logitlab"), ("peer", NAMES[r["case"]][1]))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds")
    parser.add_argument("--out", default="benchmarks/results/divergences.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in this process
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.case:
        rows, classes = (int(x) for x in args.shape.split("x"))
        print(json.dumps(run_case(args.case, rows, classes, args.repeats)))
        return
    shapes = [(64, 100)] if args.quick else [(4096, 1000), (512, 32768)]
    repeats = 5 if args.quick else args.repeats
    records = []
    for rows, classes in shapes:
        for case in CASES:
            out = subprocess.run(
                [sys.executable, __file__, "--case", case, "--shape", f"{rows}x{classes}",
                 "--repeats", str(repeats)], capture_output=True, text=True, check=True)
            records.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = records[-1]
            print(f"{case:>15} {rows:>5}x{classes:<6} ours {r['ours_time_ms']:8.2f} ms  peer "
                  f"{r['peer_time_ms']:8.2f} ms  ratio {r['ratio_ours_over_peer']:5.2f}  mem ours/peer "
                  f"{r['ours_peak_extra_mib']:7.1f}/{r['peer_peak_extra_mib']:7.1f} MiB  "
                  f"err value {r['value_abs_err']:.1e} grad {r['grad_max_abs_err']:.1e}", flush=True)
    print(write_records(args.out, records, rows=_rows(records), benchmark="divergences"))


if __name__ == "__main__":
    main()
