"""The dense normalizers against their float64 references, at low precision, at extremes, on bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import ERROR_SLACK, LOW_PRECISION, ODD_SHAPES, dims_of
from logitlab import reference as ref
from logitlab.normalizers import (
    log_sigmoid,
    log_softmax,
    shannon_negentropy,
    sigmoid,
    softmax,
    spherical_softmax,
    standard_normalize,
    taylor_softmax,
)

F64 = torch.float64
INF = math.inf


def _positive_rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift every row whose maximum is <= 0 so that its maximum is 1 (relu then has mass)."""
    top = x.amax(dim, keepdim=True)
    return x + torch.where(top <= 0, 1 - top, torch.zeros_like(top))


# name -> (ours(x, dim), reference(x, dim), input transform(x, dim))
CASES = {
    "softmax": (lambda x, d: softmax(x, dim=d), lambda x, d: ref.softmax(x, d), None),
    "softmax_T0.3": (lambda x, d: softmax(x, dim=d, temperature=0.3), lambda x, d: ref.softmax(x, d, 0.3), None),
    "log_softmax": (lambda x, d: log_softmax(x, dim=d), lambda x, d: ref.log_softmax(x, d), None),
    "log_softmax_T2.5": (lambda x, d: log_softmax(x, dim=d, temperature=2.5),
                         lambda x, d: ref.log_softmax(x, d, 2.5), None),
    "sigmoid": (lambda x, d: sigmoid(x, dim=d), lambda x, d: ref.sigmoid(x), None),
    "log_sigmoid": (lambda x, d: log_sigmoid(x, dim=d), lambda x, d: ref.log_sigmoid(x), None),
    "standard": (lambda x, d: standard_normalize(x, dim=d), lambda x, d: ref.standard_normalize(x, d),
                 lambda x, d: x.abs() + 0.05),
    "standard_softplus": (lambda x, d: standard_normalize(x, dim=d, positivity="softplus"),
                          lambda x, d: ref.standard_normalize(x, d, "softplus"), None),
    "standard_relu": (lambda x, d: standard_normalize(x, dim=d, positivity="relu"),
                      lambda x, d: ref.standard_normalize(x, d, "relu"), _positive_rows),
    "standard_abs": (lambda x, d: standard_normalize(x, dim=d, positivity="abs"),
                     lambda x, d: ref.standard_normalize(x, d, "abs"), lambda x, d: _positive_rows(x.abs(), d)),
    "spherical": (lambda x, d: spherical_softmax(x, dim=d), lambda x, d: ref.spherical_softmax(x, d), None),
    "spherical_eps0.5": (lambda x, d: spherical_softmax(x, dim=d, eps=0.5),
                         lambda x, d: ref.spherical_softmax(x, d, 0.5), None),
    "taylor2": (lambda x, d: taylor_softmax(x, dim=d), lambda x, d: ref.taylor_softmax(x, d, 2), None),
    "taylor4": (lambda x, d: taylor_softmax(x, dim=d, order=4), lambda x, d: ref.taylor_softmax(x, d, 4), None),
    "taylor6": (lambda x, d: taylor_softmax(x, dim=d, order=6), lambda x, d: ref.taylor_softmax(x, d, 6), None),
}
PROB_CASES = [name for name in CASES if not name.startswith("log_")]


def _input(shape, dim, name, *, scale=3.0, dtype=F64):
    x = torch.randn(shape, dtype=F64) * scale
    transform = CASES[name][2]
    return (transform(x, dim) if transform else x).to(dtype)


def _close(ours, truth, atol):
    both_inf = (ours == truth) & torch.isinf(truth)
    diff = torch.where(both_inf, torch.zeros_like(truth), (ours.to(F64) - truth).abs())
    return float(diff.max()) <= atol if diff.numel() else True


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_matches_reference_on_odd_shapes_and_every_dim(name, shape):
    ours, reference, _ = CASES[name]
    for dim in dims_of(shape):
        x = _input(shape, dim, name)
        out = ours(x, dim)
        assert out.shape == x.shape and out.dtype == F64
        assert _close(out, reference(x, dim), 1e-12), (name, shape, dim)


@pytest.mark.parametrize("name", CASES)
def test_excluded_classes_match_reference_and_get_no_gradient(name):
    ours, reference, _ = CASES[name]
    shape = (3, 5, 7)
    for dim in dims_of(shape):
        x = _input(shape, dim, name)
        mask = torch.rand(shape) < 0.3
        mask.select(dim, 0).fill_(False)  # keep rows non-empty here; empty rows are tested below
        x.select(dim, 0).abs_().add_(0.1)  # and give them a positive score (relu needs one)
        x = x.masked_fill(mask, -INF).requires_grad_()
        out = ours(x, dim)
        assert _close(out.detach(), reference(x.detach(), dim), 1e-12), (name, dim)
        excluded_value = -INF if name.startswith("log_") else 0.0
        assert bool((out[mask] == excluded_value).all())
        finite_out = torch.where(torch.isinf(out), torch.zeros_like(out), out)
        (grad,) = torch.autograd.grad((finite_out * torch.randn(shape, dtype=F64)).sum(), x)
        assert bool(torch.isfinite(grad).all()) and bool((grad[mask] == 0).all()), (name, dim)


@pytest.mark.parametrize("name", CASES)
def test_all_excluded_row_is_zero_with_zero_gradient(name):
    ours = CASES[name][0]
    x = torch.randn(4, 6, dtype=F64).abs() + 0.1
    x[1] = -INF
    x[3, :5] = -INF
    x.requires_grad_()
    out = ours(x, -1)
    expected = -INF if name.startswith("log_") else 0.0
    assert bool((out[1] == expected).all())
    if name in PROB_CASES and name not in ("sigmoid",):
        assert float(out[3, 5].detach()) == pytest.approx(1.0)
    weight = torch.randn(4, 6, dtype=F64)
    (grad,) = torch.autograd.grad(torch.where(torch.isinf(out), 0.0, out * weight).sum(), x)
    assert bool(torch.isfinite(grad).all()) and bool((grad[1] == 0).all())


@pytest.mark.parametrize("name", CASES)
def test_gradient_matches_reference_and_gradcheck(name):
    ours, reference, _ = CASES[name]
    x = _input((3, 7), 1, name).requires_grad_()
    weight = torch.randn(3, 7, dtype=F64)
    (g_ours,) = torch.autograd.grad((ours(x, 1) * weight).sum(), x)
    (g_ref,) = torch.autograd.grad((reference(x, 1) * weight).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: ours(t, 0), (x.detach()[:2].T.contiguous().requires_grad_(),))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), ()], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_empty_and_scalar_inputs(name, shape):
    x = torch.ones(shape, dtype=F64)
    out = CASES[name][0](x, -1)
    assert out.shape == x.shape
    if shape == () and name in PROB_CASES and name != "sigmoid":
        assert float(out) == 1.0


# --- low precision: no worse than the textbook formula evaluated in that dtype ---

def _naive(name, x, d):
    """The textbook formula at the dtype of ``x`` (no upcast)."""
    if name.startswith("softmax") or name.startswith("log_softmax"):
        t = 0.3 if name == "softmax_T0.3" else 2.5 if name == "log_softmax_T2.5" else 1.0
        z = x / t
        shifted = z - z.amax(d, keepdim=True)
        if name.startswith("log_"):
            return shifted - torch.log(torch.exp(shifted).sum(d, keepdim=True))
        e = torch.exp(shifted)
        return e / e.sum(d, keepdim=True)
    if name == "sigmoid":
        return 1 / (1 + torch.exp(-x))
    if name == "log_sigmoid":
        return -torch.log1p(torch.exp(-x))
    if name.startswith("standard"):
        f = {"standard": lambda z: z, "standard_softplus": lambda z: torch.log1p(torch.exp(z)),
             "standard_relu": torch.relu, "standard_abs": torch.abs}[name]
        s = f(x)
        return s / s.sum(d, keepdim=True)
    if name.startswith("spherical"):
        eps = 0.5 if name == "spherical_eps0.5" else 1e-6
        s = x * x + eps
        return s / s.sum(d, keepdim=True)
    order = int(name[len("taylor"):])
    s = sum(x ** j / math.factorial(j) for j in range(order + 1))
    return s / s.sum(d, keepdim=True)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_low_precision_error_no_worse_than_naive(name, dtype):
    reference = CASES[name][1]
    for dim in (0, 1):
        x = _input((33, 65), dim, name, scale=2.0, dtype=dtype)  # exactly representable in dtype
        truth = reference(x.to(F64), dim)
        ours = CASES[name][0](x, dim)
        assert ours.dtype == dtype
        naive = _naive(name, x, dim)
        finite = torch.isfinite(truth)
        err_ours = float((ours.to(F64) - truth)[finite].abs().max())
        err_naive = float((naive.to(F64) - truth)[finite].abs().nan_to_num(INF).max())
        assert err_ours <= err_naive + ERROR_SLACK[dtype], (name, dtype, dim, err_ours, err_naive)


# --- extremes: magnitudes up to 1e4, spreads down to 1e-6 ---

@st.composite
def extreme_rows(draw):
    n = draw(st.integers(1, 9))
    center = draw(st.floats(-1e4, 1e4))
    spread = 10.0 ** draw(st.floats(-6, 4))
    unit = draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n))
    return torch.tensor([center + spread * u for u in unit], dtype=F64)


@given(row=extreme_rows(), use_float32=st.booleans())
def test_extreme_logits_stay_finite_and_match_reference(row, use_float32):
    x = row.to(torch.float32) if use_float32 else row
    for name, (ours, reference, transform) in CASES.items():
        xi = transform(x, 0) if transform else x
        out = ours(xi, 0)
        truth = reference(xi.to(F64), 0)
        atol = 2e-5 if use_float32 else 1e-10
        if use_float32 and "_T" in name:  # z / T is rounded before the shift: ulp(max|z| / T) in every logit
            atol += 2 * 6e-8 * float(xi.abs().max()) / 0.3
        if name.startswith("log_"):
            assert not bool(torch.isnan(out).any()), name
            torch.testing.assert_close(out.exp().to(F64), truth.exp(), atol=atol, rtol=0)
            continue
        assert bool(torch.isfinite(out).all()) and bool((out >= 0).all()), name
        if name != "sigmoid":
            assert float(out.to(F64).sum()) == pytest.approx(1.0, abs=10 * atol), name
        torch.testing.assert_close(out.to(F64), truth, atol=atol, rtol=0, msg=name)


@given(row=extreme_rows())
def test_extreme_logits_gradients_are_finite(row):
    for name, (ours, _, transform) in CASES.items():
        x32 = row.to(torch.float32)
        x = (transform(x32, 0) if transform else x32).requires_grad_()
        out = ours(x, 0)
        (grad,) = torch.autograd.grad(torch.where(torch.isinf(out), 0.0, out).sum(), x)
        assert bool(torch.isfinite(grad).all()), name


def test_standard_softplus_handles_rows_where_every_softplus_underflows():
    x = torch.tensor([[-1e4, -1e4 + 1.0, -INF], [-200.0, -201.0, -202.0]])
    out = standard_normalize(x, positivity="softplus")
    torch.testing.assert_close(out, softmax(x))  # softplus(z) = exp(z) to working precision there
    assert float(standard_normalize(torch.tensor([-40.0, -41.0], dtype=F64), positivity="softplus")[0]) \
        == pytest.approx(float(ref.standard_normalize(torch.tensor([-40.0, -41.0]), 0, "softplus")[0]), rel=1e-12)


def test_large_scores_do_not_overflow_polynomials():
    x = torch.tensor([1e30, -1e30, 1.0], dtype=torch.float32)
    for out in (spherical_softmax(x), taylor_softmax(x), taylor_softmax(x, order=8)):
        assert bool(torch.isfinite(out).all())
        torch.testing.assert_close(out, torch.tensor([0.5, 0.5, 0.0]))
    big = torch.tensor([3e38, 1.0], dtype=torch.bfloat16)
    assert bool(torch.isfinite(spherical_softmax(big)).all())


# --- temperature ---

def test_temperature_divides_the_logits():
    x = torch.randn(4, 9, dtype=F64)
    for t in (0.1, 0.5, 3.0, 1e3):
        torch.testing.assert_close(softmax(x, temperature=t), torch.softmax(x / t, -1))
        torch.testing.assert_close(log_softmax(x, temperature=t), torch.log_softmax(x / t, -1))
    torch.testing.assert_close(softmax(x, temperature=1.0), torch.softmax(x, -1), rtol=0, atol=0)
    hard = softmax(torch.tensor([1.0, 2.0, 0.5]), temperature=1e-4)
    assert hard.tolist() == [0.0, 1.0, 0.0]
    flat = softmax(torch.tensor([1.0, 2.0, 0.5], dtype=F64), temperature=1e8)
    torch.testing.assert_close(flat, torch.full((3,), 1 / 3, dtype=F64))


def test_temperature_tensor_gets_a_gradient_even_with_excluded_classes():
    x = torch.tensor([[1.0, -INF, 2.0], [-INF, -INF, -INF]], dtype=F64)
    for fn in (softmax, log_softmax):
        t = torch.tensor(2.0, dtype=F64, requires_grad=True)
        out = fn(x, temperature=t)
        loss = torch.where(torch.isinf(out), 0.0, out * torch.tensor([1.0, 0.0, 0.0], dtype=F64)).sum()
        (grad,) = torch.autograd.grad(loss, t)
        t2 = torch.tensor(2.0, dtype=F64, requires_grad=True)
        row = fn(torch.tensor([1.0, 2.0], dtype=F64), temperature=t2)
        (expected,) = torch.autograd.grad(row[0], t2)
        torch.testing.assert_close(grad, expected)


# --- special cases ---

def test_sigmoid_is_the_two_class_softmax_of_zero_and_the_score():
    z = torch.linspace(-30, 30, 61, dtype=F64)
    pairs = torch.stack([torch.zeros_like(z), z], dim=-1)
    torch.testing.assert_close(sigmoid(z), softmax(pairs)[:, 1], rtol=0, atol=1e-15)
    torch.testing.assert_close(log_sigmoid(z), log_softmax(pairs)[:, 1], rtol=1e-13, atol=1e-15)


def test_shannon_negentropy_matches_reference_and_its_conjugate_is_logsumexp():
    for shape in ODD_SHAPES:
        for dim in dims_of(shape):
            z = torch.randn(shape, dtype=F64)
            p = softmax(z.masked_fill(torch.rand(shape) < 0.2, -INF), dim=dim)
            torch.testing.assert_close(shannon_negentropy(p, dim=dim), ref.shannon_negentropy(p, dim))
    z = torch.randn(5, 7, dtype=F64)
    p = softmax(z)
    # Fenchel–Young equality: <p, z> − Ω(p) = logsumexp(z) at p = softmax(z).
    torch.testing.assert_close((p * z).sum(-1) - shannon_negentropy(p), torch.logsumexp(z, -1))
    one_hot = torch.eye(4, dtype=F64)
    assert shannon_negentropy(one_hot).tolist() == [0.0] * 4
    p = torch.tensor([0.0, 0.25, 0.75], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(shannon_negentropy(p), p)
    torch.testing.assert_close(grad, torch.tensor([0.0, math.log(0.25) + 1, math.log(0.75) + 1], dtype=F64))
    assert shannon_negentropy(torch.full((2, 4), 0.25, dtype=torch.float16)).dtype == torch.float16


def test_standard_normalize_is_scale_invariant_and_taylor_is_positive_for_even_orders():
    x = torch.rand(3, 8, dtype=F64)
    torch.testing.assert_close(standard_normalize(7.5 * x), standard_normalize(x))
    z = torch.linspace(-20, 20, 4001, dtype=F64)
    for order in (2, 4, 6, 8):
        t = sum(z ** j / math.factorial(j) for j in range(order + 1))
        assert float(t.min()) > 0
    torch.testing.assert_close(spherical_softmax(-x), spherical_softmax(x))


# --- errors ---

ALL_FUNCTIONS = [softmax, log_softmax, sigmoid, log_sigmoid, standard_normalize, spherical_softmax, taylor_softmax]


@pytest.mark.parametrize("fn", ALL_FUNCTIONS, ids=lambda f: f.__name__)
def test_common_errors_name_function_and_argument(fn):
    name = fn.__name__
    with pytest.raises(TypeError,
                       match=rf"{name}\(\): argument 'logits' expected a floating-point tensor, "
                             r"got <dtype torch.int64>"):
        fn(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=rf"{name}\(\): argument 'logits' expected a torch.Tensor, got <list>"):
        fn([1.0, 2.0])
    with pytest.raises(IndexError,
                       match=rf"{name}\(\): argument 'dim' expected an int in \[-2, 1\] for a 2-D tensor, got 2"):
        fn(torch.ones(2, 3), dim=2)
    with pytest.raises(IndexError, match=r"got -3"):
        fn(torch.ones(2, 3), dim=-3)
    with pytest.raises(TypeError, match=rf"{name}\(\): argument 'dim' expected an int, got <float>"):
        fn(torch.ones(2, 3), dim=1.0)
    with pytest.raises(ValueError,
                       match=rf"{name}\(\): argument 'logits' expected values without NaN or \+inf .*1 bad entries, "
                             rf"first at index \(1, 0\)"):
        fn(torch.tensor([[1.0, 2.0], [math.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"2 bad entries"):
        fn(torch.tensor([[INF, 2.0], [0.0, INF]]))
    fn(torch.tensor([[1.0, 2.0], [math.nan, 1.0]]), validate=False)  # the check can be switched off


@pytest.mark.parametrize("fn", [softmax, log_softmax], ids=lambda f: f.__name__)
def test_bad_temperature(fn):
    name = fn.__name__
    for bad in (0.0, -1.0, INF):
        with pytest.raises(ValueError,
                           match=rf"{name}\(\): argument 'temperature' expected a finite number > 0, got {bad}"):
            fn(torch.ones(3), temperature=bad)
    with pytest.raises(ValueError, match=r"argument 'temperature' expected a real number, got nan"):
        fn(torch.ones(3), temperature=math.nan)
    with pytest.raises(TypeError, match=r"argument 'temperature' expected a real number, got <str>"):
        fn(torch.ones(3), temperature="hot")
    with pytest.raises(ValueError, match=r"argument 'temperature' expected a number or a one-element tensor"):
        fn(torch.ones(3), temperature=torch.ones(2))
    with pytest.raises(ValueError, match=r"expected a finite number > 0, got -2.0"):
        fn(torch.ones(3), temperature=torch.tensor(-2.0))


def test_standard_normalize_errors_say_which_rows():
    x = torch.ones(4, 3)
    x[1, 2] = -0.5
    x[3, 0] = -2.0
    with pytest.raises(ValueError, match=r"standard_normalize\(\): argument 'logits' expected non-negative scores .*"
                                         r"got <negative scores in rows \[1, 3\] \(2 of 4\)>"):
        standard_normalize(x)
    y = torch.ones(2, 3, 2)
    y[1, :, 0] = 0.0
    with pytest.raises(ValueError,
                       match=r"expected rows with a positive sum of scores, "
                             r"got <zero sum in row \[\(1, 0\)\] \(1 of 4\)>"):
        standard_normalize(y, dim=1)
    with pytest.raises(ValueError, match=r"zero sum in row \[0\]"):
        standard_normalize(torch.tensor([[-1.0, -2.0], [1.0, 0.0]]), positivity="relu")
    with pytest.raises(ValueError,
                       match=r"argument 'positivity' expected one of None, 'softplus', 'relu', 'abs', got 'exp'"):
        standard_normalize(x, positivity="exp")
    # validate=False: no data checks; a zero-sum row maps to zeros rather than NaN.
    out = standard_normalize(torch.tensor([[0.0, 0.0], [1.0, 3.0]]), validate=False)
    assert out.tolist() == [[0.0, 0.0], [0.25, 0.75]]
    # -inf is an excluded class, not a negative score; an all -inf row is not a zero-sum error.
    assert standard_normalize(torch.tensor([[1.0, -INF], [-INF, -INF]])).tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_spherical_and_taylor_option_errors():
    for bad in (0.0, -1e-3, INF):
        with pytest.raises(ValueError,
                           match=rf"spherical_softmax\(\): argument 'eps' expected a finite number > 0, got {bad}"):
            spherical_softmax(torch.ones(3), eps=bad)
    for bad in (0, 1, 3, -2):
        with pytest.raises(ValueError,
                           match=rf"taylor_softmax\(\): argument 'order' expected an even int >= 2 .*, got {bad}"):
            taylor_softmax(torch.ones(3), order=bad)
    for bad in (2.0, True):
        with pytest.raises(TypeError, match=r"taylor_softmax\(\): argument 'order' expected an even int >= 2"):
            taylor_softmax(torch.ones(3), order=bad)
    with pytest.raises(ValueError,
                       match=r"shannon_negentropy\(\): argument 'probs' expected non-negative entries, "
                             r"got <minimum -0.1>"):
        shannon_negentropy(torch.tensor([1.1, -0.1]))


# --- Modules ---

def test_modules_hold_their_options_and_call_their_functions():
    from logitlab import nn as lnn

    x = torch.randn(3, 5, 7, dtype=F64)
    pairs = [
        (lnn.Softmax(dim=1, temperature=0.7), softmax(x, dim=1, temperature=0.7)),
        (lnn.LogSoftmax(dim=0), log_softmax(x, dim=0)),
        (lnn.Sigmoid(), sigmoid(x)),
        (lnn.LogSigmoid(), log_sigmoid(x)),
        (lnn.StandardNormalize(dim=2, positivity="softplus"), standard_normalize(x, dim=2, positivity="softplus")),
        (lnn.SphericalSoftmax(eps=0.1), spherical_softmax(x, eps=0.1)),
        (lnn.TaylorSoftmax(order=4), taylor_softmax(x, order=4)),
    ]
    for module, expected in pairs:
        torch.testing.assert_close(module(x), expected, rtol=0, atol=0)
    assert repr(lnn.Softmax(dim=1, temperature=0.7)) == "Softmax(dim=1, temperature=0.7)"
    assert repr(lnn.TaylorSoftmax(order=4)) == "TaylorSoftmax(dim=-1, order=4)"
    assert repr(lnn.StandardNormalize(positivity="relu")) == "StandardNormalize(dim=-1, positivity='relu')"


def test_softmax_module_temperature_can_be_a_buffer_or_learned():
    from logitlab import nn as lnn

    buffered = lnn.Softmax(temperature=torch.tensor(2.0))
    assert "temperature" in dict(buffered.named_buffers())
    learned = lnn.Softmax(temperature=torch.nn.Parameter(torch.tensor(2.0)))
    assert [name for name, _ in learned.named_parameters()] == ["temperature"]
    x = torch.randn(4, 6)
    target = torch.tensor([0, 1, 2, 3])
    loss = -torch.log(learned(x)[torch.arange(4), target]).mean()
    loss.backward()
    assert learned.temperature.grad is not None and bool(torch.isfinite(learned.temperature.grad))
    assert repr(learned) == "Softmax(dim=-1, temperature=2)"


def test_module_options_are_checked_at_construction():
    from logitlab import nn as lnn

    with pytest.raises(ValueError, match=r"Softmax\(\): argument 'temperature' expected a finite number > 0, got 0.0"):
        lnn.Softmax(temperature=0.0)
    with pytest.raises(ValueError, match=r"StandardNormalize\(\): argument 'positivity' expected one of"):
        lnn.StandardNormalize(positivity="exp")
    with pytest.raises(ValueError, match=r"SphericalSoftmax\(\): argument 'eps' expected a finite number > 0"):
        lnn.SphericalSoftmax(eps=-1.0)
    with pytest.raises(ValueError, match=r"TaylorSoftmax\(\): argument 'order' expected an even int >= 2, got 3"):
        lnn.TaylorSoftmax(order=3)


@pytest.mark.parametrize("dim", [0, 1])
def test_scaled_path_for_huge_scores_matches_reference(dim):
    """Scores whose polynomial overflows float32 are scaled by a power of two per row."""
    for fn, reference, scale in [
        (lambda x, d: spherical_softmax(x, dim=d), lambda x, d: ref.spherical_softmax(x, d), 1e19),
        (lambda x, d: taylor_softmax(x, dim=d, order=6), lambda x, d: ref.taylor_softmax(x, d, 6), 3e6),
        (lambda x, d: taylor_softmax(x, dim=d, order=2), lambda x, d: ref.taylor_softmax(x, d, 2), 1e19),
    ]:
        x = (torch.randn(5, 7, dtype=F64) * scale).to(torch.float32)
        x[torch.rand(5, 7) < 0.2] = -INF
        x[0, :] = x[0, :] / scale  # a row of small scores beside huge ones
        x.requires_grad_()
        out = fn(x, dim)
        assert bool(torch.isfinite(out).all())
        torch.testing.assert_close(out.detach().to(F64), reference(x.detach(), dim), rtol=0, atol=1e-6)
        (grad,) = torch.autograd.grad((out * torch.randn(5, 7)).sum(), x)
        assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("fn", [softmax, log_softmax], ids=lambda f: f.__name__)
def test_all_excluded_rows_are_found_without_validation_too(fn):
    x = torch.randn(5, 4, 3, dtype=F64)
    x[1, :, 2] = -INF  # dim=1: the row (1, :, 2) is empty
    x[3, 0, 0] = -INF  # first entry excluded, row not empty
    for validate in (True, False):
        out = fn(x, dim=1, validate=validate)
        expected = -INF if fn is log_softmax else 0.0
        assert out[1, :, 2].tolist() == [expected] * 4
        torch.testing.assert_close(out[3, 1:, 0], fn(x[3, 1:, 0]))
        assert not bool(torch.isnan(out).any())
