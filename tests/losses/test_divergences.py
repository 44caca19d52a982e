"""The divergence family against float64 references, peers, limits and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import logitlab
from conftest import ERROR_SLACK, LOW_PRECISION, ODD_SHAPES, dims_of
from logitlab import reference as R
from logitlab.losses import divergences as D
from logitlab.losses import fenchel_young as FY

F64 = torch.float64
NAMES = list(D.DIVERGENCES)
FUNCTIONS = {
    "kl": (D.kl_divergence, R.kl_divergence, {}),
    "reverse_kl": (D.reverse_kl_divergence, R.reverse_kl_divergence, {}),
    "js": (D.js_divergence, R.js_divergence, {"beta": 0.3}),
    "alpha": (D.alpha_divergence, R.alpha_divergence, {"amari_alpha": 0.3}),
    "renyi": (D.renyi_divergence, R.renyi_divergence, {"renyi_alpha": 2.5}),
    "tv": (D.total_variation, R.total_variation, {}),
    "hellinger": (D.hellinger_distance, R.hellinger_distance, {}),
    "brier": (D.brier_loss, R.brier_loss, {}),
}


def random_target(shape, dim, *, dtype=F64, sparse=False):
    target = torch.softmax(2 * torch.randn(shape, dtype=dtype), dim=dim)
    if sparse and target.shape[dim] > 1:
        # zero out a random subset (never a whole row) and renormalize
        drop = torch.rand(shape) < 0.4
        keep_one = torch.zeros(shape, dtype=torch.bool).index_fill_(dim, torch.tensor([0]), True)
        target = torch.where(drop & ~keep_one, torch.zeros_like(target), target)
        target = target / target.sum(dim, keepdim=True)
    return target


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse_target"])
def test_matches_reference_on_odd_shapes_and_every_dim(shape, sparse):
    for dim in dims_of(shape):
        logits = 3 * torch.randn(shape, dtype=F64)
        target = random_target(shape, dim, sparse=sparse)
        model = torch.softmax(logits, dim=dim)
        for name, (fn, ref, params) in FUNCTIONS.items():
            got = fn(logits, target, dim=dim, reduction="none", **params)
            want = ref(target, model, dim=dim, **params)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=f"{name} dim={dim}")


def test_divergence_loss_dispatches_to_the_named_functions():
    logits, target = torch.randn(4, 6, dtype=F64), random_target((4, 6), -1)
    for name, (fn, _, params) in FUNCTIONS.items():
        torch.testing.assert_close(D.divergence_loss(logits, target, divergence=name, **params),
                                   fn(logits, target, **params))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_and_match_finite_differences(name):
    fn, _, params = FUNCTIONS[name]
    logits = torch.randn(3, 5, dtype=F64, requires_grad=True)
    # a sparse target makes reverse KL +inf (the model has mass the target excludes)
    target = random_target((3, 5), -1, sparse=name != "reverse_kl")
    assert torch.autograd.gradcheck(lambda z: fn(z, target, reduction="none", **params), (logits,))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_error_no_worse_than_naive(name, dtype):
    fn, ref, params = FUNCTIONS[name]
    logits64 = 4 * torch.randn(64, 33, dtype=F64)
    target64 = random_target((64, 33), -1)
    truth = ref(target64, torch.softmax(logits64, -1), **params)
    logits, target = logits64.to(dtype), target64.to(dtype)
    got = fn(logits, target, reduction="none", validate=False, **params)
    assert got.dtype == dtype
    p, q = target, torch.softmax(logits, -1)  # the naive op at the same dtype
    naive = {
        "kl": lambda: (p * (p.log() - q.log())).sum(-1),
        "reverse_kl": lambda: (q * (q.log() - p.log())).sum(-1),
        "js": lambda: R_js_naive(p, q, params.get("beta", 0.5)),
        "alpha": lambda: ((p ** 0.3 * q ** 0.7).sum(-1) - 1) / (0.3 * -0.7),
        "renyi": lambda: (p ** 2.5 * q ** -1.5).sum(-1).log() / 1.5,
        "tv": lambda: 0.5 * (p - q).abs().sum(-1),
        "hellinger": lambda: 0.5 * (p.sqrt() - q.sqrt()).square().sum(-1),
        "brier": lambda: (p - q).square().sum(-1),
    }[name]()
    err = (got.to(F64) - truth).abs()
    naive_err = (naive.to(F64) - truth).abs()
    assert torch.isfinite(err).all()
    # Rows where the naive op gives NaN or inf (fp16 underflow: 35 to 64 of the 64 rows for kl,
    # reverse_kl, js, renyi) have nothing to compare with; comparing maxima with an infinite naive
    # error could never fail there. Bound those rows by a few roundings of the dtype instead.
    finite = torch.isfinite(naive_err)
    if bool(finite.any()):
        assert err[finite].max() <= naive_err[finite].max() + ERROR_SLACK[dtype] * max(1.0, float(truth.abs().max()))
    bound = 4 * torch.finfo(dtype).eps * truth[~finite].abs().clamp_min(1.0)
    assert (err[~finite] <= bound).all()


def R_js_naive(p, q, beta):
    m = beta * p + (1 - beta) * q
    return beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)


# --- zero probabilities: 0 log 0 = 0, +inf only where the math says so, never NaN -------------


def _value_and_grad(fn, logits, target, **kw):
    logits = logits.clone().requires_grad_(True)
    value = fn(logits, target, reduction="none", **kw)
    value.sum().backward()
    return value.detach(), logits.grad


def test_kl_is_inf_where_target_has_mass_the_model_excludes():
    logits = torch.tensor([[0.0, -math.inf, 1.0], [0.0, -math.inf, 1.0]])
    target = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])
    value, grad = _value_and_grad(D.kl_divergence, logits, target)
    assert value[0] == math.inf and math.isfinite(value[1])
    assert torch.isfinite(grad).all() and (grad[0] == 0).all()
    # a masked-out infinite row does not poison the mean or the gradient
    masked = D.kl_divergence(logits, target, mask=torch.tensor([False, True]))
    assert torch.isclose(masked, value[1])


def test_reverse_kl_is_inf_where_model_has_mass_the_target_excludes():
    value, grad = _value_and_grad(D.reverse_kl_divergence, torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]]))
    assert value[0] == math.inf and torch.isfinite(grad).all()
    # the model excluding what the target excludes is finite: 0 log 0 = 0
    logits = torch.tensor([[0.0, -math.inf, -math.inf]])
    value, grad = _value_and_grad(D.reverse_kl_divergence, logits, torch.tensor([[1.0, 0, 0]]))
    assert value[0] == 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", ["js", "tv", "hellinger", "brier"])
def test_bounded_divergences_are_finite_on_disjoint_supports(name):
    fn, _, _ = FUNCTIONS[name]
    logits = torch.tensor([[0.0, -math.inf]])
    value, grad = _value_and_grad(fn, logits, torch.tensor([[0.0, 1.0]]))
    expected = {"js": math.log(2), "tv": 1.0, "hellinger": 1.0, "brier": 2.0}[name]
    assert math.isclose(float(value[0]), expected, rel_tol=1e-6)
    assert torch.isfinite(grad).all()


def test_power_divergences_follow_their_order():
    logits = torch.tensor([[0.0, -math.inf, 0.0]])
    target = torch.tensor([[0.5, 0.5, 0.0]])  # target ⊄ model support and model ⊄ target support
    cases = [
        (D.alpha_divergence, {"amari_alpha": 0.5}, 4 * (1 - math.sqrt(0.25))),  # finite for α ∈ (0, 1)
        (D.alpha_divergence, {"amari_alpha": 2.0}, math.inf),   # p > 0 = q
        (D.alpha_divergence, {"amari_alpha": -1.0}, math.inf),  # q > 0 = p
        (D.renyi_divergence, {"renyi_alpha": 0.5}, -2 * math.log(0.5)),
        (D.renyi_divergence, {"renyi_alpha": 3.0}, math.inf),
    ]
    for fn, params, expected in cases:
        value, grad = _value_and_grad(fn, logits, target, **params)
        assert math.isclose(float(value[0]), expected, rel_tol=1e-6), (params, value)
        assert torch.isfinite(grad).all()
    # disjoint supports: Rényi of order < 1 is +inf, Amari of order α ∈ (0, 1) is 1 / (α (1 − α))
    disjoint = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[-math.inf, 0.0, 0.0]])
    value, grad = _value_and_grad(D.renyi_divergence, disjoint[1], disjoint[0], renyi_alpha=0.5)
    assert value[0] == math.inf and torch.isfinite(grad).all()
    value, grad = _value_and_grad(D.alpha_divergence, disjoint[1], disjoint[0], amari_alpha=0.25)
    assert math.isclose(float(value[0]), 1 / (0.25 * 0.75), rel_tol=1e-6)
    assert torch.isfinite(grad).all()


def test_underflowing_softmax_stays_finite_in_log_space():
    logits = torch.tensor([[0.0, -200.0]])  # softmax underflows to exactly 0 in float32
    target = torch.tensor([[0.5, 0.5]])
    assert torch.softmax(logits, -1)[0, 1] == 0
    value = D.kl_divergence(logits, target)
    want = R.kl_divergence(target.double(), torch.softmax(logits.double(), -1))
    assert math.isfinite(float(value)) and math.isclose(float(value), float(want), rel_tol=1e-5)


# --- limits ----------------------------------------------------------------------------------


def test_limits_of_the_parametrized_families():
    logits, target = torch.randn(5, 7, dtype=F64), random_target((5, 7), -1)
    kl = D.kl_divergence(logits, target, reduction="none")
    rkl = D.reverse_kl_divergence(logits, target, reduction="none")
    eps = 1e-6
    torch.testing.assert_close(D.js_divergence(logits, target, beta=eps, reduction="none") / eps, kl,
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(D.js_divergence(logits, target, beta=1 - eps, reduction="none") / eps, rkl,
                               rtol=1e-4, atol=1e-6)
    for a in (1 - 1e-5, 1 + 1e-5):
        torch.testing.assert_close(D.renyi_divergence(logits, target, renyi_alpha=a, reduction="none"), kl,
                                   rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(D.alpha_divergence(logits, target, amari_alpha=a, reduction="none"), kl,
                                   rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(D.alpha_divergence(logits, target, amari_alpha=1e-5, reduction="none"), rkl,
                               rtol=1e-3, atol=1e-6)
    # the exact endpoints are the limits
    torch.testing.assert_close(D.alpha_divergence(logits, target, amari_alpha=1.0, reduction="none"), kl)
    torch.testing.assert_close(D.alpha_divergence(logits, target, amari_alpha=0.0, reduction="none"), rkl)
    torch.testing.assert_close(D.renyi_divergence(logits, target, renyi_alpha=1.0, reduction="none"), kl)
    # α = ½: Amari is 4 · squared Hellinger
    torch.testing.assert_close(D.alpha_divergence(logits, target, reduction="none"),
                               4 * D.hellinger_distance(logits, target, reduction="none"))


def test_kl_with_one_hot_targets_is_cross_entropy():
    logits, index = torch.randn(6, 5, dtype=F64), torch.randint(0, 5, (6,))
    one_hot = torch.nn.functional.one_hot(index, 5).to(F64)
    torch.testing.assert_close(D.kl_divergence(logits, one_hot), torch.nn.functional.cross_entropy(logits, index))
    torch.testing.assert_close(D.renyi_divergence(logits, one_hot, renyi_alpha=0.3),
                               torch.nn.functional.cross_entropy(logits, index))


# --- peers -----------------------------------------------------------------------------------


def test_brier_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    logits = torch.randn(50, 2, dtype=F64)
    labels = torch.randint(0, 2, (50,))
    one_hot = torch.nn.functional.one_hot(labels, 2).to(F64)
    prob_pos = torch.softmax(logits, -1)[:, 1]
    binary = metrics.brier_score_loss(labels.numpy(), prob_pos.numpy())
    assert math.isclose(float(D.brier_loss(logits, one_hot)), 2 * binary, rel_tol=1e-12)
    logits = torch.randn(40, 4, dtype=F64)
    labels = torch.arange(40) % 4
    probs = torch.softmax(logits, -1)
    multi = metrics.brier_score_loss(labels.numpy(), probs.numpy(), scale_by_half=False)
    assert math.isclose(float(D.brier_loss(logits, torch.nn.functional.one_hot(labels, 4).to(F64))), multi,
                        rel_tol=1e-12)


def test_kl_matches_torch_kl_div():
    logits, target = torch.randn(8, 9, dtype=F64), random_target((8, 9), -1, sparse=True)
    want = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), target, reduction="batchmean")
    torch.testing.assert_close(D.kl_divergence(logits, target), want)


# --- options ---------------------------------------------------------------------------------


def test_reduction_mask_and_dtype():
    logits, target = torch.randn(3, 4, 5), random_target((3, 4, 5), 1, dtype=torch.float32)
    rows = D.js_divergence(logits, target, dim=1, reduction="none")
    assert rows.shape == (3, 5) and rows.dtype == torch.float32
    torch.testing.assert_close(D.js_divergence(logits, target, dim=1, reduction="sum"), rows.sum())
    torch.testing.assert_close(D.js_divergence(logits, target, dim=1), rows.mean())
    mask = torch.rand(3, 5) < 0.5
    mask[0, 0] = True
    torch.testing.assert_close(D.js_divergence(logits, target, dim=1, mask=mask), rows[mask].mean())
    none = D.js_divergence(logits, target, dim=1, mask=mask, reduction="none")
    assert (none[~mask] == 0).all()
    empty = torch.zeros(3, 5, dtype=torch.bool)
    z = logits.clone().requires_grad_(True)
    out = D.js_divergence(z, target, dim=1, mask=empty)
    out.backward()
    assert out == 0 and (z.grad == 0).all()


def test_temperature_and_teacher_logits():
    student, teacher = torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    t = 3.0
    got = D.divergence_loss(student, target_logits=teacher, temperature=t)
    want = D.kl_divergence(student / t, torch.softmax(teacher / t, -1))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(D.kl_divergence(student, torch.softmax(teacher / t, -1), temperature=t), want)
    # gradients reach the teacher unless detached
    teacher.requires_grad_(True)
    D.divergence_loss(student, target_logits=teacher, divergence="js").backward()
    assert teacher.grad is not None and torch.isfinite(teacher.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_is_computed_in_float32_and_returned_in_dtype(dtype):
    logits, target = torch.randn(4, 6).to(dtype), random_target((4, 6), -1, dtype=torch.float32).to(dtype)
    out = D.kl_divergence(logits, target, validate=False)
    assert out.dtype == dtype
    want = D.kl_divergence(logits.float(), target.float(), validate=False)
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=1e-3)


def test_modules_match_functions():
    logits, target = torch.randn(3, 5, dtype=F64), random_target((3, 5), -1)
    modules = {
        "kl": logitlab.nn.KLDivergenceLoss(), "reverse_kl": logitlab.nn.ReverseKLDivergenceLoss(),
        "js": logitlab.nn.JSDivergenceLoss(beta=0.3), "alpha": logitlab.nn.AlphaDivergenceLoss(amari_alpha=0.3),
        "renyi": logitlab.nn.RenyiDivergenceLoss(renyi_alpha=2.5), "tv": logitlab.nn.TotalVariationLoss(),
        "hellinger": logitlab.nn.HellingerLoss(), "brier": logitlab.nn.BrierLoss(),
    }
    mask = torch.tensor([True, False, True])
    for name, module in modules.items():
        fn, _, params = FUNCTIONS[name]
        torch.testing.assert_close(module(logits, target), fn(logits, target, **params))
        torch.testing.assert_close(module(logits, target, mask=mask), fn(logits, target, mask=mask, **params))
    assert "beta=0.3" in repr(modules["js"])
    generic = logitlab.nn.DivergenceLoss(divergence="renyi", renyi_alpha=2.5, reduction="sum")
    torch.testing.assert_close(generic(logits, target), D.renyi_divergence(logits, target, renyi_alpha=2.5,
                                                                           reduction="sum"))
    teacher = torch.randn(3, 5, dtype=F64)
    torch.testing.assert_close(generic(logits, target_logits=teacher),
                               D.divergence_loss(logits, target_logits=teacher, divergence="renyi",
                                                 renyi_alpha=2.5, reduction="sum"))


# --- bad input -------------------------------------------------------------------------------


def test_error_messages():
    logits, target = torch.randn(2, 3), torch.full((2, 3), 1 / 3)
    cases = [
        (lambda: D.divergence_loss(logits, target, divergence="kll"),
         ValueError, r"divergence_loss\(\): argument 'divergence' expected one of 'kl', 'reverse_kl'.*got 'kll'"),
        (lambda: D.kl_divergence(logits, target, normalizer="softmaxx"),
         ValueError, r"kl_divergence\(\): argument 'normalizer' expected one of 'softmax'.*got 'softmaxx'"),
        (lambda: D.kl_divergence(logits, target, normalizer="sigmoid"),
         ValueError, r"argument 'normalizer' expected one of .*got 'sigmoid' \(this loss is not defined"),
        (lambda: D.alpha_divergence(logits, target, alpha=0.5),
         TypeError,
         r"alpha_divergence\(\): argument 'alpha' expected a parameter of normalizer 'softmax'.*amari_alpha"),
        (lambda: D.js_divergence(logits, target, beta=1.0),
         ValueError, r"js_divergence\(\): argument 'beta' expected a number in \(0, 1\), got 1.0"),
        (lambda: D.js_divergence(logits, target, beta=0.0),
         ValueError, r"argument 'beta' expected a finite number > 0, got 0.0"),
        (lambda: D.renyi_divergence(logits, target, renyi_alpha=-1.0),
         ValueError, r"argument 'renyi_alpha' expected a finite number > 0, got -1.0"),
        (lambda: D.alpha_divergence(logits, target, amari_alpha=math.inf),
         ValueError, r"argument 'amari_alpha' expected a finite real number, got inf"),
        (lambda: D.divergence_loss(logits, target, divergence="kl", beta=0.2),
         TypeError, r"argument 'beta' expected no 'beta' for divergence='kl'"),
        (lambda: D.kl_divergence(logits, target[:, :2]),
         ValueError, r"argument 'target' expected probabilities of shape \(2, 3\) \(the shape of logits\), "
         r"got <floating tensor of shape \(2, 2\)>"),
        (lambda: D.kl_divergence(logits, torch.tensor([[0.5, 0.5, 0.5], [1.0, 0, 0]])),
         ValueError, r"argument 'target' expected rows summing to 1 along dim 1.*row 0 sums to 1.5"),
        (lambda: D.kl_divergence(logits, torch.tensor([[1.5, -0.5, 0], [1.0, 0, 0]])),
         ValueError, r"argument 'target' expected probabilities >= 0"),
        (lambda: D.kl_divergence(torch.tensor([[0.0, math.nan, 0]] * 2), target),
         ValueError, r"argument 'logits' expected values without NaN or \+inf"),
        (lambda: D.kl_divergence(torch.tensor([[0.0, math.inf, 0]] * 2), target),
         ValueError, r"argument 'logits' expected values without NaN or \+inf"),
        (lambda: D.kl_divergence(torch.tensor([[-math.inf] * 3] * 2), target),
         ValueError, r"argument 'logits' expected at least one logit > -inf per row"),
        (lambda: D.kl_divergence(logits, target, temperature=0.0),
         ValueError, r"argument 'temperature' expected a finite number > 0, got 0.0"),
        (lambda: D.kl_divergence(logits, target, reduction="avg"),
         ValueError, r"argument 'reduction' expected one of 'none', 'mean', 'sum'"),
        (lambda: D.kl_divergence(logits, target, mask=torch.ones(3, dtype=torch.bool)), ValueError,
         r"kl_divergence\(\): argument 'mask' expected a bool tensor of shape \(2,\) \(True = keep the row\), "
         r"got <torch.bool tensor of shape \(3,\)>$"),
        (lambda: D.kl_divergence(logits, target, mask=torch.ones(2, dtype=torch.int64)), TypeError,
         r"kl_divergence\(\): argument 'mask' expected a bool tensor of shape \(2,\) \(True = keep the row\), "
         r"got <torch.int64 tensor of shape \(2,\)>$"),
        (lambda: D.kl_divergence(logits, torch.tensor([0, 1])),
         TypeError, r"argument 'target' expected a floating-point tensor"),
        (lambda: D.divergence_loss(logits),
         ValueError,
         r"argument 'target' expected exactly one of 'target' \(probabilities\) and 'target_logits', got <neither>"),
        (lambda: D.divergence_loss(logits, target, target_logits=logits),
         ValueError, r"got <both>"),
        (lambda: D.kl_divergence(logits, target, dim=2),
         IndexError, r"argument 'dim' expected an int in \[-2, 1\]"),
    ]
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            call()


def test_validate_false_skips_the_data_checks():
    logits, target = torch.randn(2, 3), torch.tensor([[0.5, 0.5, 0.5], [1.0, 0, 0]])
    assert torch.isfinite(D.kl_divergence(logits, target, validate=False))


# --- properties (hypothesis) -----------------------------------------------------------------

_logit_rows = st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=64), min_size=2, max_size=6)


@st.composite
def logits_and_target(draw):
    row = draw(_logit_rows)
    n = len(row)
    spread = draw(st.sampled_from([1.0, 1e-6, 1e-2]))
    logits = torch.tensor(row, dtype=F64) * (spread if draw(st.booleans()) else 1.0)
    raw = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)), dtype=F64)
    raw[draw(st.integers(0, n - 1))] += 0.1
    return logits.unsqueeze(0), (raw / raw.sum()).unsqueeze(0)


@given(logits_and_target(), st.sampled_from(NAMES))
def test_property_non_negative_finite_or_inf_never_nan(pair, name):
    logits, target = pair
    fn, _, params = FUNCTIONS[name]
    z = logits.clone().requires_grad_(True)
    value = fn(z, target, **params)
    assert not torch.isnan(value) and value >= -1e-12
    value.backward()
    assert not torch.isnan(z.grad).any()


@given(logits_and_target(), st.sampled_from(NAMES))
def test_property_zero_at_equality(pair, name):
    logits, _ = pair
    fn, _, params = FUNCTIONS[name]
    own = torch.softmax(logits, -1)
    if name == "reverse_kl" and own.min() == 0:
        # softmax underflowed to an exact 0 the model does not have: KL(model ‖ target) = +inf
        assert fn(logits, own) == math.inf
        return
    assert abs(float(fn(logits, own, **params))) < 1e-9


@given(logits_and_target(), st.sampled_from(["js", "tv", "hellinger", "brier"]))
def test_property_symmetric_divergences(pair, name):
    logits, target = pair
    fn, _, _ = FUNCTIONS[name]
    model = torch.softmax(logits, -1)
    forward = fn(logits, target)
    # swap: the target becomes the model (via its log) and the model the target
    backward = fn(torch.log(target), model)
    assert math.isclose(float(forward), float(backward), rel_tol=1e-7, abs_tol=1e-10)


@given(logits_and_target(), st.floats(0.05, 5.0))
def test_property_renyi_tends_to_kl_and_is_monotone_in_order(pair, order):
    logits, target = pair
    kl = float(D.kl_divergence(logits, target))
    near = float(D.renyi_divergence(logits, target, renyi_alpha=1 + 1e-9))
    assert math.isclose(near, kl, rel_tol=1e-3, abs_tol=1e-4)
    low = float(D.renyi_divergence(logits, target, renyi_alpha=order))
    high = float(D.renyi_divergence(logits, target, renyi_alpha=order * 1.5))
    assert low <= high + 1e-9 * max(1.0, abs(high))


@given(logits_and_target())
def test_property_amari_limits(pair):
    logits, target = pair
    kl = float(D.kl_divergence(logits, target))
    rkl = float(D.reverse_kl_divergence(logits, target))
    near_one = float(D.alpha_divergence(logits, target, amari_alpha=1 - 1e-9))
    near_zero = float(D.alpha_divergence(logits, target, amari_alpha=1e-9))
    assert math.isclose(near_one, kl, rel_tol=1e-3, abs_tol=1e-4)
    if math.isfinite(rkl):
        assert math.isclose(near_zero, rkl, rel_tol=1e-3, abs_tol=1e-4)


# --- normalizer parameters -------------------------------------------------------------------


def test_standard_normalizer_with_softplus_positivity():
    from logitlab.normalizers.standard import standard_normalize

    logits, target = torch.randn(4, 5, dtype=F64), random_target((4, 5), -1)
    model = standard_normalize(logits, positivity="softplus")
    for name, (fn, ref, params) in FUNCTIONS.items():
        got = fn(logits, target, normalizer="standard", positivity="softplus", reduction="none", **params)
        torch.testing.assert_close(got, ref(target, model, **params), msg=name)
    objective = logitlab.make_objective("standard", "kl", positivity="softplus")
    z = logits.clone().requires_grad_(True)
    objective(z, torch.tensor([0, 1, 2, 3])).backward()
    assert torch.isfinite(z.grad).all()
    # without a positivity map, negative scores are the normalizer's error, named as such
    with pytest.raises(ValueError, match=r"standard_normalize\(\): argument 'logits' expected non-negative"):
        D.kl_divergence(logits, target, normalizer="standard")


def test_normalizer_parameters_are_forwarded_and_checked():
    logits, target = torch.randn(3, 5, dtype=F64), random_target((3, 5), -1)
    got = D.hellinger_distance(logits, target, normalizer="taylor_softmax", order=4, reduction="none")
    from logitlab.normalizers.spherical import taylor_softmax

    want = R.hellinger_distance(target, taylor_softmax(logits, order=4))
    torch.testing.assert_close(got, want)
    with pytest.raises(TypeError, match=r"argument 'order' expected a parameter of normalizer 'softmax' "
                                        r"\(it takes: temperature"):
        D.kl_divergence(logits, target, order=4)


def test_entmax_alpha_reaches_the_normalizer_beside_the_divergence_parameter():
    entmax = pytest.importorskip("entmax")
    logits, target = torch.randn(3, 6, dtype=F64), random_target((3, 6), -1)
    model = entmax.entmax_bisect(logits, alpha=1.3, n_iter=80)
    got = D.alpha_divergence(logits, target, normalizer="entmax", alpha=1.3, amari_alpha=0.25, reduction="none")
    torch.testing.assert_close(got, R.alpha_divergence(target, model, amari_alpha=0.25), rtol=1e-6, atol=1e-8)
    objective = logitlab.make_objective("entmax", "js", alpha=1.3, beta=0.2)
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2]), 6).to(F64)
    torch.testing.assert_close(objective(logits, torch.tensor([0, 1, 2])),
                               R.js_divergence(one_hot, model, beta=0.2).mean(), rtol=1e-6, atol=1e-8)


@given(logits_and_target(), st.floats(0.01, 0.99))
def test_property_generalized_js_is_bounded_by_the_binary_entropy(pair, beta):
    logits, target = pair
    bound = -beta * math.log(beta) - (1 - beta) * math.log1p(-beta)
    value = float(D.js_divergence(logits, target, beta=beta))
    assert 0 <= value <= bound + 1e-9


def test_kl_fast_path_and_general_kernel_agree():
    # (there was a separate fast path for fixed targets; one KL row function now serves both)
    logits, target = torch.randn(5, 7, dtype=F64), random_target((5, 7), -1, sparse=True)
    fast = D.kl_divergence(logits, target, reduction="none")
    general = D.kl_divergence(logits, target.clone().requires_grad_(True), reduction="none")
    torch.testing.assert_close(fast, general.detach(), rtol=1e-12, atol=1e-14)
    z = logits.clone().requires_grad_(True)
    D.kl_divergence(z, target).backward()
    torch.testing.assert_close(z.grad, (torch.softmax(logits, -1) - target) / 5)


# ---- folded from test_audit_edge_cases.py: Adversarial inputs found by the audit: each case once broke (NaN, raw
# torch error) or was unchecked.


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
