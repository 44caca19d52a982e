"""Margin losses: multiclass hinge (Crammer–Singer, Weston–Watkins) and perceptron, against the
float64 references and torch.nn.functional.multi_margin_loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import logitlab
from logitlab import nn as lnn
from logitlab import reference

F64 = torch.float64


def _data(shape, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(*shape, generator=g, dtype=F64), torch.randint(0, classes, shape[:-1], generator=g)


@pytest.mark.parametrize("shape", [(1, 2), (7, 3), (127, 5), (4, 1)])
@pytest.mark.parametrize("kind", ["crammer_singer", "weston_watkins"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_hinge_matches_the_reference(shape, kind, reduction):
    logits, target = _data(shape, shape[-1])
    ours = logitlab.multiclass_hinge_loss(logits, target, margin=0.7, kind=kind, reduction=reduction)
    ref = reference.multiclass_hinge_loss(logits, target, margin=0.7, kind=kind, reduction=reduction)
    torch.testing.assert_close(ours, ref)


def test_every_dim_and_a_3d_tensor():
    logits = torch.randn(3, 5, 7, dtype=F64)
    target = torch.randint(0, 5, (3, 7))
    for fn, ref in ((logitlab.multiclass_hinge_loss, reference.multiclass_hinge_loss),
                    (logitlab.perceptron_loss, reference.perceptron_loss)):
        torch.testing.assert_close(fn(logits, target, dim=1, reduction="none"),
                                   ref(logits, target, dim=1, reduction="none"))
        torch.testing.assert_close(fn(logits, target, dim=1, reduction="none"),
                                   fn(logits.movedim(1, -1), target, reduction="none"))


@pytest.mark.parametrize("classes", [2, 3, 10])
@pytest.mark.parametrize("margin", [0.0, 1.0, 2.5])
def test_weston_watkins_is_c_times_torch_multi_margin_loss(classes, margin):
    logits, target = _data((33, classes), classes, seed=classes)
    ours = logitlab.multiclass_hinge_loss(logits, target, margin=margin, kind="weston_watkins", reduction="none")
    torch.testing.assert_close(ours, classes * F.multi_margin_loss(logits, target, margin=margin, reduction="none"))
    if classes == 2:  # one other class: the largest violation is the only one
        cs = logitlab.multiclass_hinge_loss(logits, target, margin=margin, reduction="none")
        torch.testing.assert_close(cs, ours)


def test_perceptron_is_the_zero_margin_hinge_and_the_zero_temperature_limit_of_cross_entropy():
    logits, target = _data((64, 6), 6, seed=3)
    perceptron = logitlab.perceptron_loss(logits, target, reduction="none")
    torch.testing.assert_close(perceptron, reference.perceptron_loss(logits, target, reduction="none"))
    torch.testing.assert_close(perceptron, logitlab.multiclass_hinge_loss(logits, target, margin=0.0, reduction="none"))
    for t, tol in ((1e-2, 2e-2), (1e-3, 2e-3)):  # T · H(e_y, softmax(z / T)) − perceptron ∈ [0, T log C]
        limit = t * logitlab.cross_entropy(logits / t, target, reduction="none")
        assert float((limit - perceptron).min()) >= -1e-12 and float((limit - perceptron).max()) <= tol


@pytest.mark.parametrize("fn", [logitlab.multiclass_hinge_loss, logitlab.perceptron_loss])
def test_gradcheck_and_the_gradient_of_a_max(fn):
    logits, target = _data((5, 4), 4, seed=7)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: fn(z, target, reduction="sum"), (logits,))
    z = torch.tensor([[0.0, 3.0, 1.0]], dtype=F64, requires_grad=True)
    fn(z, torch.tensor([0])).backward()
    torch.testing.assert_close(z.grad, torch.tensor([[-1.0, 1.0, 0.0]], dtype=F64))  # e_{k*} − e_y
    z = torch.tensor([[5.0, 1.0, 1.0]], dtype=F64, requires_grad=True)
    fn(z, torch.tensor([0])).backward()  # the margin holds: no gradient
    assert (z.grad == 0).all()


def test_excluded_rows_count_for_nothing_even_all_minus_inf():
    logits = torch.tensor([[1.0, 2.0, 0.0], [float("-inf")] * 3, [0.0, 0.0, 4.0]], dtype=F64, requires_grad=True)
    target = torch.tensor([0, -100, 2])
    for fn in (logitlab.multiclass_hinge_loss, logitlab.perceptron_loss):
        logits.grad = None
        value = fn(logits, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all()
        torch.testing.assert_close(value, reference.__dict__[fn.__name__](logits.detach().nan_to_num(neginf=0.0),
                                                                          target))
        masked = fn(logits.detach(), torch.tensor([0, 1, 2]), mask=torch.tensor([True, False, True]))
        torch.testing.assert_close(masked, value.detach())


def test_bad_input_is_named():
    logits, target = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"multiclass_hinge_loss\(\): argument 'margin' expected"):
        logitlab.multiclass_hinge_loss(logits, target, margin=-1.0)
    with pytest.raises(ValueError, match=r"multiclass_hinge_loss\(\): argument 'kind' expected one of "
                                         r"'crammer_singer', 'weston_watkins', got 'ww'"):
        logitlab.multiclass_hinge_loss(logits, target, kind="ww")
    with pytest.raises(ValueError, match=r"perceptron_loss\(\): argument 'logits' expected no NaN or \+inf"):
        logitlab.perceptron_loss(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"perceptron_loss\(\): argument .target. expected class indices in \[0, 2\]"):
        logitlab.perceptron_loss(logits, torch.tensor([0, 3]))


def test_modules_call_their_functions():
    logits, target = _data((6, 4), 4)
    torch.testing.assert_close(lnn.MulticlassHingeLoss(margin=0.5, kind="weston_watkins")(logits, target),
                               logitlab.multiclass_hinge_loss(logits, target, margin=0.5, kind="weston_watkins"))
    torch.testing.assert_close(lnn.PerceptronLoss(reduction="sum")(logits, target),
                               logitlab.perceptron_loss(logits, target, reduction="sum"))
    assert "kind='crammer_singer'" in repr(lnn.MulticlassHingeLoss())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_input_keeps_its_dtype_and_the_float64_answer(dtype):
    logits, target = _data((16, 5), 5)
    low = logits.to(dtype)
    ours = logitlab.multiclass_hinge_loss(low, target)
    assert ours.dtype == dtype
    truth = reference.multiclass_hinge_loss(low.to(F64), target)
    assert abs(float(ours) - float(truth)) <= 2 * torch.finfo(dtype).eps * max(1.0, float(truth))
