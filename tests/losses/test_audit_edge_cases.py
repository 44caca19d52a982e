"""Adversarial inputs found by the audit: each case once broke (NaN, raw torch error) or was unchecked."""

from __future__ import annotations

import math

import pytest
import torch

from logitlab.losses import divergences as D
from logitlab.losses import fenchel_young as FY

NAMES = list(D.DIVERGENCES)


@pytest.mark.parametrize("name", NAMES)
def test_teacher_row_of_all_neg_inf_is_rejected_not_nan(name):
    # Was: a silent NaN (kl, js, tv, hellinger, brier) or a silent 0 (reverse_kl, alpha, renyi).
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [-math.inf, -math.inf, -math.inf]])
    with pytest.raises(ValueError, match=r"divergence_loss\(\): argument 'target_logits' expected at "
                                         r"least one logit > -inf per row, got <a row of all -inf>"):
        D.divergence_loss(student, target_logits=teacher, divergence=name)


@pytest.mark.parametrize("name", NAMES)
def test_zero_classes_is_a_named_error(name):
    # Was: RuntimeError "cannot reshape tensor of 0 elements into shape [-1, 0]" from to_rows.
    with pytest.raises(ValueError, match=r"divergence_loss\(\): argument 'logits' expected at least one "
                                         r"class along dim -1, got <shape \(2, 0\)>"):
        D.divergence_loss(torch.zeros(2, 0), torch.zeros(2, 0), divergence=name)


def test_fenchel_young_zero_classes_is_a_named_error():
    # Was: a misleading "class indices in [0, -1]" error, and a raw torch error with probabilities.
    with pytest.raises(ValueError, match=r"fenchel_young_loss\(\): argument 'logits' expected at least "
                                         r"one class along dim -1, got <shape \(2, 0\)>"):
        FY.fenchel_young_loss(torch.zeros(2, 0), torch.zeros(2, 0), validate=False)


@pytest.mark.parametrize("name", NAMES)
def test_zero_dim_input_is_one_class(name):
    # Was: IndexError "tuple index out of range" from the probability check on a 0-d tensor.
    # A 0-d tensor is one class (check_dim's convention): model and target are both [1], D = 0.
    logits = torch.tensor(3.0, requires_grad=True)
    value = D.divergence_loss(logits, torch.tensor(1.0), divergence=name, reduction="none")
    assert value.shape == () and float(value.detach()) == 0.0
    value.backward()
    assert float(logits.grad) == 0.0


@pytest.mark.parametrize("name, order", [("alpha", 1 - 1e-5), ("alpha", 1 + 1e-5), ("alpha", 1e-5),
                                         ("alpha", -1e-5), ("renyi", 1 - 1e-5), ("renyi", 1 + 1e-5)])
def test_power_divergences_near_their_kl_orders_keep_float32_accuracy(name, order):
    # Was: (Σ p^α q^(1−α) − 1) / (α(α − 1)) cancelled: a 2% error at |α − 1| = 1e-5 in float32
    # (and a negative "divergence", −22352, at α = 1 − 1e-12).
    from logitlab import reference as R

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 50, generator=gen, dtype=torch.float64)
    target = torch.softmax(torch.randn(16, 50, generator=gen, dtype=torch.float64), -1)
    key = "amari_alpha" if name == "alpha" else "renyi_alpha"
    reference = R.alpha_divergence if name == "alpha" else R.renyi_divergence
    truth = reference(target, torch.softmax(logits, -1), **{key: order})
    ours = D.divergence_loss(logits.float(), target.float(), divergence=name, reduction="none", **{key: order})
    assert (ours.double() - truth).abs().max() < 1e-5
    far = D.divergence_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.9, 0.1]]), divergence=name,
                            **{key: 1 - 1e-12})
    kl = D.kl_divergence(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.9, 0.1]]))
    assert abs(float(far) - float(kl)) < 1e-6


@pytest.mark.parametrize("call", [
    lambda T: FY.fenchel_young_loss(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0]), temperature=T),
    lambda T: D.kl_divergence(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.2, 0.3, 0.5]]), temperature=T),
    lambda T: D.divergence_loss(torch.tensor([[1.0, 2.0, 3.0]]), target_logits=torch.zeros(1, 3),
                                divergence="js", temperature=T),
], ids=["fenchel_young_loss", "kl_divergence", "divergence_loss"])
def test_a_temperature_that_overflows_the_logits_is_named(call):
    # Was: softmax()'s error about +inf logits (FY; NaN with validate=False) for a tiny but
    # valid temperature: 3 / 1e-45 overflows float32.
    with pytest.raises(ValueError, match=r"\(\): argument 'temperature' expected a value for which logits / "
                                         r"temperature stays finite in torch.float32, got 1e-45"):
        call(1e-45)
    assert torch.isfinite(call(1e-30))  # small but representable: fine


@pytest.mark.parametrize("name, key, order", [("alpha", "amari_alpha", 0.9), ("alpha", "amari_alpha", 0.1),
                                              ("renyi", "renyi_alpha", 1.1), ("renyi", "renyi_alpha", 0.9)])
def test_gradcheck_of_the_near_kl_path(name, key, order):
    # |α − 1| ≤ ½ with moderate logits takes the expm1 path of power_sum_minus_one.
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.softmax(torch.randn(3, 5, generator=gen, dtype=torch.float64), -1)
    target = torch.where(target < 0.1, torch.zeros_like(target), target)  # some zeros in the target
    target = target / target.sum(-1, keepdim=True)
    fn = lambda z: D.divergence_loss(z, target, divergence=name, reduction="none", **{key: order})  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))
