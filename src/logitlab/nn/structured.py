"""A linear-chain CRF layer: learnable transition scores around :mod:`logitlab.structured`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from logitlab._validation import check_choice, fail
from logitlab.structured import ViterbiResult, crf_marginals, linear_chain_crf_nll, viterbi_decode

__all__ = ["LinearChainCRF"]


class LinearChainCRF(nn.Module):
    """Holds transitions (K, K), start and end scores (K,) as parameters; calls the functions.

    ``forward(emissions, tags, mask=None)`` is :func:`logitlab.structured.linear_chain_crf_nll`
    with this layer's scores; ``decode`` is :func:`~logitlab.structured.viterbi_decode` and
    ``marginals`` :func:`~logitlab.structured.crf_marginals`. Parameters start at zero (every
    tag sequence equally likely a priori).

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

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}, reduction={self.reduction!r}"
