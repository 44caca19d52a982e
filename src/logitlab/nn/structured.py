"""A linear-chain CRF layer: learnable transition scores around :mod:`logitlab.structured`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from logitlab._validation import check_choice, fail
from logitlab.structured import (
    ViterbiResult,
    crf_entropy,
    crf_kbest_scores,
    crf_log_partition,
    crf_marginals,
    hmm_entropy,
    hmm_log_likelihood,
    hmm_posteriors,
    hmm_viterbi,
    linear_chain_crf_nll,
    viterbi_decode,
)

__all__ = ["LinearChainCRF", "HiddenMarkovModel"]


class LinearChainCRF(nn.Module):
    """Holds transitions (K, K), start and end scores (K,) as parameters; calls the functions.

    ``forward(emissions, tags, mask=None)`` is :func:`logitlab.structured.linear_chain_crf_nll`
    with this layer's scores; ``decode`` is :func:`~logitlab.structured.viterbi_decode` and
    ``marginals`` :func:`~logitlab.structured.crf_marginals`, ``log_partition``, ``entropy`` and
    ``kbest_scores`` the functions of those names. Parameters start at zero (every tag sequence
    equally likely a priori).

    Args:
        num_tags: K.
        reduction: 'none' | 'mean' | 'sum', as in the function.

    Example:
        >>> crf = LinearChainCRF(3)
        >>> crf
        LinearChainCRF(num_tags=3, reduction='mean')
        >>> emissions = torch.zeros(2, 4, 3)
        >>> crf(emissions, torch.zeros(2, 4, dtype=torch.long)).detach()  # uniform over 3^4: log 81
        tensor(4.3944)
        >>> crf.decode(emissions).tags.shape
        torch.Size([2, 4])
    """

    def __init__(self, num_tags: int, *, reduction: str = "mean") -> None:
        super().__init__()
        if isinstance(num_tags, bool) or not isinstance(num_tags, int) or num_tags < 1:
            fail("LinearChainCRF", "num_tags", "an int >= 1", num_tags)
        self.num_tags = num_tags
        self.reduction = check_choice("LinearChainCRF", "reduction", reduction, ("none", "mean", "sum"))
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))

    def _scores(self) -> dict:
        return {"start_transitions": self.start_transitions, "end_transitions": self.end_transitions}

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        return linear_chain_crf_nll(emissions, self.transitions, tags, mask=mask, reduction=self.reduction,
                                    **self._scores())

    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> ViterbiResult:
        return viterbi_decode(emissions, self.transitions, mask=mask, **self._scores())

    def marginals(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        return crf_marginals(emissions, self.transitions, mask=mask, **self._scores())

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        return crf_log_partition(emissions, self.transitions, mask=mask, **self._scores())

    def entropy(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        return crf_entropy(emissions, self.transitions, mask=mask, **self._scores())

    def kbest_scores(self, emissions: Tensor, k: int, mask: Tensor | None = None) -> Tensor:
        return crf_kbest_scores(emissions, self.transitions, k=k, mask=mask, **self._scores())

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}, reduction={self.reduction!r}"


class HiddenMarkovModel(nn.Module):
    """An HMM with learnable π, T and B (as logits, normalized by log-softmax); calls the functions.

    ``forward(observations, mask=None)`` is the negative log-likelihood −log p(x) reduced by
    ``reduction`` (:func:`logitlab.structured.hmm_log_likelihood`); ``decode`` is
    :func:`~logitlab.structured.hmm_viterbi`, ``posteriors`` and ``entropy`` the functions of
    those names. Parameters start at zero (uniform distributions).

    Args:
        num_states: K.
        num_symbols: V.
        reduction: 'none' | 'mean' | 'sum' of the per-sequence −log p(x).

    Example:
        >>> hmm = HiddenMarkovModel(2, 3)
        >>> hmm
        HiddenMarkovModel(num_states=2, num_symbols=3, reduction='mean')
        >>> hmm(torch.tensor([[0, 2, 1]])).detach()  # uniform emissions: 3 log 3
        tensor(3.2958)
    """

    def __init__(self, num_states: int, num_symbols: int, *, reduction: str = "mean") -> None:
        super().__init__()
        for name, value in (("num_states", num_states), ("num_symbols", num_symbols)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail("HiddenMarkovModel", name, "an int >= 1", value)
        self.num_states, self.num_symbols = num_states, num_symbols
        self.reduction = check_choice("HiddenMarkovModel", "reduction", reduction, ("none", "mean", "sum"))
        self.initial_logits = nn.Parameter(torch.zeros(num_states))
        self.transition_logits = nn.Parameter(torch.zeros(num_states, num_states))
        self.emission_logits = nn.Parameter(torch.zeros(num_states, num_symbols))

    def _log_params(self) -> tuple[Tensor, Tensor, Tensor]:
        return (self.initial_logits.log_softmax(-1), self.transition_logits.log_softmax(-1),
                self.emission_logits.log_softmax(-1))

    def forward(self, observations: Tensor, mask: Tensor | None = None) -> Tensor:
        nll = -hmm_log_likelihood(observations, *self._log_params(), mask=mask)
        if self.reduction == "none":
            return nll
        return nll.sum() if self.reduction == "sum" else nll.mean()

    def decode(self, observations: Tensor, mask: Tensor | None = None) -> ViterbiResult:
        return hmm_viterbi(observations, *self._log_params(), mask=mask)

    def posteriors(self, observations: Tensor, mask: Tensor | None = None) -> Tensor:
        return hmm_posteriors(observations, *self._log_params(), mask=mask)

    def entropy(self, observations: Tensor, mask: Tensor | None = None) -> Tensor:
        return hmm_entropy(observations, *self._log_params(), mask=mask)

    def extra_repr(self) -> str:
        return f"num_states={self.num_states}, num_symbols={self.num_symbols}, reduction={self.reduction!r}"
