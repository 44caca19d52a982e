"""The contract every registered normalizer keeps, read from its spec in ``registry.NORMALIZERS``.

Flags: ``simplex`` (rows sum to 1), ``shift_invariant`` (adding a constant to a row changes
nothing; checked both ways, so a wrong flag fails), ``sparse`` (exact zeros for finite logits;
a non-sparse map is strictly positive). Every map: ``-inf`` is an excluded class (probability 0,
and excluding a class is the same as removing it), a row of all ``-inf`` gives zeros with zero
gradient, dtype and device are preserved, any ``dim`` works, the Module equals the function.

Maps that are not shift-invariant (documented by their flag): sigmoid (per-score), standard
(x / Σx), spherical_softmax and taylor_softmax (polynomials of the scores).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import logitlab.nn
from logitlab import registry

F64 = torch.float64
INF = math.inf
NAMES = list(registry.NORMALIZERS)
# Maps defined only for non-negative scores (the registry's domain) get positive test inputs.
POSITIVE_ONLY = {name for name, spec in registry.NORMALIZERS.items() if spec.domain == "nonnegative"}


def _spec(name):
    return registry.NORMALIZERS[name]


def _fn(name):
    return registry.get_normalizer(name)


def _logits(name, shape, dtype=F64, scale=2.0):
    x = torch.randn(shape, dtype=F64) * scale
    if name in POSITIVE_ONLY:
        x = x.abs() + 0.1
    return x.to(dtype)


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("name", NAMES)
def test_outputs_on_the_simplex_or_in_unit_interval(name):
    x = _logits(name, (6, 11))
    probs = _fn(name)(x)
    assert probs.shape == x.shape
    assert bool((probs >= 0).all()) and bool((probs <= 1).all())
    if _spec(name).simplex:
        torch.testing.assert_close(probs.sum(-1), torch.ones(6, dtype=F64))
    else:
        assert not torch.allclose(probs.sum(-1), torch.ones(6, dtype=F64))


@pytest.mark.parametrize("name", NAMES)
def test_shift_invariance_matches_the_flag(name):
    x = _logits(name, (5, 9))
    fn = _fn(name)
    base = fn(x)
    for shift in (-7.5, 3.0, 100.0):
        shifted = fn(x + shift) if name not in POSITIVE_ONLY else fn(x + abs(shift))
        if _spec(name).shift_invariant:
            torch.testing.assert_close(shifted, base, rtol=1e-9, atol=1e-9)
        else:
            assert not torch.allclose(shifted, base, rtol=1e-3, atol=1e-3), shift


@pytest.mark.parametrize("name", NAMES)
def test_sparsity_matches_the_flag(name):
    fn = _fn(name)
    if _spec(name).sparse:
        probs = fn(torch.tensor([[3.0, 2.5, -4.0, -10.0]], dtype=F64))
        assert bool((probs == 0).any()) and bool(torch.isfinite(probs).all())
    else:
        probs = fn(_logits(name, (4, 13), scale=1.0))
        assert bool((probs > 0).all())


@pytest.mark.parametrize("name", NAMES)
def test_excluding_a_class_is_removing_it(name):
    fn = _fn(name)
    for seed in range(3):
        torch.manual_seed(seed)
        x = _logits(name, (9,))
        keep = torch.rand(9) < 0.6
        keep[seed] = True
        masked = x.masked_fill(~keep, -INF)
        probs = fn(masked)
        assert bool((probs[~keep] == 0).all())
        torch.testing.assert_close(probs[keep], fn(x[keep]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_all_excluded_row_gives_zeros_and_zero_gradient(name):
    spec = _spec(name)
    x = _logits(name, (3, 5))
    x[1] = -INF
    x[2, 1:] = -INF
    x.requires_grad_()
    probs = _fn(name)(x)
    assert probs[1].tolist() == [0.0] * 5
    assert bool(torch.isfinite(probs).all())
    if spec.simplex:
        assert float(probs[2, 0].detach()) == pytest.approx(1.0)
    (grad,) = torch.autograd.grad((probs * torch.randn(3, 5, dtype=F64)).sum(), x)
    assert bool(torch.isfinite(grad).all()) and grad[1].tolist() == [0.0] * 5
    if spec.log_fn:
        log_probs = registry.resolve(spec.log_fn)(x)
        assert log_probs[1].tolist() == [-INF] * 5
        (grad,) = torch.autograd.grad(torch.where(torch.isinf(log_probs), 0.0, log_probs).sum(), x)
        assert bool(torch.isfinite(grad).all()) and grad[1].tolist() == [0.0] * 5


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_and_excluded_classes_get_none(name):
    x = _logits(name, (4, 8))
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, 3] = True
    x = x.masked_fill(mask, -INF).requires_grad_()
    (grad,) = torch.autograd.grad((_fn(name)(x) * torch.randn(4, 8, dtype=F64)).sum(), x)
    assert bool(torch.isfinite(grad).all()) and bool((grad[mask] == 0).all())


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_dtype_and_device_preserved(name, dtype, device):
    x = _logits(name, (3, 7), dtype=dtype).to(device)
    probs = _fn(name)(x)
    assert probs.dtype == dtype and probs.device == x.device and probs.shape == x.shape
    assert bool(torch.isfinite(probs).all())
    truth = _fn(name)(x.to(F64)).to(device)
    torch.testing.assert_close(probs.to(F64), truth, rtol=0,
                               atol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_with_very_negative_or_peaked_logits(name, dtype):
    rows = torch.tensor([[-60000.0, -60000.0, -59990.0, -65000.0],
                         [0.0, 30000.0, -30000.0, 1.0],
                         [1e-3, 0.0, -1e-3, 2e-3]], dtype=dtype)
    if name in POSITIVE_ONLY:
        rows = rows.abs()
    probs = _fn(name)(rows)
    assert probs.dtype == dtype and bool(torch.isfinite(probs).all())
    if _spec(name).simplex:
        torch.testing.assert_close(probs.float().sum(-1), torch.ones(3), rtol=0, atol=1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_every_dim_is_the_last_dim_moved(name):
    fn = _fn(name)
    x = _logits(name, (3, 5, 7))
    for dim in range(-3, 3):
        expected = fn(x.movedim(dim, -1)).movedim(-1, dim)
        torch.testing.assert_close(fn(x, dim=dim), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(IndexError, match=r"argument 'dim' expected an int in \[-3, 2\] for a 3-D tensor, got 3"):
        fn(x, dim=3)
    with pytest.raises(TypeError, match=r"argument 'logits' expected a floating-point tensor"):
        fn(torch.ones(3, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_module_equals_function(name):
    spec = _spec(name)
    module_cls = getattr(logitlab.nn, spec.module)
    module = module_cls(dim=1, **spec.params)
    x = _logits(name, (3, 5, 7))
    torch.testing.assert_close(module(x), _fn(name)(x, dim=1), rtol=0, atol=0)
    assert "dim=1" in repr(module)
    fn_params = inspect.signature(registry.resolve(spec.fn)).parameters
    for param, value in inspect.signature(module_cls).parameters.items():
        assert param in fn_params, f"{spec.module} has {param!r}, {spec.fn} does not"
        if fn_params[param].default is not inspect.Parameter.empty:
            assert value.default == fn_params[param].default, param


def _regularizer(name):
    spec = _spec(name)
    omega = registry.resolve(spec.regularizer)
    accepted = inspect.signature(omega).parameters
    params = {k: v for k, v in spec.params.items() if k in accepted}
    return lambda p: omega(p, **params)


@pytest.mark.parametrize("name", [n for n in NAMES if registry.NORMALIZERS[n].regularizer])
def test_regularizer_is_zero_at_vertices_and_the_map_maximizes_its_objective(name):
    omega = _regularizer(name)
    simplex = _spec(name).simplex  # else Ω lives on the box [0, 1]^n (the sigmoid's)
    torch.testing.assert_close(omega(torch.eye(5, dtype=F64)), torch.zeros(5, dtype=F64))
    assert float(omega(torch.full((5,), 0.2, dtype=F64))) < 0
    # Fenchel–Young: map(z) = argmax_{p ∈ domain} <p, z> − Ω(p). Compare with random points.
    z = torch.randn(4, 6, dtype=F64)
    best = _fn(name)(z)
    value = (best * z).sum(-1) - omega(best)
    if simplex:
        others = torch.distributions.Dirichlet(torch.full((6,), 0.7, dtype=F64)).sample((200, 4))
    else:
        others = torch.rand(200, 4, 6, dtype=F64)
    other_values = (others * z).sum(-1) - omega(others)
    assert bool((other_values <= value + 1e-10).all())
    nearby = (best + 1e-3 * torch.randn(50, 4, 6, dtype=F64)).clamp(min=0, max=None if simplex else 1)
    if simplex:
        nearby = nearby / nearby.sum(-1, keepdim=True)
    assert bool((((nearby * z).sum(-1) - omega(nearby)) <= value + 1e-10).all())


@pytest.mark.parametrize("name", [n for n in NAMES if registry.NORMALIZERS[n].log_fn])
def test_log_version_is_the_log(name):
    log_fn = registry.resolve(_spec(name).log_fn)
    x = _logits(name, (4, 9), scale=5.0).masked_fill(torch.rand(4, 9) < 0.2, -INF)
    torch.testing.assert_close(log_fn(x).exp(), _fn(name)(x), rtol=1e-12, atol=1e-15)


# --- special cases ---

def test_softmax_at_temperature_one_is_torch_softmax():
    x = torch.randn(6, 17)
    for dim in (0, 1, -1):
        torch.testing.assert_close(_fn("softmax")(x, dim=dim), torch.softmax(x, dim), rtol=0, atol=0)


def test_sigmoid_is_the_two_class_softmax():
    z = torch.randn(50, dtype=F64) * 5
    pairs = torch.stack([torch.zeros_like(z), z], -1)
    torch.testing.assert_close(_fn("sigmoid")(z), _fn("softmax")(pairs)[:, 1])


def test_entmax_family_special_cases():
    z = torch.randn(8, 10, dtype=F64) * 2
    entmax = _fn("entmax")
    torch.testing.assert_close(entmax(z, alpha=2.0), _fn("sparsemax")(z), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entmax(z, alpha=1.5), _fn("entmax15")(z), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entmax(z, alpha=1.001), _fn("softmax")(z), rtol=0, atol=5e-3)
