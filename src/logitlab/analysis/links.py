"""Why the sigmoid, measured: binary GLMs with the logit, probit and cloglog links on real data.

A binary model p(y = 1 | x) = g⁻¹(⟨w, x⟩ + b) for three inverse links g⁻¹:

* logit: σ(z) = 1 / (1 + e^{−z}), the 2-point maximum-entropy (Gibbs) model; its NLL has the
  gradient (p − y) x and a Hessian that never vanishes where the data are.
* probit: Φ(z), the standard normal CDF (a latent Gaussian threshold).
* cloglog: 1 − exp(−e^z), asymmetric (the Gumbel-minimum latent, a Poisson rate model).

:func:`compare_binary_links` fits each by maximum likelihood (L-BFGS in float64 with a small
L2 penalty on w) on a training split and reports held-out NLL, Brier score, ECE and accuracy,
so the choice is a measurement, not an assertion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from logitlab._validation import check_floating, check_positive, fail
from logitlab.metrics import expected_calibration_error

__all__ = ["LINKS", "binary_log_probs", "fit_binary_link", "compare_binary_links", "LinkFit"]

LINKS = ("logit", "probit", "cloglog")
F64 = torch.float64


def binary_log_probs(scores: Tensor, link: str) -> tuple[Tensor, Tensor]:
    """(log p, log(1 − p)) of p = g⁻¹(scores) for a link, computed without cancellation.

    Example:
        >>> [round(float(v.exp()), 4) for v in binary_log_probs(torch.tensor(0.0), "probit")]
        [0.5, 0.5]
    """
    if link == "logit":
        return torch.nn.functional.logsigmoid(scores), torch.nn.functional.logsigmoid(-scores)
    if link == "probit":
        return torch.special.log_ndtr(scores), torch.special.log_ndtr(-scores)
    if link == "cloglog":
        rate = scores.exp()
        return torch.log(-torch.expm1(-rate)), -rate
    fail("binary_log_probs", "link", "one of " + ", ".join(repr(n) for n in LINKS), link)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class LinkFit:
    """One fitted link: ``weight`` (D,), ``bias`` 0-d, and held-out metrics (nats, Brier, ECE)."""

    link: str
    weight: Tensor
    bias: Tensor
    train_nll: float
    test_nll: float
    test_brier: float
    test_ece: float
    test_accuracy: float

    def probs(self, features: Tensor) -> Tensor:
        """p(y = 1 | x) (N,)."""
        return binary_log_probs(features.to(F64) @ self.weight + self.bias, self.link)[0].exp()


def _nll(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, link: str) -> Tensor:
    log_p, log_q = binary_log_probs(features @ weight + bias, link)
    return -(labels * log_p + (1 - labels) * log_q).mean()


def fit_binary_link(features: Tensor, labels: Tensor, *, link: str = "logit", l2: float = 1e-4,
                    max_iter: int = 500) -> tuple[Tensor, Tensor, float]:
    """Maximum-likelihood (L2-penalized) binary GLM: (weight (D,), bias 0-d, train NLL per example).

    Minimizes mean −[y log p + (1 − y) log(1 − p)] + l2 ‖w‖² with p = g⁻¹(⟨w, x⟩ + b) by L-BFGS
    (strong Wolfe line search) in float64. Standardize the features first.

    Raises:
        TypeError, ValueError: bad shapes, labels outside {0, 1}, an unknown link, l2 <= 0.

    Example:
        >>> x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0], [0.5], [-0.5]])
        >>> w, b, nll = fit_binary_link(x, torch.tensor([0, 0, 1, 1, 0, 1]), link="logit")
        >>> bool(w > 0)
        True
    """
    fn = "fit_binary_link"
    check_floating(fn, "features", features)
    if features.ndim != 2:
        fail(fn, "features", "an (N, D) tensor", f"<shape {tuple(features.shape)}>")
    if labels.shape != (features.shape[0],) or not bool(((labels == 0) | (labels == 1)).all()):
        fail(fn, "labels", f"(N,) = ({features.shape[0]},) values in {{0, 1}}", f"<shape {tuple(labels.shape)}>")
    if link not in LINKS:
        fail(fn, "link", "one of " + ", ".join(repr(n) for n in LINKS), link)
    l2 = check_positive(fn, "l2", l2)
    x, y = features.to(F64), labels.to(F64)
    params = torch.zeros(x.shape[1] + 1, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _nll(x, y, params[:-1], params[-1], link) + l2 * params[:-1].square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight, bias = params[:-1].detach(), params[-1].detach()
    return weight, bias, float(_nll(x, y, weight, bias, link))


def compare_binary_links(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                         test_labels: Tensor, *, links: tuple[str, ...] = LINKS, l2: float = 1e-4,
                         n_bins: int = 10) -> list[LinkFit]:
    """Fit each link on the training split; held-out NLL, Brier, ECE (``n_bins``) and accuracy.

    Features are standardized with the training split's mean and standard deviation.

    Returns:
        One :class:`LinkFit` per link, in the order given.

    Example:
        >>> torch.manual_seed(0) and None
        >>> x = torch.randn(200, 2, dtype=torch.float64)
        >>> y = (torch.rand(200, dtype=torch.float64) < torch.sigmoid(2 * x[:, 0])).long()
        >>> fits = compare_binary_links(x[:150], y[:150], x[150:], y[150:])
        >>> [f.link for f in fits]
        ['logit', 'probit', 'cloglog']
    """
    mean = train_features.to(F64).mean(0)
    std = train_features.to(F64).std(0).clamp_min(1e-12)
    xtr = (train_features.to(F64) - mean) / std
    xte = (test_features.to(F64) - mean) / std
    yte = test_labels.to(F64)
    fits = []
    for link in links:
        weight, bias, train_nll = fit_binary_link(xtr, train_labels, link=link, l2=l2)
        test_nll = float(_nll(xte, yte, weight, bias, link))
        p = binary_log_probs(xte @ weight + bias, link)[0].exp()
        probs2 = torch.stack([1 - p, p], 1)
        ece = float(expected_calibration_error(probs2, test_labels.long(), n_bins=n_bins))
        fits.append(LinkFit(link, weight, bias, train_nll, test_nll, float((p - yte).square().mean()), ece,
                            float(((p > 0.5).to(F64) == yte).to(F64).mean())))
    if not all(math.isfinite(f.test_nll) for f in fits):
        raise RuntimeError("compare_binary_links(): a fit produced a non-finite held-out NLL")
    return fits
