"""The cross-entropy family's Modules, registry rows and error messages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import logitlab
from logitlab import functional, reference, registry
from logitlab import nn as lnn
from logitlab.losses.cross_entropy import binary_cross_entropy_with_logits, cross_entropy, nll_loss
from logitlab.losses.focal import focal_loss, poly1_cross_entropy


def test_modules_equal_functions_and_hold_buffers():
    logits = torch.randn(4, 5, 3)
    target = torch.randint(0, 5, (4, 3))
    mask = torch.rand(4, 3) > 0.3
    weight = torch.rand(5)
    cases = [
        (lnn.CrossEntropyLoss(dim=1, weight=weight, label_smoothing=0.1, z_loss=1e-3, temperature=2.0),
         lambda: cross_entropy(logits, target, dim=1, weight=weight, mask=mask, label_smoothing=0.1,
                               z_loss=1e-3, temperature=2.0), (logits, target, mask)),
        (lnn.NLLLoss(dim=1, weight=weight),
         lambda: nll_loss(logits.log_softmax(1), target, dim=1, weight=weight, mask=mask),
         (logits.log_softmax(1), target, mask)),
        (lnn.FocalLoss(gamma=1.0, alpha=weight, dim=1),
         lambda: focal_loss(logits, target, gamma=1.0, alpha=weight, dim=1, mask=mask),
         (logits, target, mask)),
        (lnn.Poly1CrossEntropyLoss(epsilon=0.5, dim=1, weight=weight),
         lambda: poly1_cross_entropy(logits, target, epsilon=0.5, dim=1, weight=weight, mask=mask),
         (logits, target, mask)),
        (lnn.BCEWithLogitsLoss(pos_weight=weight[:3]),
         lambda: binary_cross_entropy_with_logits(logits,
                                                  torch.rand(4, 5, 3, generator=torch.Generator().manual_seed(1)),
                                                  pos_weight=weight[:3]),
         (logits, torch.rand(4, 5, 3, generator=torch.Generator().manual_seed(1)))),
    ]
    for module, fn, args in cases:
        torch.testing.assert_close(module(*args), fn())
        assert isinstance(repr(module), str) and "(" in repr(module)
        tensors = dict(module.named_buffers())
        assert tensors, type(module).__name__
    assert "weight" in lnn.CrossEntropyLoss(weight=weight).state_dict()


def test_public_names_and_registry_rows():
    for name in ("cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "log_likelihood",
                 "focal_loss", "poly1_cross_entropy"):
        assert getattr(logitlab, name) is getattr(functional, name)
        assert name in logitlab.__all__ and name in functional.__all__
    for name in ("CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "FocalLoss", "Poly1CrossEntropyLoss"):
        assert name in lnn.__all__ and not hasattr(logitlab, name)  # Modules live in logitlab.nn
    assert registry.get_loss("cross_entropy") is cross_entropy
    assert registry.get_loss("binary_cross_entropy") is binary_cross_entropy_with_logits
    assert registry.get_loss("focal") is focal_loss
    assert registry.get_loss("poly1") is poly1_cross_entropy
    for loss in ("cross_entropy", "binary_cross_entropy", "focal", "poly1"):
        assert hasattr(lnn, registry.LOSSES[loss].module)


@pytest.mark.parametrize("loss", ["focal", "poly1", "binary_cross_entropy"])
def test_make_objective(loss):
    normalizer = registry.LOSSES[loss].normalizers[0]
    objective = registry.make_objective(normalizer, loss)
    x = torch.randn(5, 4, requires_grad=True)
    target = torch.randint(0, 4, (5,))
    value = objective(x, target)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(x.grad).all()
    # the objective is the reference loss at the registry's default parameters, mean over rows
    z = x.detach().double()
    expected = {
        "focal": lambda: reference.focal_loss(z, target, gamma=2.0),
        "poly1": lambda: reference.poly1_cross_entropy(z, target, epsilon=1.0),
        "binary_cross_entropy": lambda: F.binary_cross_entropy_with_logits(z, F.one_hot(target, 4).double()),
    }[loss]()
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)


X = torch.randn(3, 4)
Y = torch.tensor([0, 1, 2])

ERRORS = [
    (lambda: cross_entropy(X, torch.tensor([0, 1])), ValueError,
     r"cross_entropy\(\): argument 'target' expected class indices of shape \(3,\) .* "
     r"or probabilities of shape \(3, 4\), got <integer tensor of shape \(2,\)>"),
    (lambda: cross_entropy(X, torch.rand(3, 5)), ValueError,
     r"argument 'target' expected .*got <floating tensor of shape \(3, 5\)>"),
    (lambda: cross_entropy(X, torch.softmax(torch.rand(3, 4, dtype=torch.float64), 1)), TypeError,
     r"argument 'target' expected probabilities of dtype torch.float32 .*got <dtype torch.float64>"),
    (lambda: cross_entropy(X, torch.tensor([True, False, True])), TypeError,
     r"argument 'target' expected integer class indices or floating probabilities, got <dtype torch.bool>"),
    (lambda: cross_entropy(X, torch.tensor([0, 4, 1])), ValueError,
     r"argument 'target' expected class indices in \[0, 3\] or ignore_index=-100, got <index 4>"),
    (lambda: cross_entropy(X, torch.tensor([0, -1, 1])), ValueError, r"got <index -1>"),
    (lambda: cross_entropy(X, torch.full((3, 4), 0.3)), ValueError, r"argument 'target' expected rows summing to 1"),
    (lambda: cross_entropy(X, torch.tensor([[1.5, -0.5, 0, 0]] * 3)), ValueError,
     r"argument 'target' expected probabilities >= 0"),
    (lambda: cross_entropy(torch.tensor([[0.0, math.nan]]), torch.tensor([0])), ValueError,
     r"argument 'logits' expected values without NaN or \+inf .*got <NaN or \+inf in row 0"),
    (lambda: cross_entropy(torch.tensor([[0.0, 1.0], [math.inf, 0.0]]), torch.tensor([0, 1])), ValueError,
     r"got <NaN or \+inf in row 1"),
    (lambda: cross_entropy(torch.tensor([[-math.inf, -math.inf]]), torch.tensor([0])), ValueError,
     r"expected at least one finite logit per kept row"),
    (lambda: cross_entropy(torch.tensor([[0.0, math.nan]]), torch.tensor([0]), impl="composite"), ValueError,
     r"NaN or \+inf in row 0"),
    (lambda: cross_entropy(X, Y, label_smoothing=1.5), ValueError,
     r"argument 'label_smoothing' expected a number in \[0.0, 1.0\], got 1.5"),
    (lambda: cross_entropy(X, Y, z_loss=-1.0), ValueError,
     r"argument 'z_loss' expected a number in \[0.0, inf\), got -1.0"),
    (lambda: cross_entropy(X, Y, temperature=0.0), ValueError,
     r"argument 'temperature' expected a finite number > 0, got 0.0"),
    (lambda: cross_entropy(X, Y, reduction="avg"), ValueError,
     r"argument 'reduction' expected one of 'none', 'mean', 'sum', got 'avg'"),
    (lambda: cross_entropy(X, Y, weight=torch.ones(3)), ValueError,
     r"argument 'weight' expected a 1-D tensor of 4 class weights"),
    (lambda: cross_entropy(X, Y, mask=torch.ones(3)), TypeError,
     r"cross_entropy\(\): argument 'mask' expected a bool tensor of shape \(3,\) \(True = keep the row\), "
     r"got <torch.float32 tensor of shape \(3,\)>$"),
    (lambda: cross_entropy(X, Y, mask=torch.ones(2, dtype=torch.bool)), ValueError,
     r"cross_entropy\(\): argument 'mask' expected a bool tensor of shape \(3,\) \(True = keep the row\), "
     r"got <torch.bool tensor of shape \(2,\)>$"),
    (lambda: cross_entropy(X, Y, mask=[True, False, True]), TypeError,
     r"cross_entropy\(\): argument 'mask' expected a bool tensor of shape \(3,\) \(True = keep the row\), got <list>$"),
    (lambda: cross_entropy(X, Y, dim=2), IndexError, r"argument 'dim' expected an int in \[-2, 1\]"),
    (lambda: cross_entropy(X, Y, ignore_index=1.0), TypeError, r"argument 'ignore_index' expected an int"),
    (lambda: cross_entropy(X, Y, impl="cuda"), ValueError,
     r"argument 'impl' expected one of 'auto', 'native', 'torch', 'composite'"),
    (lambda: cross_entropy(X, Y, impl="composite", inplace_backward=True), ValueError,
     r"argument 'inplace_backward' expected False with the composite"),
    (lambda: cross_entropy(torch.tensor(1.0), torch.tensor(0)), ValueError,
     r"argument 'logits' expected a tensor with at least 1 dimension"),
    (lambda: cross_entropy(torch.ones(3, 4, dtype=torch.long), Y), TypeError,
     r"argument 'logits' expected a floating-point tensor"),
    (lambda: cross_entropy(X, [0, 1, 2]), TypeError, r"argument 'target' expected a torch.Tensor, got <list>"),
    (lambda: nll_loss(X, torch.rand(3, 4)), TypeError, r"nll_loss\(\): argument 'target' expected an integer tensor"),
    (lambda: nll_loss(torch.tensor([[0.0, math.nan]]), torch.tensor([0])), ValueError,
     r"nll_loss\(\): argument 'log_probs' expected"),
    (lambda: binary_cross_entropy_with_logits(X, torch.full((3, 4), 1.5)), ValueError,
     r"argument 'target' expected probabilities in \[0, 1\]"),
    (lambda: binary_cross_entropy_with_logits(X, torch.rand(3)), ValueError,
     r"argument 'target' expected shape \(3, 4\)"),
    (lambda: binary_cross_entropy_with_logits(X, torch.rand(3, 4), pos_weight=torch.ones(5)), ValueError,
     r"argument 'pos_weight' expected a shape broadcastable"),
    (lambda: focal_loss(X, Y, gamma=-1.0), ValueError,
     r"focal_loss\(\): argument 'gamma' expected a number in \[0.0, inf\), got -1.0"),
    (lambda: focal_loss(X, Y, alpha=torch.ones(3)), ValueError,
     r"argument 'alpha' expected a number or a 1-D tensor of 4"),
    (lambda: focal_loss(X, torch.rand(3, 4)), TypeError,
     r"focal_loss\(\): argument 'target' expected an integer tensor"),
    (lambda: poly1_cross_entropy(X, Y, epsilon=-2.0), ValueError,
     r"poly1_cross_entropy\(\): argument 'epsilon' expected a number in \[-1.0, inf\), got -2.0"),
    (lambda: poly1_cross_entropy(X, torch.tensor([0, 9, 1])), ValueError,
     r"poly1_cross_entropy\(\): argument 'target' expected class indices in \[0, 3\]"),
]


@pytest.mark.parametrize("call,kind,message", ERRORS)
def test_error_messages(call, kind, message):
    with pytest.raises(kind, match=message):
        call()


def test_validate_false_skips_data_checks_only():
    out_of_range = torch.tensor([[0.0, 1.0, 2.0]]), torch.full((1, 3), 0.5)
    value = cross_entropy(*out_of_range, validate=False)  # rows not summing to 1: unchecked
    torch.testing.assert_close(value, F.cross_entropy(*out_of_range))  # torch does not check either
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(X, Y, label_smoothing=-0.1, validate=False)


def test_masked_rows_are_not_validated():
    target = torch.tensor([0, 99, 1])
    mask = torch.tensor([True, False, True])
    torch.testing.assert_close(cross_entropy(X, target, mask=mask), cross_entropy(X[[0, 2]], target[[0, 2]]))
