"""The maximum-entropy problem on a finite support: statistics, target moments, base measure."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from logitlab._validation import check_floating, fail

__all__ = ["MaxEntProblem"]

F64 = torch.float64


@dataclass(frozen=True)
class MaxEntProblem:
    """Find the distribution p on K points with E_p[T] = μ and the largest entropy.

    The problem is::

        maximize   −Σ_k p_k log(p_k / q_k)      (the entropy H(p) when q = 1)
        subject to Σ_k p_k T_k = μ,  p ∈ Δ_K,

    whose solution is the exponential family (Gibbs distribution)
    p_k = q_k exp(⟨θ, T_k⟩) / Z(θ), Z(θ) = Σ_k q_k exp(⟨θ, T_k⟩), with θ the minimizer of the
    convex dual log Z(θ) − ⟨θ, μ⟩ (Jaynes 1957; Wainwright & Jordan 2008, §3).

    Attributes:
        statistics: (K, F) the sufficient statistics T, one row per support point.
        moments: (F,) the target moments μ.
        base_measure: (K,) non-negative weights q (None: uniform, plain entropy). Points with
            q_k = 0 are outside the support and get probability exactly 0.

    All three are stored as float64 (the solver works in float64); ``input_eps`` records the
    machine epsilon of the coarsest input dtype, the rounding the solver forgives when it checks
    that μ lies in the affine hull of the statistics.

    Raises:
        TypeError: a non-tensor or non-floating argument.
        ValueError: wrong shapes, non-finite values, a negative or all-zero base measure.

    Example:
        >>> problem = MaxEntProblem(torch.eye(3), torch.tensor([0.2, 0.3, 0.5]))
        >>> problem.num_points, problem.num_statistics
        (3, 3)
    """

    statistics: Tensor
    moments: Tensor
    base_measure: Tensor | None = None
    input_eps: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        fn = "MaxEntProblem"
        stats = check_floating(fn, "statistics", self.statistics)
        moments = check_floating(fn, "moments", self.moments)
        eps = max(torch.finfo(stats.dtype).eps, torch.finfo(moments.dtype).eps)
        if stats.ndim != 2 or stats.shape[0] < 1 or stats.shape[1] < 1:
            fail(fn, "statistics", "a (K, F) tensor with K >= 1 and F >= 1", f"<shape {tuple(stats.shape)}>")
        if moments.shape != (stats.shape[1],):
            fail(fn, "moments", f"shape ({stats.shape[1]},) (F, the columns of statistics)",
                 f"<shape {tuple(moments.shape)}>")
        stats, moments = stats.detach().to(F64), moments.detach().to(F64)
        if not bool(torch.isfinite(stats).all()):
            fail(fn, "statistics", "finite values", "<non-finite entries>")
        if not bool(torch.isfinite(moments).all()):
            fail(fn, "moments", "finite values", "<non-finite entries>")
        base = self.base_measure
        if base is not None:
            base = check_floating(fn, "base_measure", base)
            if base.shape != (stats.shape[0],):
                fail(fn, "base_measure", f"shape ({stats.shape[0]},) (K, the rows of statistics)",
                     f"<shape {tuple(base.shape)}>")
            base = base.detach().to(F64)
            if not bool(torch.isfinite(base).all()) or bool((base < 0).any()):
                fail(fn, "base_measure", "finite values >= 0", "<negative or non-finite entries>")
            if not bool((base > 0).any()):
                fail(fn, "base_measure", "at least one positive weight", "<all zeros>")
        object.__setattr__(self, "statistics", stats)
        object.__setattr__(self, "moments", moments)
        object.__setattr__(self, "base_measure", base)
        object.__setattr__(self, "input_eps", float(eps))

    @property
    def num_points(self) -> int:
        """K, the size of the support."""
        return self.statistics.shape[0]

    @property
    def num_statistics(self) -> int:
        """F, the number of constraints."""
        return self.statistics.shape[1]

    def log_base(self) -> Tensor:
        """(K,) log q (zeros when the base measure is uniform; −inf outside the support)."""
        if self.base_measure is None:
            return self.statistics.new_zeros(self.num_points)
        return self.base_measure.log()
