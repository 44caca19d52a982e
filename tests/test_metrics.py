"""logitlab.metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

from logitlab import metrics


def _random(n, c, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, c, generator=g, dtype=dtype), -1)
    target = torch.randint(0, c, (n,), generator=g)
    return probs, target


@pytest.mark.parametrize("n,c", [(1, 2), (7, 3), (127, 10)])
def test_nll_matches_sklearn_log_loss(n, c):
    probs, target = _random(n, c, seed=n)
    expected = log_loss(target.numpy(), probs.numpy(), labels=list(range(c)))
    assert float(metrics.nll(probs, target)) == pytest.approx(expected, rel=1e-12)


def test_accuracy_matches_numpy():
    probs, target = _random(127, 10)
    expected = np.mean(probs.numpy().argmax(1) == target.numpy())
    assert float(metrics.accuracy(probs, target)) == pytest.approx(expected)


@pytest.mark.parametrize("n", [1, 7, 127])
def test_brier_two_classes_is_twice_sklearn(n):
    probs, target = _random(n, 2, seed=n)
    expected = brier_score_loss(target.numpy(), probs[:, 1].numpy())
    assert float(metrics.brier_score(probs, target)) == pytest.approx(2 * expected, rel=1e-12)


def test_brier_multiclass_hand():
    probs = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([1, 2])
    # row 0: .04 + .25 + .09 = .38; row 1: 1 + 0 + 1 = 2
    assert float(metrics.brier_score(probs, target)) == pytest.approx((0.38 + 2) / 2)


def test_nll_sparse_smoothing_and_zero_fraction():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([0, 2, 2])
    assert math.isinf(float(metrics.nll(probs, target)))
    eps = 1e-3
    q = [(1 - eps) * 1 + eps / 3, eps / 3, (1 - eps) + eps / 3]
    expected = -sum(math.log(x) for x in q) / 3
    assert float(metrics.nll(probs, target, smoothing=eps)) == pytest.approx(expected, rel=1e-12)
    assert float(metrics.zero_probability_fraction(probs, target)) == pytest.approx(1 / 3)


def test_confidence_one_falls_in_last_bin():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d = metrics.reliability_diagram(probs, torch.tensor([0, 0]), n_bins=15)
    assert d.count.tolist() == [0] * 14 + [2]
    assert float(d.confidence[-1]) == 1.0 and float(d.accuracy[-1]) == 0.5
    assert float(metrics.expected_calibration_error(probs, torch.tensor([0, 0]))) == pytest.approx(0.5)


def test_bin_edges_are_left_closed():
    # 0.5 is an edge of 2 equal-width bins: it belongs to the upper bin [0.5, 1].
    probs = torch.tensor([[0.5, 0.5], [0.45, 0.55]], dtype=torch.float64)
    d = metrics.reliability_diagram(probs, torch.tensor([0, 1]), n_bins=2)
    assert d.count.tolist() == [0, 2]


def test_ece_hand_computed_width_and_mass():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]], dtype=torch.float64)
    target = torch.tensor([0, 1, 0, 0])
    # width, 2 bins: all confidences in [0.5, 1]: conf mean .7125, acc .75 -> .0375
    assert float(metrics.expected_calibration_error(probs, target, n_bins=2)) == pytest.approx(0.0375)
    # width, 10 bins: bins .5 (.55 ok), .6 (.6 ok), .8 (.8 wrong), .9 (.9 ok)
    expected = (0.45 + 0.4 + 0.8 + 0.1) / 4
    assert float(metrics.expected_calibration_error(probs, target, n_bins=10)) == pytest.approx(expected)
    assert float(metrics.maximum_calibration_error(probs, target, n_bins=10)) == pytest.approx(0.8)
    # mass, 2 bins: {.55, .6} both right: |1 - .575|; {.8, .9} one right: |.5 - .85|
    expected = 0.5 * 0.425 + 0.5 * 0.35
    assert float(metrics.expected_calibration_error(probs, target, n_bins=2, binning="mass")) == pytest.approx(expected)
    d = metrics.reliability_diagram(probs, target, n_bins=2, binning="mass")
    assert d.lower.tolist() == [0.55, 0.8] and d.upper.tolist() == [0.6, 0.9]
    assert d.count.tolist() == [2, 2]


def test_ece_of_perfectly_calibrated_bins_is_zero():
    probs = torch.tensor([[0.75, 0.25]] * 4, dtype=torch.float64)
    target = torch.tensor([0, 0, 0, 1])
    assert float(metrics.expected_calibration_error(probs, target)) == pytest.approx(0.0, abs=1e-15)


def test_half_precision_computed_in_float32():
    probs, target = _random(7, 3)
    half = probs.to(torch.bfloat16)
    out = metrics.brier_score(half, target, validate=False)
    assert out.dtype == torch.float32
    # the value is that of the rounded inputs computed in float32, not a bfloat16 accumulation
    assert float(out) == float(metrics.brier_score(half.float(), target, validate=False))


@pytest.mark.parametrize("call,message", [
    (lambda: metrics.accuracy(torch.ones(3), torch.zeros(3, dtype=torch.long)),
     "accuracy(): argument 'probs' expected a 2-D"),
    (lambda: metrics.nll(torch.ones(2, 2) / 2, torch.zeros(3, dtype=torch.long)),
     "nll(): argument 'target' expected a 1-D"),
    (lambda: metrics.nll(torch.ones(2, 2) / 2, torch.zeros(2)), "nll(): argument 'target' expected an integer"),
    (lambda: metrics.nll(torch.ones(2, 2), torch.zeros(2, dtype=torch.long)), "rows summing to 1"),
    (lambda: metrics.nll(torch.ones(2, 2) / 2, torch.tensor([0, 2])), "class indices in [0, 1]"),
    (lambda: metrics.nll(torch.ones(2, 2) / 2, torch.tensor([0, 1]), smoothing=1.0),
     "'smoothing' expected a number in [0.0, 1.0)"),
    (lambda: metrics.reliability_diagram(torch.ones(2, 2) / 2, torch.tensor([0, 1]), n_bins=0),
     "'n_bins' expected an int >= 1"),
    (lambda: metrics.expected_calibration_error(torch.ones(2, 2) / 2, torch.tensor([0, 1]), binning="quantile"),
     "'binning' expected one of 'width', 'mass'"),
    (lambda: metrics.brier_score(torch.ones(0, 2), torch.zeros(0, dtype=torch.long)), "at least one row"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert message in str(info.value)
