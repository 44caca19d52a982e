"""cross_entropy, nll_loss, binary_cross_entropy_with_logits, log_likelihood."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import logitlab
from conftest import ERROR_SLACK, ODD_SHAPES, dims_of
from logitlab import reference
from logitlab.losses.cross_entropy import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    log_likelihood,
    nll_loss,
)

D = torch.float64
IMPLS = ["torch", "composite"]  # float64: the native kernels take float32/bf16/f16 (tests/losses/test_xent_native.py)


def _both(fn_ours, fn_peer, logits, grad_seed=0):
    """Values and gradients (w.r.t. logits) of two loss functions on the same input."""
    a = logits.detach().clone().requires_grad_()
    b = logits.detach().clone().requires_grad_()
    ours, peer = fn_ours(a), fn_peer(b)
    g = torch.randn(peer.shape, dtype=peer.dtype, generator=torch.Generator().manual_seed(grad_seed))
    ours.backward(g)
    peer.backward(g)
    return ours.detach(), peer.detach(), a.grad, b.grad


def _close(x, y, rtol=1e-11, atol=1e-12):
    torch.testing.assert_close(x, y, rtol=rtol, atol=atol, equal_nan=False)


# --- torch.nn.functional as the expected value, over the option grid ------------------------

GRID = list(itertools.product(
    [False, True],                 # class weights
    [0.0, 0.15],                   # label smoothing
    [False, True],                 # some targets = ignore_index (index targets only)
    ["none", "mean", "sum"],
    ["index", "probs"],
    [(6, 5), (4, 5, 3, 2)],        # (N, C) and torch's (N, C, d1, d2) layout
))
# torch refuses ignore_index with probability targets: that case is tested on its own below.
GRID = [case for case in GRID if not (case[4] == "probs" and case[2])]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("weighted,smoothing,ignore,reduction,kind,shape", GRID)
def test_matches_torch_option_grid(impl, weighted, smoothing, ignore, reduction, kind, shape):
    logits = torch.randn(shape, dtype=D) * 3
    n_classes = shape[1]
    weight = torch.rand(n_classes, dtype=D) + 0.3 if weighted else None
    batch = (shape[0],) + shape[2:]
    if kind == "index":
        target = torch.randint(0, n_classes, batch)
        if ignore:
            target.view(-1)[::3] = 7
    else:
        target = torch.softmax(torch.randn(shape, dtype=D), 1)
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    ignore_index = 7 if ignore else -100
    ours, peer, g_ours, g_peer = _both(
        lambda x: cross_entropy(x, target, dim=1, ignore_index=ignore_index, impl=impl, **kwargs),
        lambda x: F.cross_entropy(x, target, ignore_index=ignore_index, **kwargs), logits)
    _close(ours, peer)
    _close(g_ours, g_peer)


@pytest.mark.parametrize("impl", IMPLS)
def test_prob_target_gradient_matches_torch(impl):
    logits = torch.randn(5, 4, dtype=D)
    target = torch.softmax(torch.randn(5, 4, dtype=D), 1).requires_grad_()
    t2 = target.detach().clone().requires_grad_()
    ours = cross_entropy(logits, target, label_smoothing=0.1, impl="composite" if impl == "composite" else "auto")
    peer = F.cross_entropy(logits, t2, label_smoothing=0.1)
    ours.backward()
    peer.backward()
    _close(ours, peer)
    _close(target.grad, t2.grad)


def test_unbatched_matches_torch():
    logits = torch.randn(6, dtype=D)
    _close(cross_entropy(logits, torch.tensor(2)), F.cross_entropy(logits, torch.tensor(2)))
    probs = torch.softmax(torch.randn(6, dtype=D), 0)
    _close(cross_entropy(logits, probs), F.cross_entropy(logits, probs))


# --- the naive float64 reference, for the options torch lacks, on odd shapes and every dim ----

@pytest.mark.parametrize("shape", [s for s in ODD_SHAPES if len(s) >= 2 or s[0] > 1])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_reference_every_dim(shape, impl):
    for dim in dims_of(shape):
        logits = torch.randn(shape, dtype=D) * 2
        n = shape[dim]
        batch = shape[:dim % len(shape)] + shape[dim % len(shape) + 1:]
        weight = torch.rand(n, dtype=D) + 0.5
        mask = torch.rand(batch) > 0.3
        opts = dict(weight=weight, label_smoothing=0.1, z_loss=0.01, temperature=1.7)
        for target in (torch.randint(0, n, batch), torch.softmax(torch.randn(shape, dtype=D), dim)):
            for reduction in ("none", "mean"):
                ours, ref, g_ours, g_ref = _both(
                    lambda x: cross_entropy(x, target, dim=dim, mask=mask, reduction=reduction, impl=impl, **opts),
                    lambda x: reference.cross_entropy(x, target, dim=dim, mask=mask, reduction=reduction, **opts),
                    logits)
                _close(ours, ref, rtol=1e-10, atol=1e-12)
                _close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_z_loss_and_temperature_definitions():
    logits = torch.randn(7, 11, dtype=D)
    target = torch.randint(0, 11, (7,))
    lse = torch.logsumexp(logits / 2.0, 1)
    expected = F.cross_entropy(logits / 2.0, target) + 1e-3 * (lse**2).mean()
    _close(cross_entropy(logits, target, z_loss=1e-3, temperature=2.0), expected)


# --- gradcheck of the fused Function ---------------------------------------------------------

@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_gradcheck_fused(reduction, kind):
    logits = torch.randn(4, 3, 5, dtype=D, requires_grad=True)
    weight = torch.rand(3, dtype=D) + 0.5
    if kind == "index":
        target = torch.randint(0, 3, (4, 5))
        target[0, 0] = -100
    else:
        target = torch.softmax(torch.randn(4, 3, 5, dtype=D), 1)
    mask = torch.rand(4, 5) > 0.2

    def f(x):
        return cross_entropy(x, target, dim=1, weight=weight, mask=mask, reduction=reduction,
                             label_smoothing=0.2, z_loss=0.05, temperature=0.7, impl="torch")

    assert torch.autograd.gradcheck(f, (logits,))


def test_gradcheck_fused_plain():
    logits = torch.randn(3, 9, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, torch.tensor([0, 8, 4]), impl="torch"), (logits,))


def test_block_boundaries(monkeypatch):
    """Many blocks of rows, a ragged last block: same as one block."""
    from logitlab.losses import _xent_kernel
    logits = torch.randn(37, 13, dtype=D)
    target = torch.randint(0, 13, (37,))
    ref = _both(lambda x: cross_entropy(x, target, label_smoothing=0.1),
                lambda x: F.cross_entropy(x, target, label_smoothing=0.1), logits)
    monkeypatch.setattr(_xent_kernel, "BLOCK_BYTES", 5 * 13 * 8)
    ours = _both(lambda x: cross_entropy(x, target, label_smoothing=0.1),
                 lambda x: F.cross_entropy(x, target, label_smoothing=0.1), logits)
    _close(ours[0], ref[1])
    _close(ours[2], ref[3])


# --- inplace_backward, backward twice, double backward ---------------------------------------

def test_inplace_backward_writes_gradient_into_logits():
    base = torch.randn(9, 6, dtype=D)
    target = torch.randint(0, 6, (9,))
    x = base.clone().requires_grad_()
    cross_entropy(x, target, label_smoothing=0.1).backward()
    leaf = base.clone()
    y = leaf.clone().requires_grad_()
    z = y * 1.0  # a non-leaf, as logits usually are
    loss = cross_entropy(z, target, label_smoothing=0.1, inplace_backward=True)
    _close(loss, F.cross_entropy(base, target, label_smoothing=0.1))
    loss.backward()
    _close(y.grad, x.grad)
    _close(z.detach(), x.grad)  # the logits now hold the gradient


def test_inplace_backward_detected_when_logits_are_saved_elsewhere():
    x = torch.randn(4, 5, dtype=D, requires_grad=True)
    logits = x.exp()  # exp saves its output for the backward
    loss = cross_entropy(logits, torch.tensor([0, 1, 2, 3]), inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_backward_twice_recomputes_the_gradient():
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    target = torch.tensor([0, 1, 2])
    loss = cross_entropy(x, target, label_smoothing=0.1)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    _close(x.grad, 2 * first)


def test_backward_twice_with_inplace_backward_is_a_clear_error():
    x = torch.randn(3, 4, requires_grad=True)
    loss = cross_entropy(x * 1.0, torch.tensor([0, 1, 2]), inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace_backward=True the gradient lives in the logits' memory"):
        loss.backward()


def test_double_backward_fused_error_and_composite_support():
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    target = torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError, match="no double backward.*impl='composite'"):
        torch.autograd.grad(cross_entropy(x, target), x, create_graph=True)
    assert torch.autograd.gradgradcheck(lambda z: cross_entropy(z, target, label_smoothing=0.1, impl="composite"), (x,))


def test_grad_output_scaling():
    x = torch.randn(5, 4, dtype=D)
    target = torch.randint(0, 4, (5,))
    ours, peer, g1, g2 = _both(lambda z: 3.5 * cross_entropy(z, target), lambda z: 3.5 * F.cross_entropy(z, target), x)
    _close(g1, g2)


def test_no_grad_forward_only():
    x = torch.randn(5, 4)
    with torch.no_grad():
        value = cross_entropy(x, torch.tensor([0, 1, 2, 3, 0]))
    torch.testing.assert_close(value, F.cross_entropy(x, torch.tensor([0, 1, 2, 3, 0])))


# --- low precision: no worse than torch's op at the same dtype --------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_low_precision_error_no_worse_than_naive(dtype, kind):
    truth_logits = (torch.randn(64, 257, dtype=D) * 4)
    logits = truth_logits.to(dtype)
    exact = logits.to(D)  # compare on the same (rounded) input
    target = (torch.randint(0, 257, (64,)) if kind == "index"
              else torch.softmax(torch.randn(64, 257, dtype=D), 1).to(dtype))
    target_d = target if kind == "index" else target.to(D)
    truth, _, g_truth, _ = _both(lambda x: F.cross_entropy(x, target_d, label_smoothing=0.1),
                                  lambda x: F.cross_entropy(x, target_d, label_smoothing=0.1), exact)
    ours, naive, g_ours, g_naive = _both(lambda x: cross_entropy(x, target, label_smoothing=0.1),
                                         lambda x: F.cross_entropy(x.float(),
                                                                   target if kind == "index" else target.float(),
                                                                   label_smoothing=0.1).to(dtype)
                                         if dtype != torch.float32 else F.cross_entropy(x, target, label_smoothing=0.1),
                                         logits)
    assert ours.dtype == dtype and g_ours.dtype == dtype
    slack = ERROR_SLACK[dtype]
    assert (ours.to(D) - truth).abs() <= (naive.to(D) - truth).abs() + slack * truth.abs().clamp_min(1)
    err_ours = (g_ours.to(D) - g_truth).abs().max()
    err_naive = (g_naive.to(D) - g_truth).abs().max()
    assert err_ours <= err_naive + slack * g_truth.abs().max()


# --- semantics torch does not define ---------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_all_excluded_batch_is_zero_with_zero_gradient(impl, reduction, kind):
    x = torch.randn(4, 6, dtype=D, requires_grad=True)
    weight = torch.rand(6, dtype=D)
    if kind == "index":
        target, mask = torch.full((4,), -100), None
    else:
        target, mask = torch.softmax(torch.randn(4, 6, dtype=D), 1), torch.zeros(4, dtype=torch.bool)
    loss = cross_entropy(x, target, weight=weight, mask=mask, reduction=reduction, label_smoothing=0.1,
                         z_loss=0.1, impl=impl)
    assert not torch.isnan(loss).any()
    assert (loss == 0).all()
    loss.sum().backward()
    assert (x.grad == 0).all()
    if kind == "index" and reduction == "mean":
        assert torch.isnan(F.cross_entropy(x.detach(), target))  # what torch gives instead


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_equals_dropping_rows(impl):
    x = torch.randn(8, 5, dtype=D)
    probs = torch.softmax(torch.randn(8, 5, dtype=D), 1)
    index = torch.randint(0, 5, (8,))
    mask = torch.tensor([True, False, True, True, False, True, True, True])
    for target in (probs, index):
        ours, peer, g1, g2 = _both(lambda z: cross_entropy(z, target, mask=mask, label_smoothing=0.1, impl=impl),
                                   lambda z: F.cross_entropy(z[mask], target[mask], label_smoothing=0.1), x)
        _close(ours, peer)
        _close(g1, g2)


def test_ignore_index_does_not_apply_to_probability_targets():
    x = torch.randn(3, 4, dtype=D)
    probs = torch.softmax(torch.randn(3, 4, dtype=D), 1)
    _close(cross_entropy(x, probs, ignore_index=1), F.cross_entropy(x, probs))


@pytest.mark.parametrize("impl", IMPLS)
def test_neg_inf_logits_exclude_classes(impl):
    x = torch.randn(4, 6, dtype=D)
    x[:, 4:] = -math.inf
    target = torch.tensor([0, 1, 2, 3])
    ours, peer, g1, g2 = _both(lambda z: cross_entropy(z, target, impl=impl),
                               lambda z: F.cross_entropy(z[:, :4], target), x)
    _close(ours, peer)
    assert (g1[:, 4:] == 0).all()
    _close(g1, g2)
    # probability targets with zero mass on the excluded classes: 0 · log 0 = 0
    probs = torch.zeros(4, 6, dtype=D)
    probs[:, :4] = torch.softmax(torch.randn(4, 4, dtype=D), 1)
    ours, peer, g1, g2 = _both(lambda z: cross_entropy(z, probs, impl=impl),
                               lambda z: F.cross_entropy(z[:, :4], probs[:, :4]), x)
    _close(ours, peer)
    _close(g1, g2)
    assert (g1[:, 4:] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_target_on_excluded_class_is_inf_with_finite_gradient(impl):
    x = torch.randn(3, 5, dtype=D)
    x[0, 2] = -math.inf
    x = x.requires_grad_()
    loss = cross_entropy(x, torch.tensor([2, 0, 1]), reduction="none", impl=impl)
    peer = F.cross_entropy(x.detach(), torch.tensor([2, 0, 1]), reduction="none")
    assert loss[0] == math.inf and peer[0] == math.inf
    _close(loss[1:].detach(), peer[1:])
    smoothed = cross_entropy(x, torch.tensor([0, 0, 1]), label_smoothing=0.1, impl=impl)
    assert smoothed == math.inf  # smoothing puts mass on every class, as in torch
    if impl != "composite":
        smoothed.backward()
        # the gradient is still (p − q) / N with q the smoothed target (p = 0 on the -inf class)
        q = 0.9 * F.one_hot(torch.tensor([0, 0, 1]), 5).to(D) + 0.1 / 5
        _close(x.grad, (torch.softmax(x.detach(), 1) - q) / 3)


# --- hypothesis: extreme logits --------------------------------------------------------------

@settings(max_examples=40)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=6, max_size=6),
       st.integers(0, 2), st.floats(0.0, 1.0))
def test_extreme_logits(values, cls, smoothing):
    x = torch.tensor(values, dtype=D).reshape(2, 3)
    target = torch.tensor([cls, 2 - cls])
    ours, peer, g1, g2 = _both(lambda z: cross_entropy(z, target, label_smoothing=smoothing),
                               lambda z: F.cross_entropy(z, target, label_smoothing=smoothing), x)
    assert torch.isfinite(ours) and ours >= 0
    _close(ours, peer, rtol=1e-12, atol=1e-9)
    _close(g1, g2, rtol=1e-12, atol=1e-12)
    # float32: error against the float64 truth (on the same rounded inputs) no worse than torch's
    x32 = x.float()
    truth = F.cross_entropy(x32.double(), target, label_smoothing=smoothing)
    ours32 = cross_entropy(x32, target, label_smoothing=smoothing).double()
    peer32 = F.cross_entropy(x32, target, label_smoothing=smoothing).double()
    slack = ERROR_SLACK[torch.float32] * max(1.0, float(truth.abs()))
    assert abs(ours32 - truth) <= abs(peer32 - truth) + slack


# --- scikit-learn and the log-likelihood -----------------------------------------------------

def test_batch_nll_equals_sklearn_log_loss():
    from sklearn.metrics import log_loss
    logits = torch.randn(50, 7, dtype=D) * 2
    target = torch.randint(0, 7, (50,))
    target[:7] = torch.arange(7)  # every class present
    probs = torch.softmax(logits, 1).numpy()
    assert abs(float(cross_entropy(logits, target)) - log_loss(target.numpy(), probs, labels=list(range(7)))) < 1e-12
    assert abs(float(-log_likelihood(logits, target)) / 50
               - log_loss(target.numpy(), probs, labels=list(range(7)))) < 1e-12


def test_log_likelihood_where_the_likelihood_underflows():
    torch.manual_seed(1)
    logits = torch.randn(2048, 100, dtype=D)  # a realistic batch: 2048 examples, 100 classes
    target = torch.randint(0, 100, (2048,))
    per_example = torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    assert torch.prod(per_example) == 0  # the likelihood itself underflows float64
    ll = log_likelihood(logits, target)
    exact = math.fsum(math.log(float(p)) for p in per_example)
    assert math.isfinite(float(ll)) and abs(float(ll) - exact) <= 1e-12 * abs(exact)


# --- nll_loss and binary cross-entropy -------------------------------------------------------

@pytest.mark.parametrize("weighted,reduction,shape",
                         list(itertools.product([False, True], ["none", "mean", "sum"], [(6, 5), (3, 5, 4)])))
def test_nll_loss_matches_torch(weighted, reduction, shape):
    log_probs = torch.log_softmax(torch.randn(shape, dtype=D), 1)
    weight = torch.rand(5, dtype=D) if weighted else None
    target = torch.randint(0, 5, (shape[0],) + shape[2:])
    target.view(-1)[0] = -100
    ours, peer, g1, g2 = _both(lambda z: nll_loss(z, target, dim=1, weight=weight, reduction=reduction),
                               lambda z: F.nll_loss(z, target, weight=weight, reduction=reduction), log_probs)
    _close(ours, peer)
    _close(g1, g2)
    _close(ours, reference.nll_loss(log_probs, target, dim=1, weight=weight, reduction=reduction))


def test_nll_loss_all_ignored_is_zero():
    lp = torch.log_softmax(torch.randn(3, 4, dtype=D), 1).requires_grad_()
    loss = nll_loss(lp, torch.full((3,), -100))
    loss.backward()
    assert loss == 0 and (lp.grad == 0).all()


@pytest.mark.parametrize("weighted,pos,reduction",
                         list(itertools.product([False, True], [False, True], ["none", "mean", "sum"])))
def test_bce_with_logits_matches_torch(weighted, pos, reduction):
    logits = torch.randn(6, 4, dtype=D) * 5
    target = torch.rand(6, 4, dtype=D)
    weight = torch.rand(6, 1, dtype=D) if weighted else None
    pos_weight = torch.rand(4, dtype=D) * 3 if pos else None
    ours, peer, g1, g2 = _both(
        lambda z: binary_cross_entropy_with_logits(z, target, weight=weight, pos_weight=pos_weight,
                                                   reduction=reduction),
        lambda z: F.binary_cross_entropy_with_logits(z, target, weight=weight, pos_weight=pos_weight,
                                                     reduction=reduction),
        logits)
    _close(ours, peer)
    _close(g1, g2)
    _close(ours, reference.binary_cross_entropy_with_logits(logits, target, weight=weight, pos_weight=pos_weight,
                                                            reduction=reduction))


def test_bce_extreme_logits_finite():
    logits = torch.tensor([-1e4, 1e4, 0.0])
    value = binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0, 0.5]), reduction="none")
    torch.testing.assert_close(value, torch.tensor([1e4, 1e4, math.log(2)]))


# --- torch.compile ---------------------------------------------------------------------------

def test_compiles_fullgraph_and_matches_eager():
    torch._dynamo.reset()

    def step(logits, target):
        return logitlab.cross_entropy(logits * 2.0, target, label_smoothing=0.1, z_loss=1e-3)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 9)
    target = torch.randint(0, 9, (6,))
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    out_c = compiled(a, target)
    out_e = step(b, target)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(a.grad, b.grad)
