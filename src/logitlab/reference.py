"""Naive, obviously correct implementations: the truth that tests and benchmarks share.

Everything here is written for clarity, not speed: float64, explicit loops where they make the
definition plain, no tricks for stability beyond what the definition needs. This module imports
only torch and the standard library, never the rest of logitlab, so that a bug in the package
cannot leak into its own expected values.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

F64 = torch.float64


def _rows(x: Tensor, dim: int) -> tuple[Tensor, tuple[int, ...]]:
    moved = x.to(F64).movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1]), tuple(moved.shape)


def _unrows(rows: Tensor, shape: tuple[int, ...], dim: int) -> Tensor:
    return rows.reshape(shape).movedim(-1, dim)


# ---------------------------------------------------------------------------------------------
# Normalizers
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Losses and divergences
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Fused linear + loss
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Structures (linear-chain CRF by enumeration) and maximum entropy
# ---------------------------------------------------------------------------------------------


def linear_chain_crf_brute_force(emissions: Tensor, transitions: Tensor, *, start_transitions: Tensor | None = None,
                                 end_transitions: Tensor | None = None) -> dict[str, Tensor]:
    """A linear-chain CRF on one sequence by enumerating all K^L tag sequences (float64).

    emissions (L, K), transitions (K, K) with transitions[i, j] the score of i followed by j,
    optional start/end scores (K,). Returns a dict with 'log_partition' (0-d), 'marginals'
    (L, K) P(y_t = k), 'best_tags' (L,) and 'best_score' (0-d), and 'scores' of every
    sequence in itertools.product order.
    """
    emissions, transitions = emissions.to(F64), transitions.to(F64)
    length, k = emissions.shape
    start = torch.zeros(k, dtype=F64) if start_transitions is None else start_transitions.to(F64)
    end = torch.zeros(k, dtype=F64) if end_transitions is None else end_transitions.to(F64)
    sequences = list(itertools.product(range(k), repeat=length))
    scores = []
    for seq in sequences:
        score = start[seq[0]] + end[seq[-1]]
        for t, tag in enumerate(seq):
            score = score + emissions[t, tag]
            if t > 0:
                score = score + transitions[seq[t - 1], tag]
        scores.append(score)
    scores_t = torch.stack(scores)
    top = scores_t.max()
    log_z = top + torch.log(torch.exp(scores_t - top).sum())
    probs = torch.exp(scores_t - log_z)
    marginals = torch.zeros(length, k, dtype=F64)
    for p, seq in zip(probs, sequences):
        for t, tag in enumerate(seq):
            marginals[t, tag] += p
    best = int(scores_t.argmax())
    return {"log_partition": log_z, "marginals": marginals, "best_tags": torch.tensor(sequences[best]),
            "best_score": scores_t[best], "scores": scores_t}
