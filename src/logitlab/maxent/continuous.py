"""Maximum entropy on continuous supports: the exponential family on ℝ, ℝ₊ and [a, b].

The density p on a support X with E_p[T(x)] = μ and the largest differential entropy
−∫ p log(p / q) is p(x) = q(x) exp(⟨θ, T(x)⟩ − A(θ)), A(θ) = log ∫_X q exp(⟨θ, T⟩) dx (the
log-partition), θ the minimizer of the convex dual A(θ) − ⟨θ, μ⟩. The integral is replaced by a
composite Gauss–Legendre rule with nodes x_j and weights w_j, which turns the problem into the
finite one of :func:`~logitlab.maxent.solve_maxent` with support points x_j and base measure
w_j q(x_j): the same dual solver, its convergence report and its infeasibility certificates.
Closed forms it reproduces (``tests/maxent/test_continuous.py``):

* ℝ, T = (x, x²), μ = (m, m² + s²): the Gaussian N(m, s²), θ = (m/s², −1/(2s²)),
  A = m²/(2s²) + ½ log(2π s²);
* ℝ₊, T = x, μ = m: the exponential with rate 1/m, θ = −1/m, A = log m (nodes graded towards
  0 by x = L u², L the truncation);
* ℝ₊, T = (x, log x), μ = (k/β, ψ(k) − log β): the gamma with shape k and rate β, θ = (−β, k − 1);
* [a, b], T = x: the truncated exponential p ∝ e^{θx}, whose mean is
  (b e^{θb} − a e^{θa}) / (e^{θb} − e^{θa}) − 1/θ.

An unbounded support is truncated to ``truncation`` length scales (``scale``) around ``center``
(ℝ) or above 0 (ℝ₊); the probability mass the solution puts in the outer 1% of that range is
reported as ``tail_mass`` and, above ``tail_tol``, makes the solve fail (raise ``scale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from logitlab._validation import check_positive, fail
from logitlab.maxent.problem import MaxEntProblem
from logitlab.maxent.result import MaxEntError, MaxEntResult
from logitlab.maxent.solver import solve_maxent

__all__ = ["solve_continuous_maxent", "ContinuousMaxEntResult", "gauss_legendre"]

F64 = torch.float64


def gauss_legendre(num_nodes: int) -> tuple[Tensor, Tensor]:
    """Gauss–Legendre nodes and weights on [−1, 1] (Golub–Welsch: eigenpairs of the Jacobi matrix).

    Exact for polynomials of degree ≤ 2n − 1.

    Example:
        >>> nodes, weights = gauss_legendre(3)
        >>> round(float((weights * nodes**4).sum()), 12)   # ∫ x⁴ = 2/5
        0.4
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        fail("gauss_legendre", "num_nodes", "an int >= 1", num_nodes)
    k = torch.arange(1, num_nodes, dtype=F64)
    off = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    return nodes, 2 * vectors[0] ** 2


@dataclass(frozen=True)
class ContinuousMaxEntResult:
    """The maximum-entropy density found by :func:`solve_continuous_maxent`.

    Attributes:
        theta: (F,) natural parameters.
        log_partition: 0-d A(θ) = log ∫ q exp(⟨θ, T⟩) dx (by the quadrature).
        nodes: (N,) quadrature nodes; masses: (N,) the probability of each node's cell.
        converged, n_iter, max_violation, status, message: as :class:`MaxEntResult`.
        tail_mass: probability in the outer 1% of the truncated range (0 for a bounded support).
    """

    theta: Tensor
    log_partition: Tensor
    nodes: Tensor
    masses: Tensor
    converged: bool
    n_iter: int
    max_violation: float
    status: str
    message: str
    tail_mass: float
    statistics: Callable[[Tensor], Tensor]
    log_base: Callable[[Tensor], Tensor] | None

    def log_density(self, x: Tensor) -> Tensor:
        """log p(x) = log q(x) + ⟨θ, T(x)⟩ − A(θ) at points x (...)."""
        x = x.to(F64)
        value = _stats(self.statistics, x) @ self.theta - self.log_partition
        return value + (self.log_base(x) if self.log_base is not None else 0.0)


def _stats(statistics: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    t = statistics(x)
    if not isinstance(t, Tensor) or t.shape[: x.ndim] != x.shape:
        fail("solve_continuous_maxent", "statistics", "a function of x (N,) returning (N, F) or (N,)",
             f"<{type(t).__name__} of shape {tuple(getattr(t, 'shape', ()))}>")
    return t.to(F64).reshape(*x.shape, -1)


def solve_continuous_maxent(statistics: Callable[[Tensor], Tensor], moments: Tensor, *,
                            support: str | tuple[float, float] = "real", scale: float = 1.0,
                            center: float = 0.0, truncation: float = 40.0, num_panels: int = 64,
                            nodes_per_panel: int = 16,
                            log_base: Callable[[Tensor], Tensor] | None = None,
                            tol: float = 1e-10, max_iter: int = 100, tail_tol: float = 1e-9,
                            throw: bool = True) -> ContinuousMaxEntResult:
    """The maximum-entropy density on ℝ, ℝ₊ or [a, b] with E_p[T(x)] = μ (the exponential family).

    maximize −∫ p log(p/q) dx subject to ∫ p T = μ, ∫ p = 1; solution
    p(x) = q(x) exp(⟨θ, T(x)⟩ − A(θ)), θ = argmin_θ A(θ) − ⟨θ, μ⟩, solved by
    :func:`solve_maxent` on a composite Gauss–Legendre discretization of the support (see the
    module docstring): ``num_panels`` equal panels of ``nodes_per_panel`` nodes.

    Args:
        statistics: x (N,) float64 ↦ T(x) (N, F) (or (N,) for one statistic).
        moments: (F,) μ.
        support: 'real' (ℝ, truncated to center ± truncation·scale), 'positive' (ℝ₊, truncated
            to [0, truncation·scale]) or (a, b) finite.
        scale, center, truncation: the truncation of an unbounded support (length scale of the
            solution; the default 40 scales leaves e^{−40}-order tails for exponential decay).
        num_panels, nodes_per_panel: the quadrature.
        log_base: x ↦ log q(x) (None: Lebesgue measure, plain differential entropy).
        tol, max_iter, throw: as :func:`solve_maxent`.
        tail_tol: the largest probability allowed in the outer 1% of a truncated range.

    Returns:
        :class:`ContinuousMaxEntResult`.

    Raises:
        InfeasibleMomentsError: moments no density on the support has (e.g. a negative variance).
        MaxEntError: no convergence, or a solution with mass at the truncation (throw).
        TypeError, ValueError: bad arguments.

    Example:
        The Gaussian is the max-ent density on ℝ with a given mean and variance:

        >>> result = solve_continuous_maxent(lambda x: torch.stack([x, x * x], -1),
        ...                                  torch.tensor([1.0, 1.0 + 4.0]), scale=2.0, center=1.0)
        >>> theta = result.theta   # (m/s², −1/(2s²)) = (0.25, −0.125)
        >>> [round(float(v), 8) for v in theta]
        [0.25, -0.125]
        >>> round(float(result.log_partition), 8) == round(1 / 8 + 0.5 * math.log(2 * math.pi * 4), 8)
        True
    """
    fn = "solve_continuous_maxent"
    if not callable(statistics):
        fail(fn, "statistics", "a callable x ↦ T(x)", f"<{type(statistics).__name__}>", kind=TypeError)
    scale = check_positive(fn, "scale", scale)
    truncation = check_positive(fn, "truncation", truncation)
    tail_tol = check_positive(fn, "tail_tol", tail_tol)
    for name, value in (("num_panels", num_panels), ("nodes_per_panel", nodes_per_panel)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(fn, name, "an int >= 1", value)
    if support == "real":
        low, high, truncated = center - truncation * scale, center + truncation * scale, True
    elif support == "positive":
        low, high, truncated = 0.0, truncation * scale, True
    elif (isinstance(support, tuple) and len(support) == 2
          and all(isinstance(v, (int, float)) and math.isfinite(v) for v in support) and support[0] < support[1]):
        low, high, truncated = float(support[0]), float(support[1]), False
    else:
        fail(fn, "support", "'real', 'positive' or a finite interval (a, b) with a < b", support)
    nodes01, weights01 = gauss_legendre(nodes_per_panel)
    # ℝ₊: panels in u with x = high·u², which grades the nodes towards 0 and smooths the x^{k−1}
    # endpoint behaviour of densities such as the gamma's (dx = 2 high u du).
    graded = support == "positive"
    edges = torch.linspace(0.0 if graded else low, 1.0 if graded else high, num_panels + 1, dtype=F64)
    half = (edges[1:] - edges[:-1]) / 2
    mid = (edges[1:] + edges[:-1]) / 2
    u = (mid[:, None] + half[:, None] * nodes01[None, :]).reshape(-1)
    w = (half[:, None] * weights01[None, :]).reshape(-1)
    x = high * u * u if graded else u
    if graded:
        w = w * 2 * high * u
    log_w = w.log() + (log_base(x).to(F64) if log_base is not None else 0.0)
    stats = _stats(statistics, x)
    if not isinstance(moments, Tensor):
        fail(fn, "moments", "a tensor", f"<{type(moments).__name__}>", kind=TypeError)
    problem = MaxEntProblem(stats, moments.reshape(-1).to(F64), log_w.exp())
    result: MaxEntResult = solve_maxent(problem, tol=tol, max_iter=max_iter, throw=throw)
    tail = 0.0
    if truncated:
        band = 0.01 * (high - low)
        outer = x >= high - band
        if support == "real":
            outer = outer | (x <= low + band)
        tail = float(result.probs[outer].sum())
    status, message, converged = result.status, result.message, result.converged
    if converged and tail > tail_tol:
        status, converged = "max_iter", False
        message = (f"the solution puts mass {tail:.2e} > tail_tol={tail_tol:.1e} in the outer 1% of the "
                   f"truncated support [{low:.4g}, {high:.4g}]: raise scale (or truncation)")
        if throw:
            raise MaxEntError(f"{fn}(): {message}", result)
    return ContinuousMaxEntResult(result.theta, result.log_partition, x, result.probs, converged,
                                  result.n_iter, result.max_violation, status, message, tail,
                                  statistics, log_base)
