"""Adversarial inputs for logitlab.information found by the audit."""

from __future__ import annotations

import math

import pytest
import torch

from logitlab import information as I


def test_decompose_rejects_a_row_of_all_neg_inf_logits():
    # Was: cross_entropy = kl = 0 < entropy = 1.03, silently breaking H(p, q) = H(p) + KL.
    with pytest.raises(ValueError, match=r"decompose\(\): argument 'logits' expected at least one logit "
                                         r"> -inf per row, got <a row of all -inf>"):
        I.decompose(torch.full((2, 3), -math.inf), torch.full((2, 3), 1 / 3))


@pytest.mark.parametrize("fn", [I.entropy])
def test_entropy_of_a_zero_dim_tensor_is_zero(fn):
    # Was: IndexError from the probability check; a 0-d tensor is one class with probability 1.
    assert float(fn(torch.tensor(1.0))) == 0.0


@pytest.mark.parametrize("fn", [I.kl_between, I.cross_entropy_between])
def test_pair_functions_on_zero_dim_tensors(fn):
    assert float(fn(torch.tensor(1.0), torch.tensor(1.0))) == 0.0
    with pytest.raises(ValueError, match=r"argument 'probs' expected rows summing to 1"):
        fn(torch.tensor(1.0), torch.tensor(0.5))


def test_decompose_of_zero_dim_tensors():
    parts = I.decompose(torch.tensor(3.0), torch.tensor(1.0))
    assert all(part.shape == () and float(part) == 0.0 for part in parts)
