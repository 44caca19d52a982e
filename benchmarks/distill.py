"""Forward + backward of distillation through the LM head: ``linear_divergence_loss`` vs the naive way.

Case (float32, forward KL(teacher ‖ student) averaged over rows, student head trained, teacher
frozen; each shape in a fresh process, ours and the peer interleaved):

* ours: ``linear_divergence_loss(hidden, weight, teacher_hidden=..., teacher_weight=...)``, chunked:
  neither (N, V) matrix of logits exists.
* naive: both heads' logits materialized, ``F.kl_div(F.log_softmax(student), F.log_softmax(teacher),
  log_target=True, reduction="batchmean")``.

Prints time, the ratio ours/naive, the peak memory of a step beyond its inputs and the gradients it
returns, and the errors of ours against naive, and
writes JSON records (``--out``); ``--quick`` runs a tiny shape in seconds.
Usage: ``PYTHONPATH=src python benchmarks/distill.py [--quick] [--shapes 4096x1024x32768] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

from _harness import peak_extra_mib, row, time_interleaved, write_records


def run_case(rows: int, dim: int, vocab: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from logitlab.fused import linear_divergence_loss

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, dim, generator=gen) / dim**0.25
    weight = torch.randn(vocab, dim, generator=gen) / dim**0.25
    teacher_hidden = torch.randn(rows, dim, generator=gen) / dim**0.25
    teacher_weight = torch.randn(vocab, dim, generator=gen) / dim**0.25

    def ours(h, w):
        return linear_divergence_loss(h, w, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                                      divergence="kl", impl="auto")

    def naive(h, w):
        teacher = F.log_softmax(teacher_hidden @ teacher_weight.t(), -1)
        return F.kl_div(F.log_softmax(h @ w.t(), -1), teacher, log_target=True, reduction="batchmean")

    def step(fn, leaves=None):
        h, w = leaves or (hidden.clone().requires_grad_(), weight.clone().requires_grad_())
        value = fn(h, w)
        value.backward()
        return value.detach(), h.grad, w.grad

    def extra_mib(fn):  # the peak of one step beyond its inputs and the gradients it returns
        leaves = (hidden.clone().requires_grad_(), weight.clone().requires_grad_())
        peak, (_, grad_h, grad_w), _ = peak_extra_mib(lambda: step(fn, leaves))
        return peak - (grad_h.numel() + grad_w.numel()) * 4 / 2**20

    got, want = step(ours), step(naive)
    errors = [float((a - b).abs().max()) for a, b in zip(got, want)]
    timing = time_interleaved({"ours": lambda: step(ours), "naive": lambda: step(naive)}, repeats, warmup=1)
    mem = {name: extra_mib(fn) for name, fn in (("ours", ours), ("naive", naive))}
    ours_ms, naive_ms = timing["ours"]["median_ms"], timing["naive"]["median_ms"]
    return {
        "rows": rows, "dim": dim, "vocab": vocab, "dtype": "float32", "divergence": "kl",
        "ours_time_ms": ours_ms, "naive_time_ms": naive_ms, "ratio_ours_over_naive": ours_ms / naive_ms,
        "ours_time_ms_min": timing["ours"]["min_ms"], "naive_time_ms_min": timing["naive"]["min_ms"],
        "ours_peak_extra_mib": mem["ours"], "naive_peak_extra_mib": mem["naive"],
        "naive_logits_mib": rows * vocab * 4 / 2**20,
        "err_value_grad_hidden_grad_weight": errors, "repeats": repeats, "times": timing,
        "torch": torch.__version__, "machine": platform.machine(),
    }


def _rows(records: list[dict]) -> list[dict]:
    """The records in the shared schema: linear_divergence_loss and the naive logits per shape."""
    return [row("linear_divergence_loss", impl, (r["rows"], r["dim"], r["vocab"]), r["dtype"],
                time_ms=r["times"][which], peak_mem_mib=r[f"{which}_peak_extra_mib"], divergence=r["divergence"],
                naive_logits_mib=r["naive_logits_mib"])
            for r in records for which, impl in (("ours", "logitlab_chunked"), ("naive", "naive"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny shape, a few seconds")
    parser.add_argument("--shapes", default="4096x1024x32768", help="comma-separated NxDxV")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/distill.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one shape in this process
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(*(int(x) for x in args.case.split("x")), args.repeats)))
        return
    shapes = ["64x32x512"] if args.quick else args.shapes.split(",")
    records = []
    for shape in shapes:
        out = subprocess.run([sys.executable, __file__, "--case", shape, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        records.append(r)
        print(f"distill kl {shape:>16}  ours {r['ours_time_ms']:9.1f} ms  naive {r['naive_time_ms']:9.1f} ms  "
              f"ours/naive {r['ratio_ours_over_naive']:5.2f}  extra MiB ours/naive {r['ours_peak_extra_mib']:7.1f}/"
              f"{r['naive_peak_extra_mib']:7.1f} (logits {r['naive_logits_mib']:.0f})  err(value, gh, gW) "
              + ", ".join(f"{e:.1e}" for e in r["err_value_grad_hidden_grad_weight"]), flush=True)
    print(write_records(args.out, records, rows=_rows(records), benchmark="distill"))


if __name__ == "__main__":
    main()
