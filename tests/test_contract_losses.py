"""The contract of every (normalizer, loss) pair the registry marks valid."""

from __future__ import annotations

import math

import pytest
import torch

from logitlab import registry

F64 = torch.float64
PAIRS = registry.valid_pairs()
INDEX_PAIRS = registry.valid_pairs(index_targets=True)
# Parameters a normalizer needs to be defined on arbitrary real logits (the study passes these).
NORMALIZER_PARAMS = {name: dict(spec.real_params) for name, spec in registry.NORMALIZERS.items() if spec.real_params}
# Losses of the divergence family and the Fenchel–Young losses: D(target ‖ model), 0 at equality
# (the registry's ``divergence`` flag; a loss row without it is not checked at equality).
DIVERGENCES = {name for name, spec in registry.LOSSES.items() if spec.divergence}
DIV_PAIRS = [pair for pair in PAIRS if pair[1] in DIVERGENCES]


def _call(normalizer, loss, logits, target, **kw):
    spec = registry.LOSSES[loss]
    params = {**spec.params, **NORMALIZER_PARAMS.get(normalizer, {}), **kw}
    if spec.takes_normalizer:
        params = {**registry.NORMALIZERS[normalizer].params, **params, "normalizer": normalizer}
    return registry.get_loss(loss)(logits, target, **params)


def _model(normalizer, logits):
    params = NORMALIZER_PARAMS.get(normalizer, {})
    return registry.get_normalizer(normalizer)(logits, **params)


@pytest.mark.parametrize("normalizer,loss", INDEX_PAIRS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
def test_make_objective_is_finite_non_negative_and_backpropagates(normalizer, loss, dtype):
    objective = registry.make_objective(normalizer, loss, **NORMALIZER_PARAMS.get(normalizer, {}))
    logits = (2 * torch.randn(5, 6, dtype=F64)).to(dtype).requires_grad_(True)
    target = torch.tensor([0, 1, 2, 3, 4, 5])[:5]
    value = objective(logits, target)
    assert value.shape == () and value.dtype == dtype
    assert math.isfinite(float(value.detach())) and float(value.detach()) >= 0
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # a lower loss is reachable: one gradient step does not make a smooth objective worse
    with torch.no_grad():
        stepped = objective(logits - 1e-3 * logits.grad, target)
    assert float(stepped) <= float(value.detach()) + 1e-6


@pytest.mark.parametrize("normalizer,loss", DIV_PAIRS, ids=lambda v: str(v))
def test_probability_targets_finite_non_negative_zero_at_equality(normalizer, loss):
    logits = 2 * torch.randn(5, 6, dtype=F64)
    target = torch.softmax(torch.randn(5, 6, dtype=F64), -1)
    values = _call(normalizer, loss, logits, target, reduction="none")
    assert values.shape == (5,)
    assert torch.isfinite(values).all() and (values >= 0).all()
    own = _model(normalizer, logits)
    at_equality = _call(normalizer, loss, logits, own, reduction="none")
    assert at_equality.abs().max() < 1e-8


@pytest.mark.parametrize("normalizer,loss", DIV_PAIRS, ids=lambda v: str(v))
def test_reduction_mask_and_dim(normalizer, loss):
    logits = 2 * torch.randn(3, 6, 4, dtype=F64)
    target = torch.softmax(torch.randn(3, 6, 4, dtype=F64), 1)
    rows = _call(normalizer, loss, logits, target, dim=1, reduction="none")
    assert rows.shape == (3, 4)
    last = _call(normalizer, loss, logits.movedim(1, -1), target.movedim(1, -1), reduction="none")
    torch.testing.assert_close(rows, last)
    torch.testing.assert_close(_call(normalizer, loss, logits, target, dim=1, reduction="sum"), rows.sum())
    torch.testing.assert_close(_call(normalizer, loss, logits, target, dim=1, reduction="mean"), rows.mean())
    mask = torch.tensor([[True, False, True, True], [False] * 4, [True, True, False, True]])
    torch.testing.assert_close(_call(normalizer, loss, logits, target, dim=1, mask=mask), rows[mask].mean())
    z = logits.clone().requires_grad_(True)
    empty = _call(normalizer, loss, z, target, dim=1, mask=torch.zeros(3, 4, dtype=torch.bool))
    empty.backward()
    assert empty == 0 and (z.grad == 0).all()


@pytest.mark.parametrize("normalizer,loss", DIV_PAIRS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dtype_is_preserved(normalizer, loss, dtype):
    logits = torch.randn(4, 5).to(dtype)
    target = torch.softmax(torch.randn(4, 5), -1).to(dtype)
    value = _call(normalizer, loss, logits, target, reduction="none", validate=False)
    assert value.dtype == dtype and torch.isfinite(value).all()
    # half precision is computed in float32 inside: the same numbers as float32 on the rounded inputs
    expected = _call(normalizer, loss, logits.float(), target.float(), reduction="none", validate=False)
    assert torch.equal(value, expected.to(dtype))


@pytest.mark.parametrize("normalizer,loss", [p for p in PAIRS if p not in INDEX_PAIRS], ids=lambda v: str(v))
def test_make_objective_runs_for_the_pairs_that_are_not_index_objectives(normalizer, loss):
    # valid pairs whose loss is not a sensible index-target objective still build and evaluate:
    # reverse KL of a dense model against a one-hot target is +inf by definition, never NaN
    objective = registry.make_objective(normalizer, loss, **NORMALIZER_PARAMS.get(normalizer, {}))
    value = objective(torch.randn(4, 5, dtype=F64), torch.tensor([0, 1, 2, 3]))
    assert value.shape == () and not torch.isnan(value) and float(value) >= 0
    if loss == "reverse_kl" and not registry.NORMALIZERS[normalizer].sparse:
        assert value == math.inf
