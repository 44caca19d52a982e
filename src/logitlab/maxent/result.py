"""The record a maximum-entropy solve returns, and the exception that carries it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["MaxEntResult", "MaxEntError", "InfeasibleMomentsError", "STATUSES"]

#: Every status a solve can end in. Only "converged" is a solution.
STATUSES = {
    "converged": "the moment constraints hold to within tol",
    "infeasible": "the moments lie outside the convex hull of the statistics (no distribution matches them)",
    "boundary": "the moments lie on the boundary of the hull: a solution puts zero mass on some points "
                "and the natural parameters θ diverge",
    "max_iter": "max_iter Newton steps were not enough",
    "stalled": "the line search found no decrease: the tolerance is below what float64 can resolve",
    "nonfinite": "a non-finite value appeared in the iterates",
}


@dataclass(frozen=True)
class MaxEntResult:
    """What :func:`~logitlab.maxent.solve_maxent` (and the conditional solver) found.

    The fields are stable; the study's report reads them.

    Attributes:
        probs: the distribution. (K,) for :func:`solve_maxent`; (N, C) conditional
            probabilities p(y | x_i) for :func:`solve_conditional_maxent`.
        theta: the natural parameters: (F,) for :func:`solve_maxent` (the minimum-norm
            representative: directions along which every T_k is equal are set to 0); (C, D) class
            weights for the conditional solver (centred over classes, Σ_y θ_y = 0).
        log_partition: log Z(θ): a 0-d tensor, or (N,) per sample for the conditional solver.
        converged: True exactly when ``status == "converged"``.
        n_iter: Newton steps taken.
        max_violation: max_j |E_p[T_j] − μ_j| at the returned point.
        status: one of :data:`STATUSES`.
        message: a sentence for a human, naming what happened and what to do.
    """

    probs: Tensor
    theta: Tensor
    log_partition: Tensor
    converged: bool
    n_iter: int
    max_violation: float
    status: str
    message: str


class MaxEntError(RuntimeError):
    """A solve that did not converge; ``.result`` holds the record of where it stopped."""

    def __init__(self, message: str, result: MaxEntResult) -> None:
        super().__init__(message)
        self.result = result


class InfeasibleMomentsError(MaxEntError, ValueError):
    """The moments cannot be matched by a distribution with full support (status 'infeasible'
    or 'boundary'): a fault of the input, hence also a ``ValueError``."""
