"""Maximum entropy on a finite support: the exponential family, solved and checked.

The maximum-entropy distribution with moments E_p[T] = μ is the Gibbs distribution
p ∝ q exp(⟨θ, T⟩): softmax is the special case of indicator statistics. :func:`solve_maxent`
finds θ by Newton's method on the convex dual; :func:`solve_conditional_maxent` does the same
for conditional models p(y | x) with features x ⊗ one-hot(y), whose dual is exactly the
cross-entropy (maximum likelihood) of multinomial logistic regression.
:func:`solve_continuous_maxent` solves the same dual on ℝ, ℝ₊ and [a, b] (Gaussian, exponential,
gamma, truncated exponential); :mod:`~logitlab.maxent.naive_bayes` shows the softmax as the
posterior of a model that adds independent pieces of evidence in log-odds.
"""

from logitlab.maxent.conditional import solve_conditional_maxent
from logitlab.maxent.continuous import ContinuousMaxEntResult, gauss_legendre, solve_continuous_maxent
from logitlab.maxent.naive_bayes import exponential_family_posterior_logits, gaussian_naive_bayes_logits
from logitlab.maxent.problem import MaxEntProblem
from logitlab.maxent.result import STATUSES, InfeasibleMomentsError, MaxEntError, MaxEntResult
from logitlab.maxent.solver import BOUNDARY_RTOL, solve_maxent

__all__ = [
    "MaxEntProblem",
    "MaxEntResult",
    "MaxEntError",
    "InfeasibleMomentsError",
    "STATUSES",
    "BOUNDARY_RTOL",
    "solve_maxent",
    "solve_conditional_maxent",
    "solve_continuous_maxent",
    "ContinuousMaxEntResult",
    "gauss_legendre",
    "exponential_family_posterior_logits",
    "gaussian_naive_bayes_logits",
]
