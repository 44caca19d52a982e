"""Semirings for dynamic programs over structures, in log space (after pytorch-struct's design).

A dynamic program such as the forward algorithm only ever adds (⊕, over alternatives) and
multiplies (⊗, along a path) scores; changing the semiring changes what it computes, with the
same code:

=============  ============================  ======================  ==============================
semiring       value of a set of paths        ⊕ of two sets           ⊗ (path concatenation)
=============  ============================  ======================  ==============================
``log``        log Σ_paths exp s              logaddexp               a + b
``max``        max_paths s                    max                     a + b
``kmax(k)``    the k largest s, descending    top-k of the union      top-k of all pairwise sums
``entropy``    (log Z, H) of p ∝ exp s        (logaddexp, mixture H)  (a₁ + a₂, H₁ + H₂)
=============  ============================  ======================  ==============================

Values are tensors with one trailing semiring axis of size ``width`` (1, 1, k, 2). ``lift``
turns plain scores (…) into semiring values (…, width); ``times`` is ⊗ elementwise (with
broadcasting); ``sum(x, dim)`` is ⊕ over a (non-trailing) axis. For ``entropy`` a set of paths
with log-mass a and entropy H (of its normalized distribution) unions as a = logsumexp a_i and
H = Σ w_i (H_i − log w_i), w_i = exp(a_i − a): the entropy of a mixture of disjoint supports.

Every operation is plain differentiable torch: the gradient of the ``log`` value with respect
to the scores gives marginals, and that of the ``max`` value the argmax path (one-hot).

Reference: A. Rush, "Torch-Struct: Deep Structured Prediction Library", ACL 2020 (demo);
J. Goodman, "Semiring Parsing", Computational Linguistics 25 (1999); Z. Li & J. Eisner,
"First- and second-order expectation semirings", EMNLP 2009 (the entropy semiring).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitlab._validation import fail

__all__ = ["Semiring", "LogSemiring", "MaxSemiring", "KMaxSemiring", "EntropySemiring", "get_semiring"]

NEG_INF = -math.inf


def safe_logsumexp(x: Tensor, dim: int) -> Tensor:
    """logsumexp with −inf (and a zero, not NaN, gradient) for all −inf slices."""
    top = x.amax(dim, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(x - top).sum(dim)
    tiny = torch.finfo(total.dtype).tiny
    return torch.where(total > 0, torch.log(total.clamp_min(tiny)) + top.squeeze(dim),
                       torch.full_like(total, NEG_INF))


class Semiring:
    """⊕, ⊗ and their units on values with a trailing semiring axis of size ``width``."""

    name = "semiring"
    width = 1

    def lift(self, scores: Tensor) -> Tensor:
        """Plain scores (…) as semiring values (…, width): the value of a single path."""
        return scores.unsqueeze(-1)

    def times(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b

    def sum(self, x: Tensor, dim: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LogSemiring(Semiring):
    """(logsumexp, +): the value is log Z, its gradient the marginals."""

    name = "log"

    def sum(self, x: Tensor, dim: int) -> Tensor:
        return safe_logsumexp(x, dim)


class MaxSemiring(Semiring):
    """(max, +): the value is the best path's score (Viterbi), its gradient the best path."""

    name = "max"

    def sum(self, x: Tensor, dim: int) -> Tensor:
        return x.amax(dim)


class KMaxSemiring(Semiring):
    """(top-k of the union, top-k of pairwise sums): the k best path scores, descending
    (−inf where fewer than k paths exist)."""

    name = "kmax"

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            fail("KMaxSemiring", "k", "an int >= 1", k)
        self.k = self.width = k

    def lift(self, scores: Tensor) -> Tensor:
        pad = scores.new_full((*scores.shape, self.k - 1), NEG_INF)
        return torch.cat([scores.unsqueeze(-1), pad], -1)

    def _top(self, x: Tensor) -> Tensor:
        return x.topk(self.k, dim=-1).values

    def times(self, a: Tensor, b: Tensor) -> Tensor:
        pairs = a.unsqueeze(-1) + b.unsqueeze(-2)  # (…, k, k)
        return self._top(pairs.flatten(-2))

    def sum(self, x: Tensor, dim: int) -> Tensor:
        dim = dim % x.ndim
        return self._top(x.movedim(dim, -2).flatten(-2))

    def __repr__(self) -> str:
        return f"KMaxSemiring(k={self.k})"


class EntropySemiring(Semiring):
    """Values (log-mass a, entropy H) of path sets: ⊗ adds both, ⊕ mixes (see the module)."""

    name = "entropy"
    width = 2

    def lift(self, scores: Tensor) -> Tensor:
        return torch.stack([scores, torch.zeros_like(scores)], -1)

    def times(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b

    def sum(self, x: Tensor, dim: int) -> Tensor:
        dim = dim % x.ndim
        mass, ent = x[..., 0], x[..., 1]
        total = safe_logsumexp(mass, dim)
        finite = mass > NEG_INF
        log_w = torch.where(finite, mass - total.unsqueeze(dim), 0.0)
        w = torch.where(finite, log_w.exp(), 0.0)
        mixed = (w * (torch.where(finite, ent, 0.0) - log_w)).sum(dim)
        return torch.stack([total, mixed], -1)


def get_semiring(fn: str, semiring: object) -> Semiring:
    """A :class:`Semiring` instance, or one named 'log' | 'max' | 'entropy'."""
    if isinstance(semiring, Semiring):
        return semiring
    named = {"log": LogSemiring, "max": MaxSemiring, "entropy": EntropySemiring}
    if semiring not in named:
        fail(fn, "semiring", "'log', 'max', 'entropy' or a Semiring instance (e.g. KMaxSemiring(k))",
             semiring)
    return named[semiring]()  # type: ignore[index]
