"""Adversarial inputs for the cross-entropy family: empty batches, no class, gradient-requiring
weights under impl='torch', non-finite weights, saturated focal rows, BCE shapes and limits.

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

@pytest.mark.parametrize("impl", ["native", "torch", "composite"])
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
     r"cross_entropy\(\): argument 'logits' expected at least one class along dim -1, got <shape \(3, 0\)>"),
    (lambda: cross_entropy(torch.zeros(3, 0), torch.zeros(3, 0)),
     r"cross_entropy\(\): argument 'logits' expected at least one class"),
    (lambda: cross_entropy(torch.zeros(2, 0, 4), torch.zeros(2, 4, dtype=torch.long), dim=1),
     r"argument 'logits' expected at least one class along dim 1, got <shape \(2, 0, 4\)>"),
    (lambda: focal_loss(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)),
     r"focal_loss\(\): argument 'logits' expected at least one class"),
    (lambda: poly1_cross_entropy(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)),
     r"poly1_cross_entropy\(\): argument 'logits'"),
    (lambda: nll_loss(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)),
     r"nll_loss\(\): argument 'log_probs' expected at least one class"),
])
def test_no_class_is_an_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_nll_loss_messages_name_log_probs():
    with pytest.raises(TypeError, match=r"nll_loss\(\): argument 'log_probs' expected a floating-point tensor"):
        nll_loss(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError,
                       match=r"nll_loss\(\): argument 'log_probs' expected a tensor with at least 1 dimension"):
        nll_loss(torch.tensor(0.0), torch.tensor(0))
    with pytest.raises(ValueError,
                       match=r"argument 'target' expected class indices of shape \(3,\) \(the shape of log_probs "
                             r"without dim -1\)"):
        nll_loss(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


# --- gradients for weight and target probabilities -------------------------------------------

def test_fused_refuses_a_weight_or_target_that_requires_grad():
    x = torch.randn(4, 5, requires_grad=True)
    weight = torch.rand(5, requires_grad=True)
    with pytest.raises(ValueError, match=r"cross_entropy\(\): argument 'impl' expected 'composite' or 'auto' "
                                         r"when weight requires a gradient, got 'torch'"):
        cross_entropy(x, torch.randint(0, 5, (4,)), weight=weight, impl="torch")
    q = torch.softmax(torch.randn(4, 5), 1).requires_grad_()
    with pytest.raises(ValueError, match=r"when target requires a gradient, got 'torch'"):
        cross_entropy(x, q, impl="torch")


@pytest.mark.parametrize("impl", ["auto", "composite"])
def test_weight_and_target_gradients_equal_torch(impl):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, dtype=D, generator=gen)
    target = torch.tensor([0, 4, 2, -100, 1, 1])
    weight = torch.rand(5, dtype=D, generator=gen) + 0.1

    def by_hand(z, w):  # torch refuses a weight that requires grad; the formula written out
        keep = target != -100
        y = target.clamp(min=0)
        logp = torch.log_softmax(z, 1)
        rows = 0.8 * w[y] * logp.gather(1, y[:, None])[:, 0] + 0.2 / 5 * (logp * w).sum(1)
        return -(rows * keep).sum() / (w[y] * keep).sum()

    grads = []
    for fn in (lambda z, w: cross_entropy(z, target, weight=w, label_smoothing=0.2, impl=impl), by_hand):
        z, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
        grads.append((fn(z, w), *torch.autograd.grad(fn(z, w), (z, w))))
    torch.testing.assert_close(grads[1][0], F.cross_entropy(x, target, weight=weight, label_smoothing=0.2))
    for ours, peer in zip(*grads):
        torch.testing.assert_close(ours, peer, rtol=1e-10, atol=1e-12)
    q = torch.softmax(torch.randn(6, 5, dtype=D, generator=gen), 1)
    g = []
    for fn in (lambda z, t: cross_entropy(z, t, impl=impl), F.cross_entropy):
        z, t = x.clone().requires_grad_(), q.clone().requires_grad_()
        g.append(torch.autograd.grad(fn(z, t), (z, t)))
    for ours, peer in zip(*g):
        torch.testing.assert_close(ours, peer, rtol=1e-10, atol=1e-12)


# --- non-finite weights are bad input, not a silent NaN --------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_raise(bad):
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    weight = torch.tensor([1.0, bad, 1.0, 1.0])
    for call in (lambda: cross_entropy(x, y, weight=weight), lambda: nll_loss(x.log_softmax(1), y, weight=weight),
                 lambda: poly1_cross_entropy(x, y, weight=weight)):
        with pytest.raises(ValueError,
                           match=r"argument 'weight' expected finite class weights, got <NaN or inf entries>"):
            call()
    with pytest.raises(ValueError, match=r"focal_loss\(\): argument 'alpha' expected finite class factors"):
        focal_loss(x, y, alpha=weight)
    # validate=False skips the data pass, as for every other data check
    unchecked = cross_entropy(x, torch.tensor([1, 1, 1]), weight=weight, validate=False)
    assert torch.isnan(unchecked)  # nan/nan or inf/inf


def test_negative_and_zero_weights_follow_torch():
    x, y = torch.randn(5, 4, dtype=D), torch.tensor([0, 1, 2, 3, 1])
    weight = torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=D)
    torch.testing.assert_close(cross_entropy(x, y, weight=weight), F.cross_entropy(x, y, weight=weight))
    assert cross_entropy(x, y, weight=torch.zeros(4, dtype=D)).item() == 0.0  # torch: 0/0 = NaN


# --- focal loss: 0 < gamma < 1 on a saturated row --------------------------------------------

@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.99])
def test_focal_fractional_gamma_saturated_row_has_zero_gradient(gamma):
    # p_y rounds to exactly 1, so 1 - p_y = 0 and d(u^gamma)/du = inf: the gradient was NaN.
    x = torch.tensor([[100.0, 0.0, -3.0], [1.0, 2.0, 0.5]], requires_grad=True)
    loss = focal_loss(x, torch.tensor([0, 1]), gamma=gamma, reduction="sum")
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[0] == 0).all()
    # the unsaturated row keeps the float64 gradient of the formula
    z = x.detach()[1:].double().requires_grad_()
    log_p = torch.log_softmax(z, 1)[0, 1]
    (-(1 - log_p.exp()) ** gamma * log_p).backward()
    torch.testing.assert_close(x.grad[1:].double(), z.grad, rtol=1e-5, atol=1e-7)


def test_focal_fractional_gamma_gradcheck():
    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(5), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, torch.tensor([0, 2, 1, 1]), gamma=0.5), (x,))


# --- binary cross-entropy --------------------------------------------------------------------

def test_bce_weight_must_broadcast_to_logits_shape():
    # a (2, 3) weight used to enlarge a (3,) loss to (2, 3) without a word
    with pytest.raises(ValueError,
                       match=r"argument 'weight' expected a shape broadcastable to \(3,\), got Tensor\(shape=\(2, 3\)"):
        binary_cross_entropy_with_logits(torch.zeros(3), torch.zeros(3), weight=torch.ones(2, 3), reduction="none")
    out = binary_cross_entropy_with_logits(torch.zeros(2, 3), torch.ones(2, 3),
                                           pos_weight=torch.tensor([1.0, 2.0, 3.0]), reduction="none")
    torch.testing.assert_close(out, math.log(2) * torch.tensor([[1.0, 2.0, 3.0]] * 2))


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_bce_non_finite_logits_raise(bad):
    # +inf with target 1 gave (1 - t) · z = 0 · inf = NaN, silently (torch too)
    with pytest.raises(ValueError,
                       match=r"binary_cross_entropy_with_logits\(\): argument 'logits' expected finite values"):
        binary_cross_entropy_with_logits(torch.tensor([0.0, bad]), torch.tensor([1.0, 1.0]))


def test_bce_extreme_logits_equal_torch():
    x = torch.tensor([1e4, -1e4, 1e4, -1e4, 30.0, -30.0], dtype=D, requires_grad=True)
    t = torch.tensor([0.3, 0.7, 1.0, 0.0, 1.0, 0.0], dtype=D)
    ours = binary_cross_entropy_with_logits(x, t, reduction="none")
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    peer = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    (g_peer,) = torch.autograd.grad(peer.sum(), x)
    torch.testing.assert_close(ours, peer, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_peer, rtol=1e-12, atol=1e-12)
    for dtype in (torch.float16, torch.bfloat16):
        half = binary_cross_entropy_with_logits(x.detach().to(dtype), t.to(dtype), reduction="none")
        assert half.dtype == dtype and torch.isfinite(half).all()
        torch.testing.assert_close(half.double(), F.binary_cross_entropy_with_logits(
            x.detach().to(dtype).double(), t.to(dtype).double(), reduction="none"), rtol=1e-2, atol=1e-3)


def test_empty_bce_mean_is_zero_not_nan():
    x = torch.zeros(0, 3, requires_grad=True)
    loss = binary_cross_entropy_with_logits(x, torch.zeros(0, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad.shape == (0, 3)
    assert binary_cross_entropy_with_logits(x, torch.zeros(0, 3), reduction="sum").item() == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_bce_non_finite_weights_raise(bad):
    x, weight = torch.randn(3, 4), torch.tensor([1.0, bad, 1.0, 1.0])
    for name in ("weight", "pos_weight"):
        with pytest.raises(ValueError,
                           match=rf"binary_cross_entropy_with_logits\(\): argument '{name}' expected finite values"):
            binary_cross_entropy_with_logits(x, torch.rand(3, 4), **{name: weight})


# --- Modules: same argument names and defaults as the functions ------------------------------

MODULES = [(lnn.CrossEntropyLoss, cross_entropy), (lnn.NLLLoss, nll_loss), (lnn.FocalLoss, focal_loss),
           (lnn.Poly1CrossEntropyLoss, poly1_cross_entropy), (lnn.BCEWithLogitsLoss, binary_cross_entropy_with_logits)]


@pytest.mark.parametrize("module,fn", MODULES)
def test_module_signature_matches_function(module, fn):
    options = {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    per_call = {name: options.pop(name) for name in ("mask",) if name in options}
    init = {name: p.default for name, p in inspect.signature(module.__init__).parameters.items()
            if p.kind is p.KEYWORD_ONLY}
    assert init == options  # same names, same order of insertion is not checked, same defaults
    assert list(init) == list(options)  # same order
    forward = list(inspect.signature(module.forward).parameters)
    tensors = [n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert forward == ["self", *tensors, *per_call]


def test_cross_entropy_module_repr_shows_every_option():
    module = lnn.CrossEntropyLoss(weight=torch.ones(3), impl="torch", inplace_backward=True, validate=False)
    text = repr(module)
    for part in ("dim=-1", "ignore_index=-100", "reduction='mean'", "label_smoothing=0.0", "z_loss=0.0",
                 "temperature=1.0", "weighted=True", "validate=False", "inplace_backward=True", "impl='torch'"):
        assert part in text, (part, text)
    assert [name for name, _ in module.named_buffers()] == ["weight"]
    assert lnn.CrossEntropyLoss().weight is None


# --- -inf target classes and excluded rows keep finite gradients -----------------------------

@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_target_on_excluded_class_is_inf_with_finite_gradient(gamma):
    x = torch.tensor([[0.0, -math.inf, 1.0], [0.5, 0.0, -1.0]], dtype=D, requires_grad=True)
    loss = focal_loss(x, torch.tensor([1, 0]), gamma=gamma, reduction="sum")
    assert loss == math.inf
    loss.backward()
    # row 0: the gradient of −log p_y (the limit of the focal gradient as p_y → 0), as cross_entropy
    torch.testing.assert_close(x.grad[0], torch.tensor([0.0, -1.0, 0.0], dtype=D) + torch.softmax(x.detach()[0], 0))
    z = x.detach()[1:].clone().requires_grad_()
    focal_loss(z, torch.tensor([0]), gamma=gamma, reduction="sum").backward()
    torch.testing.assert_close(x.grad[1:], z.grad)


@pytest.mark.parametrize("impl", ["native", "torch", "composite"])
def test_masked_rows_with_nan_target_probs_have_zero_gradient(impl):
    # masked-out rows are not validated, so padding may be NaN: it gave NaN gradient rows
    dtype = torch.float32 if impl == "native" else D  # the native kernel takes float32/bf16/f16
    x = torch.randn(3, 4, dtype=dtype, requires_grad=True)
    q = torch.softmax(torch.randn(3, 4, dtype=dtype), 1)
    q[1] = math.nan
    mask = torch.tensor([True, False, True])
    loss = cross_entropy(x, q, mask=mask, impl=impl)
    loss.backward()
    assert (x.grad[1] == 0).all()
    keep = mask.nonzero()[:, 0]
    z = x.detach()[keep].requires_grad_()
    peer = F.cross_entropy(z, q[keep])
    peer.backward()
    torch.testing.assert_close(loss.detach(), peer.detach())
    torch.testing.assert_close(x.grad[keep], z.grad)


def test_inplace_backward_refuses_expanded_logits():
    base = torch.randn(1, 5, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"cross_entropy\(\): argument 'inplace_backward' expected False for expanded "
                                         r"logits .*got True \(logits strides \(0, 1\); clone\(\) them first\)"):
        cross_entropy(base.expand(4, 5), target, inplace_backward=True)
    # without inplace_backward, expanded logits give torch's gradient (summed over the copies)
    cross_entropy(base.expand(4, 5), target).backward()
    (peer,) = torch.autograd.grad(F.cross_entropy(base.expand(4, 5), target), base)
    torch.testing.assert_close(base.grad, peer)
    # a clone is fine, and its gradient reaches base through the clone
    base.grad = None
    cross_entropy(base.expand(4, 5).clone(), target, inplace_backward=True).backward()
    torch.testing.assert_close(base.grad, peer)


def test_scalar_options_that_require_grad_are_refused():
    # float(tensor) silently cut the graph: a learned temperature got no gradient at all
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    learned = torch.tensor(2.0, requires_grad=True)
    for call, fn, name in [
        (lambda: cross_entropy(x, y, temperature=learned), "cross_entropy", "temperature"),
        (lambda: cross_entropy(x, y, label_smoothing=learned / 10), "cross_entropy", "label_smoothing"),
        (lambda: cross_entropy(x, y, z_loss=learned), "cross_entropy", "z_loss"),
        (lambda: focal_loss(x, y, gamma=learned), "focal_loss", "gamma"),
        (lambda: poly1_cross_entropy(x, y, epsilon=learned), "poly1_cross_entropy", "epsilon"),
    ]:
        with pytest.raises(TypeError, match=rf"{fn}\(\): argument '{name}' expected a number \(its gradient is not "
                                            rf"computed\), got <tensor that requires grad>"):
            call()
    # a plain (no-grad) 0-d tensor is still read as its number
    torch.testing.assert_close(cross_entropy(x, y, temperature=torch.tensor(2.0)), F.cross_entropy(x / 2, y))
