"""Adversarial inputs for the cross-entropy family: empty batches, no class, gradient-requiring
weights under impl='fused', non-finite weights, saturated focal rows, BCE shapes and limits.

Each test here failed (raw torch error, silent NaN, or silently dropped gradient) before the fix
that it accompanies.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from logitlab import nn as lnn
from logitlab.losses.cross_entropy import binary_cross_entropy_with_logits, cross_entropy, nll_loss
from logitlab.losses.focal import focal_loss, poly1_cross_entropy

D = torch.float64


# --- empty batch (N = 0) ---------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["fused", "composite"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("probs", [False, True])
def test_empty_batch(impl, reduction, probs):
    x = torch.zeros(0, 5, requires_grad=True)
    target = torch.zeros(0, 5) if probs else torch.zeros(0, dtype=torch.long)
    loss = cross_entropy(x, target, reduction=reduction, impl=impl)
    assert loss.shape == ((0,) if reduction == "none" else ())
    if reduction != "none":
        assert loss.item() == 0.0  # torch's 'mean' is NaN here; logitlab defines it as 0
        loss.backward()
        assert x.grad.shape == (0, 5)
    if reduction != "mean":
        torch.testing.assert_close(loss.detach(), F.cross_entropy(x.detach(), target, reduction=reduction))


def test_empty_batch_relatives():
    x = torch.zeros(2, 0, 4)  # (N, d1=0, C) with C last: no rows
    target = torch.zeros(2, 0, dtype=torch.long)
    assert poly1_cross_entropy(x, target).item() == 0.0
    assert focal_loss(x, target).item() == 0.0
    assert cross_entropy(x, target, reduction="none").shape == (2, 0)
    assert cross_entropy(torch.zeros(0, 3, 2), torch.zeros(0, 2, dtype=torch.long), dim=1).item() == 0.0


# --- no class (C = 0) and the argument names in messages -------------------------------------

@pytest.mark.parametrize("call,message", [
    (lambda: cross_entropy(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)),
     r"cross_entropy\(\): argument 'logits' expected at least 1 class along dim 1, got <shape \(3, 0\)>"),
    (lambda: cross_entropy(torch.zeros(3, 0), torch.zeros(3, 0)), r"cross_entropy\(\): argument 'logits' expected at least 1 class"),
    (lambda: cross_entropy(torch.zeros(2, 0, 4), torch.zeros(2, 4, dtype=torch.long), dim=1),
     r"argument 'logits' expected at least 1 class along dim 1, got <shape \(2, 0, 4\)>"),
    (lambda: focal_loss(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)), r"focal_loss\(\): argument 'logits' expected at least 1 class"),
    (lambda: poly1_cross_entropy(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)), r"poly1_cross_entropy\(\): argument 'logits'"),
    (lambda: nll_loss(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)), r"nll_loss\(\): argument 'log_probs' expected at least 1 class"),
])
def test_no_class_is_an_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_nll_loss_messages_name_log_probs():
    with pytest.raises(TypeError, match=r"nll_loss\(\): argument 'log_probs' expected a floating-point tensor"):
        nll_loss(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"nll_loss\(\): argument 'log_probs' expected a tensor with at least 1 dimension"):
        nll_loss(torch.tensor(0.0), torch.tensor(0))
    with pytest.raises(ValueError, match=r"argument 'target' expected class indices of shape \(3,\) \(log_probs' shape"):
        nll_loss(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
