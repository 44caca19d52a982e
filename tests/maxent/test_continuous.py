"""Maximum entropy on continuous supports, naive Bayes as a softmax, and the binary links on real
data (issue 24, item 3 of its list: the exponential family beyond finite supports)."""

from __future__ import annotations

import math

import pytest
import torch

from logitlab.analysis.links import LINKS, binary_log_probs, compare_binary_links, fit_binary_link
from logitlab.maxent import (
    InfeasibleMomentsError,
    MaxEntError,
    exponential_family_posterior_logits,
    gauss_legendre,
    gaussian_naive_bayes_logits,
    solve_continuous_maxent,
)
from logitlab.metrics import expected_calibration_error

F64 = torch.float64


def _xx(x):
    return torch.stack([x, x * x], -1)


@pytest.mark.parametrize("m,s", [(0.0, 1.0), (1.0, 2.0), (-30.0, 0.25)])
def test_gaussian_is_the_maxent_density_with_mean_and_variance(m, s):
    result = solve_continuous_maxent(_xx, torch.tensor([m, m * m + s * s], dtype=F64), scale=s, center=m,
                                     tol=1e-12)
    assert result.converged and result.tail_mass < 1e-15
    torch.testing.assert_close(result.theta, torch.tensor([m / s**2, -1 / (2 * s**2)], dtype=F64),
                               atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(result.log_partition,
                               torch.tensor(m * m / (2 * s * s) + 0.5 * math.log(2 * math.pi * s * s), dtype=F64),
                               atol=1e-9, rtol=1e-9)
    x = torch.tensor([m - s, m, m + 2 * s], dtype=F64)
    normal = torch.distributions.Normal(torch.tensor(m, dtype=F64), torch.tensor(s, dtype=F64))
    torch.testing.assert_close(result.log_density(x), normal.log_prob(x), atol=1e-8, rtol=0)


@pytest.mark.parametrize("mean", [0.5, 3.0])
def test_exponential_on_the_half_line(mean):
    result = solve_continuous_maxent(lambda x: x[:, None], torch.tensor([mean], dtype=F64), support="positive",
                                     scale=mean, tol=1e-12)
    torch.testing.assert_close(result.theta, torch.tensor([-1 / mean], dtype=F64), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(result.log_partition, torch.tensor(math.log(mean), dtype=F64), atol=1e-9, rtol=0)


def test_gamma_from_mean_and_mean_log():
    shape, rate = 2.5, 1.5
    mean_log = float(torch.special.digamma(torch.tensor(shape, dtype=F64))) - math.log(rate)
    result = solve_continuous_maxent(lambda x: torch.stack([x, x.log()], -1),
                                     torch.tensor([shape / rate, mean_log], dtype=F64), support="positive",
                                     scale=2.0, tol=1e-12)
    torch.testing.assert_close(result.theta, torch.tensor([-rate, shape - 1], dtype=F64), atol=1e-7, rtol=1e-7)
    gamma = torch.distributions.Gamma(torch.tensor(shape, dtype=F64), torch.tensor(rate, dtype=F64))
    x = torch.tensor([0.3, 1.0, 4.0], dtype=F64)
    torch.testing.assert_close(result.log_density(x), gamma.log_prob(x), atol=1e-7, rtol=0)


@pytest.mark.parametrize("mean", [0.2, 0.5, 0.93])
def test_truncated_exponential_on_an_interval(mean):
    a, b = 0.0, 1.0
    result = solve_continuous_maxent(lambda x: x[:, None], torch.tensor([mean], dtype=F64), support=(a, b),
                                     tol=1e-13)
    theta = float(result.theta)
    if mean == 0.5:
        assert abs(theta) < 1e-8  # the uniform density
        return
    closed = ((b * math.exp(theta * b) - a * math.exp(theta * a)) / (math.exp(theta * b) - math.exp(theta * a))
              - 1 / theta)
    assert closed == pytest.approx(mean, abs=1e-11)
    log_z = math.log((math.exp(theta * b) - math.exp(theta * a)) / theta)
    assert float(result.log_partition) == pytest.approx(log_z, abs=1e-11)


def test_infeasible_moments_and_truncation_are_reported():
    with pytest.raises(InfeasibleMomentsError, match=r"solve_continuous_maxent|solve_maxent"):
        solve_continuous_maxent(_xx, torch.tensor([0.0, -1.0], dtype=F64))  # a negative variance
    with pytest.raises(InfeasibleMomentsError):
        solve_continuous_maxent(lambda x: x[:, None], torch.tensor([1.5], dtype=F64), support=(0.0, 1.0))
    with pytest.raises(MaxEntError, match=r"^solve_continuous_maxent\(\): the solution puts mass .* raise scale"):
        solve_continuous_maxent(_xx, torch.tensor([0.0, 100.0], dtype=F64), scale=0.5)  # σ = 10, range ±20
    with pytest.raises(ValueError, match=r"^solve_continuous_maxent\(\): argument 'support' expected 'real'"):
        solve_continuous_maxent(_xx, torch.tensor([0.0, 1.0], dtype=F64), support=(1.0, 0.0))
    nodes, weights = gauss_legendre(8)
    for degree in range(16):  # exact to degree 2n − 1
        exact = 0.0 if degree % 2 else 2 / (degree + 1)
        assert float((weights * nodes**degree).sum()) == pytest.approx(exact, abs=1e-14)


# --- naive Bayes: independent evidence adds in log-odds, and the posterior is a softmax ------

def test_gaussian_naive_bayes_posterior_is_a_softmax_and_equals_sklearn():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_wine
    from sklearn.naive_bayes import GaussianNB

    x, y = load_wine(return_X_y=True)
    model = GaussianNB().fit(x, y)
    xt = torch.tensor(x, dtype=F64)
    logits = gaussian_naive_bayes_logits(xt, torch.tensor(model.theta_, dtype=F64),
                                         torch.tensor(model.var_, dtype=F64),
                                         torch.tensor(model.class_prior_, dtype=F64).log())
    torch.testing.assert_close(logits.softmax(-1), torch.tensor(model.predict_proba(x), dtype=F64),
                               atol=1e-10, rtol=0)
    del sklearn


def test_bayes_rule_by_brute_force_equals_the_exponential_family_softmax():
    """Independent Poisson counts and Bernoulli flags given the class: the posterior from Bayes'
    rule, product of the pieces' likelihoods, equals softmax(⟨η_y, T(x)⟩ − A(η_y) + log π_y)."""
    rates = torch.tensor([[1.0, 4.0], [3.0, 0.5], [2.0, 2.0]], dtype=F64)      # (C, 2) Poisson rates
    flags = torch.tensor([[0.2], [0.7], [0.5]], dtype=F64)                      # (C, 1) Bernoulli
    prior = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    counts = torch.tensor([[0, 3], [4, 0], [2, 2], [7, 1]], dtype=F64)
    bits = torch.tensor([[1.0], [0.0], [1.0], [0.0]], dtype=F64)
    joint = prior.log()[None, :].repeat(4, 1)
    for c in range(3):
        joint[:, c] += torch.distributions.Poisson(rates[c]).log_prob(counts).sum(-1)
        joint[:, c] += torch.distributions.Bernoulli(flags[c]).log_prob(bits).sum(-1)
    bayes = joint.softmax(-1)
    # Poisson: η = log λ, T = k, A = λ (h = 1/k! cancels); Bernoulli: η = logit f, T = b, A = log(1 + e^η).
    natural = torch.cat([rates.log(), torch.logit(flags)], 1)
    log_partition = rates.sum(1) + torch.nn.functional.softplus(torch.logit(flags)).sum(1)
    logits = exponential_family_posterior_logits(torch.cat([counts, bits], 1), natural, log_partition, prior.log())
    torch.testing.assert_close(logits.softmax(-1), bayes, atol=1e-12, rtol=0)


# --- sigmoid against probit and cloglog on a real data set --------------------------------------

def _breast_cancer():
    sk = pytest.importorskip("sklearn.datasets")
    x, y = sk.load_breast_cancer(return_X_y=True)
    # Three features on which the classes overlap (texture, smoothness, fractal dimension): the
    # regime where the link could matter; all 30 features make the data nearly separable.
    return torch.tensor(x[:, [1, 4, 9]], dtype=F64), torch.tensor(y)


@pytest.mark.slow
def test_links_compared_on_breast_cancer():
    x, y = _breast_cancer()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:380], perm[380:]
    fits = compare_binary_links(x[tr], y[tr], x[te], y[te], l2=1e-3)
    assert [f.link for f in fits] == list(LINKS)
    base_rate = float(y[tr].double().mean())
    constant_nll = -(y[te].double() * math.log(base_rate) + (1 - y[te].double()) * math.log(1 - base_rate)).mean()
    mean, std = x[tr].mean(0), x[tr].std(0)
    for fit in fits:
        assert fit.test_nll < float(constant_nll) - 0.1  # every link learns something
        p = fit.probs((x[te] - mean) / std)
        assert fit.test_brier == pytest.approx(float((p - y[te]).square().mean()), abs=1e-12)
        ece = expected_calibration_error(torch.stack([1 - p, p], 1), y[te], n_bins=10)
        assert fit.test_ece == pytest.approx(float(ece), abs=1e-12)


def test_logit_fit_is_sklearn_logistic_regression_and_every_fit_is_stationary():
    linear = pytest.importorskip("sklearn.linear_model")
    x, y = _breast_cancer()
    x = (x - x.mean(0)) / x.std(0)
    l2 = 1e-3
    for link in LINKS:
        w, b, _ = fit_binary_link(x, y, link=link, l2=l2)
        params = torch.cat([w, b.reshape(1)]).requires_grad_()
        log_p, log_q = binary_log_probs(x @ params[:-1] + params[-1], link)
        loss = -(y * log_p + (1 - y) * log_q).mean() + l2 * params[:-1].square().sum()
        (grad,) = torch.autograd.grad(loss, params)
        assert float(grad.abs().max()) < 1e-7, link
    w, b, _ = fit_binary_link(x, y, link="logit", l2=l2)
    peer = linear.LogisticRegression(C=1 / (2 * l2 * len(y)), tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
    torch.testing.assert_close(w, torch.tensor(peer.coef_[0], dtype=F64), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, torch.tensor(peer.intercept_[0], dtype=F64), atol=1e-5, rtol=1e-5)
