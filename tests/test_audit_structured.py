"""Adversarial inputs for logitlab.structured found by the audit."""

from __future__ import annotations

import math

import pytest
import torch

from logitlab.structured import crf_log_partition, crf_marginals, linear_chain_crf_nll, viterbi_decode

FUNCTIONS = {
    "crf_log_partition": lambda e, a, **kw: crf_log_partition(e, a, **kw),
    "linear_chain_crf_nll": lambda e, a, **kw: linear_chain_crf_nll(
        e, a, torch.zeros(e.shape[:2], dtype=torch.long), **kw),
    "crf_marginals": lambda e, a, **kw: crf_marginals(e, a, **kw),
    "viterbi_decode": lambda e, a, **kw: viterbi_decode(e, a, **kw),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_row_without_any_allowed_sequence_is_rejected(name):
    # Was: log Z = -inf, NLL = -inf - (-inf) = NaN, marginals NaN, Viterbi an arbitrary path.
    emissions = torch.zeros(2, 3, 2)
    transitions = torch.full((2, 2), -math.inf)  # no tag may follow any tag
    mask = torch.tensor([[True, False, False], [True, True, False]])  # row 1 needs a transition
    with pytest.raises(ValueError, match=name + r"\(\): argument 'transitions' expected scores .* allow at "
                                              r"least one tag sequence .*, got <row 1: every sequence scores -inf>"):
        FUNCTIONS[name](emissions, transitions, mask=mask)
    # A row of length 1 needs no transition: it stays valid, and validate=False skips the check.
    assert torch.isfinite(crf_log_partition(emissions[:1], transitions, mask=mask[:1])).all()
    assert crf_log_partition(emissions, transitions, mask=mask, validate=False)[1] == -math.inf


def test_marginals_of_zero_length_sequences_are_empty():
    # Was: RuntimeError "element 0 of tensors does not require grad" from autograd.grad.
    emissions = torch.zeros(2, 0, 3, dtype=torch.float64)
    out = crf_marginals(emissions, torch.zeros(3, 3))
    assert out.shape == (2, 0, 3) and out.dtype == torch.float64
