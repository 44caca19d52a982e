"""Benchmark: the max-entropy Newton solver and the CRF forward algorithm.

Two families of cases, each run in a fresh process (``--case``):

* ``maxent``: :func:`logitlab.solve_maxent` on K support points with F random statistics and
  interior moments, beside the peer scipy.optimize.minimize(method="L-BFGS-B") on the same dual
  (numpy, float64, gtol 1e-12). Interleaved A B A B after a warm-up; the record holds Newton
  steps, peer iterations, the median time of each, and the moment violation of each (the
  correctness check of the run).
* ``crf``: :func:`logitlab.crf_log_partition` (forward algorithm, O(T K²)) beside brute force
  (every one of the K^T tag sequences scored at once, vectorized), forward only, with the
  difference of the two log-partitions printed; and the forward algorithm with backward on
  sizes brute force cannot touch.

Peak memory of one call (forward algorithm or solver) is measured in the same fresh process
after warm-up (glibc trimmed, kernel high-water mark reset through /proc/self/clear_refs), as
BENCHMARKING.md describes.

Usage:
    PYTHONPATH=src python benchmarks/theory.py --quick   # seconds
    PYTHONPATH=src python benchmarks/theory.py           # a few minutes

Records (JSON, units in field names) go to ``--out``; a table is printed and the last line is
the path of the records.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import logitlab  # noqa: E402
from _harness import peak_extra_mib, row, time_interleaved, write_records  # noqa: E402

F64 = torch.float64
FULL = {
    "maxent": [dict(k=k, f=f) for k in (100, 1000, 10000) for f in (1, 10, 100) if f < k],
    "crf_brute": [dict(b=8, t=t, k=k) for k, t in ((2, 4), (2, 8), (2, 12), (4, 4), (4, 8), (8, 4), (8, 6))],
    "crf_large": [dict(b=32, t=t, k=k) for t, k in ((50, 10), (100, 50), (200, 100))],
}
QUICK = {
    "maxent": [dict(k=100, f=10), dict(k=1000, f=10)],
    "crf_brute": [dict(b=4, t=4, k=2), dict(b=4, t=5, k=4)],
    "crf_large": [dict(b=8, t=20, k=10)],
}


def _peak_extra_mib(call) -> float:
    return max(0.0, peak_extra_mib(call)[0])


def _maxent_case(spec: dict, repeats: int) -> dict:
    import numpy as np
    from scipy.optimize import minimize

    gen = torch.Generator().manual_seed(0)
    stats = torch.randn(spec["k"], spec["f"], generator=gen, dtype=F64)
    mu = torch.softmax(torch.randn(spec["k"], generator=gen, dtype=F64), 0) @ stats
    problem = logitlab.MaxEntProblem(stats, mu)
    t_np, mu_np = stats.numpy(), mu.numpy()

    def dual(theta):
        scores = t_np @ theta
        top = scores.max()
        w = np.exp(scores - top)
        z = w.sum()
        return top + np.log(z) - theta @ mu_np, (w / z) @ t_np - mu_np

    state = {}

    def ours():
        state["ours"] = logitlab.solve_maxent(problem)

    def peer():
        state["peer"] = minimize(dual, np.zeros(spec["f"]), jac=True, method="L-BFGS-B",
                                 options=dict(gtol=1e-12, ftol=1e-16, maxiter=10000, maxcor=30))

    timing = time_interleaved({"ours": ours, "peer": peer}, repeats)
    result, peer_result = state["ours"], state["peer"]
    scores = t_np @ peer_result.x
    p = np.exp(scores - scores.max())
    p /= p.sum()
    return dict(
        family="maxent", k=spec["k"], f=spec["f"], status=result.status, newton_steps=result.n_iter,
        max_violation=result.max_violation, time_ms=timing["ours"]["median_ms"],
        time_min_ms=timing["ours"]["min_ms"], time_max_ms=timing["ours"]["max_ms"],
        peer="scipy L-BFGS-B", peer_iterations=int(peer_result.nit), peer_time_ms=timing["peer"]["median_ms"],
        peer_max_violation=float(np.abs(p @ t_np - mu_np).max()),
        ratio_ours_over_peer=timing["ours"]["median_ms"] / timing["peer"]["median_ms"],
        peak_mem_mib=_peak_extra_mib(ours), times=timing)


def _brute_force_log_partition(emissions: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """Every tag sequence scored at once: (K^T, T) indices, scores by gather, logsumexp."""
    b, t, k = emissions.shape
    seqs = torch.tensor(list(itertools.product(range(k), repeat=t)))  # (K^T, T)
    emit = emissions[:, torch.arange(t).unsqueeze(0), seqs].sum(2)  # (B, K^T)
    trans = transitions[seqs[:, :-1], seqs[:, 1:]].sum(1) if t > 1 else 0.0
    return torch.logsumexp(emit + trans, 1)


def _crf_case(spec: dict, repeats: int, brute: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    emissions = torch.randn(spec["b"], spec["t"], spec["k"], generator=gen)
    transitions = torch.randn(spec["k"], spec["k"], generator=gen)
    record = dict(family="crf_brute" if brute else "crf_large", b=spec["b"], t=spec["t"], k=spec["k"],
                  sequences=spec["k"] ** spec["t"], dtype="float32")
    if brute:
        calls = {"forward": lambda: logitlab.crf_log_partition(emissions, transitions),
                 "brute": lambda: _brute_force_log_partition(emissions, transitions)}
        timing = time_interleaved(calls, repeats)
        exact = _brute_force_log_partition(emissions.double(), transitions.double())
        diff = (logitlab.crf_log_partition(emissions, transitions).double() - exact).abs().max()
        record.update(forward_time_ms=timing["forward"]["median_ms"], brute_time_ms=timing["brute"]["median_ms"],
                      ratio_forward_over_brute=timing["forward"]["median_ms"] / timing["brute"]["median_ms"],
                      max_abs_diff_vs_brute_f64=float(diff),
                      peak_mem_mib=_peak_extra_mib(calls["forward"]),
                      brute_peak_mem_mib=_peak_extra_mib(calls["brute"]), times=timing)
    else:
        tags = torch.randint(0, spec["k"], (spec["b"], spec["t"]), generator=gen)
        leaf = emissions.clone().requires_grad_()

        def train_step():
            leaf.grad = None
            logitlab.linear_chain_crf_nll(leaf, transitions, tags).backward()

        timing = time_interleaved({"nll_fwd_bwd": train_step,
                         "viterbi": lambda: logitlab.viterbi_decode(emissions, transitions)}, repeats)
        record.update(nll_fwd_bwd_time_ms=timing["nll_fwd_bwd"]["median_ms"],
                      viterbi_time_ms=timing["viterbi"]["median_ms"], peak_mem_mib=_peak_extra_mib(train_step),
                      times=timing)
    return record


def _run_case(payload: str) -> None:
    spec = json.loads(payload)
    family, repeats = spec.pop("family"), spec.pop("repeats")
    torch.set_num_threads(spec.pop("threads"))
    if family == "maxent":
        record = _maxent_case(spec, repeats)
    else:
        record = _crf_case(spec, repeats, brute=family == "crf_brute")
    record.update(torch_version=torch.__version__, machine=platform.machine(), threads=torch.get_num_threads())
    print(json.dumps(record))


def _rows(records: list[dict]) -> list[dict]:
    """The records in the shared schema: (op, impl) per timed callable of each case."""
    rows = []
    for r in records:
        times = r["times"]
        if r["family"] == "maxent":
            shape, dtype = (r["k"], r["f"]), "float64"
            named = [("solve_maxent", "logitlab", "ours", r["peak_mem_mib"]),
                     ("solve_maxent", "scipy L-BFGS-B", "peer", None)]
        elif r["family"] == "crf_brute":
            shape, dtype = (r["b"], r["t"], r["k"]), r["dtype"]
            named = [("crf_log_partition", "logitlab", "forward", r["peak_mem_mib"]),
                     ("crf_log_partition", "brute force", "brute", r["brute_peak_mem_mib"])]
        else:
            shape, dtype = (r["b"], r["t"], r["k"]), r["dtype"]
            named = [("linear_chain_crf_nll", "logitlab", "nll_fwd_bwd", r["peak_mem_mib"]),
                     ("viterbi_decode", "logitlab", "viterbi", None)]
        for op, impl, key, mem in named:
            rows.append(row(op, impl, shape, dtype, time_ms=times[key], peak_mem_mib=mem, family=r["family"],
                            threads=r.get("threads")))
    return rows


def _table(records: list[dict]) -> None:
    print("max-entropy solver (Newton) vs scipy L-BFGS-B on the same dual, float64")
    print(f"{'K':>6} {'F':>4} {'status':>10} {'steps':>5} {'viol':>8} {'ms':>9} | {'peer it':>7} {'peer ms':>9} "
          f"{'peer viol':>9} {'ours/peer':>9} {'MiB':>6}")
    for r in records:
        if r["family"] == "maxent":
            print(f"{r['k']:>6} {r['f']:>4} {r['status']:>10} {r['newton_steps']:>5} {r['max_violation']:>8.1e} "
                  f"{r['time_ms']:>9.2f} | {r['peer_iterations']:>7} {r['peer_time_ms']:>9.2f} "
                  f"{r['peer_max_violation']:>9.1e} {r['ratio_ours_over_peer']:>9.2f} {r['peak_mem_mib']:>6.1f}")
    print("\nCRF log-partition: forward algorithm vs brute force over K^T sequences (B rows, float32)")
    print(f"{'B':>4} {'T':>4} {'K':>4} {'K^T':>9} {'fwd ms':>9} {'brute ms':>10} {'fwd/brute':>9} {'|diff|':>8} "
          f"{'fwd MiB':>8} {'brute MiB':>9}")
    for r in records:
        if r["family"] == "crf_brute":
            print(f"{r['b']:>4} {r['t']:>4} {r['k']:>4} {r['sequences']:>9} {r['forward_time_ms']:>9.3f} "
                  f"{r['brute_time_ms']:>10.3f} {r['ratio_forward_over_brute']:>9.3f} "
                  f"{r['max_abs_diff_vs_brute_f64']:>8.1e} {r['peak_mem_mib']:>8.1f} {r['brute_peak_mem_mib']:>9.1f}")
    print("\nCRF at sizes brute force cannot reach (float32)")
    print(f"{'B':>4} {'T':>5} {'K':>5} {'nll fwd+bwd ms':>15} {'viterbi ms':>11} {'MiB':>6}")
    for r in records:
        if r["family"] == "crf_large":
            print(f"{r['b']:>4} {r['t']:>5} {r['k']:>5} {r['nll_fwd_bwd_time_ms']:>15.2f} "
                  f"{r['viterbi_time_ms']:>11.2f} {r['peak_mem_mib']:>6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, seconds")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per case (1 on a machine whose cores are oversubscribed: "
                             "the solver's small ops then spend their time in OpenMP waits)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "theory.json")
    parser.add_argument("--families", nargs="+", choices=tuple(FULL), default=tuple(FULL),
                        help="which case families to run")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        _run_case(args.case)
        return
    cases = QUICK if args.quick else FULL
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    records = []
    for family, specs in cases.items():
        if family not in args.families:
            continue
        for spec in specs:
            payload = json.dumps({"family": family, "repeats": args.repeats, "threads": args.threads, **spec})
            print(f"running {family} {spec}", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--case", payload], env=env, capture_output=True,
                                 text=True, check=True)
            records.append(json.loads(out.stdout.strip().splitlines()[-1]))
    _table(records)
    print(write_records(args.out, records, rows=_rows(records), benchmark="theory"))


if __name__ == "__main__":
    main()
