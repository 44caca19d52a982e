"""Scores near the dtype's largest value: the ratio maps' row sums overflowed to inf and every
probability became 0 (standard_normalize(torch.full((1, 4), 1e38)) was all zeros)."""

from __future__ import annotations

import pytest
import torch

import logitlab

MAPS = {
    "standard": lambda x: logitlab.standard_normalize(x),
    "standard_relu": lambda x: logitlab.standard_normalize(x, positivity="relu"),
    "standard_softplus": lambda x: logitlab.standard_normalize(x, positivity="softplus"),
    "spherical": logitlab.spherical_softmax,
    "taylor": lambda x: logitlab.taylor_softmax(x, order=2),
}


@pytest.mark.parametrize("name", sorted(MAPS))
@pytest.mark.parametrize("value", [1e38, 3e38, 1e19])
def test_huge_equal_scores_are_uniform(name, value):
    x = torch.full((2, 4), value).requires_grad_()
    probs = MAPS[name](x)
    assert torch.allclose(probs, torch.full((2, 4), 0.25))
    probs[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all()


def test_huge_unequal_scores_keep_their_ratios():
    x = torch.tensor([[3e38, 1e38, 0.0, 2e38]])
    assert torch.allclose(logitlab.standard_normalize(x), torch.tensor([[0.5, 1 / 6, 0.0, 1 / 3]]))
