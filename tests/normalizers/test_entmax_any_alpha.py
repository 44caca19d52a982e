"""α-entmax for every α > 0 (issue 24, item 1): α < 1 dense maps, α = 1 the softmax, continuity
across 1, per-row tensor α crossing 1, the solve report, and the entmax package as peer."""

from __future__ import annotations

import math

import pytest
import torch

import logitlab
from conftest import ODD_SHAPES, dims_of
from logitlab import reference as ref
from logitlab.normalizers._qexp import DENSE_BELOW
from logitlab.normalizers.entmax import ConvergenceError

peer = pytest.importorskip("entmax")
F64 = torch.float64
# The peer's range (its tests draw α from (0.05, 2.55)), both solvers, and α = 1 itself.
ALPHAS = [0.05, 0.3, 0.7, 0.95, 0.999, 1.0, 1.001, 1.05, DENSE_BELOW, 1.3, 2.0, 2.55]


def _logits(shape, scale=2.0, dtype=F64):
    return (scale * torch.randn(shape, dtype=F64)).to(dtype)


@pytest.mark.parametrize("alpha", [a for a in ALPHAS if a != 1.0])
def test_values_and_both_gradients_match_entmax_bisect(alpha):
    z = _logits((6, 11))
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    alpha_a = torch.full((6, 1), alpha, dtype=F64, requires_grad=True)
    alpha_b = torch.full((6, 1), alpha, dtype=F64, requires_grad=True)
    pa = logitlab.entmax(a, alpha_a)
    pb = peer.entmax_bisect(b, alpha_b, n_iter=200)
    torch.testing.assert_close(pa, pb, atol=1e-10, rtol=0)
    w = torch.randn(6, 11, dtype=F64)
    (pa * w).sum().backward()
    (pb * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(alpha_a.grad, alpha_b.grad, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("alpha", [0.2, 0.8, 1.0, 1.03])
def test_matches_the_float64_reference_on_odd_shapes_and_every_dim(shape, alpha):
    z = _logits(shape)
    for dim in dims_of(shape):
        # tol = 1e-10 on |Σp − 1| before renormalizing: ~1e-11 on the entries
        torch.testing.assert_close(logitlab.entmax(z, alpha, dim=dim), ref.entmax_any_alpha(z, alpha, dim=dim),
                                   atol=1e-10, rtol=0)


def test_alpha_one_is_softmax_and_continuous_in_value_and_gradient():
    z = _logits((5, 9))
    torch.testing.assert_close(logitlab.entmax(z, 1.0), torch.softmax(z, -1), atol=1e-15, rtol=0)
    w = torch.randn(5, 9, dtype=F64)

    def value_and_grads(alpha):
        x = z.clone().requires_grad_()
        a = torch.full((5, 1), alpha, dtype=F64, requires_grad=True)
        p = logitlab.entmax(x, a)
        (p * w).sum().backward()
        return p.detach(), x.grad, a.grad

    at_one = value_and_grads(1.0)
    assert float(at_one[2].abs().max()) > 1e-3  # the α-gradient at 1 is not trivially 0
    for delta in (1e-9, 1e-7, 1e-5):
        for side in (1 - delta, 1 + delta):
            for got, want in zip(value_and_grads(side), at_one):
                torch.testing.assert_close(got, want, atol=30 * delta, rtol=0)
    # The α-gradient at 1 is the limit −½ Σ (g − c) p log² p: a finite difference agrees.
    h = 1e-6
    fd = ((logitlab.entmax(z, 1 + h) - logitlab.entmax(z, 1 - h)) * w).sum(-1, keepdim=True) / (2 * h)
    torch.testing.assert_close(at_one[2], fd, atol=1e-7, rtol=1e-6)


def test_per_row_alpha_crossing_one_gradcheck_and_rows_independent():
    z = _logits((6, 7), scale=1.0).requires_grad_()
    alpha = torch.tensor([[0.3], [1.0], [1 - 1e-9], [1.02], [1.5], [2.4]], dtype=F64, requires_grad=True)
    fn = lambda x, a: logitlab.entmax(x, a, tol=1e-14)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z, alpha))
    assert torch.autograd.gradgradcheck(fn, (z, alpha), atol=1e-6, rtol=1e-4)
    together = logitlab.entmax(z, alpha)
    for i, a in enumerate(alpha.flatten().tolist()):
        torch.testing.assert_close(together[i], logitlab.entmax(z[i], a), atol=1e-12, rtol=0)


def test_learned_alpha_can_move_through_one():
    """Adaptive entmax: gradient steps on α start above 1 and end below it, finite throughout."""
    z = _logits((8, 10))
    target = ref.entmax_any_alpha(z, 0.6)  # each row's α is recovered from its map
    alpha = torch.full((8, 1), 1.3, dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([alpha], lr=0.5)
    seen = []
    for _ in range(60):
        opt.zero_grad()
        loss = (logitlab.entmax(z, alpha) - target).square().sum()
        loss.backward()
        assert torch.isfinite(alpha.grad).all()
        opt.step()
        seen.append(float(alpha.detach().mean()))
    assert seen[0] > 1 > seen[-1]
    torch.testing.assert_close(alpha.detach(), torch.full((8, 1), 0.6, dtype=F64), atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [0.3, 1.0, 1.04])
def test_low_precision_inputs_are_solved_in_float64(dtype, alpha):
    z = _logits((4, 50), dtype=dtype)
    out = logitlab.entmax(z, alpha)
    assert out.dtype == dtype
    truth = ref.entmax_any_alpha(z.to(F64), alpha)
    torch.testing.assert_close(out.to(F64), truth, atol=torch.finfo(dtype).eps, rtol=0)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.04])
def test_excluded_classes_and_all_excluded_rows(alpha):
    z = _logits((3, 6)).requires_grad_()
    mask = torch.tensor([[False, True, False, False, True, False], [False] * 6, [True] * 6])
    x = z.masked_fill(mask, -math.inf)
    p = logitlab.entmax(x, alpha)
    assert torch.equal(p[mask], torch.zeros(int(mask.sum()), dtype=F64))
    torch.testing.assert_close(p[:2].sum(-1), torch.ones(2, dtype=F64))
    kept = ref.entmax_any_alpha(x[0, ~mask[0]], alpha)
    torch.testing.assert_close(p[0, ~mask[0]], kept, atol=1e-12, rtol=0)
    p.square().sum().backward()
    assert torch.isfinite(z.grad).all() and torch.equal(z.grad[2], torch.zeros(6, dtype=F64))


def test_solve_report_below_one():
    z = _logits((3, 2000))
    info = logitlab.entmax_with_info(z, 0.2)
    assert bool(info.converged.all()) and info.max_violation <= 1e-10 and (info.n_iter >= 1).all()
    # τ = (α−1) μ − 1 reproduces the probabilities: p = [(α−1) z − τ]^{1/(α−1)}.
    expected = ((0.2 - 1) * z - info.tau[:, None]) ** (1 / (0.2 - 1))
    torch.testing.assert_close(info.probs, expected / expected.sum(-1, keepdim=True), atol=1e-12, rtol=0)
    bad = logitlab.entmax_with_info(z, 0.2, max_iter=1)
    assert not bool(bad.converged.any()) and (bad.n_iter == 1).all() and bad.max_violation > 1e-10
    with pytest.raises(ConvergenceError, match=r"^entmax\(\): the threshold solve did not converge within max_iter=1"):
        logitlab.entmax(z, 0.2, max_iter=1)


def test_unchecked_bad_alpha_below_one_gives_nan_rows():
    z = torch.randn(3, 8)
    p = logitlab.entmax(z, torch.tensor([[0.5], [0.0], [-2.0]]), validate=False)
    assert torch.isfinite(p[0]).all() and torch.isnan(p[1:]).all()
    with pytest.raises(ValueError, match=r"^entmax\(\): argument 'alpha' expected values > 0 \(finite\), got 0.0"):
        logitlab.entmax(z, torch.tensor([[0.5], [0.0], [-2.0]]))


def test_regularizer_and_loss_below_and_at_one():
    p = torch.softmax(_logits((4, 6)), -1)
    for alpha in (0.3, 0.9):
        torch.testing.assert_close(logitlab.tsallis_regularizer(p, alpha=alpha), ref.tsallis_regularizer(p, alpha))
    torch.testing.assert_close(logitlab.tsallis_regularizer(p, alpha=1.0), (p * p.log()).sum(-1))
    near = logitlab.tsallis_regularizer(p, alpha=1 + 1e-9)
    torch.testing.assert_close(near, (p * p.log()).sum(-1), atol=1e-8, rtol=0)
    z = _logits((5, 7)).requires_grad_()
    target = torch.tensor([0, 3, 6, 1, 1])
    torch.testing.assert_close(logitlab.entmax_loss(z, target, alpha=1.0), logitlab.cross_entropy(z, target))
    loss = logitlab.entmax_loss(z, target, alpha=0.5, reduction="sum")
    loss.backward()
    onehot = torch.nn.functional.one_hot(target, 7).to(F64)
    torch.testing.assert_close(z.grad, ref.entmax_any_alpha(z.detach(), 0.5) - onehot, atol=1e-10, rtol=0)
    want = ref.fenchel_young_loss(z.detach(), onehot, ref.entmax_any_alpha(z.detach(), 0.5), "tsallis", alpha=0.5)
    torch.testing.assert_close(loss.detach(), want.sum(), atol=1e-10, rtol=0)


# The peer's own tests of entmax_bisect, run against logitlab through an adapter (issue 24: the
# α ≤ 1 cases failed there, since logitlab rejected them).
PEER_TESTS = [
    ("test_entmax15", {}),
    *[("test_entmax_grad", {"alpha": a}) for a in (0.2, 0.5, 0.75, 1.2, 1.5, 1.75, 2.25)],
    ("test_entmax_correct_multiple_alphas", {}),
    ("test_entmax_grad_multiple_alphas", {}),
    *[("test_arbitrary_dimension", {"dim": d}) for d in range(4)],
    *[("test_arbitrary_dimension_grad", {"dim": d}) for d in range(4)],
]


@pytest.mark.parametrize("name,kwargs", PEER_TESTS, ids=[f"{n}{k}" for n, k in PEER_TESTS])
def test_peer_suite_through_an_adapter(name, kwargs, monkeypatch):
    suite = pytest.importorskip("entmax.test_root_finding")

    def adapter(x, alpha=1.5, dim=-1, n_iter=50, ensure_sum_one=True):
        return logitlab.entmax(x, alpha, dim=dim)

    monkeypatch.setattr(suite, "entmax_bisect", adapter)
    getattr(suite, name)(**kwargs)
