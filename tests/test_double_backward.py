"""Second-order gradients (issue 17, item 3): create_graph=True must give the true second-order term.

Each op is checked by ``torch.autograd.gradgradcheck`` in float64 and, where a naive reference
exists, its Hessian-vector product is compared with autograd through that reference's plain torch
ops (``reference.entmax_any_alpha``: bisection then two differentiable Newton steps; softmax
Fenchel–Young against ``F.cross_entropy``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradgradcheck

import logitlab
from logitlab import reference as R

F64 = torch.float64


def _logits(shape=(3, 6), dtype=F64, scale=1.5):
    return (scale * torch.randn(shape, dtype=F64)).to(dtype).requires_grad_()


def _hvp(fn, z, weight, vector):
    """∂/∂z ⟨∂⟨w, fn(z)⟩/∂z, v⟩: a Hessian-vector product through create_graph=True."""
    out = fn(z)
    (grad,) = torch.autograd.grad((out * weight).sum(), z, create_graph=True)
    if not grad.requires_grad:
        raise AssertionError("the gradient came back detached under create_graph=True")
    (hvp,) = torch.autograd.grad((grad * vector).sum(), z)
    return hvp


MAPS = {
    "sparsemax": (lambda z: logitlab.sparsemax(z), 2.0),
    "entmax15": (lambda z: logitlab.entmax15(z), 1.5),
    "entmax_1.3": (lambda z: logitlab.entmax(z, alpha=1.3), 1.3),
    "entmax_1.7": (lambda z: logitlab.entmax(z, alpha=1.7), 1.7),
    "entmax_2.5": (lambda z: logitlab.entmax(z, alpha=2.5), 2.5),
    "entmax_with_info": (lambda z: logitlab.entmax_with_info(z, alpha=1.4).probs, 1.4),
    # near and below 1: the q-exponential solver (issue 24), and the softmax at α = 1
    "entmax_0.6": (lambda z: logitlab.entmax(z, alpha=0.6), 0.6),
    "entmax_1.0": (lambda z: logitlab.entmax(z, alpha=1.0), 1.0),
    "entmax_1.04": (lambda z: logitlab.entmax(z, alpha=1.04), 1.04),
}


@pytest.mark.parametrize("name", list(MAPS))
def test_sparse_maps_gradgradcheck(name):
    fn, _ = MAPS[name]
    assert gradgradcheck(fn, (_logits(),), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", list(MAPS))
def test_sparse_maps_hvp_matches_autograd_through_the_reference(name):
    fn, alpha = MAPS[name]
    z = _logits((4, 7))
    w, v = torch.randn(4, 7, dtype=F64), torch.randn(4, 7, dtype=F64)
    ours = _hvp(fn, z, w, v)
    truth = _hvp(lambda x: R.entmax_any_alpha(x, alpha), z, w, v)
    torch.testing.assert_close(ours, truth, atol=1e-7, rtol=1e-6)
    if name != "sparsemax":  # sparsemax is piecewise linear: its Hessian is 0 a.e.
        assert float(truth.abs().max()) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_kernel_path_builds_the_same_second_order_term(dtype):
    """The low-precision inputs take the native kernel when no graph is built; with one, the
    differentiable backward must give the float64 answer to the dtype's rounding."""
    z64 = _logits((5, 9)).detach()
    w, v = torch.randn(5, 9, dtype=F64), torch.randn(5, 9, dtype=F64)
    z = z64.to(dtype).requires_grad_()
    ours = _hvp(lambda x: logitlab.entmax15(x), z, w.to(dtype), v.to(dtype))
    truth = _hvp(lambda x: R.entmax_any_alpha(x, 1.5), z.detach().double().requires_grad_(), w, v)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(ours.double(), truth, atol=tol, rtol=tol)


def test_tensor_alpha_gradgradcheck_with_alpha_gradient():
    z = _logits((3, 5))
    alpha = torch.tensor([[1.25], [1.6], [2.2]], dtype=F64, requires_grad=True)
    assert gradgradcheck(lambda x, a: logitlab.entmax(x, alpha=a), (z, alpha), atol=1e-6, rtol=1e-4)


FY = {
    "softmax": {},
    "sparsemax": {},
    "entmax15": {},
    "entmax": {"alpha": 1.3},
    "entmax_dense": {"alpha": 0.5},
    "sigmoid": {},
}


@pytest.mark.parametrize("soft", [False, True], ids=["index", "probs"])
@pytest.mark.parametrize("normalizer", list(FY))
def test_fenchel_young_gradgradcheck(normalizer, soft):
    z = _logits((3, 5))
    target = torch.softmax(torch.randn(3, 5, dtype=F64), -1) if soft else torch.tensor([0, 3, 4])
    if soft and normalizer == "sigmoid":  # multi-label targets in [0, 1]^n
        target = torch.rand(3, 5, dtype=F64)
    fn = lambda x: logitlab.fenchel_young_loss(x, target, normalizer=normalizer, reduction="none",  # noqa: E731
                                               **FY[normalizer])
    assert gradgradcheck(fn, (z,), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("op", ["sparsemax_loss", "entmax15_loss", "entmax_loss"])
def test_named_fenchel_young_losses_gradgradcheck(op):
    z = _logits((3, 5))
    fn = getattr(logitlab, op)
    kwargs = {"alpha": 1.7} if op == "entmax_loss" else {}
    for target in (torch.tensor([1, 0, 4]), torch.softmax(torch.randn(3, 5, dtype=F64), -1)):
        assert gradgradcheck(lambda x: fn(x, target, temperature=0.7, **kwargs), (z,), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("soft", [False, True], ids=["index", "probs"])
def test_softmax_fenchel_young_hvp_equals_cross_entropy(soft):
    """The issue's case: the FY softmax loss's Hessian is cross-entropy's (it gave 0)."""
    z = _logits((4, 6))
    target = torch.softmax(torch.randn(4, 6, dtype=F64), -1) if soft else torch.tensor([0, 5, 2, 2])
    v = torch.randn(4, 6, dtype=F64)
    one = torch.ones((), dtype=F64)
    ours = _hvp(lambda x: logitlab.fenchel_young_loss(x, target), z, one, v)
    truth = _hvp(lambda x: F.cross_entropy(x, target), z, one, v)
    torch.testing.assert_close(ours, truth, atol=1e-12, rtol=1e-10)
    assert float(truth.abs().max()) > 1e-3


def test_gradient_penalty_through_entmax_loss_reaches_the_logits():
    """A gradient penalty ‖∇_z L‖² has gradient 2 H ∇L: compare with the reference's."""
    z = _logits((3, 5))
    target = torch.tensor([2, 0, 1])

    def penalty(loss_fn):
        (grad,) = torch.autograd.grad(loss_fn(z), z, create_graph=True)
        (out,) = torch.autograd.grad(grad.square().sum(), z)
        return out

    def reference_loss(x):
        p = R.entmax_any_alpha(x, 1.5)
        y = F.one_hot(target, 5).to(F64)
        omega = lambda q: (torch.where(q > 0, q.clamp_min(1e-300) ** 1.5, 0).sum(-1) - 1) / 0.75  # noqa: E731
        return ((x * (p - y)).sum(-1) + omega(y) - omega(p)).mean()

    torch.testing.assert_close(penalty(lambda x: logitlab.entmax15_loss(x, target)), penalty(reference_loss),
                               atol=1e-9, rtol=1e-7)
