"""The softmax as the posterior of independent evidence: naive Bayes with exponential families.

If the class-conditional density of x is an exponential family with a class-independent base
measure and sufficient statistics, p(x | y) = h(x) exp(⟨η_y, T(x)⟩ − A(η_y)), and the pieces
x_1, …, x_D are independent given y (naive Bayes: T and η concatenate over the pieces), then
Bayes' rule gives

    p(y | x) = π_y p(x | y) / Σ_c π_c p(x | c) = softmax_y(⟨η_y, T(x)⟩ − A(η_y) + log π_y):

h(x) cancels, each piece adds its own term ⟨η_{y,d}, T_d(x_d)⟩ to the class's log-odds, and the
posterior is a softmax of a function linear in T(x). With Gaussian pieces of a shared variance
σ_d² (T = x), it is multinomial logistic regression, W_yd = μ_yd / σ_d²; with per-class variances
(T = (x, x²)) a softmax of a function linear in (x, x²) (scikit-learn's ``GaussianNB``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitlab._validation import check_floating, fail

__all__ = ["exponential_family_posterior_logits", "gaussian_naive_bayes_logits"]


def exponential_family_posterior_logits(statistics: Tensor, natural: Tensor, log_partition: Tensor,
                                        log_prior: Tensor) -> Tensor:
    """Logits of p(y | x) for exponential-family class conditionals: ⟨η_y, T(x)⟩ − A(η_y) + log π_y.

    Args:
        statistics: (N, F) T(x) of each example (the pieces' statistics concatenated).
        natural: (C, F) η_y of each class.
        log_partition: (C,) A(η_y).
        log_prior: (C,) log π_y.

    Returns:
        (N, C) logits; their softmax is the Bayes posterior (the base measure h(x) cancels).

    Raises:
        TypeError, ValueError: non-floating or mismatched shapes.

    Example:
        >>> # two classes of unit-variance Gaussians at −1 and +1, equal priors: logit difference 2x
        >>> x = torch.tensor([[0.5]])
        >>> logits = exponential_family_posterior_logits(x, torch.tensor([[-1.0], [1.0]]),
        ...                                              torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]).log())
        >>> logits[:, 1] - logits[:, 0]
        tensor([1.])
    """
    fn = "exponential_family_posterior_logits"
    for name, value in (("statistics", statistics), ("natural", natural), ("log_partition", log_partition),
                        ("log_prior", log_prior)):
        check_floating(fn, name, value)
    if statistics.ndim != 2 or natural.ndim != 2 or natural.shape[1] != statistics.shape[1]:
        fail(fn, "natural", f"shape (C, {statistics.shape[-1]}) (F = statistics.shape[1])",
             f"<shape {tuple(natural.shape)}>")
    c = natural.shape[0]
    for name, value in (("log_partition", log_partition), ("log_prior", log_prior)):
        if tuple(value.shape) != (c,):
            fail(fn, name, f"shape ({c},) (C = natural.shape[0])", f"<shape {tuple(value.shape)}>")
    return statistics @ natural.T - log_partition + log_prior


def gaussian_naive_bayes_logits(x: Tensor, means: Tensor, variances: Tensor, log_prior: Tensor) -> Tensor:
    """Posterior logits of Gaussian naive Bayes as an exponential family: T(x) = (x, x²).

    Per class y and feature d, x_d | y ~ N(μ_yd, σ²_yd): η_y = (μ_y/σ²_y, −1/(2σ²_y)) and
    A(η_y) = Σ_d μ²_yd/(2σ²_yd) + ½ log(2π σ²_yd); the logits are
    :func:`exponential_family_posterior_logits` of T(x) = (x, x²).

    Args:
        x: (N, D) examples; means: (C, D); variances: (C, D) (> 0) or (D,) shared;
        log_prior: (C,).

    Returns:
        (N, C) logits, softmax(logits) = p(y | x).

    Raises:
        TypeError, ValueError: bad shapes or non-positive variances.

    Example:
        >>> logits = gaussian_naive_bayes_logits(torch.tensor([[0.5]]), torch.tensor([[-1.0], [1.0]]),
        ...                                      torch.tensor([1.0]), torch.tensor([0.5, 0.5]).log())
        >>> logits.softmax(-1)   # sigmoid(2 · 0.5)
        tensor([[0.2689, 0.7311]])
    """
    fn = "gaussian_naive_bayes_logits"
    for name, value in (("x", x), ("means", means), ("variances", variances), ("log_prior", log_prior)):
        check_floating(fn, name, value)
    if x.ndim != 2 or means.ndim != 2 or means.shape[1] != x.shape[1]:
        fail(fn, "means", f"shape (C, {x.shape[-1]}) (D = x.shape[1])", f"<shape {tuple(means.shape)}>")
    var = variances.expand_as(means) if variances.ndim == 1 else variances
    if var.shape != means.shape:
        fail(fn, "variances", f"shape {tuple(means.shape)} or ({means.shape[1]},)", f"<shape {tuple(variances.shape)}>")
    if not bool((var > 0).all()):
        fail(fn, "variances", "values > 0", f"<minimum {float(var.min()):.3g}>")
    natural = torch.cat([means / var, -0.5 / var], 1)
    log_partition = (means * means / (2 * var) + 0.5 * torch.log(2 * math.pi * var)).sum(1)
    return exponential_family_posterior_logits(torch.cat([x, x * x], 1), natural, log_partition, log_prior)
