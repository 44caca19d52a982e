"""A real workload: a small next-token model trained on the Python standard library's own source.

The text is every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (sorted, up to
``--max-mb``); the tokenizer is word-level (identifiers, numbers, single punctuation marks and
newlines) with the ``--vocab`` most frequent tokens plus ``<unk>``. The model predicts the next
token from the previous ``--context`` tokens: embedding → concatenation → Linear + GELU →
Linear → LM head of shape (V, d). The same model from the same seed is trained twice on the
same batches: once with the naive loss (logits materialized, ``F.cross_entropy``) and once with
``logitlab.linear_cross_entropy`` (chunked). Each run happens in its own process so that its
peak memory can be measured; the script prints both loss curves, their largest difference and
both peaks.

    PYTHONPATH=src python examples/lm_workload.py --quick
    PYTHONPATH=src python examples/lm_workload.py
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from logitlab.experiments.text import TOKEN, UNK, stdlib_text  # the study's dataset: one tokenizer


def build_tokenizer(text: str, vocab_size: int) -> tuple[dict[str, int], list[str]]:
    """Word-level vocabulary: ``<unk>`` then the most frequent tokens (ties broken by the token)."""
    tokens = TOKEN.findall(text)
    counts = collections.Counter(tokens)
    if len(counts) + 1 < vocab_size:
        raise ValueError(f"build_tokenizer(): argument 'vocab_size' expected at most {len(counts) + 1} "
                         f"(distinct tokens in the text + <unk>), got {vocab_size}")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 1]
    itos = [UNK] + [tok for tok, _ in ranked]
    return {tok: i for i, tok in enumerate(itos)}, tokens


def encode(tokens: list[str], stoi: dict[str, int]) -> torch.Tensor:
    return torch.tensor([stoi.get(tok, 0) for tok in tokens], dtype=torch.int64)


class ContextLM(nn.Module):
    """Embedding of the last ``context`` tokens → two layers → features for an LM head (V, d)."""

    def __init__(self, vocab: int, dim: int, context: int, width: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layer1 = nn.Linear(context * dim, width)
        self.layer2 = nn.Linear(width, dim)
        self.head = nn.Parameter(torch.randn(vocab, dim) / dim**0.5)

    def features(self, context_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(context_ids).flatten(1)
        return self.layer2(F.gelu(self.layer1(x)))


def batches(ids: torch.Tensor, context: int, tokens_per_step: int, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(context + 1)
    for _ in range(steps):
        start = torch.randint(0, ids.numel() - context - 1, (tokens_per_step,), generator=gen)
        window = ids[start.unsqueeze(1) + offsets]
        yield window[:, :context], window[:, context]


def train(loss_kind: str, *, ids: torch.Tensor, vocab: int, steps: int, tokens_per_step: int, context: int = 4,
          dim: int = 64, width: int = 256, lr: float = 3e-3, seed: int = 0) -> dict:
    """Train from ``seed``; returns the loss curve, the time and the peak memory (MiB) that the
    steps after the first need beyond the model, its gradients and the optimizer state."""
    from logitlab import linear_cross_entropy

    torch.manual_seed(seed)
    model = ContextLM(vocab, dim, context, width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = list(batches(ids, context, tokens_per_step, steps, seed))
    curve, start, base_kib = [], time.perf_counter(), None
    for step, (context_ids, target) in enumerate(data):
        if step == 1:  # after the first step the optimizer state exists: measure the steps from here
            base_kib = _reset_peak()
        hidden = model.features(context_ids)
        if loss_kind == "naive":
            loss = F.cross_entropy(hidden @ model.head.T, target)
        else:
            loss = linear_cross_entropy(hidden, model.head, target, impl="auto")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    return {"loss": loss_kind, "curve": curve, "seconds": seconds,
            "peak_extra_mib": (_peak_kib() - base_kib) / 1024 if base_kib is not None else None}


def _reset_peak():
    """Trim glibc and reset the RSS high-water mark (Linux); returns the current RSS in KiB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS:")
    except OSError:
        return None


def _peak_kib():
    return _status_kib("VmHWM:")


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def prepare(max_mb: float, vocab: int) -> tuple[torch.Tensor, int, int]:
    text = stdlib_text(int(max_mb * 1e6))
    stoi, tokens = build_tokenizer(text, vocab)
    return encode(tokens, stoi), len(stoi), len(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description="naive vs fused LM head on the stdlib's source")
    parser.add_argument("--quick", action="store_true", help="a short run (tens of seconds)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None, help="tokens (rows) per step")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--max-mb", type=float, default=None, help="megabytes of source text to read")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (10 if args.quick else 60)
    tokens = args.tokens or (1024 if args.quick else 4096)
    max_mb = args.max_mb or (12.0 if args.quick else 32.0)
    torch.set_num_threads(args.threads)

    if args.child:
        ids, vocab, _ = prepare(max_mb, args.vocab)
        print(json.dumps(train(args.child, ids=ids, vocab=vocab, steps=steps, tokens_per_step=tokens)))
        return

    ids, vocab, chars = prepare(max_mb, args.vocab)
    print(f"text: {chars / 1e6:.1f} MB of stdlib source, {ids.numel():,} tokens, vocabulary {vocab:,} "
          f"({float((ids == 0).float().mean()) * 100:.1f}% <unk>); {steps} steps x {tokens} tokens")
    runs = {}
    for kind in ("naive", "fused"):
        cmd = [sys.executable, __file__, "--child", kind, "--steps", str(steps), "--tokens", str(tokens),
               "--vocab", str(args.vocab), "--max-mb", str(max_mb), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    naive, fused = runs["naive"]["curve"], runs["fused"]["curve"]
    print(f"{'step':>5} {'naive loss':>12} {'fused loss':>12} {'|diff|':>9}")
    for i, (a, b) in enumerate(zip(naive, fused)):
        if i < 5 or i % max(1, len(naive) // 10) == 0 or i == len(naive) - 1:
            print(f"{i:5d} {a:12.6f} {b:12.6f} {abs(a - b):9.2e}")
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(naive, fused))
    logits_mib = tokens * vocab * 4 / 2**20
    print(f"largest relative difference between the curves: {worst:.2e}")
    for kind in ("naive", "fused"):
        r = runs[kind]
        print(f"{kind:>6}: {r['seconds']:.1f} s, peak memory of a step beyond model, gradients, optimizer state "
              f"and data: {r['peak_extra_mib']:.0f} MiB")
    print(f"(one step's logits would be {logits_mib:.0f} MiB in float32)")
    print(json.dumps({"steps": steps, "tokens_per_step": tokens, "vocab": vocab, "max_rel_diff": worst,
                      "naive_peak_mib": runs["naive"]["peak_extra_mib"],
                      "fused_peak_mib": runs["fused"]["peak_extra_mib"],
                      "naive_s": runs["naive"]["seconds"], "fused_s": runs["fused"]["seconds"]}))


if __name__ == "__main__":
    main()
