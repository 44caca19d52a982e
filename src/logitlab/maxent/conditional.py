"""Conditional maximum entropy p(y | x) with features x ⊗ one-hot(y): multinomial logistic regression."""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab._validation import check_floating, check_tensor, fail
from logitlab.maxent.result import MaxEntResult
from logitlab.maxent.solver import check_solver_args, finish_result, newton_dual, status_message

__all__ = ["solve_conditional_maxent"]

F64 = torch.float64


def solve_conditional_maxent(features: Tensor, labels: Tensor, *, num_classes: int | None = None,
                             bias: bool = True, tol: float = 1e-10, max_iter: int = 100,
                             throw: bool = True) -> MaxEntResult:
    """Conditional maximum entropy with moments matched to data: multinomial logistic regression.

    Given samples (x_i, y_i), i = 1..N, find conditionals p(· | x_i) that maximize the mean
    conditional entropy (1/N) Σ_i H(p(· | x_i)) subject to matching the empirical moments of
    φ(x, y) = x ⊗ one-hot(y)::

        (1/N) Σ_i Σ_y p(y | x_i) x_i 1[y = c] = (1/N) Σ_i x_i 1[y_i = c]     for every class c.

    The solution is p(y | x) = softmax_y(⟨θ_y, x⟩), and its dual is::

        θ* = argmin_θ (1/N) Σ_i [log Σ_y exp⟨θ_y, x_i⟩ − ⟨θ_{y_i}, x_i⟩],

    the mean cross-entropy of a linear softmax classifier: maximum entropy with moment
    constraints is maximum likelihood in the exponential family (Berger, Della Pietra &
    Della Pietra 1996). Solved by Newton's method in float64 (see :func:`solve_maxent`). When
    the data are linearly separable the moments lie on the boundary of the moment set and the
    maximum-likelihood weights diverge; this is detected (a direction V that scores every
    sample's own class highest) and reported as status 'boundary'.

    Args:
        features: (N, D) the inputs x (standardize them for a well-conditioned problem).
        labels: (N,) integer classes in [0, num_classes).
        num_classes: C (default: labels.max() + 1).
        bias: append a constant feature 1 (the per-class intercept), making D' = D + 1.
        tol: tolerance on max |E_p[φ] − μ| relative to max(1, max|x|).
        max_iter: maximum Newton steps.
        throw: raise on failure (default); False returns the record with its status.

    Returns:
        A :class:`MaxEntResult` with probs (N, C) = p(y | x_i), theta (C, D') class weights
        (the bias last when ``bias``), centred so that Σ_y θ_y = 0, log_partition (N,),
        converged, n_iter, max_violation, status, message.

    Raises:
        InfeasibleMomentsError: separable data (status 'boundary'), or a class without samples.
        MaxEntError: status 'max_iter', 'stalled' or 'nonfinite'.
        TypeError, ValueError: bad shapes, dtypes or labels.

    Example:
        >>> x = torch.tensor([[-2.0], [-1.0], [0.0], [1.0], [2.0], [0.5]])
        >>> y = torch.tensor([0, 0, 1, 0, 1, 1])
        >>> result = solve_conditional_maxent(x, y)
        >>> result.status, result.probs.shape, result.theta.shape
        ('converged', torch.Size([6, 2]), torch.Size([2, 2]))
        >>> logits = torch.cat([x, torch.ones(6, 1)], 1).double() @ result.theta.T
        >>> torch.allclose(result.probs, torch.softmax(logits, 1))
        True

        Separable data have no maximum-likelihood solution:

        >>> solve_conditional_maxent(x, (x[:, 0] > 0).long())
        Traceback (most recent call last):
        ...
        logitlab.maxent.result.InfeasibleMomentsError: solve_conditional_maxent(): argument 'labels' expected ... got labels that a linear classifier separates ...

    References:
        A. Berger, S. Della Pietra, V. Della Pietra, "A maximum entropy approach to natural
        language processing", Computational Linguistics 22 (1996).
    """
    fn = "solve_conditional_maxent"
    features = check_floating(fn, "features", features)
    labels = check_tensor(fn, "labels", labels)
    if features.ndim != 2 or features.shape[0] < 1:
        fail(fn, "features", "an (N, D) tensor with N >= 1", f"<shape {tuple(features.shape)}>")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        fail(fn, "labels", "an integer tensor", f"<dtype {labels.dtype}>", kind=TypeError)
    if labels.shape != (features.shape[0],):
        fail(fn, "labels", f"shape ({features.shape[0]},) (N, the rows of features)", f"<shape {tuple(labels.shape)}>")
    tol = check_solver_args(fn, tol, max_iter)
    x = features.detach().to(F64)
    if not bool(torch.isfinite(x).all()):
        fail(fn, "features", "finite values", "<non-finite entries>")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        fail(fn, "num_classes", "an int >= 2", num_classes)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        fail(fn, "labels", f"class indices in [0, {num_classes - 1}]", f"<index {bad}>")
    if bias:
        x = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
    n, d = x.shape
    c = num_classes
    y = labels.to(torch.long)
    onehot = torch.nn.functional.one_hot(y, c).to(F64)
    abs_tol = tol * max(1.0, float(x.abs().max()))

    def full(eta: Tensor) -> Tensor:  # (C, D'): the last class is the reference, fixed at 0
        return torch.cat([eta.view(c - 1, d), eta.new_zeros(1, d)], 0)

    def objective(eta: Tensor, with_derivatives: bool):
        scores = x @ full(eta).T
        lse = torch.logsumexp(scores, 1)
        value = (lse - scores.gather(1, y.unsqueeze(1)).squeeze(1)).mean()
        if not with_derivatives:
            return value, None, None
        probs = torch.exp(scores - lse.unsqueeze(1))
        grad = ((probs - onehot).T @ x / n)[: c - 1].reshape(-1)
        kept = probs[:, : c - 1]
        hess = torch.zeros(c - 1, d, c - 1, d, dtype=F64)
        for a in range(c - 1):
            hess[a, :, a, :] = (x * kept[:, a : a + 1]).T @ x / n
        outer = (kept.unsqueeze(2) * x.unsqueeze(1)).reshape(n, -1)
        hess = hess.reshape((c - 1) * d, (c - 1) * d) - outer.T @ outer / n
        return value, grad, hess

    def violation(eta: Tensor) -> float:
        probs = torch.softmax(x @ full(eta).T, 1)
        return float(((probs - onehot).T @ x / n).abs().max())

    def gaps(direction: Tensor) -> Tensor:
        scores = x @ full(direction).T
        return (scores - scores.gather(1, y.unsqueeze(1))).reshape(-1)

    def record(eta: Tensor, status: str, n_iter: int, message: str) -> MaxEntResult:
        weight = full(eta)
        weight = weight - weight.mean(0)
        scores = x @ weight.T
        lse = torch.logsumexp(scores, 1)
        probs = torch.exp(scores - lse.unsqueeze(1))
        viol = float(((probs - onehot).T @ x / n).abs().max())
        text = message or status_message(status, n_iter, viol, abs_tol, "")
        return MaxEntResult(probs, weight, lse, status == "converged", n_iter, viol, status, text)

    eta0 = x.new_zeros((c - 1) * d)
    counts = torch.bincount(y, minlength=c)
    if bias and bool((counts == 0).any()):
        empty = int((counts == 0).nonzero()[0])
        msg = (f"argument 'labels' expected every class in [0, {c - 1}] to occur, got no sample of class {empty} "
               f"(its probability must be 0 for every x, a boundary point where the intercept diverges)")
        return finish_result(fn, record(eta0, "boundary", 0, msg), throw)

    run = newton_dual(objective, eta0, gaps=gaps, violation=violation, tol=abs_tol, max_iter=max_iter)
    message = ""
    if run.status in ("infeasible", "boundary"):
        margins = gaps(run.direction).view(n, c)  # ⟨V_y − V_{y_i}, x_i⟩
        others = margins.clone()
        others.scatter_(1, y.unsqueeze(1), -float("inf"))
        strict = int((others.max(1).values < -1e-6 * float(margins.max() - margins.min())).sum())
        message = (f"argument 'labels' expected data that no linear classifier separates (moments of "
                   f"x ⊗ one-hot(y) inside the moment set), got labels that a linear classifier separates "
                   f"(found after {run.n_iter} Newton steps: weights along the last Newton direction score "
                   f"each sample's own class at least as high as any other, strictly for {strict} of {n}), "
                   f"so the maximum-likelihood weights diverge; use fewer features or regularize")
    return finish_result(fn, record(run.eta, run.status, run.n_iter, message), throw)
