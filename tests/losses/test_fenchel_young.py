"""Fenchel–Young losses: reference, gradient ŷ − y, CE identity, the entmax package as peer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import logitlab
from conftest import ERROR_SLACK, ODD_SHAPES, dims_of
from logitlab import reference as R
from logitlab import registry
from logitlab.losses import fenchel_young as FY

entmax = pytest.importorskip("entmax")
F64 = torch.float64

# normalizer -> (reference regularizer kind, normalizer params, expected ŷ from a peer)
CASES = {
    "softmax": ("shannon", {}, lambda z, dim: torch.softmax(z, dim)),
    "sparsemax": ("gini", {}, lambda z, dim: entmax.sparsemax(z, dim=dim)),
    "entmax15": ("tsallis", {}, lambda z, dim: entmax.entmax15(z, dim=dim)),
    "entmax": ("tsallis", {"alpha": 1.3},
               lambda z, dim: entmax.entmax_bisect(z, alpha=1.3, dim=dim, n_iter=80)),
}


def _index_and_probs(shape, dim):
    n = shape[dim]
    batch = tuple(s for i, s in enumerate(shape) if i != dim % len(shape))
    index = torch.randint(0, n, batch)
    probs = torch.softmax(2 * torch.randn(shape, dtype=F64), dim)
    return index, probs


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("normalizer", list(CASES))
def test_matches_reference_on_odd_shapes_and_every_dim(shape, normalizer):
    kind, params, peer = CASES[normalizer]
    for dim in dims_of(shape):
        logits = 2 * torch.randn(shape, dtype=F64)
        index, probs = _index_and_probs(shape, dim)
        pred = peer(logits, dim)
        one_hot = F.one_hot(index, shape[dim]).to(F64).movedim(-1, dim)
        for target, dense in ((index, one_hot), (probs, probs)):
            got = FY.fenchel_young_loss(logits, target, normalizer=normalizer, dim=dim, reduction="none",
                                        **params)
            want = R.fenchel_young_loss(logits, dense, pred, kind, alpha=params.get("alpha", 1.5), dim=dim)
            tol = 1e-6 if normalizer == "entmax" else 1e-10  # bisection vs the peer's bisection
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("normalizer", list(CASES))
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_gradcheck_and_gradient_is_prediction_minus_target(normalizer, kind):
    _, params, peer = CASES[normalizer]
    logits = torch.randn(4, 7, dtype=F64, requires_grad=True)
    index, probs = _index_and_probs((4, 7), -1)
    target = index if kind == "index" else probs
    fn = lambda z: FY.fenchel_young_loss(z, target, normalizer=normalizer, reduction="none", **params)  # noqa: E731
    if normalizer != "entmax":  # bisection is not smooth to finite-difference precision
        assert torch.autograd.gradcheck(fn, (logits,))
    fn(logits).sum().backward()
    dense = F.one_hot(index, 7).to(F64) if kind == "index" else probs
    torch.testing.assert_close(logits.grad, peer(logits.detach(), -1) - dense, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalizer", list(CASES))
def test_non_negative_and_zero_at_the_prediction(normalizer):
    _, params, peer = CASES[normalizer]
    logits = 3 * torch.randn(50, 9, dtype=F64)
    _, probs = _index_and_probs((50, 9), -1)
    assert (FY.fenchel_young_loss(logits, probs, normalizer=normalizer, reduction="none", **params) >= 0).all()
    own = registry.get_normalizer(normalizer)(logits, **params)
    at_prediction = FY.fenchel_young_loss(logits, own, normalizer=normalizer, reduction="none", **params)
    assert at_prediction.abs().max() < 1e-9


def test_softmax_is_cross_entropy_minus_target_entropy():
    logits, index = torch.randn(6, 5, dtype=F64), torch.randint(0, 5, (6,))
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(FY.fenchel_young_loss(logits, index, reduction=reduction),
                                   F.cross_entropy(logits, index, reduction=reduction))
    ignored = index.clone()
    ignored[1] = -100
    torch.testing.assert_close(FY.fenchel_young_loss(logits, ignored), F.cross_entropy(logits, ignored))
    probs = torch.softmax(torch.randn(6, 5, dtype=F64), -1)
    entropy = logitlab.entropy(probs)
    torch.testing.assert_close(FY.fenchel_young_loss(logits, probs, reduction="none"),
                               F.cross_entropy(logits, probs, reduction="none") - entropy)
    # dim=1 with torch's (N, C, d) layout
    logits3, index3 = torch.randn(2, 5, 3, dtype=F64), torch.randint(0, 5, (2, 3))
    torch.testing.assert_close(FY.fenchel_young_loss(logits3, index3, dim=1), F.cross_entropy(logits3, index3))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sparsemax_and_entmax15_losses_equal_the_entmax_package(reduction):
    # the entmax package ignores rows only for an ignore_index that is a valid class (>= 0)
    logits, index = 2 * torch.randn(9, 6, dtype=F64), torch.randint(0, 6, (9,))
    index[3] = 2
    peer_reduction = {"none": "none", "mean": "elementwise_mean", "sum": "sum"}[reduction]
    for ours_fn, peer_cls in ((FY.sparsemax_loss, entmax.SparsemaxLoss),
                              (lambda *a, **k: FY.entmax_loss(*a, **k), entmax.Entmax15Loss),
                              (FY.entmax15_loss, entmax.Entmax15Loss)):
        for ignore in (-100, 2):
            ours_z = logits.clone().requires_grad_(True)
            peer_z = logits.clone().requires_grad_(True)
            ours = ours_fn(ours_z, index, reduction=reduction, ignore_index=ignore)
            kw = {"k": None} if peer_cls is entmax.Entmax15Loss else {}
            peer = peer_cls(reduction=peer_reduction, ignore_index=ignore, **kw)(peer_z, index)
            torch.testing.assert_close(ours, peer)
            ours.sum().backward()
            peer.sum().backward()
            torch.testing.assert_close(ours_z.grad, peer_z.grad)


def test_entmax_loss_orders():
    logits, index = torch.randn(5, 6, dtype=F64), torch.randint(0, 6, (5,))
    peer = entmax.EntmaxBisectLoss(alpha=1.3, n_iter=80)(logits, index)
    torch.testing.assert_close(FY.entmax_loss(logits, index, alpha=1.3), peer, rtol=1e-6, atol=1e-6)
    # α = 2 is the sparsemax loss
    torch.testing.assert_close(FY.entmax_loss(logits, index, alpha=2.0), FY.sparsemax_loss(logits, index),
                               rtol=1e-6, atol=1e-6)
    # the general (bisection) normalizer at α = 1.5 agrees with the exact one
    torch.testing.assert_close(FY.entmax_loss(logits, index, normalizer="entmax"), FY.entmax15_loss(logits, index),
                               rtol=1e-6, atol=1e-6)


def test_excluded_classes():
    logits = torch.tensor([[0.0, -math.inf, 1.0], [0.0, -math.inf, 1.0]], requires_grad=True)
    target = torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    for normalizer in ("softmax", "sparsemax", "entmax15"):
        value = FY.fenchel_young_loss(logits, target, normalizer=normalizer, reduction="none")
        assert math.isfinite(float(value[0].detach())) and value[1] == math.inf
        logits.grad = None
        value[0].backward()
        assert torch.isfinite(logits.grad).all() and logits.grad[0, 1] == 0
    # an index target on an excluded class is +inf as well
    assert FY.fenchel_young_loss(logits, torch.tensor([1, 0]), reduction="none")[0] == math.inf


def test_sparsemax_loss_margin():
    # once the true logit beats the others by 1, loss and gradient vanish
    logits = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    value = FY.sparsemax_loss(logits, torch.tensor([0]))
    value.backward()
    assert value == 0 and (logits.grad == 0).all()


def test_mask_reduction_temperature_and_dtype():
    logits, index = torch.randn(3, 4, 5), torch.randint(0, 5, (3, 4))
    rows = FY.fenchel_young_loss(logits, index, reduction="none")
    assert rows.shape == (3, 4) and rows.dtype == torch.float32
    mask = torch.rand(3, 4) < 0.5
    mask[0, 0] = True
    torch.testing.assert_close(FY.fenchel_young_loss(logits, index, mask=mask), rows[mask].mean())
    torch.testing.assert_close(FY.fenchel_young_loss(logits, index, temperature=2.0),
                               FY.fenchel_young_loss(logits / 2, index))
    z = logits.clone().requires_grad_(True)
    out = FY.sparsemax_loss(z, index, mask=torch.zeros(3, 4, dtype=torch.bool))
    out.backward()
    assert out == 0 and (z.grad == 0).all()
    for dtype in (torch.float16, torch.bfloat16):
        assert FY.entmax15_loss(logits.to(dtype), index, validate=False).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_error_no_worse_than_naive(dtype):
    logits64, index = 4 * torch.randn(64, 33, dtype=F64), torch.randint(0, 33, (64,))
    truth = F.cross_entropy(logits64, index, reduction="none")
    logits = logits64.to(dtype)
    got = FY.fenchel_young_loss(logits, index, reduction="none", validate=False)
    naive = torch.logsumexp(logits, -1) - logits.gather(-1, index[:, None]).squeeze(-1)
    err = (got.to(F64) - truth).abs().max()
    naive_err = (naive.to(F64) - truth).abs().max()
    assert err <= naive_err + ERROR_SLACK[dtype] * float(truth.abs().max())


def test_modules_match_functions():
    logits, index = torch.randn(4, 6, dtype=F64), torch.randint(0, 6, (4,))
    mask = torch.tensor([True, False, True, True])
    pairs = [
        (logitlab.nn.FenchelYoungLoss(normalizer="entmax", alpha=1.3),
         lambda **kw: FY.fenchel_young_loss(logits, index, normalizer="entmax", alpha=1.3, **kw)),
        (logitlab.nn.SparsemaxLoss(), lambda **kw: FY.sparsemax_loss(logits, index, **kw)),
        (logitlab.nn.EntmaxLoss(alpha=1.5), lambda **kw: FY.entmax_loss(logits, index, **kw)),
        (logitlab.nn.Entmax15Loss(reduction="sum"),
         lambda **kw: FY.entmax15_loss(logits, index, reduction="sum", **kw)),
    ]
    for module, call in pairs:
        torch.testing.assert_close(module(logits, index), call())
        torch.testing.assert_close(module(logits, index, mask=mask), call(mask=mask))
    assert "alpha=1.3" in repr(pairs[0][0])


def test_error_messages():
    logits, index = torch.randn(2, 3), torch.tensor([0, 2])
    cases = [
        (lambda: FY.fenchel_young_loss(logits, index, normalizer="standard"), ValueError,
         r"fenchel_young_loss\(\): argument 'normalizer' expected one of 'softmax', 'sigmoid', 'sparsemax', "
         r"'entmax15', 'entmax', 'entmax_dense', got 'standard' \(this loss is not defined for it\)"),
        (lambda: FY.fenchel_young_loss(logits, index, normalizer="nope"), ValueError,
         r"argument 'normalizer' expected one of .*got 'nope' \(unknown normalizer\)"),
        (lambda: FY.fenchel_young_loss(logits, torch.tensor([0, 3])), ValueError,
         r"argument 'target' expected class indices in \[0, 2\] or ignore_index=-100, got <index 3>"),
        (lambda: FY.fenchel_young_loss(logits, torch.tensor([0, 1, 2])), ValueError,
         r"argument 'target' expected class indices of shape \(2,\)"),
        (lambda: FY.fenchel_young_loss(logits, torch.ones(2, 2) / 2), ValueError,
         r"argument 'target' expected probabilities of shape \(2, 3\)"),
        (lambda: FY.fenchel_young_loss(logits, torch.tensor([[0.7, 0.7, 0], [1.0, 0, 0]])), ValueError,
         r"argument 'target' expected rows summing to 1"),
        (lambda: FY.fenchel_young_loss(logits, torch.tensor([True, False])), TypeError,
         r"argument 'target' expected integer class indices or floating probabilities"),
        (lambda: FY.fenchel_young_loss(torch.tensor([[math.nan, 0, 0]] * 2), index), ValueError,
         r"argument 'logits' expected values without NaN or \+inf"),
        (lambda: FY.fenchel_young_loss(logits, index, gamma=2.0), TypeError,
         r"argument 'gamma' expected a parameter of normalizer 'softmax'"),
        (lambda: FY.entmax_loss(logits, index, alpha=0.0), ValueError,
         r"entmax_loss\(\): argument 'alpha' expected a finite number > 0, got 0.0"),
        (lambda: FY.entmax_loss(logits, index, alpha=1.3, normalizer="entmax15"), ValueError,
         r"argument 'alpha' expected 1.5 with normalizer='entmax15'"),
        (lambda: FY.entmax_loss(logits, index, normalizer="softmax"), ValueError,
         r"argument 'normalizer' expected one of 'entmax15', 'entmax', got 'softmax'"),
        (lambda: FY.sparsemax_loss(logits, index, mask=torch.ones(2)), TypeError,
         r"sparsemax_loss\(\): argument 'mask' expected a bool tensor of shape \(2,\) \(True = keep the row\), "
         r"got <torch.float32 tensor of shape \(2,\)>$"),
        (lambda: FY.sparsemax_loss(logits, index, mask=torch.ones(2, 1, dtype=torch.bool)), ValueError,
         r"sparsemax_loss\(\): argument 'mask' expected a bool tensor of shape \(2,\) \(True = keep the row\), "
         r"got <torch.bool tensor of shape \(2, 1\)>$"),
        (lambda: FY.sparsemax_loss(logits, index, reduction="max"), ValueError, r"argument 'reduction'"),
    ]
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            call()


@pytest.mark.parametrize("loss,kwargs", [(FY.sparsemax_loss, {}), (FY.entmax15_loss, {}),
                                          (FY.entmax_loss, {"alpha": 1.3})])
def test_sparse_losses_take_their_maps_impl(loss, kwargs):
    # impl= is the map's: native and torch give the same loss and gradient ŷ − y (float32), and
    # both match the float64 computation; an impl the loss lacks, or native on float64, is an error.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 33, generator=g) * 2
    logits[1, :5] = -math.inf
    target = torch.randint(5, 33, (7,), generator=g)
    x64 = logits.double().requires_grad_()
    loss(x64, target, impl="torch", **kwargs).backward()
    for impl in ("native", "torch", "auto"):
        x = logits.clone().requires_grad_()
        value = loss(x, target, impl=impl, **kwargs)
        value.backward()
        torch.testing.assert_close(value.double(), loss(logits.double(), target, **kwargs), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    name = loss.__name__
    with pytest.raises(ValueError, match=rf"{name}\(\): argument 'impl' expected one of 'auto', 'native', 'torch'"):
        loss(logits, target, impl="triton", **kwargs)
    with pytest.raises(ValueError, match=r"impl.*native"):
        loss(logits.double(), target, impl="native", **kwargs)
