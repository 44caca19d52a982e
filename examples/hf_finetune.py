"""Fine-tune a tiny randomly initialised Hugging Face Llama with and without logitlab's patch.

The data and tokenizer are those of ``examples/lm_workload.py`` (the Python standard library's
own source, a word-level vocabulary of the ``--vocab`` most frequent tokens). The same
``LlamaForCausalLM`` (built from a ``LlamaConfig``, nothing downloaded) is trained twice from
the same seed on the same batches with AdamW, calling ``model(input_ids, labels=input_ids)``:
once stock (transformers' loss over the materialized logits) and once after
``logitlab.integrations.transformers.apply(model)`` (``linear_cross_entropy``, no logits).
Each run is a fresh process, so that its memory can be measured; per step it records the
loss and the peak resident memory of the step beyond the memory before it (Linux: the RSS
high-water mark is reset before each step). The script prints both side by side.

    PYTHONPATH=src python examples/hf_finetune.py --steps 300
    PYTHONPATH=src python examples/hf_finetune.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_workload import _reset_peak, _status_kib, prepare  # noqa: E402


def build_model(vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def windows(ids: torch.Tensor, batch: int, seq: int, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(seq)
    for _ in range(steps):
        start = torch.randint(0, ids.numel() - seq, (batch,), generator=gen)
        yield ids[start.unsqueeze(1) + offsets]


def train(kind: str, *, ids: torch.Tensor, vocab: int, steps: int, batch: int, seq: int, lr: float,
          seed: int) -> dict:
    """One run; ``kind`` is 'stock' or 'patched'. Per step: loss and peak MiB beyond the step's start."""
    from logitlab.integrations import transformers as lt

    model = build_model(vocab, seed)
    if kind == "patched":
        lt.apply(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses, peaks, start = [], [], time.perf_counter()
    for step, input_ids in enumerate(windows(ids, batch, seq, steps, seed)):
        base = _reset_peak()
        out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        del out
        peaks.append((_status_kib("VmHWM:") - base) / 1024 if base is not None else float("nan"))
    return {"kind": kind, "loss": losses, "peak_step_mib": peaks, "seconds": time.perf_counter() - start,
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "params": sum(p.numel() for p in model.parameters())}


def main(argv=None):
    parser = argparse.ArgumentParser(description="stock vs logitlab-patched fine-tuning of a tiny Llama")
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-mb", type=float, default=4.0, help="megabytes of source text to read")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every", type=int, default=None, help="print every k-th step")
    parser.add_argument("--json", default=None, help="write both runs here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else 300)
    torch.set_num_threads(args.threads)
    options = dict(steps=steps, batch=args.batch, seq=args.seq, lr=args.lr, seed=0)

    if args.child:
        ids, vocab, _ = prepare(args.max_mb, args.vocab)
        print(json.dumps(train(args.child, ids=ids, vocab=vocab, **options)))
        return

    ids, vocab, chars = prepare(args.max_mb, args.vocab)
    tokens = args.batch * args.seq
    print(f"text: {chars / 1e6:.1f} MB of stdlib source, {ids.numel():,} tokens, vocabulary {vocab:,}; "
          f"{steps} steps x {args.batch} x {args.seq} tokens; torch {torch.__version__}")
    runs = {}
    for kind in ("stock", "patched"):
        cmd = [sys.executable, __file__, "--child", kind, "--steps", str(steps), "--batch", str(args.batch),
               "--seq", str(args.seq), "--vocab", str(args.vocab), "--lr", str(args.lr),
               "--max-mb", str(args.max_mb), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode:
            sys.exit(f"the {kind} run failed:\n{done.stderr}")
        runs[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    stock, patched = runs["stock"], runs["patched"]
    every = args.every or max(1, steps // 15)
    print(f"model: LlamaForCausalLM, {stock['params']:,} parameters, transformers {stock['transformers']}")
    print(f"{'step':>5} {'stock loss':>11} {'patched loss':>13} {'|diff|':>9} {'stock MiB':>10} {'patched MiB':>12}")
    for i in range(steps):
        if i < 3 or i % every == 0 or i == steps - 1:
            a, b = stock["loss"][i], patched["loss"][i]
            print(f"{i:5d} {a:11.5f} {b:13.5f} {abs(a - b):9.2e} {stock['peak_step_mib'][i]:10.1f} "
                  f"{patched['peak_step_mib'][i]:12.1f}")
    later = slice(1, None)  # the first step also allocates the optimizer state
    summary = {"steps": steps, "tokens_per_step": tokens, "vocab": vocab,
               "logits_mib": tokens * vocab * 4 / 2**20,
               "max_abs_loss_diff": max(abs(a - b) for a, b in zip(stock["loss"], patched["loss"])),
               "final_loss": {"stock": stock["loss"][-1], "patched": patched["loss"][-1]}}
    for kind, run in runs.items():
        peaks = sorted(run["peak_step_mib"][later])
        summary[f"{kind}_median_step_peak_mib"] = peaks[len(peaks) // 2] if peaks else None
        summary[f"{kind}_max_step_peak_mib"] = peaks[-1] if peaks else None
        summary[f"{kind}_seconds"] = run["seconds"]
    print(f"largest |stock - patched| loss over the run: {summary['max_abs_loss_diff']:.2e}; "
          f"final loss {summary['final_loss']['stock']:.4f} (stock) vs "
          f"{summary['final_loss']['patched']:.4f} (patched)")
    for kind in ("stock", "patched"):
        print(f"{kind:>8}: {summary[kind + '_seconds']:.1f} s; peak memory of a step beyond its start: median "
              f"{summary[kind + '_median_step_peak_mib']:.1f} MiB, max {summary[kind + '_max_step_peak_mib']:.1f} MiB")
    print(f"(one step's float32 logits: {summary['logits_mib']:.0f} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs}))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
