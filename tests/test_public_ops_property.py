"""Every public op, given inputs of the audit's classes (extreme magnitudes, tiny spreads, -inf
classes, NaN, bad targets, bad temperatures), with validate on and off: either an exception in
the project's format, or a finite result within the float64 reference's tolerance.

With validate=False a bad value may give any number, but never a crash and never an
out-of-bounds index (those are checked whatever validate says)."""

from __future__ import annotations

import math
import re

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import logitlab as L
from logitlab import reference as R

F64 = torch.float64
FORMAT = re.compile(r"^\w+\(\): argument '\w+' expected .+, got ")

SCALES = [1.0, 1e-6, 1e4, 1e30]
TEMPERATURES = [1.0, 3.0, 0.07, 1e-10, 0.0, -1.0, math.nan, math.inf]


@st.composite
def inputs(draw):
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 9))
    scale = draw(st.sampled_from(SCALES))
    base = draw(st.floats(-3, 3))
    values = draw(st.lists(st.floats(-1, 1), min_size=n * c, max_size=n * c))
    logits = (torch.tensor(values, dtype=torch.float32).reshape(n, c) * scale + base * scale)
    kind = draw(st.sampled_from(["clean", "clean", "neg_inf", "nan", "pos_inf"]))
    if kind != "clean":
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, c - 1))
        logits[i, j] = {"neg_inf": -math.inf, "nan": math.nan, "pos_inf": math.inf}[kind]
    target = torch.tensor(draw(st.lists(st.sampled_from(list(range(c)) + [-100, c, -1]), min_size=n, max_size=n)))
    temperature = draw(st.sampled_from(TEMPERATURES))
    return logits, target, temperature


def _bad(logits, target, temperature):
    c = logits.shape[1]
    bad_target = bool(((target < 0) & (target != -100)).any() or (target >= c).any())
    bad_temp = not (temperature > 0 and math.isfinite(temperature))
    return bad_target, bad_temp


def _check_error(error):
    assert isinstance(error, (ValueError, TypeError, IndexError)), repr(error)
    assert FORMAT.match(str(error)), str(error)


def _close(got, truth, scale):
    fits = torch.isfinite(truth) & (truth.abs() < torch.finfo(got.dtype).max)
    assert torch.isfinite(got[fits]).all(), (got, truth)
    beyond = torch.isfinite(truth) & ~fits  # a value beyond the dtype's range is inf there
    assert torch.equal(got[beyond].double(), truth[beyond].sign() * math.inf), (got, truth)
    tol = 1e-4 * (1.0 + truth.abs()) + 1e-4 * scale
    assert torch.all(((got.double() - truth).abs() <= tol)[fits]), (got, truth)


def _kept_rows_clean(logits, target):
    kept = target != -100
    rows = logits[kept]
    return bool(torch.isfinite(rows).all())


@settings(max_examples=120, deadline=None)
@given(inputs(), st.booleans())
def test_cross_entropy(data, validate):
    logits, target, temperature = data
    bad_target, bad_temp = _bad(logits, target, temperature)
    try:
        got = L.cross_entropy(logits, target, temperature=temperature, validate=validate, reduction="none")
    except Exception as error:  # noqa: BLE001 - classified below
        _check_error(error)
        clean = _kept_rows_clean(logits, target) and (target != -100).any() or not (target != -100).any()
        assert bad_target or bad_temp or not validate or not _kept_rows_clean(logits, target) or not clean or \
            bool((logits[target != -100] == -math.inf).all(1).any()), error
        return
    assert not bad_target and not bad_temp, "bad input accepted"
    if validate or _kept_rows_clean(logits, target):
        kept = target != -100
        if bool(torch.isfinite(logits[kept]).all()):
            truth = R.cross_entropy(logits.double(), target, temperature=temperature, reduction="none")
            _close(got, truth, 1.0)


@settings(max_examples=80, deadline=None)
@given(inputs(), st.booleans(), st.sampled_from(["softmax", "log_softmax", "sparsemax", "entmax15", "sigmoid",
                                                  "spherical_softmax", "taylor_softmax", "standard_softplus"]))
def test_normalizers(data, validate, name):
    logits, _, temperature = data
    fns = {"softmax": lambda x, **k: L.softmax(x, temperature=temperature, **k),
           "log_softmax": lambda x, **k: L.log_softmax(x, temperature=temperature, **k),
           "sparsemax": L.sparsemax, "entmax15": L.entmax15, "sigmoid": L.sigmoid,
           "spherical_softmax": L.spherical_softmax, "taylor_softmax": L.taylor_softmax,
           "standard_softplus": lambda x, **k: L.standard_normalize(x, positivity="softplus", **k)}
    uses_t = name in ("softmax", "log_softmax")
    try:
        got = fns[name](logits, validate=validate)
    except Exception as error:  # noqa: BLE001
        _check_error(error)
        assert (uses_t and _bad(logits, torch.zeros(1, dtype=torch.long), temperature)[1]) or validate, error
        return
    if uses_t:
        assert not _bad(logits, torch.zeros(1, dtype=torch.long), temperature)[1], "bad temperature accepted"
    if not bool(torch.isfinite(logits).all()):
        if validate:
            assert not (torch.isnan(logits).any() or (logits == math.inf).any()), "NaN/+inf accepted"
            probs = got.exp() if name == "log_softmax" else got
            assert not torch.isnan(probs).any()
            assert torch.all(probs[logits == -math.inf] == 0)
        return
    x = logits.double()
    truth = {"softmax": lambda: R.softmax(x, temperature=temperature),
             "log_softmax": lambda: R.log_softmax(x, temperature=temperature),
             "sparsemax": lambda: R.sparsemax(x), "entmax15": lambda: R.entmax15(x), "sigmoid": lambda: R.sigmoid(x),
             "spherical_softmax": lambda: R.spherical_softmax(x), "taylor_softmax": lambda: R.taylor_softmax(x),
             "standard_softplus": lambda: R.standard_normalize(x, positivity="softplus")}[name]()
    if name == "log_softmax":
        got, truth = got.exp(), truth.exp()
    _close(got, truth, 0.0)


@settings(max_examples=60, deadline=None)
@given(inputs(), st.booleans(), st.sampled_from(["sparsemax_loss", "fenchel_young_loss", "focal_loss",
                                                  "linear_cross_entropy"]))
def test_index_losses(data, validate, name):
    logits, target, _ = data
    bad_target, _ = _bad(logits, target, 1.0)
    n, c = logits.shape
    calls = {"sparsemax_loss": lambda: L.sparsemax_loss(logits, target, validate=validate, reduction="none"),
             "fenchel_young_loss": lambda: L.fenchel_young_loss(logits, target, validate=validate, reduction="none"),
             "focal_loss": lambda: L.focal_loss(logits, target, validate=validate, reduction="none"),
             "linear_cross_entropy": lambda: L.linear_cross_entropy(logits, torch.eye(c)[: max(c, 1)], target,
                                                                    validate=validate, reduction="none")}
    try:
        got = calls[name]()
    except Exception as error:  # noqa: BLE001
        _check_error(error)
        assert bad_target or validate, error
        return
    assert not bad_target, "an out-of-range class index was accepted"
    kept = target != -100
    if bool(torch.isfinite(logits[kept]).all()):
        x = logits.double()
        if name == "focal_loss":
            truth = R.focal_loss(x, target, reduction="none")
        elif name == "linear_cross_entropy":
            truth = R.cross_entropy(x, target, reduction="none")
        else:
            kind = "gini" if name == "sparsemax_loss" else "shannon"
            safe = torch.where(kept, target, 0)
            onehot = torch.nn.functional.one_hot(safe, c).to(F64)
            model = R.sparsemax(x) if name == "sparsemax_loss" else R.softmax(x)
            truth = torch.where(kept, R.fenchel_young_loss(x, onehot, model, kind), 0.0)
        _close(got, truth, 1e-6 * float(logits[kept].abs().max()) if kept.any() else 0.0)
