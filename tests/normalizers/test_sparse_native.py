"""The native sparse kernel (``_native/sparse.c``) against the sort-based float64 references, the
entmax package and the torch path it falls back to."""

from __future__ import annotations

import contextlib
import math

import entmax as peer
import pytest
import torch

import logitlab
from conftest import count_calls
from logitlab import reference as ref
from logitlab._native import sparse as native_sparse
from logitlab.normalizers.entmax import ConvergenceError

pytestmark = pytest.mark.usefixtures("each_build")

F64 = torch.float64
# α >= 1.0625 (normalizers._qexp.DENSE_BELOW): the α that take the threshold engine.
ALPHAS = [1.07, 1.25, 1.5, 2.0, 3.0, 5.0]
MAPS = {
    "sparsemax": (lambda z, dim=-1: logitlab.sparsemax(z, dim=dim), ref.sparsemax),
    "entmax15": (lambda z, dim=-1: logitlab.entmax15(z, dim=dim), ref.entmax15),
    **{f"entmax{a}": ((lambda a: lambda z, dim=-1: logitlab.entmax(z, a, dim=dim))(a),
                      (lambda a: lambda z, dim=-1: ref.entmax_bisect(z, a, dim=dim))(a)) for a in ALPHAS},
}
CLOSED = ["sparsemax", "entmax15"]  # closed-form τ: the support is exact even at ties
# α = 5 (q = 1/4): where τ falls within rounding of an entry (the tie rows), f(τ) = Σ [x − τ]^q
# has an infinite slope, |Σp − 1| <= 1e-10 is out of reach in double and the solve reports
# non-convergence (both paths); and the torch path's float32 x loses ~1e-4 at q = 1/4.
MODERATE = [name for name in MAPS if name != "entmax5.0"]
# Float32 output of an exact float64 value: half an ulp at 1 (a little more for α-entmax, whose
# reference is a bisection and ours stops at |Σp − 1| <= 1e-10).
ATOL32 = 1.2e-7


@pytest.fixture(autouse=True)
def _native_available():
    if not native_sparse.supports(torch.zeros(1, 1)):
        pytest.skip("the native sparse kernel cannot be built here")


@pytest.fixture
def calls(monkeypatch):
    """Counts of native forward and backward calls."""
    return count_calls(monkeypatch, native_sparse, fwd="sparse_forward", bwd="sparse_backward")


@contextlib.contextmanager
def torch_path():
    """The binding made unavailable: the ops take the torch (top-k) path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native_sparse, "supports", lambda rows: False)
        yield


def _logits(shape, scale=2.0, dtype=torch.float32):
    return (torch.randn(shape, dtype=F64) * scale).to(dtype)


def _check_exact(got, z, naive, *, support=True, atol=ATOL32):
    want = naive(z.to(F64))
    torch.testing.assert_close(got.to(F64), want, atol=atol, rtol=0)
    if support:
        assert torch.equal(got > 0, want > 0), "support differs from the sort-based one"


# --- exactness against the float64 references ------------------------------------------------

@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (2, 7), (4, 15), (3, 16), (3, 17), (2, 127), (3, 1000)])
def test_matches_reference_with_the_same_support(name, shape, calls):
    ours, naive = MAPS[name]
    z = _logits(shape)
    _check_exact(ours(z), z, naive)
    assert calls["fwd"] == 1


def _hard_rows(n=40):
    rows = [
        torch.full((n,), 1.0),                                   # uniform
        torch.cat([torch.full((20,), 2.0), torch.zeros(n - 20)]),  # 20 tied maxima
        torch.randint(-3, 4, (n,)).float() / 2,                  # exact ties inside and at τ
        torch.randint(-8, 8, (n,)).float() / 4,
        torch.cat([torch.tensor([1e-4]), torch.zeros(n - 1)]),   # all in the support but one
        torch.linspace(0, 1e-5, n),
        torch.randn(n) * 1e-3 + 1e4,                             # tiny spread at +1e4
        torch.randn(n) * 3 - 1e4,
        torch.randn(n) * 1e4,                                    # huge spread
        torch.where(torch.rand(n) < 0.3, -math.inf, torch.randn(n)),  # excluded classes
        torch.cat([torch.tensor([0.5]), torch.full((n - 1,), -math.inf)]),  # one class left
        torch.full((n,), -math.inf),                             # every class excluded
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("name", MODERATE)
@pytest.mark.parametrize("n", [3, 40, 1000])
def test_ties_near_full_supports_extremes_and_masks(name, n):
    ours, naive = MAPS[name]
    z = _hard_rows(max(n, 21))[:, :n] if n < 21 else _hard_rows(n)
    got = ours(z)
    # A bisection reference leaves entries tied with τ at a rounding-size positive value
    # (α = 3: √1e-17 ~ 3e-9); the closed forms give exact zeros, as the exact answer has.
    _check_exact(got, z, naive, support=name in CLOSED)
    assert torch.equal(got[-1], torch.zeros(z.shape[1]))


@pytest.mark.parametrize("name", CLOSED)
def test_many_exact_ties_give_exact_zeros(name):
    # Entries equal to τ in exact arithmetic must come out 0, not a rounding-size positive.
    ours, naive = MAPS[name]
    z = torch.cat([torch.randint(-3, 4, (300, 40)) / 2, torch.randint(-8, 8, (300, 40)) / 4]).float()
    _check_exact(ours(z), z, naive)


@pytest.mark.parametrize("kind", CLOSED)
def test_forced_sorted_fallback_gives_the_same_answer(kind):
    z = torch.cat([_hard_rows(300), _logits((20, 300), 0.5)])
    certified = native_sparse.sparse_forward(z, kind, None, 0.0, 1, False)
    forced = native_sparse.sparse_forward(z, kind, None, 0.0, 1, False, max_passes=0)
    solved = z.amax(-1) > -math.inf  # the all -inf row needs no solve (n_iter 0)
    assert (certified[3][solved] >= 1).all() and (forced[3][solved] == -1).all()  # passes; -1: sorted
    assert torch.equal(certified[0], forced[0]) or torch.allclose(certified[0], forced[0], atol=1e-7, rtol=0)
    assert torch.equal(certified[0] > 0, forced[0] > 0)
    _check_exact(forced[0], z, MAPS[kind][1])


def test_near_uniform_wide_rows_put_every_entry_in_the_candidates():
    z = _logits((3, 5000), 1e-6)
    for name in ("sparsemax", "entmax15", "entmax1.5"):
        ours, naive = MAPS[name]
        got = ours(z)
        _check_exact(got, z, naive)
        assert int((got > 0).sum(-1).min()) >= 4990


# --- the entmax package ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 7), (6, 15), (8, 127), (3, 1000)])
def test_against_entmax_package_values_and_gradients(shape):
    z = _logits(shape)
    g = torch.randn(shape)
    for ours, theirs in [(logitlab.sparsemax, peer.sparsemax), (logitlab.entmax15, peer.entmax15),
                         (lambda t: logitlab.entmax(t, 1.5), lambda t, dim: peer.entmax_bisect(t, 1.5, dim))]:
        a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
        pa, pb = ours(a), theirs(b, dim=-1)
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)
        pa.backward(g)
        pb.backward(g)
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


# --- half precision ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax1.25", "entmax3.0"])
def test_half_precision_is_the_exact_value_rounded_once(dtype, name, calls):
    ours, naive = MAPS[name]
    z = _logits((16, 37), 3.0, dtype)
    got = ours(z)
    assert got.dtype == dtype and calls["fwd"] == 1
    want = naive(z.to(F64))
    # Half an ulp of the output type at 1 (the value is computed in double, then rounded once).
    half_ulp = {torch.bfloat16: 2.0 ** -9, torch.float16: 2.0 ** -12}[dtype]
    torch.testing.assert_close(got.to(F64), want, atol=half_ulp * 1.01, rtol=0)
    with torch_path():
        fallback = ours(z)
    # Never worse than the torch path (which computes in float32).
    assert (got.to(F64) - want).abs().max() <= (fallback.to(F64) - want).abs().max() + 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_limits(dtype):
    big = torch.finfo(dtype).max
    z = torch.stack([
        torch.full((33,), -big, dtype=F64),
        torch.cat([torch.tensor([big], dtype=F64), torch.full((32,), -big, dtype=F64)]),
        torch.cat([torch.tensor([big, big], dtype=F64), torch.full((31,), -math.inf, dtype=F64)]),
        torch.linspace(-big, big, 33, dtype=F64),
    ]).to(dtype)
    for name in ("sparsemax", "entmax15", "entmax1.5"):
        ours, naive = MAPS[name]
        p = ours(z)
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.to(F64), naive(z.to(F64)), atol=1e-3, rtol=0)


# --- layouts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax1.25"])
def test_non_contiguous_rows_and_every_dim(name, calls):
    ours, naive = MAPS[name]
    base = _logits((7, 80, 3))
    z = base[:, ::2, :]  # no unit stride anywhere
    for dim in (0, 1, 2, -1):
        got = ours(z, dim=dim)
        torch.testing.assert_close(got.to(F64), naive(z.to(F64), dim=dim), atol=ATOL32, rtol=0)
    wide = _logits((5, 64))[:, :37]  # unit stride, row stride 64
    _check_exact(ours(wide), wide, naive)
    assert calls["fwd"] == 5


# --- backward ---------------------------------------------------------------------------------

def _grads(fn, z, g, alpha=None):
    z = z.clone().requires_grad_()
    inputs = [z]
    if alpha is not None:
        alpha = alpha.clone().requires_grad_()
        inputs.append(alpha)
    p = fn(z) if alpha is None else fn(z, alpha)
    return p.detach(), torch.autograd.grad(p, inputs, g)


@pytest.mark.parametrize("shape,scale", [((5, 37), 2.0), ((3, 1000), 1.0), ((2, 300), 1e-3)])
def test_backward_matches_the_torch_path(shape, scale, calls):
    z = _logits(shape, scale)
    g = torch.randn(shape)
    alpha = 1.2 + torch.rand(shape[0], 1)  # one α per row, in (1.2, 2.2), with a gradient
    cases = [(logitlab.sparsemax, None), (logitlab.entmax15, None),
             (lambda t: logitlab.entmax(t, 1.7), None), (logitlab.entmax, alpha)]
    for fn, a in cases:
        p_native, grads_native = _grads(fn, z, g, a)
        with torch_path():
            p_torch, grads_torch = _grads(fn, z, g, a)
        torch.testing.assert_close(p_native, p_torch, atol=1e-6, rtol=0)
        for got, want in zip(grads_native, grads_torch):
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-4)
    assert calls["bwd"] == len(cases)


def test_backward_against_float64_truth_in_half_precision():
    z = _logits((6, 50), 2.0, torch.bfloat16)
    g = torch.randn(6, 50).to(torch.bfloat16)
    for fn in (logitlab.sparsemax, logitlab.entmax15):
        _, (got,) = _grads(fn, z, g)
        _, (want,) = _grads(fn, z.to(F64), g.to(F64))
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.to(F64), want, atol=0.05, rtol=0.02)


def test_excluded_rows_have_zero_gradients_and_one_class_rows_too():
    z = _hard_rows(40)
    g = torch.randn_like(z)
    alpha = torch.full((z.shape[0], 1), 1.5)
    for fn, a in [(logitlab.sparsemax, None), (logitlab.entmax15, None), (logitlab.entmax, alpha)]:
        _, grads = _grads(fn, z, g, a)
        assert all(torch.isfinite(t).all() for t in grads)
        assert torch.equal(grads[0][-1], torch.zeros(40))
        assert torch.equal(grads[0][-2], torch.zeros(40))  # p = one-hot: the Jacobian is 0
        if a is not None:
            assert float(grads[1][-1]) == 0.0


# --- the fallback -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODERATE)
def test_unavailable_binding_falls_back_to_the_same_results(name, calls):
    ours, naive = MAPS[name]
    z = torch.cat([_logits((6, 130)), _hard_rows(130)])
    native = ours(z)
    with torch_path():
        assert not native_sparse.supports(z)
        fallback = ours(z)
    assert calls["fwd"] == 1
    torch.testing.assert_close(native, fallback, atol=1e-6, rtol=0)
    _check_exact(fallback, z, naive, support=False, atol=1e-6)


# --- errors and the solve report ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_and_plus_inf_rows(name, bad, calls):
    fn = getattr(logitlab, name)
    z = torch.randn(5, 300)
    z[3, 250] = bad
    z[4, 7] = bad
    with pytest.raises(ValueError, match=rf"^{name}\(\): argument 'logits' expected values without NaN "
                                         rf"or \+inf .*got <2 bad entries in 2 row\(s\), first at row 3, "
                                         rf"class 250>"):
        fn(z)
    p = fn(z, validate=False)
    assert torch.isnan(p[3:]).all() and torch.isfinite(p[:3]).all()
    assert calls["fwd"] == 2


def test_unchecked_bad_alpha_gives_nan_rows():
    z = torch.randn(3, 20)
    alpha = torch.tensor([[1.5], [0.0], [math.nan]])
    p = logitlab.entmax(z, alpha, validate=False)
    assert torch.isfinite(p[0]).all() and torch.isnan(p[1:]).all()


def test_solve_report_and_convergence_error():
    z = _logits((4, 30))
    info = logitlab.entmax_with_info(z, 1.3)
    assert info.converged.all() and info.max_violation <= 1e-10 and (info.n_iter >= 1).all()
    expected = (0.3 * z.to(F64) - info.tau[:, None].to(F64)).clamp_min(0) ** (1 / 0.3)
    torch.testing.assert_close(info.probs.to(F64), expected, atol=2e-5, rtol=1e-4)
    bad = logitlab.entmax_with_info(z, 1.3, max_iter=1)
    assert not bad.converged.all() and (bad.n_iter <= 1).all()
    with pytest.raises(ConvergenceError, match=r"entmax\(\): .*max_iter=1 .*tol=1e-10"):
        logitlab.entmax(z, 1.3, max_iter=1)
    all_excluded = logitlab.entmax_with_info(torch.full((1, 4), -math.inf), 1.5)
    assert torch.equal(all_excluded.probs, torch.zeros(1, 4)) and math.isinf(float(all_excluded.tau[0]))
