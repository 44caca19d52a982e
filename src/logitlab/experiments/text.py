"""The next-token dataset of the study: the Python standard library's own source, tokenized by words.

The text is every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (sorted by path, up to
``max_bytes``); tokens are identifiers, numbers, single punctuation marks and newlines (the
tokenizer of ``examples/lm_workload.py``); the vocabulary is ``<unk>`` plus the ``vocab - 1``
most frequent tokens (ties broken by the token). A row is the ``context`` previous token ids
(the features) and the next token id (the class): next-token prediction as a classification
with ``vocab`` classes, which the study trains with every output layer that scales to it.

Nothing is downloaded: the text ships with Python itself.
"""

from __future__ import annotations

import collections
import re
import sysconfig
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["TOKEN", "UNK", "stdlib_text", "build_vocab", "encode", "next_token_rows"]

TOKEN = re.compile(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]|\n")
UNK = "<unk>"


def stdlib_text(max_bytes: int) -> str:
    """The standard library's .py sources, sorted by path, concatenated up to ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    return "\n".join(parts)


def build_vocab(tokens: list[str], vocab: int) -> dict[str, int]:
    """``<unk>`` (id 0) then the ``vocab - 1`` most frequent tokens.

    Example:
        >>> build_vocab(["a", "b", "a", "c", "a", "b"], 3)
        {'<unk>': 0, 'a': 1, 'b': 2}
    """
    counts = collections.Counter(tokens)
    if len(counts) + 1 < vocab:
        raise ValueError(f"build_vocab(): argument 'vocab' expected at most {len(counts) + 1} "
                         f"(distinct tokens in the text + <unk>), got {vocab}")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab - 1]
    return {tok: i for i, tok in enumerate([UNK] + [tok for tok, _ in ranked])}


def encode(tokens: list[str], stoi: dict[str, int]) -> Tensor:
    return torch.tensor([stoi.get(tok, 0) for tok in tokens], dtype=torch.int64)


def next_token_rows(*, vocab: int, context: int, max_bytes: int) -> tuple[Tensor, Tensor]:
    """(rows, context) int64 features and (rows,) next-token classes of the stdlib text.

    Example:
        >>> x, y = next_token_rows(vocab=64, context=3, max_bytes=20_000)
        >>> x.shape[1], bool((x < 64).all()), bool((y < 64).all()), x.shape[0] == y.shape[0]
        (3, True, True, True)
    """
    tokens = TOKEN.findall(stdlib_text(max_bytes))
    ids = encode(tokens, build_vocab(tokens, vocab))
    windows = ids.unfold(0, context + 1, 1)
    return windows[:, :context].contiguous(), windows[:, context].contiguous()
