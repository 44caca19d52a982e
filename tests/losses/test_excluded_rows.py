"""A row that a loss excludes (ignore_index, mask) may hold anything: all -inf padding, NaN.

It is neither checked nor computed: the loss equals the loss of the kept rows alone, and the
gradient is finite, 0 on the excluded rows."""

from __future__ import annotations

import math

import pytest
import torch

import logitlab

INDEX_LOSSES = {
    "cross_entropy": logitlab.cross_entropy,
    "focal_loss": logitlab.focal_loss,
    "poly1_cross_entropy": logitlab.poly1_cross_entropy,
    "fenchel_young_loss": logitlab.fenchel_young_loss,
    "sparsemax_loss": logitlab.sparsemax_loss,
    "entmax15_loss": logitlab.entmax15_loss,
    "entmax_loss": lambda x, t, **kw: logitlab.entmax_loss(x, t, alpha=1.3, **kw),
}
PROB_LOSSES = {
    "cross_entropy": logitlab.cross_entropy,
    "fenchel_young_loss": logitlab.fenchel_young_loss,
    "sparsemax_loss": logitlab.sparsemax_loss,
    "divergence_loss": logitlab.divergence_loss,
    "js": lambda x, t, **kw: logitlab.divergence_loss(x, t, divergence="js", **kw),
}


@pytest.mark.parametrize("how", ["ignore_index", "mask"])
@pytest.mark.parametrize("fill", [-math.inf, math.nan])
@pytest.mark.parametrize("name", sorted(INDEX_LOSSES))
def test_excluded_index_rows_may_hold_anything(name, fill, how):
    loss_fn = INDEX_LOSSES[name]
    torch.manual_seed(0)
    clean = torch.randn(4, 5, dtype=torch.float64)
    target = torch.tensor([0, 3, 1, 4])
    dirty = clean.clone()
    dirty[1] = fill
    kept = torch.tensor([True, False, True, True])
    if how == "mask":
        kw = {"mask": kept}
    else:
        target = torch.where(kept, target, torch.tensor(-100))
        kw = {}
    if how == "mask" and name == "poly1_cross_entropy" or how == "mask" and name == "focal_loss":
        pass  # both take a mask
    x = dirty.clone().requires_grad_()
    loss = loss_fn(x, target, **kw)
    loss.backward()
    expected = loss_fn(clean[kept], torch.tensor([0, 3, 1, 4])[kept])
    assert torch.allclose(loss, expected)
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[1], torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(PROB_LOSSES))
def test_masked_probability_rows_may_hold_anything(name):
    loss_fn = PROB_LOSSES[name]
    torch.manual_seed(1)
    clean = torch.randn(3, 4, dtype=torch.float64)
    probs = torch.softmax(torch.randn(3, 4, dtype=torch.float64), -1)
    kept = torch.tensor([True, False, True])
    x, p = clean.clone(), probs.clone()
    x[1], p[1] = -math.inf, math.nan
    x.requires_grad_()
    loss = loss_fn(x, p, mask=kept)
    loss.backward()
    assert torch.allclose(loss, loss_fn(clean[kept], probs[kept]))
    assert torch.isfinite(x.grad).all() and not x.grad[1].any()


def test_a_kept_all_inf_row_still_raises():
    x = torch.randn(2, 3)
    x[1] = -math.inf
    for name, loss_fn in INDEX_LOSSES.items():
        with pytest.raises(ValueError, match=r"\(\): argument 'logits'"):
            loss_fn(x, torch.tensor([0, 1]))
