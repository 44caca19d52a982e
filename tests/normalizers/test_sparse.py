"""sparsemax, 1.5-entmax, α-entmax: exactness, gradients, peers, extremes, errors."""

from __future__ import annotations

import math

import entmax as peer
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import ERROR_SLACK, LOW_PRECISION, ODD_SHAPES, dims_of

import logitlab
from logitlab import reference as ref
from logitlab.normalizers import _threshold
from logitlab.normalizers.entmax import ConvergenceError

F64 = torch.float64
ALPHAS = [1.25, 1.5, 2.0, 3.0]

MAPS = {
    "sparsemax": (logitlab.sparsemax, ref.sparsemax),
    "entmax15": (logitlab.entmax15, ref.entmax15),
    **{f"entmax{a}": ((lambda a: lambda z, dim=-1: logitlab.entmax(z, a, dim=dim))(a),
                      (lambda a: lambda z, dim=-1: ref.entmax_bisect(z, a, dim=dim))(a)) for a in ALPHAS},
}


def _logits(shape, scale=2.0, dtype=F64):
    return (torch.randn(shape, dtype=F64) * scale).to(dtype)


def _atol(name):
    return 1e-12 if name in ("sparsemax", "entmax15") else 1e-9


# --- against the float64 references -------------------------------------------------------

@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_matches_reference_on_odd_shapes_and_every_dim(name, shape):
    ours, naive = MAPS[name]
    z = _logits(shape)
    for dim in dims_of(shape):
        got, want = ours(z, dim=dim), naive(z, dim=dim)
        assert got.shape == z.shape and got.dtype == z.dtype
        torch.testing.assert_close(got, want, atol=_atol(name), rtol=0)
        assert torch.equal(got > 0, want > 0), "support differs from the sort-based one"


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("n,scale", [(300, 1e-3), (300, 0.05), (1000, 0.2), (200, 3.0)])
def test_wide_supports_take_the_verified_fallback(name, n, scale):
    # Supports larger than the first top-k force the retry with more entries / a full sort.
    ours, naive = MAPS[name]
    z = _logits((6, n), scale)
    got, want = ours(z), naive(z)
    torch.testing.assert_close(got, want, atol=_atol(name), rtol=0)
    assert torch.equal(got > 0, want > 0)


def test_fallback_is_exercised():
    z = _logits((4, 500), 1e-3)
    _, _, _, _, support = _threshold.threshold_map(z, "sparsemax")
    assert int(support.min()) > _threshold.FIRST_K["sparsemax"] * _threshold.GROW


@pytest.mark.parametrize("name", list(MAPS))
def test_ties(name):
    ours, naive = MAPS[name]
    z = torch.randint(-3, 4, (50, 40)).to(F64) / 2  # many exact ties, inside and at the edge
    z[0] = 1.0  # all equal: uniform
    z[1, :20] = 2.0  # 20 tied maxima: straddles the first top-16
    z[1, 20:] = 0.0
    got, want = ours(z), naive(z)
    torch.testing.assert_close(got, want, atol=_atol(name), rtol=0)
    torch.testing.assert_close(got[0], torch.full((40,), 1 / 40, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(got[1, :20], torch.full((20,), 1 / 20, dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(MAPS))
def test_near_full_support(name):
    ours, naive = MAPS[name]
    z = torch.zeros(3, 257, dtype=F64)
    z[0, 0] = 1e-4  # everything in the support but one entry slightly above
    z[1] = torch.linspace(0, 1e-5, 257, dtype=F64)
    z[2, -1] = -1e-4  # everything but one slightly below
    got, want = ours(z), naive(z)
    torch.testing.assert_close(got, want, atol=_atol(name), rtol=0)
    assert torch.equal(got > 0, want > 0)
    assert int((got > 0).sum(-1).min()) >= 256


# --- gradients --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
@pytest.mark.parametrize("shape,dim,scale", [((4, 7), -1, 2.0), ((3, 5, 7), 1, 2.0), ((2, 70), -1, 0.01),
                                             ((1,), 0, 1.0)])
def test_gradcheck(name, shape, dim, scale):
    fn = getattr(logitlab, name)
    z = _logits(shape, scale).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, dim=dim), (z,))


@pytest.mark.parametrize("shape,dim,scale", [((4, 7), -1, 2.0), ((3, 5, 6), 1, 2.0), ((1, 70), -1, 0.05)])
def test_gradcheck_entmax_logits_and_alpha(shape, dim, scale):
    z = _logits(shape, scale).requires_grad_()
    alpha_shape = list(shape)
    alpha_shape[dim] = 1
    alpha = (1.2 + torch.rand(alpha_shape, dtype=F64)).requires_grad_()  # α in (1.2, 2.2)
    assert torch.autograd.gradcheck(lambda t, a: logitlab.entmax(t, a, dim=dim, tol=1e-14), (z, alpha))
    scalar = torch.tensor(1.7, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a: logitlab.entmax(t, a, dim=dim, tol=1e-14), (z, scalar))


def test_backward_of_fallback_rows_matches_reference_jacobian():
    z = _logits((3, 100), 0.01).requires_grad_()  # supports > 64: dense backward rows
    g = torch.randn(3, 100, dtype=F64)
    for fn in (logitlab.sparsemax, logitlab.entmax15):
        (grad,) = torch.autograd.grad(fn(z), z, g)
        z_peer = z.detach().clone().requires_grad_()
        (want,) = torch.autograd.grad(getattr(peer, fn.__name__)(z_peer), z_peer, g)
        torch.testing.assert_close(grad, want, atol=1e-10, rtol=0)


# --- the entmax package as expected values ---------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 7), (8, 127), (3, 1000)])
def test_against_entmax_package_values_and_gradients(shape):
    z = _logits(shape)
    g = torch.randn(shape, dtype=F64)
    cases = [(logitlab.sparsemax, peer.sparsemax, 1e-12), (logitlab.entmax15, peer.entmax15, 1e-12)]
    for ours, theirs, atol in cases:
        a = z.clone().requires_grad_()
        b = z.clone().requires_grad_()
        pa, pb = ours(a), theirs(b, dim=-1)
        torch.testing.assert_close(pa, pb, atol=atol, rtol=0)
        pa.backward(g)
        pb.backward(g)
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("alpha", [1.1, 1.5, 2.0, 2.5])
def test_against_entmax_bisect_values_and_gradients(alpha):
    z = _logits((6, 50))
    g = torch.randn(6, 50, dtype=F64)
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    alpha_a = torch.full((6, 1), alpha, dtype=F64, requires_grad=True)
    alpha_b = torch.full((6, 1), alpha, dtype=F64, requires_grad=True)
    pa = logitlab.entmax(a, alpha_a)
    pb = peer.entmax_bisect(b, alpha_b, n_iter=200)
    torch.testing.assert_close(pa, pb, atol=1e-9, rtol=0)
    pa.backward(g)
    pb.backward(g)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(alpha_a.grad, alpha_b.grad, atol=1e-8, rtol=1e-6)


# --- special cases ----------------------------------------------------------------------------

def test_entmax_special_cases():
    z = _logits((7, 33))
    torch.testing.assert_close(logitlab.entmax(z, 2.0), logitlab.sparsemax(z), atol=1e-12, rtol=0)
    torch.testing.assert_close(logitlab.entmax(z, 1.5), logitlab.entmax15(z), atol=1e-10, rtol=0)
    # α → 1: softmax (the error shrinks like α − 1).
    for alpha, atol in [(1.01, 2e-2), (1.001, 2e-3), (1.0001, 2e-4)]:
        torch.testing.assert_close(logitlab.entmax(z, alpha), torch.softmax(z, -1), atol=atol, rtol=0)


def test_regularizers():
    p = logitlab.entmax15(_logits((5, 9)))
    onehot = torch.eye(4, dtype=F64)
    for fn, naive in [(logitlab.gini_regularizer, ref.gini_regularizer),
                      (logitlab.tsallis15_regularizer, lambda q: ref.tsallis_regularizer(q, 1.5))]:
        torch.testing.assert_close(fn(p), naive(p))
        torch.testing.assert_close(fn(onehot), torch.zeros(4, dtype=F64))
        assert torch.equal(fn(p.T, dim=0), fn(p))
    for alpha in ALPHAS:
        torch.testing.assert_close(logitlab.tsallis_regularizer(p, alpha=alpha), ref.tsallis_regularizer(p, alpha))
    torch.testing.assert_close(logitlab.tsallis_regularizer(p, alpha=2.0), logitlab.gini_regularizer(p))
    alpha_rows = torch.tensor([[1.5], [2.0], [1.5], [2.0], [3.0]], dtype=F64)
    per_row = logitlab.tsallis_regularizer(p, alpha=alpha_rows)
    for i, a in enumerate(alpha_rows.flatten().tolist()):
        torch.testing.assert_close(per_row[i], ref.tsallis_regularizer(p[i], a))
    assert logitlab.tsallis15_regularizer(p.half()).dtype == torch.float16


# --- -inf, NaN, empty -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax"])
def test_neg_inf_excludes_and_all_neg_inf_row_is_zero_with_zero_grad(name):
    fn = getattr(logitlab, name)
    z = _logits((4, 9))
    z[0, :3] = -math.inf
    z[1] = -math.inf
    z[2, 1:] = -math.inf
    z = z.requires_grad_()
    alpha = torch.full((4, 1), 1.5, dtype=F64, requires_grad=True)
    p = fn(z, alpha) if name == "entmax" else fn(z)
    assert torch.equal(p[0, :3], torch.zeros(3, dtype=F64))
    assert torch.equal(p[1], torch.zeros(9, dtype=F64))
    assert torch.equal(p[2], torch.eye(9, dtype=F64)[0])
    torch.testing.assert_close(p[[0, 3]].sum(-1), torch.ones(2, dtype=F64))
    (p * torch.randn_like(p)).sum().backward()
    assert torch.equal(z.grad[1], torch.zeros(9, dtype=F64))
    assert torch.isfinite(z.grad).all()
    if name == "entmax":
        assert float(alpha.grad[1]) == 0.0 and torch.isfinite(alpha.grad).all()


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax", "entmax_with_info"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("n", [5, 300])  # 300: the bad entry lies outside the first top-k
def test_nan_and_plus_inf_logits_raise_unless_validate_false(name, bad, n):
    fn = getattr(logitlab, name)
    z = torch.randn(3, n)
    z[:, 0] = -math.inf  # excluded classes stay allowed
    z[1, n - 2] = bad
    with pytest.raises(ValueError, match=rf"^{name}\(\): argument 'logits' expected values without NaN "
                                         rf"or \+inf .*got <1 bad entries in 1 row\(s\), first at row 1, "
                                         rf"class {n - 2}>"):
        fn(z)
    out = fn(z, validate=False)
    p = out.probs if name == "entmax_with_info" else out
    assert torch.isnan(p[1]).all() and torch.isfinite(p[[0, 2]]).all()
    # Another dim, a 3-D tensor: the row is counted in the flattened batch.
    z3 = torch.randn(2, 7, 3)
    z3[1, 4, 2] = bad
    with pytest.raises(ValueError, match=r"first at row 5, class 4>"):
        fn(z3, dim=1)


@pytest.mark.parametrize("bad", [math.nan, 0.0, -0.5, math.inf])
def test_alpha_tensor_values_are_checked(bad):
    z = torch.randn(3, 6)
    alpha = torch.tensor([[1.5], [bad], [2.0]])
    for fn in (logitlab.entmax, logitlab.entmax_with_info):
        name = fn.__name__
        with pytest.raises(ValueError, match=rf"^{name}\(\): argument 'alpha' expected values > 0 "
                                             rf"\(finite\), got {bad}"):
            fn(z, alpha)
    with pytest.raises(ValueError, match=r"argument 'alpha' expected values > 0"):
        logitlab.entmax(z, torch.tensor(bad))  # one α shared by every row
    with pytest.raises(ValueError, match=r"tsallis_regularizer\(\): argument 'alpha'"):
        logitlab.tsallis_regularizer(torch.ones(3, 2) / 2, alpha=alpha)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax"])
def test_empty_inputs_work(name):
    fn = getattr(logitlab, name)
    assert fn(torch.empty(0, 5)).shape == (0, 5)
    assert fn(torch.empty(3, 0)).shape == (3, 0)
    assert torch.equal(fn(torch.tensor(2.0)), torch.tensor(1.0))


# --- low precision ----------------------------------------------------------------------------

def _naive_at(name, z):
    """The textbook sort-based op computed in the input's own dtype (no shift by the max)."""
    zs, _ = torch.sort(z, dim=-1, descending=True)
    ks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    if name == "sparsemax":
        csum = zs.cumsum(-1)
        size = (1 + ks * zs > csum).sum(-1, keepdim=True)
        tau = (csum.gather(-1, size - 1) - 1) / size.to(z.dtype)
        return (z - tau).clamp_min(0)
    xs = zs / 2
    mean = xs.cumsum(-1) / ks
    delta = (1 - ks * ((xs * xs).cumsum(-1) / ks - mean * mean)) / ks
    taus = mean - delta.clamp_min(0).sqrt()
    size = (taus <= xs).sum(-1, keepdim=True)
    return (z / 2 - taus.gather(-1, size - 1)).clamp_min(0) ** 2


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_error_no_worse_than_naive(name, dtype):
    z = _logits((64, 100), 3.0).to(dtype)
    truth = MAPS[name][1](z.to(F64))
    ours = getattr(logitlab, name)(z)
    assert ours.dtype == dtype
    err_ours = (ours.to(F64) - truth).abs().max()
    err_naive = (_naive_at(name, z).to(F64) - truth).abs().nan_to_num(math.inf).max()
    assert err_ours <= err_naive + ERROR_SLACK[dtype]


def _naive_entmax_at(z, alpha, n_iter=60):
    """Textbook α-entmax in the input's own dtype: bisection for τ on [max x − 1, max x − n^{1−α}]
    with x = (α−1) z, then p = [x − τ]_+^{1/(α−1)} renormalized."""
    x = z * (alpha - 1)
    top = x.amax(-1, keepdim=True)
    lo, hi = top - 1, top - z.shape[-1] ** (1 - alpha)
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        mass = ((x - mid).clamp_min(0) ** (1 / (alpha - 1))).sum(-1, keepdim=True)
        lo, hi = torch.where(mass >= 1, mid, lo), torch.where(mass >= 1, hi, mid)
    p = (x - lo).clamp_min(0) ** (1 / (alpha - 1))
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_error_no_worse_than_naive_entmax(alpha, dtype):
    z = _logits((64, 100), 3.0).to(dtype)
    truth = ref.entmax_bisect(z.to(F64), alpha)
    ours = logitlab.entmax(z, alpha)
    assert ours.dtype == dtype
    err_ours = (ours.to(F64) - truth).abs().max()
    err_naive = (_naive_entmax_at(z, alpha).to(F64) - truth).abs().nan_to_num(math.inf).max()
    assert err_ours <= err_naive + ERROR_SLACK[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax"])
def test_half_precision_extremes_are_finite_and_sum_to_one(dtype, name):
    fn = getattr(logitlab, name)
    big = torch.finfo(dtype).max
    rows = [
        torch.full((50,), -big / 2),  # very negative
        torch.cat([torch.tensor([big / 2]), torch.full((49,), -big / 2)]),  # extremely peaked
        torch.linspace(-6e4 if dtype == torch.float16 else -1e30, 0, 50),
        torch.full((50,), -1e4),
        torch.cat([torch.tensor([1e4]), torch.zeros(49)]),
        torch.randn(50) * 1e-3 - 3e4,  # tiny spread at a large offset
    ]
    z = torch.stack(rows).to(dtype)
    p = fn(z)
    assert p.dtype == dtype and torch.isfinite(p).all() and (p >= 0).all()
    torch.testing.assert_close(p.float().sum(-1), torch.ones(len(rows)), atol=4e-3, rtol=0)
    truth = MAPS["sparsemax" if name == "sparsemax" else "entmax15"][1](z.to(F64))
    torch.testing.assert_close(p.to(F64), truth, atol=1e-2, rtol=0)
    if name == "entmax":  # where the peer fails: its bisection returns NaN rows in half precision
        assert int((~torch.isfinite(peer.entmax_bisect(z, 1.5)).all(-1)).sum()) >= 4


# --- properties -------------------------------------------------------------------------------

@given(
    n=st.integers(1, 40),
    offset=st.floats(-1e4, 1e4),
    log_spread=st.floats(-6, 1),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(["sparsemax", "entmax15", "entmax1.25", "entmax3.0"]),
)
def test_properties_extreme_magnitudes_and_tiny_spreads(n, offset, log_spread, seed, name):
    gen = torch.Generator().manual_seed(seed)
    z = offset + 10.0 ** log_spread * torch.randn(3, n, generator=gen, dtype=F64)
    ours, naive = MAPS[name]
    p = ours(z)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(3, dtype=F64), atol=1e-12, rtol=0)
    atol = _atol(name) * 10 + 64 * torch.finfo(F64).eps * (1 + abs(offset))
    torch.testing.assert_close(p, naive(z), atol=atol, rtol=0)
    # Monotone: a larger logit never gets a smaller probability.
    order = z.argsort(-1)
    assert (p.gather(-1, order).diff(dim=-1) >= -1e-12).all()
    # Float32 gives the same support and values to float rounding.
    p32 = ours(z.float())
    torch.testing.assert_close(p32.double(), naive(z.float().double()), atol=2e-6, rtol=0)


# --- convergence report and errors -------------------------------------------------------------

def test_entmax_with_info_reports_and_entmax_raises():
    z = _logits((4, 30))
    info = logitlab.entmax_with_info(z, 1.3)
    assert info.probs.shape == (4, 30) and info.tau.shape == (4,) and info.n_iter.shape == (4,)
    assert info.converged.all() and info.max_violation <= 1e-10 and (info.n_iter >= 1).all()
    # τ in the logits' scale: p = [(α−1) z − τ]_+^{1/(α−1)}.
    torch.testing.assert_close(info.probs, ((0.3 * z - info.tau[:, None]).clamp_min(0)) ** (1 / 0.3),
                               atol=1e-8, rtol=0)
    bad = logitlab.entmax_with_info(z, 1.3, max_iter=1)
    assert not bad.converged.all() and bad.max_violation > 1e-10
    with pytest.raises(ConvergenceError, match=r"entmax\(\): .*max_iter=1 .*tol=1e-10"):
        logitlab.entmax(z, 1.3, max_iter=1)
    info3 = logitlab.entmax_with_info(_logits((2, 3, 5)), 1.5, dim=1)
    assert info3.tau.shape == (2, 5)


@pytest.mark.parametrize("call,kind,message", [
    (lambda: logitlab.sparsemax(torch.arange(3)), TypeError,
     r"sparsemax\(\): argument 'logits' expected a floating-point tensor, got <dtype torch.int64>"),
    (lambda: logitlab.entmax15([1.0, 2.0]), TypeError, r"entmax15\(\): argument 'logits' expected a torch.Tensor"),
    (lambda: logitlab.sparsemax(torch.zeros(2, 3), dim=2), IndexError,
     r"sparsemax\(\): argument 'dim' expected an int in \[-2, 1\] for a 2-D tensor, got 2"),
    (lambda: logitlab.entmax(torch.zeros(2, 3), dim=-3), IndexError, r"entmax\(\): argument 'dim'"),
    (lambda: logitlab.entmax(torch.zeros(3), 0.0), ValueError,
     r"entmax\(\): argument 'alpha' expected a finite number > 0, got 0.0"),
    (lambda: logitlab.entmax(torch.zeros(3), -0.5), ValueError, r"argument 'alpha' expected a finite number > 0"),
    (lambda: logitlab.entmax(torch.zeros(2, 3), torch.tensor([[1.5], [0.0]])), ValueError,
     r"entmax\(\): argument 'alpha' expected values > 0 \(finite\), got 0.0"),
    (lambda: logitlab.entmax(torch.zeros(2, 3), torch.ones(2, 3) * 1.5), ValueError,
     r"argument 'alpha' expected a tensor broadcastable to \(2, 1\)"),
    (lambda: logitlab.entmax(torch.zeros(3), "1.5"), TypeError, r"argument 'alpha' expected a float > 0 or a tensor"),
    (lambda: logitlab.entmax(torch.zeros(3), tol=0.0), ValueError,
     r"entmax\(\): argument 'tol' expected a finite number > 0, got 0.0"),
    (lambda: logitlab.entmax(torch.zeros(3), max_iter=0), ValueError,
     r"entmax\(\): argument 'max_iter' expected an int >= 1, got 0"),
    (lambda: logitlab.entmax(torch.zeros(3), max_iter=True), ValueError, r"argument 'max_iter' expected an int >= 1"),
    (lambda: logitlab.tsallis_regularizer(torch.ones(3) / 3, alpha=0.0), ValueError,
     r"tsallis_regularizer\(\): argument 'alpha' expected a finite number > 0"),
    (lambda: logitlab.gini_regularizer(torch.ones(3, dtype=torch.int64)), TypeError, r"gini_regularizer\(\)"),
])
def test_error_messages(call, kind, message):
    with pytest.raises(kind, match=message):
        call()


# --- Modules, compile, op registration ---------------------------------------------------------

def test_modules_match_functions():
    z = _logits((3, 4, 5))
    alpha = torch.full((3, 1, 5), 1.7, dtype=F64)
    assert torch.equal(logitlab.nn.Sparsemax(dim=1)(z), logitlab.sparsemax(z, dim=1))
    assert torch.equal(logitlab.nn.Entmax15()(z), logitlab.entmax15(z))
    module = logitlab.nn.Entmax(alpha, dim=1)
    assert torch.equal(module(z), logitlab.entmax(z, alpha, dim=1))
    assert "alpha" in dict(module.named_buffers())
    learnable = logitlab.nn.Entmax(torch.nn.Parameter(torch.tensor(1.5, dtype=F64)))
    learnable(z).sum().backward()
    assert learnable.alpha.grad is not None
    assert repr(logitlab.nn.Sparsemax()) == "Sparsemax(dim=-1)"
    assert repr(logitlab.nn.Entmax(2.0, max_iter=7)) == "Entmax(alpha=2.0, dim=-1, tol=1e-10, max_iter=7)"
    bad = z.clone()
    bad[0, 0, 0] = math.nan
    for module in (logitlab.nn.Sparsemax(validate=False), logitlab.nn.Entmax15(validate=False),
                   logitlab.nn.Entmax(1.7, validate=False)):
        assert "validate=False" in repr(module)
        assert torch.isnan(module(bad)[0, 0]).all()
        module.validate = True
        with pytest.raises(ValueError, match=r"argument 'logits' expected values without NaN"):
            module(bad)


def test_custom_ops_pass_opcheck():
    z = torch.randn(4, 40, requires_grad=True)
    alpha = torch.full((4, 1), 1.5)
    for kind in _threshold.KINDS:
        torch.library.opcheck(_threshold._threshold_op, (z, alpha, kind, 1e-10, 100, True, True, "f", "auto"),
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_torch_compile_fullgraph_has_no_graph_break():
    def objective(logits, weights, alpha):
        return ((logitlab.sparsemax(logits) * weights).sum() + (logitlab.entmax15(logits) * weights).sum()
                + (logitlab.entmax(logits, alpha) * weights).sum())

    z = torch.randn(8, 50, requires_grad=True)
    w = torch.randn(8, 50)
    alpha = torch.full((8, 1), 1.3)
    compiled = torch.compile(objective, fullgraph=True, backend="aot_eager")
    value = compiled(z, w, alpha)
    (grad,) = torch.autograd.grad(value, z)
    z2 = z.detach().clone().requires_grad_()
    expected = objective(z2, w, alpha)
    (expected_grad,) = torch.autograd.grad(expected, z2)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)
    # Validation runs inside the op: the compiled graph still rejects bad logits and α.
    bad = z.detach().clone()
    bad[3, 7] = math.nan
    with pytest.raises(ValueError, match=r"sparsemax\(\): argument 'logits' expected values without NaN"):
        compiled(bad, w, alpha)
    alpha_bad = alpha.clone()
    alpha_bad[2] = 0.9
    with pytest.raises(ValueError, match=r"entmax\(\): argument 'alpha' expected values > 1"):
        compiled(z.detach(), w, alpha_bad)


@pytest.mark.parametrize("kind", _threshold.KINDS)
def test_gradcheck_custom_op_path(kind):
    # The path torch.compile takes: the custom op with its registered autograd rule.
    z = _logits((3, 20), 0.3).requires_grad_()
    alpha = torch.full((3, 1), 1.6, dtype=F64, requires_grad=kind == "bisect")

    def probs(t, a):
        return _threshold._threshold_op(t, a, kind, 1e-14, 100, True, True, "f", "auto")[0]

    assert torch.autograd.gradcheck(probs, (z, alpha))
