"""Fenchel–Young losses for every map that has an Ω, and from a user's Ω (issue 24, item 2).

* the sigmoid's Ω (binary negentropy on the box): the one-vs-all binary logistic FY loss;
* the maps that cannot have one (x/Σx, spherical, Taylor) and the two facts that show why;
* ``make_fenchel_young_loss`` on user-written Ω / Ω* against the closed forms.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import logitlab
from logitlab import reference as R
from logitlab import registry

F64 = torch.float64


def _binary_entropy(y):
    return -(torch.special.xlogy(y, y) + torch.special.xlogy(1 - y, 1 - y)).sum(-1)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_sigmoid_fenchel_young_is_binary_logistic_minus_target_entropy(dim):
    z = (3 * torch.randn(4, 5, dtype=F64)).requires_grad_()
    y = torch.rand(4, 5, dtype=F64)  # multi-label: each class its own probability
    loss = logitlab.fenchel_young_loss(z.movedim(-1, dim), y.movedim(-1, dim), normalizer="sigmoid",
                                       dim=dim, reduction="none")
    want = F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1) - _binary_entropy(y)
    torch.testing.assert_close(loss, want)
    ref = R.fenchel_young_loss(z.detach(), y, torch.sigmoid(z.detach()), "binary")
    torch.testing.assert_close(loss.detach(), ref)
    loss.sum().backward()
    torch.testing.assert_close(z.grad, torch.sigmoid(z.detach()) - y)


def test_sigmoid_fenchel_young_index_targets_and_second_order():
    z = (2 * torch.randn(5, 6, dtype=F64)).requires_grad_()
    target = torch.tensor([0, 5, 2, -100, 1])
    loss = logitlab.fenchel_young_loss(z, target, normalizer="sigmoid", reduction="none")
    onehot = F.one_hot(target.clamp_min(0), 6).to(F64)
    want = F.binary_cross_entropy_with_logits(z, onehot, reduction="none").sum(-1)
    torch.testing.assert_close(loss[[0, 1, 2, 4]], want[[0, 1, 2, 4]])
    assert float(loss[3].detach()) == 0.0
    y = torch.rand(5, 6, dtype=F64)
    assert gradgradcheck(lambda x: logitlab.fenchel_young_loss(x, y, normalizer="sigmoid"), (z,))
    with pytest.raises(ValueError, match=r"^fenchel_young_loss\(\): argument 'target' expected probabilities in "
                                         r"\[0, 1\], got <range"):
        logitlab.fenchel_young_loss(z, y + 1, normalizer="sigmoid")


def test_binary_negentropy_against_reference_and_zero_at_vertices():
    p = torch.rand(3, 7, dtype=F64)
    p[0, :3] = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    torch.testing.assert_close(logitlab.binary_negentropy(p), R.regularizer(p, "binary"))
    assert torch.equal(logitlab.binary_negentropy(torch.tensor([[0.0, 1.0, 1.0]])), torch.zeros(1))
    torch.testing.assert_close(logitlab.binary_negentropy(p.T, dim=0), R.regularizer(p, "binary"))


NO_OMEGA = ["standard", "spherical_softmax", "taylor_softmax"]


@pytest.mark.parametrize("name", NO_OMEGA)
def test_maps_without_omega_are_no_gradient_of_a_convex_function(name):
    """A Fenchel–Young map is ŷ = ∇Ω*(θ). Its outputs sum to 1, so Ω*(θ + c1) = Ω*(θ) + c and ŷ
    is shift invariant; and as a gradient its Jacobian is symmetric. These maps fail both (each
    is checked where it is defined), so no Ω has them as its map: the loss refuses them."""
    spec = registry.NORMALIZERS[name]
    assert spec.regularizer is None and not spec.shift_invariant
    fn = registry.get_normalizer(name)
    z = torch.rand(6, dtype=F64) + 0.5
    jac = torch.autograd.functional.jacobian(lambda x: fn(x, **spec.params), z)
    assert float((jac - jac.T).abs().max()) > 1e-3
    assert float((fn(z + 0.3, **spec.params) - fn(z, **spec.params)).abs().max()) > 1e-3
    with pytest.raises(ValueError, match=rf"^fenchel_young_loss\(\): argument 'normalizer' .*got '{name}' "
                                         r"\(this loss is not defined for it\)"):
        logitlab.fenchel_young_loss(torch.rand(2, 6), torch.tensor([0, 1]), normalizer=name)


@pytest.mark.parametrize("name", [n for n, s in registry.NORMALIZERS.items() if s.regularizer])
def test_maps_with_omega_have_a_symmetric_jacobian(name):
    spec = registry.NORMALIZERS[name]
    fn = registry.get_normalizer(name)
    z = torch.randn(6, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda x: fn(x, **spec.params), z)
    torch.testing.assert_close(jac, jac.T, atol=1e-8, rtol=0)


# --- the generic constructor on user-written Ω ------------------------------------------------

def shannon(p):  # a user's Ω, written from its definition
    return torch.special.xlogy(p, p).sum(-1)


def gini(p):
    return 0.5 * (p * p).sum(-1) - 0.5


def _targets(n_rows=5, n=7):
    index = torch.randint(0, n, (n_rows,))
    soft = torch.softmax(2 * torch.randn(n_rows, n, dtype=F64), -1)
    return index, soft


@pytest.mark.parametrize("how", ["predict", "max_fn", "max_fn+omega"])
def test_user_shannon_omega_gives_the_cross_entropy_family(how):
    z = (2 * torch.randn(5, 7, dtype=F64)).requires_grad_()
    index, soft = _targets()
    if how == "predict":
        loss = logitlab.make_fenchel_young_loss(regularizer=shannon, predict=lambda t: t.softmax(-1),
                                                shift_invariant=True)
    elif how == "max_fn":
        loss = logitlab.make_fenchel_young_loss(max_fn=lambda t: t.logsumexp(-1))
    else:
        loss = logitlab.make_fenchel_young_loss(max_fn=lambda t: t.logsumexp(-1), regularizer=shannon)
    torch.testing.assert_close(loss(z, index), F.cross_entropy(z, index))
    soft_value = loss(z, soft, reduction="none")
    closed = F.cross_entropy(z, soft, reduction="none")  # H(y, softmax z)
    if how != "max_fn":  # Ω(y) included: KL(y ‖ softmax z) = H(y, q) − H(y)
        closed = closed + shannon(soft)
    torch.testing.assert_close(soft_value, closed)
    torch.testing.assert_close(soft_value, logitlab.fenchel_young_loss(z, soft, reduction="none")
                               + (0 if how != "max_fn" else -shannon(soft)))
    (grad,) = torch.autograd.grad(soft_value.sum(), z)
    torch.testing.assert_close(grad, torch.softmax(z.detach(), -1) - soft)
    torch.testing.assert_close(loss.predict(z.detach()), torch.softmax(z.detach(), -1))


def test_user_gini_omega_gives_the_sparsemax_loss():
    z = (2 * torch.randn(5, 7, dtype=F64)).requires_grad_()
    index, soft = _targets()
    loss = logitlab.make_fenchel_young_loss(regularizer=gini, predict=lambda t: logitlab.sparsemax(t),
                                            shift_invariant=True)
    for target in (index, soft):
        torch.testing.assert_close(loss(z, target, reduction="none"),
                                   logitlab.sparsemax_loss(z, target, reduction="none"))
    # Ω* of the Gini regularizer written by hand: ⟨θ, p⟩ − Ω(p) at p = sparsemax(θ).
    def gini_max(t):
        p = logitlab.sparsemax(t)
        return (t * p).sum(-1) - gini(p)

    by_max = logitlab.make_fenchel_young_loss(max_fn=gini_max, regularizer=gini)
    torch.testing.assert_close(by_max(z, soft), logitlab.sparsemax_loss(z, soft))
    (grad,) = torch.autograd.grad(by_max(z, soft, reduction="sum"), z)
    torch.testing.assert_close(grad, logitlab.sparsemax(z.detach()) - soft)


def test_user_omega_outside_the_simplex_closed_forms():
    """Ω = ½‖p‖² on ℝⁿ: ŷ = θ and L = ½‖θ − y‖²; Ω = binary negentropy on the box via
    Ω*(θ) = Σ softplus(θ_i): L = Σ BCE − H_b(y)."""
    z = torch.randn(4, 6, dtype=F64).requires_grad_()
    y = torch.randn(4, 6, dtype=F64)
    half_sq = lambda p: 0.5 * (p * p).sum(-1)  # noqa: E731
    squared = logitlab.make_fenchel_young_loss(regularizer=half_sq, predict=lambda t: t)
    torch.testing.assert_close(squared(z, y, reduction="none"), 0.5 * (z - y).square().sum(-1))
    by_max = logitlab.make_fenchel_young_loss(max_fn=half_sq, regularizer=half_sq)
    torch.testing.assert_close(by_max(z, y, reduction="none"), 0.5 * (z - y).square().sum(-1))
    labels = torch.rand(4, 6, dtype=F64)
    logistic = logitlab.make_fenchel_young_loss(max_fn=lambda t: F.softplus(t).sum(-1),
                                                regularizer=lambda p: logitlab.binary_negentropy(p))
    closed = F.binary_cross_entropy_with_logits(z, labels, reduction="none").sum(-1) - _binary_entropy(labels)
    torch.testing.assert_close(logistic(z, labels, reduction="none"), closed)
    torch.testing.assert_close(logistic(z, labels), logitlab.fenchel_young_loss(z, labels, normalizer="sigmoid"))
    torch.testing.assert_close(logistic.predict(z.detach()), torch.sigmoid(z.detach()))
    (grad,) = torch.autograd.grad(logistic(z, labels, reduction="sum"), z)
    torch.testing.assert_close(grad, torch.sigmoid(z.detach()) - labels)


def test_constructed_losses_gradcheck_and_double_backward():
    z = torch.randn(3, 5, dtype=F64).requires_grad_()
    soft = torch.softmax(torch.randn(3, 5, dtype=F64), -1)
    by_predict = logitlab.make_fenchel_young_loss(regularizer=shannon, predict=lambda t: t.softmax(-1))
    by_max = logitlab.make_fenchel_young_loss(max_fn=lambda t: t.logsumexp(-1))
    for loss in (by_predict, by_max):
        assert gradcheck(lambda x: loss(x, soft, reduction="none"), (z,))
        assert gradgradcheck(lambda x: loss(x, soft, reduction="none"), (z,))


def test_constructed_loss_options_and_errors():
    loss = logitlab.make_fenchel_young_loss(max_fn=lambda t: t.logsumexp(-1))
    z = torch.randn(4, 3, 6, dtype=F64)
    target = torch.randint(0, 3, (4, 6))
    torch.testing.assert_close(loss(z, target, dim=1), F.cross_entropy(z, target))
    mask = torch.tensor([True, False, True, True])
    flat = torch.randn(4, 3, dtype=F64)
    t = torch.tensor([0, 1, 2, -100])
    torch.testing.assert_close(loss(flat, t, mask=mask, reduction="sum"),
                               F.cross_entropy(flat[[0, 2]], t[[0, 2]], reduction="sum"))
    cases = [
        (lambda: logitlab.make_fenchel_young_loss(regularizer=shannon), TypeError,
         r"argument 'predict' expected exactly one of predict= \(with regularizer=\) and max_fn=, got <neither>"),
        (lambda: logitlab.make_fenchel_young_loss(predict=torch.softmax), TypeError,
         r"argument 'regularizer' expected Ω\(p\) alongside predict="),
        (lambda: logitlab.make_fenchel_young_loss(max_fn=3), TypeError, r"argument 'max_fn' expected a callable"),
        (lambda: loss(flat, torch.tensor([0, 1, 5, 0])), ValueError, r"^fenchel_young\(\): argument 'target'"),
        (lambda: loss(flat.masked_fill(flat > 0, math.nan), t), ValueError, r"^fenchel_young\(\): argument 'logits'"),
        (lambda: loss(flat, t, reduction="max"), ValueError, r"argument 'reduction'"),
    ]
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            call()
