"""Maximum entropy: the exponential-family demonstrations, the certificates, the error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

import logitlab
from logitlab import reference
from logitlab.maxent import (
    BOUNDARY_RTOL,
    InfeasibleMomentsError,
    MaxEntError,
    MaxEntProblem,
    MaxEntResult,
    solve_conditional_maxent,
    solve_maxent,
)

F64 = torch.float64


def solve(stats, moments, **kwargs) -> MaxEntResult:
    return solve_maxent(MaxEntProblem(torch.as_tensor(stats, dtype=F64), torch.as_tensor(moments, dtype=F64)),
                        **kwargs)


# --- the demonstrations -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 7, 127])
def test_indicator_statistics_give_softmax_with_theta_log_mu(k):
    mu = torch.softmax(torch.randn(k, dtype=F64) * 2, 0)
    result = solve(torch.eye(k), mu)
    assert result.converged and result.status == "converged"
    torch.testing.assert_close(result.probs, mu, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.softmax(result.theta, 0), mu, rtol=1e-9, atol=1e-12)
    shift = result.theta - mu.log()
    torch.testing.assert_close(shift, shift[0].expand(k), rtol=0, atol=1e-8)  # θ = log μ + const
    torch.testing.assert_close(result.log_partition, torch.logsumexp(result.theta, 0))
    assert result.max_violation <= 1e-10


def test_base_measure_tilts_theta_and_excludes_zero_weight_points():
    mu = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=F64)
    base = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=F64)
    stats = torch.eye(4, dtype=F64)[:, :3]
    result = solve_maxent(MaxEntProblem(stats, mu[:3], base))
    assert result.probs[3] == 0  # outside the support: exactly zero
    torch.testing.assert_close(result.probs, reference.gibbs_distribution(stats, result.theta, base))
    torch.testing.assert_close(result.probs, mu, rtol=1e-9, atol=1e-12)
    shift = result.theta - (mu[:3] / base[:3]).log()  # p ∝ q e^θ  ⇒  θ = log(μ/q) + const
    torch.testing.assert_close(shift, shift[0].expand(3), rtol=0, atol=1e-8)


@pytest.mark.parametrize("mean", [0.01, 0.3, 0.5, 0.99])
def test_two_outcomes_give_the_sigmoid(mean):
    result = solve([[0.0], [1.0]], [mean])
    assert result.theta.shape == (1,)
    assert math.isclose(float(result.theta), math.log(mean / (1 - mean)), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(float(torch.sigmoid(result.theta)), mean, rel_tol=1e-9)
    torch.testing.assert_close(result.probs[1], torch.sigmoid(result.theta)[0])


def _truncated_geometric_ratio(n: int, mean: float) -> float:
    """Bisection for r with mean of p_k ∝ r^k on {0..n} equal to ``mean`` (independent of the solver)."""
    lo, hi = 1e-12, 1e12
    k = np.arange(n + 1)
    for _ in range(200):
        r = math.sqrt(lo * hi)
        w = np.exp(k * math.log(r) - (k * math.log(r)).max())
        if (w * k).sum() / w.sum() < mean:
            lo = r
        else:
            hi = r
    return math.sqrt(lo * hi)


@pytest.mark.parametrize("n, mean", [(1, 0.2), (5, 1.0), (10, 3.0), (10, 7.5), (50, 25.0)])
def test_support_0_to_n_with_a_mean_gives_a_truncated_geometric(n, mean):
    result = solve(torch.arange(n + 1, dtype=F64).unsqueeze(1), [mean])
    ratios = result.probs[1:] / result.probs[:-1]
    torch.testing.assert_close(ratios, ratios[0].expand(n), rtol=1e-9, atol=0)
    assert math.isclose(float(ratios[0]), _truncated_geometric_ratio(n, mean), rel_tol=1e-8)
    assert math.isclose(float(result.probs @ torch.arange(n + 1, dtype=F64)), mean, abs_tol=1e-9)


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (0.5, 1.0), (-1.0, 0.5)])
def test_grid_with_mean_and_variance_gives_a_discretized_gaussian(mean, std):
    x = torch.linspace(-8, 8, 801, dtype=F64)
    result = solve(torch.stack([x, x * x], 1), [mean, mean**2 + std**2])
    density = torch.exp(-((x - mean) ** 2) / (2 * std**2))
    torch.testing.assert_close(result.probs, density / density.sum(), rtol=0, atol=1e-9)
    assert math.isclose(-1 / (2 * float(result.theta[1])), std**2, rel_tol=1e-7)


def _fit_logistic_regression(features, labels, num_classes, cross_entropy):
    """Maximum likelihood of a linear softmax classifier: Newton steps on ``cross_entropy``
    with the Hessian from autograd (the last class's weights fixed at 0, as the softmax only
    sees differences)."""
    d = features.shape[1]

    def loss(free):
        weight = torch.cat([free.view(num_classes - 1, d), free.new_zeros(1, d)])
        return cross_entropy(features @ weight.T, labels)

    free = torch.zeros((num_classes - 1) * d, dtype=F64)
    for _ in range(30):
        grad = torch.autograd.functional.jacobian(loss, free)
        if float(grad.abs().max()) < 1e-14:
            break
        free = free - torch.linalg.solve(torch.autograd.functional.hessian(loss, free), grad)
    return torch.cat([free.view(num_classes - 1, d), free.new_zeros(1, d)])


def _wine(columns):
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    x = torch.tensor(x[:, columns], dtype=F64)
    return (x - x.mean(0)) / x.std(0), torch.tensor(y)


def test_conditional_maxent_on_wine_equals_maximum_likelihood_logistic_regression():
    features, labels = _wine([0, 1, 2, 3])  # alcohol, malic acid, ash, alcalinity: not separable
    result = solve_conditional_maxent(features, labels)
    assert result.converged and result.probs.shape == (178, 3) and result.theta.shape == (3, 5)
    with_bias = torch.cat([features, torch.ones(178, 1, dtype=F64)], 1)
    # impl="composite": the fused kernel's backward is not differentiable twice (its Hessian
    # comes out as zeros), and Newton needs the Hessian.
    weight = _fit_logistic_regression(with_bias, labels, 3,
                                      lambda logits, target: logitlab.cross_entropy(logits, target, impl="composite"))
    torch.testing.assert_close(logitlab.cross_entropy(with_bias @ weight.T, labels),
                               torch.nn.functional.cross_entropy(with_bias @ weight.T, labels))
    probs = torch.softmax(with_bias @ weight.T, 1)
    torch.testing.assert_close(result.probs, probs, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.theta, weight - weight.mean(0), rtol=0, atol=1e-8)
    # The moments are matched: E_p[x ⊗ one-hot(y)] equals the data's.
    onehot = torch.nn.functional.one_hot(labels, 3).to(F64)
    torch.testing.assert_close(result.probs.T @ with_bias, onehot.T @ with_bias, rtol=0, atol=1e-8)


def test_conditional_maxent_matches_sklearn_unpenalized_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    features, labels = _wine([0, 1])
    result = solve_conditional_maxent(features, labels)
    model = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(features.numpy(), labels.numpy())
    expected = torch.tensor(model.predict_proba(features.numpy()))
    torch.testing.assert_close(result.probs, expected, rtol=0, atol=1e-5)


def _strictly_separable(features, labels, num_classes) -> bool:
    """LP: is there V with ⟨V_y − V_c, x_i⟩ ≥ 1 for every sample i and class c ≠ y_i?"""
    x = np.hstack([features.numpy(), np.ones((len(features), 1))])
    n, d = x.shape
    rows = []
    for i in range(n):
        for c in range(num_classes):
            if c != int(labels[i]):
                row = np.zeros(num_classes * d)
                row[int(labels[i]) * d:(int(labels[i]) + 1) * d] = -x[i]
                row[c * d:(c + 1) * d] = x[i]
                rows.append(row)
    res = linprog(np.zeros(num_classes * d), A_ub=np.array(rows), b_ub=-np.ones(len(rows)), bounds=(None, None))
    return res.status == 0


def test_separable_data_are_reported_as_boundary():
    features, labels = _wine(list(range(13)))
    assert _strictly_separable(features, labels, 3)  # the truth, from an LP
    with pytest.raises(InfeasibleMomentsError, match=r"solve_conditional_maxent\(\): argument 'labels' "
                       r"expected data that no linear classifier separates .* got labels that a linear "
                       r"classifier separates .*strictly for \d+ of 178"):
        solve_conditional_maxent(features, labels)
    result = solve_conditional_maxent(features, labels, throw=False)
    assert result.status == "boundary" and not result.converged
    features4, labels4 = _wine([0, 1, 2, 3])
    assert not _strictly_separable(features4, labels4, 3)


def test_conditional_class_without_samples_is_boundary():
    features = torch.randn(10, 2, dtype=F64)
    labels = torch.tensor([0, 1] * 5)
    with pytest.raises(InfeasibleMomentsError, match="got no sample of class 2"):
        solve_conditional_maxent(features, labels, num_classes=3)


@pytest.mark.parametrize("bad, match, kind", [
    (dict(features=torch.zeros(3)), "argument 'features' expected an \\(N, D\\) tensor", ValueError),
    (dict(labels=torch.zeros(4)), "argument 'labels' expected an integer tensor", TypeError),
    (dict(labels=torch.tensor([0, 1, 0])), "argument 'labels' expected shape \\(4,\\)", ValueError),
    (dict(labels=torch.tensor([0, 1, 0, 5]), num_classes=3),
     "argument 'labels' expected class indices in \\[0, 2\\], got <index 5>", ValueError),
    (dict(features=torch.full((4, 2), math.nan)), "argument 'features' expected finite values", ValueError),
    (dict(tol=0.0), "argument 'tol' expected a finite number > 0", ValueError),
])
def test_conditional_bad_input(bad, match, kind):
    args = dict(features=torch.randn(4, 2), labels=torch.tensor([0, 1, 1, 0]))
    args.update(bad)
    features, labels = args.pop("features"), args.pop("labels")
    with pytest.raises(kind, match=r"solve_conditional_maxent\(\): " + match):
        solve_conditional_maxent(features, labels, **args)


# --- infeasible and boundary moments, checked against an LP ------------------------------------


def _lp_classification(stats: torch.Tensor, mu: torch.Tensor) -> str:
    """'interior' | 'boundary' | 'infeasible' by LP: max t s.t. λ ≥ t, Σ λ = 1, Tᵀ λ = μ."""
    k, f = stats.shape
    c = np.zeros(k + 1)
    c[-1] = -1.0
    a_eq = np.zeros((f + 1, k + 1))
    a_eq[:f, :k] = stats.numpy().T
    a_eq[f, :k] = 1.0
    b_eq = np.concatenate([mu.numpy(), [1.0]])
    a_ub = np.hstack([-np.eye(k), np.ones((k, 1))])  # t − λ_k ≤ 0
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(k), A_eq=a_eq, b_eq=b_eq, bounds=[(0, None)] * k + [(None, 1)])
    if res.status == 2:
        return "infeasible"
    return "interior" if -res.fun > 1e-9 else "boundary"


def _polytope_case(seed: int, kind: str):
    """Random points in R^3 plus a face of 3 points on a supporting plane; μ inside/on/outside."""
    g = torch.Generator().manual_seed(seed)
    stats = torch.randn(30, 3, generator=g, dtype=F64)
    normal = torch.randn(3, generator=g, dtype=F64)
    normal = normal / normal.norm()
    level = float((stats @ normal).max()) + 0.3
    face = torch.randn(3, 3, generator=g, dtype=F64)
    face = face - (face @ normal - level).unsqueeze(1) * normal  # on the plane ⟨normal, t⟩ = level
    stats = torch.cat([stats, face])
    on_face = torch.softmax(torch.randn(3, generator=g, dtype=F64), 0) @ face
    centre = stats[:30].mean(0)
    mu = {"boundary": on_face, "interior": 0.99 * on_face + 0.01 * centre,
          "infeasible": on_face + 0.05 * normal}[kind]
    return stats, mu


@pytest.mark.parametrize("kind", ["interior", "boundary", "infeasible"])
def test_status_agrees_with_linear_programming_on_random_polytopes(kind):
    expected = {"interior": "converged", "boundary": "boundary", "infeasible": "infeasible"}[kind]
    for seed in range(12):
        stats, mu = _polytope_case(seed, kind)
        assert _lp_classification(stats, mu) == kind
        result = solve(stats, mu, throw=False)
        assert result.status == expected, (seed, result.message)
        if kind == "interior":
            assert result.max_violation <= 1e-10 * float(stats.abs().max())
            torch.testing.assert_close(result.probs, reference.gibbs_distribution(stats, result.theta))
            torch.testing.assert_close(reference.gibbs_distribution(stats, result.theta) @ stats, mu,
                                       rtol=0, atol=1e-9)


def test_boundary_found_by_the_iterates_is_certified():
    # The hexagon's edge midpoint: every coordinate lies strictly inside its range.
    angles = torch.arange(6, dtype=F64) * math.pi / 3
    hexagon = torch.stack([angles.cos(), angles.sin()], 1)
    midpoint = (hexagon[0] + hexagon[1]) / 2
    with pytest.raises(InfeasibleMomentsError, match=r"on its boundary \(found after \d+ Newton steps: .*"
                                                     r"the 4 of 6 points below that face must get probability 0"):
        solve(hexagon, midpoint)
    outside = solve(hexagon, midpoint * 1.01, throw=False)
    assert outside.status == "infeasible" and "max_k ⟨v, T_k⟩" in outside.message
    inside = solve(hexagon, midpoint * 0.99)
    assert inside.converged


@pytest.mark.parametrize("stats, mu, status, match", [
    ([[0.0], [1.0]], [1.5], "infeasible", r"coordinate 0 is 1.5, outside \[0, 1\]"),
    ([[0.0], [1.0]], [1.0], "boundary", r"coordinate 0 equals the maximum 1 of statistics\[:, 0\]"),
    (torch.eye(3), [0.5, 0.5, 0.0], "boundary", "coordinate 2 equals the minimum 0"),
    ([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], [0.3, 0.3], "infeasible", "outside their affine hull"),
    ([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.6, 0.6], "infeasible", r"max_k ⟨v, T_k⟩ = .* < ⟨v, μ⟩"),
    ([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.5, 0.5], "boundary", "on its boundary"),
])
def test_bad_moments_raise_by_default_and_return_the_record_on_request(stats, mu, status, match):
    with pytest.raises(InfeasibleMomentsError,
                       match=r"solve_maxent\(\): argument 'problem' expected .*" + match) as info:
        solve(stats, mu)
    assert isinstance(info.value, ValueError) and info.value.result.status == status
    result = solve(stats, mu, throw=False)
    assert result.status == status and not result.converged and result.max_violation > 0
    assert torch.isfinite(result.probs).all() and math.isclose(float(result.probs.sum()), 1.0)


def test_float32_probabilities_are_accepted_within_their_rounding():
    result = solve_maxent(MaxEntProblem(torch.eye(3), torch.tensor([0.2, 0.3, 0.5])))
    assert result.converged
    torch.testing.assert_close(result.probs, torch.tensor([0.2, 0.3, 0.5], dtype=F64), rtol=1e-7, atol=0)


def test_never_stops_silently():
    x = torch.linspace(-8, 8, 401, dtype=F64)
    problem = MaxEntProblem(torch.stack([x, x * x], 1), torch.tensor([0.5, 0.5**2 + 1.0], dtype=F64))
    with pytest.raises(MaxEntError, match=r"solve_maxent\(\): did not converge in 1 Newton steps") as info:
        solve_maxent(problem, max_iter=1)
    assert info.value.result.status == "max_iter" and not isinstance(info.value, ValueError)
    result = solve_maxent(problem, max_iter=0, throw=False)
    assert result.status == "max_iter" and result.n_iter == 0
    stalled = solve_maxent(problem, tol=1e-300, throw=False)
    assert stalled.status == "stalled" and "raise tol" in stalled.message


def test_large_support_converges_in_few_newton_steps():
    stats = torch.randn(2000, 20, dtype=F64)
    mu = torch.softmax(torch.randn(2000, dtype=F64), 0) @ stats
    result = solve(stats, mu)
    assert result.converged and result.n_iter <= 30
    torch.testing.assert_close(result.probs @ stats, mu, rtol=0, atol=1e-9)


@pytest.mark.parametrize("args, kind, match", [
    ((torch.zeros(3), torch.zeros(3)), ValueError, r"MaxEntProblem\(\): argument 'statistics' expected a \(K, F\)"),
    ((torch.zeros(3, 2), torch.zeros(3)), ValueError, r"argument 'moments' expected shape \(2,\)"),
    ((torch.zeros(3, 2, dtype=torch.long), torch.zeros(2)), TypeError, "expected a floating-point tensor"),
    ((torch.full((3, 2), math.inf), torch.zeros(2)), ValueError, "'statistics' expected finite values"),
    ((torch.zeros(3, 2), torch.tensor([math.nan, 0.0])), ValueError, "'moments' expected finite values"),
    ((torch.zeros(3, 2), torch.zeros(2), torch.tensor([1.0, -1.0, 1.0])), ValueError,
     "'base_measure' expected finite values >= 0"),
    ((torch.zeros(3, 2), torch.zeros(2), torch.zeros(3)), ValueError, "at least one positive weight"),
    ((torch.zeros(3, 2), torch.zeros(2), torch.ones(2)), ValueError, r"'base_measure' expected shape \(3,\)"),
])
def test_problem_bad_input(args, kind, match):
    with pytest.raises(kind, match=match):
        MaxEntProblem(*args)


def test_solver_bad_arguments():
    problem = MaxEntProblem(torch.eye(2), torch.tensor([0.5, 0.5]))
    with pytest.raises(TypeError, match=r"solve_maxent\(\): argument 'problem' expected a MaxEntProblem"):
        solve_maxent(torch.eye(2))
    with pytest.raises(ValueError, match="argument 'tol' expected a finite number > 0, got -1.0"):
        solve_maxent(problem, tol=-1.0)
    with pytest.raises(ValueError, match="argument 'max_iter' expected an int >= 0, got -1"):
        solve_maxent(problem, max_iter=-1)
    with pytest.raises(TypeError, match="argument 'throw' expected a bool"):
        solve_maxent(problem, throw="yes")


def test_boundary_tolerance_is_documented_and_small():
    assert 0 < BOUNDARY_RTOL <= 1e-6
