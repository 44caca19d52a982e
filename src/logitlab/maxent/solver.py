"""Newton's method on the convex dual of maximum entropy, with a certificate for bad moments.

The dual of max-entropy is g(θ) = log Z(θ) − ⟨θ, μ⟩, smooth and convex, with gradient
E_p[T] − μ and Hessian Cov_p[T]. Newton steps with a backtracking (Armijo) line search converge
quadratically when μ lies inside the convex hull of the statistics. When it does not, no step
size fixes it, so the solver looks for a *certificate*: a direction v with
max_k ⟨v, T_k − μ⟩ ≤ 0. If the max is < 0, μ is outside the hull (infeasible, g → −∞ along v);
if it is 0 while some points are strictly below, μ is on a face of the hull (boundary: the
infimum of g is not attained and θ runs off to infinity along v). Near such moments the Newton
direction itself converges to v, so it is tested at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from logitlab._validation import check_positive, fail
from logitlab.maxent.problem import MaxEntProblem
from logitlab.maxent.result import InfeasibleMomentsError, MaxEntError, MaxEntResult

__all__ = ["solve_maxent", "BOUNDARY_RTOL"]

#: A Newton direction v is taken as a separating direction when
#: max_k ⟨v, T_k − μ⟩ ≤ BOUNDARY_RTOL · (max_k − min_k ⟨v, T_k − μ⟩): moments closer than about
#: this fraction of the hull's width to its boundary are reported as on it.
BOUNDARY_RTOL = 1e-8
_ARMIJO = 1e-4
_MAX_HALVINGS = 60


@dataclass
class _Run:
    eta: Tensor
    status: str
    n_iter: int
    detail: str
    direction: Tensor | None = None


def _newton_direction(hess: Tensor, grad: Tensor) -> Tensor:
    """Solve hess · d = −grad by Cholesky, adding a growing ridge if hess is numerically singular."""
    n = grad.shape[0]
    scale = float(hess.diagonal().abs().max()) if n else 0.0
    ridge = 0.0
    eye = torch.eye(n, dtype=hess.dtype, device=hess.device)
    for _ in range(12):
        chol, info = torch.linalg.cholesky_ex(hess + ridge * eye)
        if int(info) == 0:
            return -torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
        ridge = max(ridge * 100.0, 1e-14 * max(scale, 1e-300))
    return -grad / max(scale, 1e-300)


def _classify(gaps: Tensor) -> str | None:
    """'infeasible' / 'boundary' when ``gaps`` = ⟨v, T_k − μ⟩ certify it, else None."""
    top, spread = float(gaps.max()), float(gaps.max() - gaps.min())
    if not spread > 0 or not math.isfinite(spread):
        return None
    if top < -BOUNDARY_RTOL * spread:
        return "infeasible"
    if top <= BOUNDARY_RTOL * spread:
        return "boundary"
    return None


def newton_dual(objective: Callable[[Tensor, bool], tuple[Tensor, Tensor | None, Tensor | None]],
                eta0: Tensor, *, gaps: Callable[[Tensor], Tensor], violation: Callable[[Tensor], float],
                tol: float, max_iter: int) -> _Run:
    """Minimize a smooth convex dual by damped Newton; shared by the plain and conditional solvers.

    ``objective(eta, with_derivatives)`` returns (value, grad, hess); ``gaps(d)`` returns the
    values ⟨d, T_k − μ⟩ over the support for a direction d (the certificate test);
    ``violation(eta)`` is the max constraint violation, compared with ``tol``.
    """
    eta = eta0
    previous, full_step = math.inf, False
    for it in range(max_iter + 1):
        value, grad, hess = objective(eta, True)
        viol = violation(eta)
        if not (math.isfinite(float(value)) and math.isfinite(viol)):
            return _Run(eta, "nonfinite", it, "a non-finite dual value or violation appeared")
        if viol <= tol:
            return _Run(eta, "converged", it, "")
        if full_step and viol >= previous:  # an unchecked full step that did not help: rounding floor
            return _Run(eta, "stalled", it, "")
        previous = viol
        direction = _newton_direction(hess, grad)
        kind = _classify(gaps(direction))
        if kind is not None:
            return _Run(eta, kind, it, "", direction)
        if it == max_iter:
            return _Run(eta, "max_iter", it, "")
        slope = float(grad @ direction)
        step = 1.0
        # Once the predicted decrease is below what float64 resolves in the dual value, the
        # Armijo test compares rounding noise: take the full step (Newton's quadratic region).
        resolvable = -slope > 1e-13 * max(1.0, abs(float(value)))
        full_step = not resolvable
        for _ in range(_MAX_HALVINGS if resolvable else 0):
            trial = eta + step * direction
            trial_value = float(objective(trial, False)[0])
            if math.isfinite(trial_value) and trial_value <= float(value) + _ARMIJO * step * slope:
                break
            step *= 0.5
        else:
            if resolvable:
                return _Run(eta, "stalled", it, "")
            trial = eta + direction
        if bool(torch.equal(trial, eta)):
            return _Run(eta, "stalled", it, "")
        eta = trial
    raise AssertionError("unreachable")  # pragma: no cover


def check_solver_args(fn: str, tol: object, max_iter: object) -> float:
    """``tol`` > 0 and ``max_iter`` an int >= 0 (shared by the solvers of this package); returns tol."""
    tol = check_positive(fn, "tol", tol)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        fail(fn, "max_iter", "an int >= 0", max_iter, kind=TypeError if not isinstance(max_iter, int) else ValueError)
    return tol


def finish_result(fn: str, result: MaxEntResult, throw: bool) -> MaxEntResult:
    """``result``, or with ``throw`` its error when it did not converge (InfeasibleMomentsError for
    infeasible or boundary moments, MaxEntError otherwise)."""
    if throw and not result.converged:
        cls = InfeasibleMomentsError if result.status in ("infeasible", "boundary") else MaxEntError
        raise cls(f"{fn}(): {result.message}", result)
    return result


def _fmt(v: Tensor, limit: int = 6) -> str:
    items = [f"{float(x):.4g}" for x in v.flatten()[:limit]]
    return "[" + ", ".join(items) + (", ...]" if v.numel() > limit else "]")


def status_message(status: str, n_iter: int, viol: float, tol: float, detail: str) -> str:
    """The result's message for a Newton run that ended with ``status`` (``detail`` for the others)."""
    if status == "converged":
        return f"converged in {n_iter} Newton steps (max violation {viol:.2e} <= {tol:.1e})"
    if status == "max_iter":
        return (f"did not converge in {n_iter} Newton steps (max violation {viol:.2e} > {tol:.1e}); "
                f"raise max_iter or check the moments")
    if status == "stalled":
        return (f"the line search stalled after {n_iter} Newton steps at max violation {viol:.2e} > "
                f"{tol:.1e}: float64 cannot resolve this tolerance; raise tol")
    if status == "nonfinite":
        return f"stopped after {n_iter} Newton steps: {detail}"
    return detail


def solve_maxent(problem: MaxEntProblem, *, tol: float = 1e-10, max_iter: int = 100,
                 throw: bool = True) -> MaxEntResult:
    """The maximum-entropy distribution with given moments, by Newton's method on the dual.

    Solves max_p −Σ_k p_k log(p_k / q_k) subject to Σ_k p_k T_k = μ (p on the simplex) through
    its convex dual::

        θ* = argmin_θ  log Z(θ) − ⟨θ, μ⟩,   Z(θ) = Σ_k q_k exp(⟨θ, T_k⟩),
        p*_k = q_k exp(⟨θ*, T_k⟩) / Z(θ*)      (the softmax of the scores ⟨θ, T_k⟩ + log q_k),

    in float64, with Newton steps (Hessian Cov_p[T]) and a backtracking line search. θ is
    sought in the span of the centred statistics, so it is unique (the minimum-norm choice).

    Stopping: converged when max_j |E_p[T_j] − μ_j| ≤ tol · max(1, max|T|). Before iterating,
    moments outside the per-coordinate range or the affine hull of the rows of T are reported
    as infeasible, and a coordinate at its range's end as boundary; at every step the Newton
    direction v is tested as a separating direction (max_k ⟨v, T_k − μ⟩ ≤ 0, up to
    :data:`BOUNDARY_RTOL` of the spread), which certifies infeasible (< 0) or boundary (= 0)
    moments. The solver never stops silently: anything but convergence raises (or, with
    ``throw=False``, is returned with its status and message).

    Args:
        problem: the :class:`MaxEntProblem` (statistics (K, F), moments (F,), base measure (K,)).
        tol: tolerance on the moment violation, relative to max(1, max|T|).
        max_iter: maximum Newton steps.
        throw: raise on failure (default); False returns the record with its status.

    Returns:
        A :class:`MaxEntResult`: probs (K,), theta (F,), log_partition (0-d), converged,
        n_iter, max_violation, status, message.

    Raises:
        InfeasibleMomentsError: (a ``ValueError``) status 'infeasible' or 'boundary'.
        MaxEntError: status 'max_iter', 'stalled' or 'nonfinite'.
        TypeError, ValueError: bad ``tol``, ``max_iter`` or problem.

    Example:
        Indicator statistics give the softmax, with θ = log μ up to a constant:

        >>> mu = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
        >>> result = solve_maxent(MaxEntProblem(torch.eye(3), mu))
        >>> result.status, result.probs
        ('converged', tensor([0.1000, 0.2000, 0.7000], dtype=torch.float64))
        >>> torch.allclose(torch.softmax(result.theta, 0), mu)
        True
        >>> theta = result.theta - result.theta[0]   # log μ − log μ_0
        >>> torch.allclose(theta, (mu / mu[0]).log())
        True

        Two outcomes (T = [0, 1], mean m) give the sigmoid, θ = logit(m):

        >>> result = solve_maxent(MaxEntProblem(torch.tensor([[0.0], [1.0]]), torch.tensor([0.8])))
        >>> round(float(result.theta), 6), round(math.log(0.8 / 0.2), 6)
        (1.386294, 1.386294)
        >>> float(torch.sigmoid(result.theta))
        0.8...

        Support {0, …, 5} with mean 1: a truncated geometric, p_k ∝ r^k:

        >>> result = solve_maxent(MaxEntProblem(torch.arange(6.0).unsqueeze(1), torch.tensor([1.0])))
        >>> ratios = result.probs[1:] / result.probs[:-1]
        >>> torch.allclose(ratios, ratios[0].expand(5)), round(float(ratios[0]), 4)
        (True, 0.5328)

        A grid with mean and variance constraints: a discretized Gaussian:

        >>> x = torch.linspace(-6, 6, 241, dtype=torch.float64)
        >>> result = solve_maxent(MaxEntProblem(torch.stack([x, x**2], 1), torch.tensor([0.5, 0.5**2 + 1.0])))
        >>> -1 / (2 * result.theta[1])   # the variance σ² of p_k ∝ exp(θ₁x + θ₂x²)
        tensor(1.0000, dtype=torch.float64)

        Moments that no distribution has are reported:

        >>> solve_maxent(MaxEntProblem(torch.tensor([[0.0], [1.0]]), torch.tensor([1.5])))
        Traceback (most recent call last):
        ...
        logitlab.maxent.result.InfeasibleMomentsError: solve_maxent(): argument 'problem' expected moments inside the convex hull of the rows of statistics, got moments outside it (coordinate 0 is 1.5, outside [0, 1])

    References:
        E. T. Jaynes, "Information theory and statistical mechanics", Phys. Rev. 106 (1957).
        M. Wainwright, M. Jordan, "Graphical models, exponential families, and variational
        inference", Found. Trends ML (2008), §3.6. S. Boyd, L. Vandenberghe, "Convex
        Optimization" (2004), §9.5 (Newton's method) and §5.8 (certificates of infeasibility).
    """
    fn = "solve_maxent"
    if not isinstance(problem, MaxEntProblem):
        fail(fn, "problem", "a MaxEntProblem", f"<{type(problem).__name__}>", kind=TypeError)
    tol = check_solver_args(fn, tol, max_iter)
    if not isinstance(throw, bool):
        fail(fn, "throw", "a bool", f"<{type(throw).__name__}>", kind=TypeError)

    stats, mu, log_q = problem.statistics, problem.moments, problem.log_base()
    support = log_q > -math.inf
    t_sup, lq_sup = stats[support], log_q[support]
    scale = max(1.0, float(stats.abs().max()))
    abs_tol = tol * scale

    def record(theta: Tensor, status: str, n_iter: int, message: str) -> MaxEntResult:
        scores = stats @ theta + log_q
        log_z = torch.logsumexp(scores, 0)
        probs = torch.exp(scores - log_z)
        viol = float((probs @ stats - mu).abs().max())
        text = message or status_message(status, n_iter, viol, abs_tol, "")
        return MaxEntResult(probs, theta, log_z, status == "converged", n_iter, viol, status, text)

    zero = stats.new_zeros(problem.num_statistics)
    pre = _precheck(t_sup, mu, scale)
    if pre is not None:
        return finish_result(fn, record(zero, pre[0], 0, pre[1]), throw)

    # θ lives in the span of the centred statistics: basis B (F, r), reduced scores A = (T − μ) B.
    centred = t_sup - t_sup.mean(0)
    _, sing, vh = torch.linalg.svd(centred, full_matrices=False)
    rank = int((sing > sing[0] * max(centred.shape) * 1e-13).sum()) if sing.numel() and sing[0] > 0 else 0
    basis = vh[:rank].T
    offset = mu - t_sup.mean(0)
    off_hull = offset - basis @ (basis.T @ offset)
    if float(off_hull.abs().max()) > max(1e-9, 16 * problem.input_eps) * scale:
        v = off_hull
        msg = (f"argument 'problem' expected moments inside the convex hull of the rows of statistics, got "
               f"moments outside their affine hull (every support point has ⟨v, T_k⟩ = "
               f"{float(t_sup[0] @ v):.6g} but ⟨v, μ⟩ = {float(mu @ v):.6g} for v = {_fmt(v)})")
        return finish_result(fn, record(zero, "infeasible", 0, msg), throw)
    # Within the inputs' rounding, μ is moved onto the affine hull (e.g. float32 probabilities
    # whose sum is 1 ± 1e-8): the violation is then measured against the moved moments.
    mu = mu - off_hull
    reduced = (t_sup - mu) @ basis

    def objective(eta: Tensor, with_derivatives: bool):
        scores = reduced @ eta + lq_sup
        log_z = torch.logsumexp(scores, 0)
        if not with_derivatives:
            return log_z, None, None
        p = torch.exp(scores - log_z)
        grad = p @ reduced
        hess = (reduced * p.unsqueeze(1)).T @ reduced - torch.outer(grad, grad)
        return log_z, grad, hess

    def violation(eta: Tensor) -> float:
        scores = reduced @ eta + lq_sup
        p = torch.softmax(scores, 0)
        return float((p @ t_sup - mu).abs().max())

    run = newton_dual(objective, reduced.new_zeros(rank), gaps=lambda d: reduced @ d,
                      violation=violation, tol=abs_tol, max_iter=max_iter)
    theta = basis @ run.eta
    message = ""
    if run.status in ("infeasible", "boundary"):
        direction = basis @ run.direction
        message = _certificate_message(run.status, direction, t_sup, mu, run.n_iter)
    return finish_result(fn, record(theta, run.status, run.n_iter, message), throw)


def _precheck(t_sup: Tensor, mu: Tensor, scale: float) -> tuple[str, str] | None:
    """Moments outside, or at the end of, a coordinate's range: infeasible / boundary."""
    low, high = t_sup.min(0).values, t_sup.max(0).values
    eps = 1e-12 * scale
    head = "argument 'problem' expected moments inside the convex hull of the rows of statistics, got"
    for j in range(mu.shape[0]):
        m, lo, hi = float(mu[j]), float(low[j]), float(high[j])
        if m < lo - eps or m > hi + eps:
            return "infeasible", f"{head} moments outside it (coordinate {j} is {m:.6g}, outside [{lo:.6g}, {hi:.6g}])"
    for j in range(mu.shape[0]):
        m, lo, hi = float(mu[j]), float(low[j]), float(high[j])
        if hi - lo > eps and (abs(m - lo) <= eps or abs(m - hi) <= eps):
            end = "minimum" if abs(m - lo) <= eps else "maximum"
            return "boundary", (
                f"{head.replace('inside', 'in the relative interior of')} moments on its boundary "
                f"(coordinate {j} equals the {end} {m:.6g} of statistics[:, {j}]: every point with another "
                f"value must get probability 0, so θ diverges; drop those points from the support or move "
                f"the moment inside)")
    return None


def _certificate_message(status: str, direction: Tensor, t_sup: Tensor, mu: Tensor, n_iter: int) -> str:
    values = t_sup @ direction
    top, target = float(values.max()), float(mu @ direction)
    if status == "infeasible":
        return (f"argument 'problem' expected moments inside the convex hull of the rows of statistics, got "
                f"moments outside it (found after {n_iter} Newton steps: v = {_fmt(direction)} has "
                f"max_k ⟨v, T_k⟩ = {top:.6g} < ⟨v, μ⟩ = {target:.6g})")
    spread = float(values.max() - values.min())
    off_face = int((values < top - 1e-6 * spread).sum())
    return (f"argument 'problem' expected moments in the relative interior of the convex hull of the rows of "
            f"statistics, got moments on its boundary (found after {n_iter} Newton steps: v = "
            f"{_fmt(direction)} has max_k ⟨v, T_k⟩ = ⟨v, μ⟩ = {target:.6g}, so the {off_face} of "
            f"{t_sup.shape[0]} points below that face must get probability 0 and θ diverges along v)")
