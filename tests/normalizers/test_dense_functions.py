"""The custom autograd Functions of the dense normalizers: gradcheck and gradgradcheck in float64.

``_ratio._Ratio`` (standard normalization, spherical and Taylor softmax) and
``softmax._NegEntropy`` (the Shannon negentropy) compute their backward in place when no graph
is built, and with differentiable ops under ``create_graph``; both paths are checked here, with
and without excluded (``-inf``) classes, along every dim of a (3, 5, 7) tensor.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from logitlab.normalizers import shannon_negentropy, spherical_softmax, standard_normalize, taylor_softmax

F64 = torch.float64
RATIO_CASES = {
    "standard": (lambda x, d: standard_normalize(x, dim=d), lambda x: x.abs() + 0.1),
    "standard_softplus": (lambda x, d: standard_normalize(x, dim=d, positivity="softplus"), None),
    "standard_relu": (lambda x, d: standard_normalize(x, dim=d, positivity="relu"), lambda x: x + 3.0),
    "standard_abs": (lambda x, d: standard_normalize(x, dim=d, positivity="abs"), lambda x: x.abs() + 0.1),
    "spherical": (lambda x, d: spherical_softmax(x, dim=d), None),
    "taylor2": (lambda x, d: taylor_softmax(x, dim=d), None),
    "taylor4": (lambda x, d: taylor_softmax(x, dim=d, order=4), None),
}


def _input(name: str, excluded: bool) -> torch.Tensor:
    torch.manual_seed(3)
    x = torch.randn(3, 5, 7, dtype=F64)
    transform = RATIO_CASES[name][1]
    x = transform(x) if transform else x
    if excluded:
        x[0, 1, 2] = x[2, 4, 6] = -math.inf
        x[1, 2, :] = -math.inf  # a whole row along dim 2 excluded
    return x


@pytest.mark.parametrize("excluded", [False, True], ids=["dense", "excluded"])
@pytest.mark.parametrize("name", RATIO_CASES)
def test_ratio_function_gradcheck_and_gradgradcheck(name, excluded):
    fn = RATIO_CASES[name][0]
    x = _input(name, excluded)
    for dim in range(3):
        if excluded and dim != 2:
            continue  # gradcheck perturbs entries; -inf must stay -inf, so only the mask's own layout
        leaf = x.clone().requires_grad_()
        assert gradcheck(lambda t: fn(t, dim), (leaf,))
    small = x[1:3, :3].clone().requires_grad_()  # (2, 3, 7), with an excluded row: O(n²) check kept small
    assert gradgradcheck(lambda t: fn(t, 2), (small,))


@pytest.mark.parametrize("name", RATIO_CASES)
def test_ratio_backward_in_place_matches_differentiable_backward(name):
    fn = RATIO_CASES[name][0]
    x = _input(name, True).requires_grad_()
    weight = torch.randn(3, 5, 7, dtype=F64)
    (fast,) = torch.autograd.grad((fn(x, 2) * weight).sum(), x)
    (graph,) = torch.autograd.grad((fn(x, 2) * weight).sum(), x, create_graph=True)
    torch.testing.assert_close(fast, graph.detach(), rtol=1e-12, atol=1e-14)
    assert bool((fast[x.detach() == -math.inf] == 0).all())


def test_negentropy_gradcheck_gradgradcheck_and_zero_entries():
    torch.manual_seed(4)
    for dim in range(3):
        p = torch.softmax(torch.randn(3, 5, 7, dtype=F64), dim).requires_grad_()
        assert gradcheck(lambda q: shannon_negentropy(q, dim=dim), (p,))
        assert gradgradcheck(lambda q: shannon_negentropy(q, dim=dim), (p[:2, :3].detach().requires_grad_(),))
    p = torch.tensor([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
    weight = torch.tensor([2.0, -3.0], dtype=F64)
    (fast,) = torch.autograd.grad((shannon_negentropy(p) * weight).sum(), p)
    (graph,) = torch.autograd.grad((shannon_negentropy(p) * weight).sum(), p, create_graph=True)
    expected = torch.tensor([[0.0, 2 * (math.log(0.25) + 1), 2 * (math.log(0.75) + 1)], [-3.0, 0.0, 0.0]],
                            dtype=F64)
    torch.testing.assert_close(fast, expected)
    torch.testing.assert_close(graph.detach(), expected)
    (second,) = torch.autograd.grad(graph.sum(), p)  # d²Ω/dp² = 1/p, and 0 where p = 0
    torch.testing.assert_close(second, torch.tensor([[0.0, 2 / 0.25, 2 / 0.75], [-3.0, 0.0, 0.0]], dtype=F64))
