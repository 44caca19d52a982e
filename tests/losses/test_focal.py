"""focal_loss and poly1_cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from logitlab import reference
from logitlab.losses.cross_entropy import cross_entropy
from logitlab.losses.focal import focal_loss, poly1_cross_entropy

D = torch.float64


def _grads(fn, x):
    a = x.detach().clone().requires_grad_()
    out = fn(a)
    out.sum().backward()
    return out.detach(), a.grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha", [None, 0.25, "tensor"])
@pytest.mark.parametrize("shape,dim", [((7, 5), -1), ((3, 5, 4), 1), ((127, 2), 1)])
def test_focal_matches_reference(reduction, alpha, shape, dim):
    logits = torch.randn(shape, dtype=D) * 3
    n = shape[dim]
    batch = shape[:dim % len(shape)] + shape[dim % len(shape) + 1:]
    target = torch.randint(0, n, batch)
    target.view(-1)[0] = -100
    a = torch.rand(n, dtype=D) if alpha == "tensor" else alpha
    ours, g_ours = _grads(lambda x: focal_loss(x, target, gamma=1.5, alpha=a, dim=dim, reduction=reduction), logits)
    ref, g_ref = _grads(lambda x: reference.focal_loss(x, target, gamma=1.5, alpha=a, dim=dim, reduction=reduction),
                        logits)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_focal_gamma_zero_is_cross_entropy_and_gradcheck():
    logits = torch.randn(6, 4, dtype=D, requires_grad=True)
    target = torch.randint(0, 4, (6,))
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, target, gamma=2.0, alpha=0.5), (logits,))


def test_focal_down_weights_confident_examples():
    logits = torch.tensor([[8.0, 0.0], [0.5, 0.0]], dtype=D)
    target = torch.tensor([0, 0])
    ratio = focal_loss(logits, target, reduction="none") / cross_entropy(logits, target, reduction="none")
    assert ratio[0] < 1e-6 and ratio[1] > 0.1


def test_focal_all_ignored_is_zero():
    x = torch.randn(3, 4, requires_grad=True)
    loss = focal_loss(x, torch.full((3,), -100))
    loss.backward()
    assert loss == 0 and (x.grad == 0).all()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_poly1_matches_reference(reduction, weighted, smoothing):
    logits = torch.randn(9, 5, dtype=D) * 2
    target = torch.randint(0, 5, (9,))
    target[3] = -100
    weight = torch.rand(5, dtype=D) + 0.5 if weighted else None
    kw = dict(epsilon=0.7, weight=weight, reduction=reduction, label_smoothing=smoothing)
    ours, g_ours = _grads(lambda x: poly1_cross_entropy(x, target, **kw), logits)
    ref, g_ref = _grads(lambda x: reference.poly1_cross_entropy(x, target, **kw), logits)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_poly1_epsilon_zero_is_cross_entropy():
    logits = torch.randn(6, 4, 3, dtype=D)
    target = torch.randint(0, 4, (6, 3))
    torch.testing.assert_close(poly1_cross_entropy(logits, target, epsilon=0.0, dim=1),
                               F.cross_entropy(logits, target))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_returns_input_dtype(dtype):
    logits = torch.randn(5, 6).to(dtype)
    target = torch.randint(0, 6, (5,))
    for fn in (focal_loss, poly1_cross_entropy):
        out = fn(logits, target)
        assert out.dtype == dtype
        truth = fn(logits.to(D), target)
        # computed in float32 and rounded once: within one ulp of the dtype (was 2e-2, ~3 ulp of bf16)
        assert abs(float(out) - float(truth)) <= torch.finfo(dtype).eps * max(1.0, abs(float(truth)))
