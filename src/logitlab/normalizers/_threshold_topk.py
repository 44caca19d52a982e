"""The torch path of the threshold engine: τ from each row's top-k, verified, then wider.

Used for float64 inputs, other devices, and wherever the native kernel (``_native/sparse.c``)
is unavailable; it is also the float64 ``gradcheck`` target. Every map has the form
p_i = [x_i − τ]_+^{1/(α−1)} with x = (α−1)(z − max z) and τ the unique threshold with
Σ_i p_i = 1. Only entries with x_i > τ ≥ −1 matter, and τ can be found from the largest few
entries alone:

1. ``torch.topk(z, k)`` (one pass over the row, no sort of the row) gives the k largest logits,
   sorted; x_(1) = 0 after the shift by the row max.
2. The threshold τ_k of the problem restricted to those k entries is solved exactly: the
   sort-based closed form (sparsemax: τ = (Σ_S x − 1)/|S|; 1.5-entmax: from Σ_S x and Σ_S x²)
   or, for a general α, safeguarded Newton in float64 with a convergence report.
3. Exactness check: if x_(k) ≤ τ_k, every entry left out is ≤ x_(k) ≤ τ_k, so it contributes
   nothing and Σ_all [x − τ_k]_+^{1/(α−1)} = 1: τ_k is the threshold of the full row, the
   support is self-consistent, and the answer equals the sort-based one. Rows that fail the
   check (support ≥ k) are retried with 8k entries, and finally with a full sort of that row.

The backward is the closed form on the support (see ``_threshold``); rows whose support fit in
the first k entries are differentiated from those k entries only (a gather and a scatter), the
others densely.

The small per-row solves run on one thread (``torch.set_num_threads(1)`` around them, restored
after): dozens of tiny ops each paying a fork-join cost more than they compute. The setting is
process-wide, so another Python thread running torch ops at the same moment would see it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import Tensor

from logitlab._validation import fail

__all__ = ["topk_forward", "topk_backward", "first_k", "uniform_alpha", "compute_dtype", "reject_logits"]

# sparsemax support ~5-11 entries, 1.5-entmax ~20-60, at n = 1000..32768).
FIRST_K = {"sparsemax": 16, "entmax15": 64, "bisect": 64}
GROW = 8
# Entries below x = −2 can never be in the support (τ ≥ −1); they are clamped there so that
# −inf (excluded classes) never meets arithmetic.
_FLOOR = -2.0
# Work on fewer elements than this runs on one thread: the small per-row solves are dozens of
# tiny ops, and a fork-join per op costs more than the op, by orders of magnitude on a busy
# machine (benchmarks/sparse_normalizers.py times the maps that take this path).
_PARALLEL_MIN = 1 << 20


def first_k(kind: str, n: int) -> int:
    """How many entries the first pass looks at. ``torch.topk`` on CPU takes a heap (fast: most
    entries are rejected by one comparison) when k·64 <= n and a selection plus sort otherwise,
    about twice slower at n = 1000; sparsemax's small supports afford k = n // 64 there."""
    k = FIRST_K[kind]
    if kind == "sparsemax" and k * 64 > n >= 8 * 64:
        k = n // 64
    return min(n, k)


@contextlib.contextmanager
def _threads_for(numel: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    if numel >= _PARALLEL_MIN or saved == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _largest_true(cond: Tensor) -> Tensor:
    """1-based position of the last True along the last axis (0 when none)."""
    ks = torch.arange(1, cond.shape[-1] + 1, device=cond.device)
    return torch.where(cond, ks, 0).amax(-1)


def _solve_sparsemax(x: Tensor) -> tuple[Tensor, Tensor]:
    """x: (r, k) sorted descending, x[:, 0] = 0. Returns τ (r,) and support size (r,)."""
    ks = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    csum = x.cumsum(-1)
    size = _largest_true(1 + ks * x > csum).clamp_min(1)
    tau = (csum.gather(1, (size - 1)[:, None]).squeeze(1) - 1) / size.to(x.dtype)
    return tau, size


def _solve_entmax15(x: Tensor) -> tuple[Tensor, Tensor]:
    """x = (z − max)/2: (r, k) sorted descending. τ from the support's Σx and Σx²."""
    ks = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    mean = x.cumsum(-1) / ks
    mean_sq = (x * x).cumsum(-1) / ks
    spread = ks * (mean_sq - mean * mean)
    delta = ((1 - spread) / ks).clamp_min(0)
    taus = mean - delta.sqrt()
    size = _largest_true(taus <= x).clamp_min(1)
    tau = taus.gather(1, (size - 1)[:, None]).squeeze(1)
    return tau, size


def uniform_alpha(alpha: Tensor) -> float | Tensor:
    """α as a float when every row shares it (a broadcast (1, 1)), else the (r, 1) tensor."""
    if alpha.shape[0] <= 1 or alpha.stride(0) == 0:
        return float(alpha.reshape(-1)[0]) if alpha.numel() else 1.5
    return alpha


def _take(alpha: float | Tensor, index: Tensor) -> float | Tensor:
    return alpha if isinstance(alpha, float) else alpha.index_select(0, index)


def _col(alpha: float | Tensor, dtype: torch.dtype) -> float | Tensor:
    return alpha if isinstance(alpha, float) else alpha.reshape(-1, 1).to(dtype)


def _solve_bisect(x: Tensor, alpha: float | Tensor, n_total: int, tol: float, max_iter: int
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Safeguarded Newton on f(τ) = Σ [x − τ]_+^q − 1 (float64), bracket [−1, −k^{1−α}].

    Returns τ, support size, iterations used and |f(τ)| per row.
    """
    x = x.double()
    alpha = _col(alpha, torch.float64)
    q = 1 / (alpha - 1)
    k = x.shape[-1]
    # Lower bound: if τ ≤ x_(j) − j^{1−α}, the top j entries alone give Σ p ≥ 1; the best j is
    # a start from which Newton on the convex (α ≤ 2) f climbs monotonically.
    ranks = torch.arange(1, k + 1, dtype=x.dtype, device=x.device)
    lo = (x - ranks.pow(1 - alpha)).amax(-1, keepdim=True).clamp_min(-1.0)
    hi = -(float(min(k, n_total)) ** (1 - alpha))
    tau = lo.clone()
    n_iter = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)

    def residual(t: Tensor) -> tuple[Tensor, Tensor]:
        u = (x - t).clamp_min(0)
        # u^{q−1} once (0 off the support, also when q < 1), then u^q = u · u^{q−1}.
        u_qm1 = torch.where(u > 0, u.clamp_min(torch.finfo(u.dtype).tiny).pow(q - 1), 0)
        value = (u * u_qm1).sum(-1, keepdim=True) - 1
        slope = -q * u_qm1.sum(-1, keepdim=True)
        return value, slope

    value, slope = residual(tau)
    for _ in range(max_iter):
        done = value.abs() <= tol
        if bool(done.all()):
            break
        lo = torch.where(value > 0, tau, lo)
        hi = torch.where(value < 0, tau, hi)
        newton = tau - value / slope
        inside = (newton > lo) & (newton < hi)
        step = torch.where(inside, newton, (lo + hi) / 2)
        tau = torch.where(done, tau, step)
        n_iter += (~done).squeeze(1).to(torch.int64)
        value, slope = residual(tau)
    size = (x > tau).sum(-1)
    return tau.squeeze(1), size, n_iter, value.abs().squeeze(1)


def _scaled(values: Tensor, kind: str, alpha: float | Tensor) -> Tensor:
    """x = (α−1)(z − max z), clamped at −2; values sorted descending, in compute dtype."""
    shifted = values - values[:, :1]
    if kind == "entmax15":
        shifted = shifted * 0.5
    elif kind == "bisect":
        shifted = shifted * (_col(alpha, shifted.dtype) - 1)
    return shifted.clamp_min(_FLOOR)


def _probs_from(x: Tensor, tau: Tensor, kind: str, alpha: float | Tensor) -> Tensor:
    u = (x - tau[:, None].to(x.dtype)).clamp_min(0)
    if kind == "sparsemax":
        return u
    if kind == "entmax15":
        return u * u
    p = torch.where(u > 0, u.double().pow(1 / (_col(alpha, torch.float64) - 1)), 0)
    return p / p.sum(-1, keepdim=True)


def _solve_block(values: Tensor, idx: Tensor, alpha: float | Tensor, kind: str, n: int, tol: float,
                 max_iter: int, out_dtype: torch.dtype) -> dict[str, Tensor]:
    """Solve the rows of one block from their k largest logits (sorted), and check them."""
    cdtype = compute_dtype(values.dtype)
    k = values.shape[1]
    top = values[:, 0].to(cdtype)
    x = _scaled(values.to(cdtype), kind, alpha)
    if kind == "sparsemax":
        tau, size = _solve_sparsemax(x)
        iters, viol = torch.zeros_like(size), torch.zeros_like(tau)
    elif kind == "entmax15":
        tau, size = _solve_entmax15(x)
        iters, viol = torch.zeros_like(size), torch.zeros_like(tau)
    else:
        tau, size, iters, viol = _solve_bisect(x, alpha, n, tol, max_iter)
    excluded = top == float("-inf")  # every entry -inf: an all-zero row
    broken = torch.isnan(top) | (top == float("inf"))  # NaN / +inf logits: a NaN row
    if k >= n:
        ok = torch.ones_like(excluded)
    else:  # the exactness check: the smallest entry looked at is out of the support
        ok = excluded | broken | (x[:, -1].to(tau.dtype) <= tau)
    vals = _probs_from(x, tau, kind, alpha).to(out_dtype)
    vals = torch.where((ok & ~excluded)[:, None], vals, 0)
    vals = torch.where(broken[:, None], float("nan"), vals)
    # The threshold in the logits' own scale: p = [(α−1) z − τ]_+^{1/(α−1)}.
    scale = {"sparsemax": 1.0, "entmax15": 0.5}.get(kind)
    if scale is None:
        scale = alpha - 1 if isinstance(alpha, float) else alpha.reshape(-1).to(cdtype) - 1
    tau_z = (scale * top + tau.to(cdtype)).to(cdtype)
    tau_z = torch.where(excluded, float("inf"), tau_z)
    tau_z = torch.where(broken, float("nan"), tau_z)
    return {"ok": ok, "vals": vals, "idx": idx, "tau": tau_z, "support": torch.where(excluded, 0, size),
            "n_iter": torch.where(excluded, 0, iters),
            "violation": torch.where(excluded, 0, viol.to(cdtype)), "broken": broken}


def reject_logits(fn: str, rows: Tensor, broken: Tensor) -> None:
    """Raise for the rows flagged ``broken`` (the failure path: its cost does not matter)."""
    bad_rows = torch.nonzero(broken).squeeze(1)
    sub = rows.index_select(0, bad_rows)
    bad = torch.isnan(sub) | (sub == math.inf)
    row, col = (int(i) for i in bad.nonzero()[0])
    fail(fn, "logits", "values without NaN or +inf (-inf marks an excluded class)",
         f"<{int(bad.sum())} bad entries in {bad_rows.numel()} row(s), first at row "
         f"{int(bad_rows[row])}, class {col}>",
         detail="rows counted with dim moved last and the other axes flattened")


def topk_forward(logits: Tensor, alpha: float | Tensor, kind: str, tol: float, max_iter: int,
                 validate: bool, fn: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """probs, τ, the first top-k indices (for the backward), support, n_iter, violation."""
    rows, n = logits.shape
    cdtype = compute_dtype(logits.dtype)
    dev = logits.device
    k0 = first_k(kind, n)
    probs = torch.zeros_like(logits)
    tau_out = torch.empty(rows, dtype=cdtype, device=dev)
    support = torch.zeros(rows, dtype=torch.int64, device=dev)
    n_iter = torch.zeros(rows, dtype=torch.int64, device=dev)
    violation = torch.zeros(rows, dtype=cdtype, device=dev)
    first_idx = torch.zeros(rows, k0, dtype=torch.int64, device=dev)
    if rows == 0 or n == 0:
        return probs, tau_out, first_idx, support, n_iter, violation

    todo = None  # None: every row (no copy of the logits in the common case)
    k = k0
    while True:
        block = logits if todo is None else logits.index_select(0, todo)
        a_block = alpha if todo is None else _take(alpha, todo)
        if k >= n:
            values, idx = torch.sort(block, dim=-1, descending=True)
        else:
            values, idx = torch.topk(block, k, dim=-1)
        if todo is None:
            first_idx = idx
        with _threads_for(values.numel()):
            r = _solve_block(values, idx, a_block, kind, n, tol, max_iter, logits.dtype)
            ok = r["ok"]
            if todo is None:
                probs.scatter_(1, idx, r["vals"])
                tau_out.copy_(r["tau"])
                support.copy_(r["support"])
                n_iter.copy_(r["n_iter"])
                violation.copy_(r["violation"])
                if bool(r["broken"].any()):  # the row max is NaN or +inf
                    if validate:
                        reject_logits(fn, logits, r["broken"])
                    probs.index_fill_(0, torch.nonzero(r["broken"]).squeeze(1), float("nan"))
            else:
                keep = torch.nonzero(ok).squeeze(1)
                part = torch.zeros(keep.shape[0], n, dtype=logits.dtype, device=dev)
                part.scatter_(1, idx[keep], r["vals"][keep])
                part[r["broken"][keep]] = float("nan")
                rows_kept = todo[keep]
                probs.index_copy_(0, rows_kept, part)
                for name, dest in (("tau", tau_out), ("support", support), ("n_iter", n_iter),
                                   ("violation", violation)):
                    dest.index_copy_(0, rows_kept, r[name][keep])
            if bool(ok.all()):
                break
            failed = torch.nonzero(~ok).squeeze(1)
            todo = failed if todo is None else todo[failed]
        k = min(n, k * GROW)
    return probs, tau_out, first_idx, support, n_iter, violation


def _weights(p: Tensor, kind: str, alpha: float | Tensor) -> Tensor:
    """s = p^{2−α} on the support, 0 off it: ∂p/∂z = diag(s) − s sᵀ / Σ s (sparsemax: 1[p > 0];
    1.5-entmax: √p)."""
    if kind == "sparsemax":
        return (p > 0).to(p.dtype)
    if kind == "entmax15":
        return p.sqrt()
    exponent = 2 - _col(alpha, p.dtype)
    return torch.where(p > 0, p.clamp_min(torch.finfo(p.dtype).tiny).pow(exponent), 0)


def _grads(grad: Tensor, p: Tensor, kind: str, alpha: float | Tensor, need_alpha: bool
           ) -> tuple[Tensor, Tensor | None]:
    s = _weights(p, kind, alpha)
    s_sum = s.sum(-1, keepdim=True)
    centre = (s * grad).sum(-1, keepdim=True) / torch.where(s_sum > 0, s_sum, 1)
    grad_x = s * (grad - centre)
    grad_alpha = None
    if need_alpha:
        q = 1 / (_col(alpha, p.dtype) - 1)
        plogp = torch.special.xlogy(p, p)
        grad_alpha = q * ((grad - centre) * (q * p - plogp)).sum(-1, keepdim=True)
    return grad_x, grad_alpha


def topk_backward(grad: Tensor, probs: Tensor, alpha: Tensor, first_idx: Tensor, support: Tensor,
                  kind: str, need_alpha: bool) -> tuple[Tensor, Tensor]:
    """∂L/∂z (rows, n) and ∂L/∂α (rows, 1) from the forward's probs and first top-k indices."""
    rows, n = grad.shape
    cdtype = compute_dtype(grad.dtype)
    out = torch.zeros_like(grad)
    grad_alpha = torch.zeros(rows, 1, dtype=cdtype, device=grad.device)
    if rows == 0 or n == 0:
        return out, grad_alpha
    k = first_idx.shape[1]
    alpha = uniform_alpha(alpha)
    with _threads_for(first_idx.numel()):
        g_s = grad.gather(1, first_idx).to(cdtype)
        p_s = probs.gather(1, first_idx).to(cdtype)
        gx, ga = _grads(g_s, p_s, kind, alpha, need_alpha)
        out.scatter_(1, first_idx, gx.to(grad.dtype))
        if ga is not None:
            grad_alpha.copy_(ga)
        wide = torch.nonzero(support >= k).squeeze(1) if k < n else support[:0]
    if wide.numel():
        with _threads_for(wide.numel() * n):
            g_w = grad.index_select(0, wide).to(cdtype)
            p_w = probs.index_select(0, wide).to(cdtype)
            a_w = _take(alpha, wide)
            gx, ga = _grads(g_w, p_w, kind, a_w, need_alpha)
            out.index_copy_(0, wide, gx.to(grad.dtype))
            if ga is not None:
                grad_alpha.index_copy_(0, wide, ga)
    return out, grad_alpha

