"""Bad input gets the project's message: 'fn(): argument 'name' expected ..., got ...' naming the
function the user called (regressions of the audit: registry errors without function or
argument, normalizer parameters reported as the normalizer's, raw AttributeErrors)."""

from __future__ import annotations

import re

import pytest
import torch

import logitlab as L

FORMAT = r"^{fn}\(\): argument '{arg}' expected "

CASES = [
    ("get_normalizer", "name", ValueError, lambda: L.registry.get_normalizer("nope")),
    ("get_loss", "name", ValueError, lambda: L.registry.get_loss("nope")),
    ("make_objective", "loss", ValueError, lambda: L.make_objective("softmax", "nope")),
    ("make_objective", "normalizer", ValueError, lambda: L.make_objective("sigmoid", "sparsemax_loss")),
    ("fenchel_young_loss", "alpha", ValueError,
     lambda: L.fenchel_young_loss(torch.randn(2, 3), torch.tensor([0, 1]), normalizer="entmax", alpha=-1.0)),
    ("divergence_loss", "positivity", ValueError,
     lambda: L.divergence_loss(torch.randn(2, 3), torch.full((2, 3), 1 / 3), normalizer="standard", positivity="x")),
    ("js_divergence", "tol", ValueError,
     lambda: L.js_divergence(torch.randn(2, 3), torch.full((2, 3), 1 / 3), normalizer="entmax", tol=-1.0)),
    ("linear_cross_entropy", "process_group", TypeError,
     lambda: L.linear_cross_entropy(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1]), process_group="world")),
    ("linear_cross_entropy", "accum_dtype", TypeError,
     lambda: L.linear_cross_entropy(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1]),
                                    accum_dtype=torch.int32)),
    ("linear_divergence_loss", "accum_dtype", TypeError,
     lambda: L.linear_divergence_loss(torch.randn(2, 3), torch.randn(4, 3), teacher_hidden=torch.randn(2, 3),
                                      teacher_weight=torch.randn(4, 3), accum_dtype=torch.int64)),
    ("linear_divergence_loss", "beta", ValueError,
     lambda: L.linear_divergence_loss(torch.randn(2, 3), torch.randn(4, 3), teacher_hidden=torch.randn(2, 3),
                                      teacher_weight=torch.randn(4, 3), divergence="js", beta=0.0)),
    ("linear_cross_entropy", "hidden", ValueError,
     lambda: L.linear_cross_entropy(torch.tensor([[float("nan"), 0.0]]), torch.randn(4, 2), torch.tensor([1]))),
    ("CrossEntropyLoss", "weight", TypeError, lambda: L.nn.CrossEntropyLoss(weight=[1.0, 2.0])),
    ("Poly1CrossEntropyLoss", "weight", TypeError, lambda: L.nn.Poly1CrossEntropyLoss(weight=[1.0, 2.0])),
    ("sparsemax_loss", "ignore_index", TypeError,
     lambda: L.sparsemax_loss(torch.randn(2, 3), torch.tensor([0, 1]), ignore_index=1.0)),
    ("poly1_cross_entropy", "logits", ValueError,
     lambda: L.poly1_cross_entropy(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))),
    ("poly1_cross_entropy", "impl", ValueError,
     lambda: L.poly1_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), impl="nope")),
    ("gini_regularizer", "probs", ValueError, lambda: L.gini_regularizer(torch.tensor([[0.5, -0.1, 0.6]]))),
    ("tsallis_regularizer", "probs", ValueError,
     lambda: L.tsallis_regularizer(torch.tensor([[float("nan"), 0.5, 0.5]]), alpha=1.3)),
    ("tsallis15_regularizer", "probs", ValueError, lambda: L.tsallis15_regularizer(torch.tensor([[-1.0, 2.0]]))),
    ("shannon_negentropy", "probs", ValueError, lambda: L.shannon_negentropy(torch.tensor([[-1.0, 2.0]]))),
]


@pytest.mark.parametrize("fn,arg,kind,call", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_message_names_the_function_and_argument(fn, arg, kind, call):
    with pytest.raises(kind) as info:
        call()
    assert re.match(FORMAT.format(fn=fn, arg=arg), str(info.value)), str(info.value)


def test_poly1_second_order_hint_is_an_option_it_has():
    x = torch.randn(3, 4, requires_grad=True)
    loss = L.poly1_cross_entropy(x, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="impl='composite'"):
        torch.autograd.grad(loss, x, create_graph=True)
    loss = L.poly1_cross_entropy(x, torch.tensor([0, 1, 2]), impl="composite")
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    grad.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
