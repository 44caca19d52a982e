"""Large |logits / T| and tiny temperatures against the float64 truth (the FMA contraction of
x·(1/T) − max made the native kernel's row maximum map to ±ulp instead of 0)."""

from __future__ import annotations

import math

import pytest
import torch

import logitlab
from logitlab import reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [3.0, 0.07, 0.3, 1e-10, 7.0])
@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_cross_entropy_large_scaled_logits(dtype, temperature, scale):
    base = torch.tensor([[1.0, 0.3, -0.7], [0.2, 1.0, -3.0]] + [[0.5, -0.5, 0.25]] * 3)
    x = (base * scale).to(dtype)
    if not torch.isfinite(x).all():
        pytest.skip("not representable in this dtype")
    target = torch.tensor([0, 1, 2, 0, 1])
    logits = x.clone().requires_grad_()
    loss = logitlab.cross_entropy(logits, target, temperature=temperature, reduction="none")
    loss.sum().backward()
    truth_x = x.double().requires_grad_()
    truth = reference.cross_entropy(truth_x / temperature, target, reduction="none")
    truth.sum().backward()
    naive = torch.nn.functional.cross_entropy(x.float() / temperature, target, reduction="none")
    slack = 4 * torch.finfo(dtype).eps * (1 + truth.abs())
    fits = truth.abs() < torch.finfo(dtype).max  # a loss beyond the dtype's range is inf there
    err, naive_err = (loss.double() - truth).abs(), (naive.double() - truth).abs()
    assert torch.all((err <= naive_err + slack)[fits])
    assert torch.all(torch.isinf(loss[~fits]))
    grad, fits = logits.grad.double(), truth_x.grad.abs() < torch.finfo(dtype).max
    assert torch.allclose(grad[fits], truth_x.grad[fits], atol=4 * torch.finfo(dtype).eps, rtol=0.02)
    assert torch.equal(grad[~fits], truth_x.grad[~fits].sign() * math.inf)


@pytest.mark.parametrize("scale", [1e6, 1e8, 1e9, 1e10])
def test_cross_entropy_confident_row_is_zero(scale):
    x = torch.tensor([[1.0, 0.3, -0.7]]) * scale
    assert float(logitlab.cross_entropy(x, torch.tensor([0]), temperature=3.0)) == 0.0


@pytest.mark.parametrize("fn", [logitlab.softmax, logitlab.log_softmax])
@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 1e-12])
def test_tiny_temperature_is_the_argmax_limit(fn, temperature):
    x = torch.tensor([[1.0, 2.0, 2.0], [3.0, -math.inf, 0.0], [-math.inf] * 3])
    out = fn(x, temperature=temperature)
    probs = out.exp() if fn is logitlab.log_softmax else out
    expected = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert not torch.isnan(out).any()
    assert torch.equal(probs, expected)


def test_shifted_softmax_keeps_the_temperature_gradient():
    x = torch.tensor([[0.5, -1.0, 2.0], [1.0, -math.inf, 0.0]], dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda temp: logitlab.softmax(x, temperature=temp), (t,))
    xs = x.clone().requires_grad_()
    torch.autograd.gradcheck(lambda z: logitlab.log_softmax(z, temperature=0.25)[:, [0, 2]], (xs,))
