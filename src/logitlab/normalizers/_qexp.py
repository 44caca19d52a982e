"""α-entmax near and below α = 1: the q-exponential form p_i = exp_α(z_i − μ), solved for μ.

For every α > 0, α-entmax (the map of the Tsallis regularizer Ω_α) is

    p_i = exp_α(z_i − μ),   exp_α(t) = [1 + (α−1) t]_+^{1/(α−1)}   (exp(t) at α = 1),

with μ the one number for which Σ_i p_i = 1 (μ = log Σ exp z at α = 1; the threshold of
``_threshold`` is τ = (α−1) μ − 1). The threshold engine solves τ in the x = (α−1) z scale, where
the slope of Σ p in τ is ~ 1/(α−1): near α = 1 the residual cannot reach ``tol`` in float64 and
the α-gradient's 1/(α−1)² terms cancel. Here the unknown is μ in the logits' scale, exp_α is
computed as exp(log1p((α−1) t)/(α−1)), and every formula has a finite limit at α = 1, so the map
and both its gradients are continuous across α = 1 (softmax there) and valid for α < 1, where
the map is dense with power-law tails (p_i ~ |z_i|^{−1/(1−α)}).

Solve: safeguarded Newton on g(μ) = log Σ_i exp_α(z_i − μ) (nearly linear in μ: exact at once
at α = 1), in float64, from μ = log Σ exp z, bracket [max z, max z − log_α(1/n)]
(log_α(y) = (y^{α−1} − 1)/(α−1)) where Σ p falls from ≥ 1 to ≤ 1; a step leaving the bracket
is a bisection. It stops when
|Σ p − 1| ≤ ``tol`` for every row and reports iterations and violation per row, like the engine.

Backward, on the saved p (and α), in differentiable torch ops (so double backward works):
with s = p^{2−α} (0 where p = 0) and c = Σ s g / Σ s,

    ∂L/∂z = s ⊙ (g − c),
    ∂L/∂α = Σ_i (g_i − c) E_i,   E_i = ∂exp_α(t)/∂α |_{t = z_i − μ} = −p_i ℓ_i² h((α−1) ℓ_i),

where ℓ = log p and h(w) = (expm1(−w) + w)/w² (h(0) = ½), so E → −½ p (log p)² at α = 1.

Two implementations of that forward and backward, chosen by :func:`logitlab.backend.resolve`
(``impl``): the native kernel ``_native/qexp.c`` for float32, bfloat16 and float16 rows on the
CPU (the same start, bracket, steps and stopping rule, in double, so ``n_iter`` and the
violation mean the same; p rounded once to the storage type), and the torch ops here for
everything else (float64, other devices, no C compiler). With ``create_graph=True`` the backward
is the torch ops on the saved p either way, so double backward works on both.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitlab import backend
from logitlab._native import qexp as native_qexp
from logitlab.normalizers._threshold_topk import compute_dtype, reject_logits

__all__ = ["qexp_map", "DENSE_BELOW"]

# Rows with α below this take the q-exponential solver; α at or above it the threshold engine
# (native kernels). Between 1 and 1 + 1/16 the engine's 1/(α−1)² α-gradient terms cost float32
# more than 2 digits, and its residual slope grows as 1/(α−1).
DENSE_BELOW = 1.0625

_TINY = torch.finfo(torch.float64).tiny


def _log_qexp(t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """(log exp_α(t), exp_α(t) > 0) for finite t ≤ 0 and ε = α − 1, elementwise (float64)."""
    base = eps * t
    positive = base > -1
    zero = eps == 0
    safe_eps = torch.where(zero, 1.0, eps)
    log_p = torch.log1p(torch.where(positive, base, 0.0)) / safe_eps
    log_p = torch.where(zero, t, log_p)
    return log_p, positive | zero


def _probs_at(t: Tensor, finite: Tensor, eps: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
    """p = exp_α(t − μ) and s = p^{2−α} (0 off the support / at -inf)."""
    log_p, positive = _log_qexp(torch.where(finite, t - mu, 0.0), eps)
    keep = finite & positive
    p = torch.where(keep, log_p.exp(), 0.0)
    s = torch.where(keep, ((1 - eps) * log_p).exp(), 0.0)
    return p, s


def _solve(z: Tensor, eps: Tensor, tol: float, max_iter: int
           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(r, n) float64 rows with a finite max, ε (r, 1) or (1, 1): p, μ − max, n_iter, |Σp − 1|."""
    finite = torch.isfinite(z)
    top = z.amax(-1, keepdim=True)
    t = torch.where(finite, z - top, 0.0)
    count = finite.sum(-1, keepdim=True).to(z.dtype)
    # log_α(1/n): μ − max at which the top entry alone has p = 1/n, so Σ p ≤ 1.
    safe_eps = torch.where(eps == 0, 1.0, eps)
    log_alpha = torch.where(eps == 0, -count.log(), torch.expm1(-eps * count.log()) / safe_eps)
    lo = torch.zeros_like(top)
    hi = -log_alpha.expand_as(top).clone()
    # Start at log Σ exp(z − max), the answer at α = 1 (one Newton step there), kept in the bracket.
    mu = torch.logsumexp(torch.where(finite, t, -math.inf), -1, keepdim=True)
    mu = torch.minimum(torch.maximum(mu, lo), hi)
    n_iter = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    p, s = _probs_at(t, finite, eps, mu)
    mass = p.sum(-1, keepdim=True)
    for _ in range(max_iter):
        done = (mass - 1).abs() <= tol
        if bool(done.all()):
            break
        lo = torch.where(mass > 1, mu, lo)
        hi = torch.where(mass < 1, mu, hi)
        # Newton on log Σ p: d/dμ log Σ p = −Σ s / Σ p.
        newton = mu + mass.log() * mass / s.sum(-1, keepdim=True)
        inside = (newton > lo) & (newton < hi)
        step = torch.where(inside, newton, (lo + hi) / 2)
        mu = torch.where(done, mu, step)
        n_iter += (~done).squeeze(1).to(torch.int64)
        p, s = _probs_at(t, finite, eps, mu)
        mass = p.sum(-1, keepdim=True)
    return p / mass, mu, n_iter, (mass - 1).abs().squeeze(1)


def _h(w: Tensor) -> Tensor:
    """(expm1(−w) + w) / w², ½ at 0; a series where |w| < 1e-3 (error below 1e-16)."""
    small = w.abs() < 1e-3
    safe = torch.where(small, 1.0, w)
    direct = (torch.expm1(-safe) + safe) / (safe * safe)
    series = 0.5 - w / 6 + w * w / 24 - w * w * w / 120
    return torch.where(small, series, direct)


def qexp_backward(grad: Tensor, probs: Tensor, alpha: Tensor, need_alpha: bool
                  ) -> tuple[Tensor, Tensor | None]:
    """∂L/∂z (rows, n) and ∂L/∂α (rows, 1) from p and α, in differentiable torch ops."""
    cdtype = compute_dtype(grad.dtype)
    g, p = grad.to(cdtype), probs.to(cdtype)
    eps = alpha.to(cdtype) - 1
    positive = p > 0
    log_p = torch.where(positive, p.clamp_min(torch.finfo(cdtype).tiny).log(), 0.0)
    s = torch.where(positive, ((1 - eps) * log_p).exp(), 0.0)
    s_sum = s.sum(-1, keepdim=True)
    centre = (s * g).sum(-1, keepdim=True) / torch.where(s_sum > 0, s_sum, 1)
    grad_logits = (s * (g - centre)).to(grad.dtype)
    if not need_alpha:
        return grad_logits, None
    e = torch.where(positive, -p * log_p * log_p * _h(eps * log_p), 0.0)
    return grad_logits, ((g - centre) * e).sum(-1, keepdim=True)


def _forward(rows: Tensor, alpha: Tensor, tol: float, max_iter: int, validate: bool, fn: str
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n_rows = rows.shape[0]
    cdtype = compute_dtype(rows.dtype)
    z = rows.double()
    top = z.amax(-1)
    broken = torch.isnan(top) | (top == math.inf)
    if validate and bool(broken.any()):
        reject_logits(fn, rows, broken)
    excluded = top == -math.inf
    usable = ~(broken | excluded)
    eps = alpha.double() - 1
    # α not > 0 or not finite (only with validate=False): a NaN row, as in the engine.
    bad_alpha = ~((eps > -1) & torch.isfinite(eps)).reshape(-1).expand(n_rows)
    broken = broken | bad_alpha
    usable = usable & ~bad_alpha
    eps = torch.where((eps > -1) & torch.isfinite(eps), eps, 0.0)
    z_ok = torch.where(usable[:, None], z, 0.0)
    p, mu, n_iter, violation = _solve(z_ok, eps, tol, max_iter)
    p = torch.where(usable[:, None], p, 0.0)
    p = torch.where(broken[:, None], math.nan, p)
    mu = mu.squeeze(1) + torch.where(usable, top, 0.0)
    tau = (eps.reshape(-1).expand(n_rows) * mu - 1)
    tau = torch.where(excluded, math.inf, torch.where(broken, math.nan, tau))
    n_iter = torch.where(usable, n_iter, 0)
    violation = torch.where(usable, violation, 0.0)
    violation = torch.where(broken, math.nan, violation)
    return p.to(rows.dtype), tau.to(cdtype), n_iter, violation.to(cdtype)


def _native_forward(rows: Tensor, alpha: Tensor, tol: float, max_iter: int, validate: bool, fn: str
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_forward` by the native kernel (the same outputs, dtypes and NaN / +inf handling)."""
    probs, tau, n_iter, violation, bad = native_qexp.qexp_forward(rows, alpha, tol, max_iter, validate)
    if bad >= 0:
        top = rows.amax(-1)
        reject_logits(fn, rows, torch.isnan(top) | (top == math.inf))
    cdtype = compute_dtype(rows.dtype)
    return probs, tau.to(cdtype), n_iter, violation.to(cdtype)


class _QExpFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, alpha, tol, max_iter, validate, fn, native):
        solve = _native_forward if native else _forward
        probs, tau, n_iter, violation = solve(rows, alpha, tol, max_iter, validate, fn)
        ctx.save_for_backward(probs, alpha)
        ctx.native = native
        ctx.mark_non_differentiable(tau, n_iter, violation)
        return probs, tau, n_iter, violation

    @staticmethod
    def backward(ctx, grad_probs, *unused):
        probs, alpha = ctx.saved_tensors
        need_alpha = bool(ctx.needs_input_grad[1])
        if ctx.native and not torch.is_grad_enabled():  # create_graph=True: the differentiable torch ops
            grad_logits, grad_alpha = native_qexp.qexp_backward(grad_probs, probs, alpha, need_alpha)
        else:
            grad_logits, grad_alpha = qexp_backward(grad_probs, probs, alpha, need_alpha)
        if grad_alpha is not None:
            grad_alpha = grad_alpha.to(alpha.dtype)
            if alpha.shape[0] != grad_alpha.shape[0]:  # one α shared by every row
                grad_alpha = grad_alpha.sum(0, keepdim=True)
        return grad_logits, grad_alpha, None, None, None, None, None


def qexp_map(rows: Tensor, alpha: Tensor, *, tol: float, max_iter: int, validate: bool, fn: str,
             impl: str = "auto") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """α-entmax of (rows, n) logits for α (rows, 1) or (1, 1), any α > 0 (values unchecked).

    ``impl`` ('auto' | 'native' | 'torch', :mod:`logitlab.backend`, for the op named ``fn``)
    picks the native kernel or the torch ops; an explicit 'native' that cannot run raises.

    Returns probs (rows, n), τ (rows,), n_iter (rows,), |Σp − 1| before renormalization (rows,).
    """
    native = rows.shape[1] > 0 and backend.resolve(
        fn, impl, rows, native=lambda: native_qexp.supports(rows), op="entmax", kernel="qexp") == "native"
    return _QExpFunction.apply(rows, alpha, float(tol), int(max_iter), bool(validate), fn, native)
