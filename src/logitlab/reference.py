"""Naive, obviously correct implementations: the truth that tests and benchmarks share.

Everything here is written for clarity, not speed: float64, explicit loops where they make the
definition plain, no tricks for stability beyond what the definition needs. This module imports
only torch and the standard library, never the rest of logitlab, so that a bug in the package
cannot leak into its own expected values.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

F64 = torch.float64


def _rows(x: Tensor, dim: int) -> tuple[Tensor, tuple[int, ...]]:
    moved = x.to(F64).movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1]), tuple(moved.shape)


def _unrows(rows: Tensor, shape: tuple[int, ...], dim: int) -> Tensor:
    return rows.reshape(shape).movedim(-1, dim)


# ---------------------------------------------------------------------------------------------
# Normalizers
# ---------------------------------------------------------------------------------------------

# --- dense normalizers (softmax, sigmoid, standard, spherical, taylor) ---

def _each_row(logits: Tensor, dim: int, row_fn) -> Tensor:
    rows, shape = _rows(logits, dim)
    out = torch.stack([row_fn(row) for row in rows]) if rows.shape[0] else rows.clone()
    return _unrows(out, shape, dim)


def softmax(logits: Tensor, dim: int = -1, temperature: float = 1.0) -> Tensor:
    """exp(z_i / T) / Σ exp(z_k / T); -inf entries get 0; an all -inf row gives zeros."""
    def row_fn(z: Tensor) -> Tensor:
        if bool((z == -math.inf).all()):
            return torch.zeros_like(z)
        e = torch.exp((z - z.max()) / temperature)
        return e / e.sum()
    return _each_row(logits, dim, row_fn)


def log_softmax(logits: Tensor, dim: int = -1, temperature: float = 1.0) -> Tensor:
    """z_i / T − log Σ exp(z_k / T); an all -inf row gives -inf."""
    def row_fn(z: Tensor) -> Tensor:
        if bool((z == -math.inf).all()):
            return torch.full_like(z, -math.inf)
        m = z.max() / temperature
        return z / temperature - m - torch.log(torch.exp(z / temperature - m).sum())
    return _each_row(logits, dim, row_fn)


def shannon_negentropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Σ p log p with 0 log 0 = 0."""
    rows, shape = _rows(probs, dim)
    values = [sum(float(p) * math.log(float(p)) for p in row if p > 0) for row in rows]
    return torch.tensor(values, dtype=F64).reshape(shape[:-1])


def sigmoid(logits: Tensor) -> Tensor:
    """1 / (1 + exp(−z)), elementwise."""
    z = logits.to(F64)
    return torch.where(z >= 0, 1 / (1 + torch.exp(-z.clamp(min=0))),
                       torch.exp(z.clamp(max=0)) / (1 + torch.exp(z.clamp(max=0))))


def log_sigmoid(logits: Tensor) -> Tensor:
    """log σ(z) = −log(1 + exp(−z)), elementwise."""
    z = logits.to(F64)
    return torch.minimum(z, torch.zeros_like(z)) - torch.log1p(torch.exp(-z.abs()))


def _softplus(z: Tensor) -> Tensor:
    return torch.clamp(z, min=0) + torch.log1p(torch.exp(-z.abs()))


def standard_normalize(logits: Tensor, dim: int = -1, positivity: str | None = None) -> Tensor:
    """f(x_i) / Σ f(x_k), f in {identity, softplus, relu, abs}; -inf entries excluded (0)."""
    transforms = {None: lambda z: z, "softplus": _softplus, "relu": lambda z: z.clamp(min=0), "abs": torch.abs}

    def row_fn(z: Tensor) -> Tensor:
        excluded = z == -math.inf
        if bool(excluded.all()):
            return torch.zeros_like(z)
        scores = torch.where(excluded, torch.zeros_like(z),
                             transforms[positivity](torch.where(excluded, torch.zeros_like(z), z)))
        total = scores.sum()
        if positivity == "softplus" and total == 0:  # every softplus underflowed: softplus(z) = exp(z) there
            return softmax(z, 0)
        return scores / total
    return _each_row(logits, dim, row_fn)


def spherical_softmax(logits: Tensor, dim: int = -1, eps: float = 1e-6) -> Tensor:
    """(z_i² + ε) / Σ (z_k² + ε); -inf entries excluded (0)."""
    def row_fn(z: Tensor) -> Tensor:
        excluded = z == -math.inf
        if bool(excluded.all()):
            return torch.zeros_like(z)
        values = torch.where(excluded, torch.zeros_like(z), z * z + eps)
        return values / values.sum()
    return _each_row(logits, dim, row_fn)


def taylor_softmax(logits: Tensor, dim: int = -1, order: int = 2) -> Tensor:
    """t(z_i) / Σ t(z_k), t(z) = Σ_{j<=order} z^j / j!; -inf entries excluded (0)."""
    def row_fn(z: Tensor) -> Tensor:
        excluded = z == -math.inf
        if bool(excluded.all()):
            return torch.zeros_like(z)
        zz = torch.where(excluded, torch.zeros_like(z), z)
        values = sum(zz ** j / math.factorial(j) for j in range(order + 1))
        values = torch.where(excluded, torch.zeros_like(z), values)
        return values / values.sum()
    return _each_row(logits, dim, row_fn)



# --- sparse maps (sparsemax, 1.5-entmax, α-entmax): sort-based, row by row ---


def _sorted_desc(row: Tensor) -> list[float]:
    return sorted((float(v) for v in row), reverse=True)


def _shift(row: Tensor) -> Tensor:
    """z − max z: the same map (both are shift invariant), without losing the 1 to rounding."""
    return row - row.max()


def sparsemax(logits: Tensor, dim: int = -1) -> Tensor:
    """[z − τ]_+ with τ from the sorted row: the largest k with 1 + k z_(k) > Σ_{j≤k} z_(j)."""
    rows, shape = _rows(logits, dim)
    out = torch.zeros_like(rows)
    for r, row in enumerate(rows):
        if bool(torch.isneginf(row).all()):
            continue  # every class excluded: an all-zero row
        row = _shift(row)
        zs = _sorted_desc(row)
        total, tau = 0.0, 0.0
        for k, value in enumerate(zs, start=1):
            total += value
            if 1 + k * value > total:
                tau = (total - 1) / k
        out[r] = (row - tau).clamp_min(0)
    return _unrows(out, shape, dim)


def entmax15(logits: Tensor, dim: int = -1) -> Tensor:
    """[z/2 − τ]_+², τ from the support's Σ x and Σ x² (x = z/2), support found on the sorted row."""
    rows, shape = _rows(logits, dim)
    out = torch.zeros_like(rows)
    for r, row in enumerate(rows):
        if bool(torch.isneginf(row).all()):
            continue
        row = _shift(row)
        xs = [v / 2 for v in _sorted_desc(row) if v != -math.inf]
        total, total_sq, tau = 0.0, 0.0, 0.0
        for k, value in enumerate(xs, start=1):
            total += value
            total_sq += value * value
            mean = total / k
            delta = (1 - (total_sq - k * mean * mean)) / k
            tau_k = mean - math.sqrt(max(delta, 0.0))
            if tau_k <= value:
                tau = tau_k
        out[r] = (row / 2 - tau).clamp_min(0) ** 2
    return _unrows(out, shape, dim)


def entmax_bisect(logits: Tensor, alpha: float = 1.5, dim: int = -1, n_iter: int = 100) -> Tensor:
    """[(α−1) z − τ]_+^{1/(α−1)} with Σ = 1, τ by plain bisection on [max − 1, max] (in the
    (α−1) z scale), all rows at once; 100 halvings reach float64 resolution."""
    rows, shape = _rows(logits, dim)
    q = 1 / (alpha - 1)
    excluded = torch.isneginf(rows).all(-1, keepdim=True)
    rows = torch.where(excluded, 0.0, rows)
    x = (alpha - 1) * (rows - rows.max(-1, keepdim=True).values)
    hi = x.max(-1, keepdim=True).values
    lo = hi - 1
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        above = ((x - mid).clamp_min(0) ** q).sum(-1, keepdim=True) >= 1
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    p = (x - lo).clamp_min(0) ** q
    out = torch.where(excluded, 0.0, p / p.sum(-1, keepdim=True))
    return _unrows(out, shape, dim)


def _exp_alpha(t: Tensor, alpha: float) -> Tensor:
    """exp_α(t) = [1 + (α−1) t]_+^{1/(α−1)}, exp(t) at α = 1 (the Tsallis q-exponential)."""
    if alpha == 1:
        return torch.exp(t)
    base = 1 + (alpha - 1) * t
    return torch.where(base > 0, base.clamp_min(1e-300) ** (1 / (alpha - 1)), 0.0)


def entmax_any_alpha(logits: Tensor, alpha: float = 1.5, dim: int = -1, n_iter: int = 200) -> Tensor:
    """α-entmax for any α > 0 as p_i = exp_α(z_i − μ), μ the one number with Σ p = 1.

    μ by plain bisection on [max z, max z − log_α(1/n)] (log_α(y) = (y^{α−1} − 1)/(α−1), log at
    α = 1), where Σ p goes from ≥ 1 to ≤ 1; then two Newton steps in autograd-visible ops from
    the (detached) bisection point, so the first and second derivatives of the result are those
    of the exact map (the error of k Newton steps vanishes to order 2^k − 1 in the logits).
    α = 1 is the softmax, α = 2 sparsemax; α < 1 gives dense maps with power-law tails.
    Finite logits only.
    """
    rows, shape = _rows(logits, dim)
    n = rows.shape[-1]
    top = rows.max(-1, keepdim=True).values
    log_alpha_n = math.log(1 / n) if alpha == 1 else ((1 / n) ** (alpha - 1) - 1) / (alpha - 1)
    with torch.no_grad():
        lo, hi = top.clone(), top - log_alpha_n
        for _ in range(n_iter):
            mid = (lo + hi) / 2
            above = _exp_alpha(rows - mid, alpha).sum(-1, keepdim=True) >= 1
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    mu = lo
    for _ in range(2):
        p = _exp_alpha(rows - mu, alpha)
        slope = torch.where(p > 0, p.clamp_min(1e-300) ** (2 - alpha), 0.0).sum(-1, keepdim=True)
        mu = mu + (p.sum(-1, keepdim=True) - 1) / slope
    p = _exp_alpha(rows - mu, alpha)
    return _unrows(p / p.sum(-1, keepdim=True), shape, dim)


def gini_regularizer(probs: Tensor, dim: int = -1) -> Tensor:
    """½ Σ p² − ½."""
    return 0.5 * (probs.to(F64) ** 2).sum(dim) - 0.5


def tsallis_regularizer(probs: Tensor, alpha: float = 1.5, dim: int = -1) -> Tensor:
    """(Σ p^α − 1) / (α (α − 1))."""
    return ((probs.to(F64) ** alpha).sum(dim) - 1) / (alpha * (alpha - 1))


# ---------------------------------------------------------------------------------------------
# Losses and divergences
# ---------------------------------------------------------------------------------------------

# --- cross-entropy family (naive: one row at a time, straight from the definitions) ---


def _row_ce(z: Tensor, q: Tensor, w: Tensor) -> Tensor:
    """-sum_c q_c w_c log p_c for one row, with 0 * log 0 = 0.

    log p_c = (z_c − max z) − log Σ exp(z − max z): the maximum is subtracted before anything
    else, so that a row of scores near 1e30 keeps its log 2 (z_c − lse would round it away).
    """
    shifted = z - z.max()
    log_sum = torch.log(torch.exp(shifted).sum())
    total = torch.zeros((), dtype=F64)
    for c in range(z.numel()):
        if q[c] * w[c] != 0:
            total = total - q[c] * w[c] * (shifted[c] - log_sum)
    return total


def cross_entropy(logits: Tensor, target: Tensor, *, dim: int = -1, weight: Tensor | None = None,
                  ignore_index: int = -100, mask: Tensor | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0, z_loss: float = 0.0, temperature: float = 1.0) -> Tensor:
    """Weighted, smoothed cross-entropy + z-loss; mean over the kept rows' weights (0 if none)."""
    rows, shape = _rows(logits, dim)
    n, c = rows.shape
    index = not target.is_floating_point()
    targets = target.reshape(-1) if index else _rows(target, dim)[0]
    keeps = mask.reshape(-1) if mask is not None else torch.ones(n, dtype=torch.bool)
    w = weight.to(F64) if weight is not None else torch.ones(c, dtype=F64)
    values, row_weights = [], []
    for i in range(n):
        z = rows[i] / temperature
        keep = bool(keeps[i]) and not (index and int(targets[i]) == ignore_index)
        if not keep:
            values.append(torch.where(torch.isfinite(z), z, 0).sum() * 0)  # 0, connected to the graph
            row_weights.append(torch.zeros((), dtype=F64))
            continue
        if index:
            q = torch.zeros(c, dtype=F64)
            q[int(targets[i])] = 1.0
            r = w[int(targets[i])]
        else:
            q = targets[i].clone()
            r = torch.ones((), dtype=F64)
        q = (1 - label_smoothing) * q + label_smoothing / c
        lse = torch.log(torch.exp(z - z.max()).sum()) + z.max()
        values.append(_row_ce(z, q, w) + z_loss * r * lse**2)
        row_weights.append(r)
    v = torch.stack(values) if values else torch.zeros(0, dtype=F64)
    if reduction == "none":
        return v.reshape(shape[:-1])
    if reduction == "sum":
        return v.sum()
    denom = torch.stack(row_weights).sum() if row_weights else torch.zeros((), dtype=F64)
    return v.sum() / denom if denom != 0 else v.sum() * 0


def nll_loss(log_probs: Tensor, target: Tensor, *, dim: int = -1, weight: Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """-w_y log_probs[y] per row; mean over the kept rows' weights (0 if none)."""
    rows, shape = _rows(log_probs, dim)
    t = target.reshape(-1)
    w = weight.to(F64) if weight is not None else torch.ones(rows.shape[1], dtype=F64)
    values, denom = [], torch.zeros((), dtype=F64)
    for i in range(rows.shape[0]):
        if int(t[i]) == ignore_index:
            values.append(torch.zeros((), dtype=F64))
            continue
        values.append(-w[int(t[i])] * rows[i, int(t[i])])
        denom = denom + w[int(t[i])]
    v = torch.stack(values)
    if reduction == "none":
        return v.reshape(shape[:-1])
    return v.sum() if reduction == "sum" else (v.sum() / denom if denom != 0 else v.sum() * 0)


def binary_cross_entropy_with_logits(logits: Tensor, target: Tensor, *, weight: Tensor | None = None,
                                     pos_weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """-w [pw t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))], elementwise."""
    z, t = logits.to(F64), target.to(F64)
    pw = pos_weight.to(F64) if pos_weight is not None else torch.ones((), dtype=F64)
    log_sig = -torch.log1p(torch.exp(-z.abs())) + torch.minimum(z, torch.zeros_like(z))
    log_one_minus = log_sig - z
    v = -(pw * t * log_sig + (1 - t) * log_one_minus)
    if weight is not None:
        v = v * weight.to(F64)
    return v if reduction == "none" else (v.sum() if reduction == "sum" else v.mean())


def focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 2.0, alpha: float | Tensor | None = None,
               dim: int = -1, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """-alpha_y (1 - p_y)^gamma log p_y per row; mean over the kept rows."""
    rows, shape = _rows(logits, dim)
    t = target.reshape(-1)
    values, kept = [], 0
    for i in range(rows.shape[0]):
        y = int(t[i])
        if y == ignore_index:
            values.append(torch.zeros((), dtype=F64))
            continue
        p = torch.exp(rows[i] - rows[i].max())
        p = p / p.sum()
        a = 1.0 if alpha is None else (float(alpha[y]) if isinstance(alpha, Tensor) else float(alpha))
        values.append(-a * (1 - p[y]) ** gamma * torch.log(p[y]))
        kept += 1
    v = torch.stack(values)
    if reduction == "none":
        return v.reshape(shape[:-1])
    return v.sum() if reduction == "sum" else v.sum() / max(kept, 1)


def multiclass_hinge_loss(logits: Tensor, target: Tensor, *, margin: float = 1.0, kind: str = "crammer_singer",
                          dim: int = -1, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Per row: max(0, max_{k != y} (m + z_k) - z_y) or sum_{k != y} max(0, m + z_k - z_y), by loops."""
    rows, shape = _rows(logits, dim)
    t = target.reshape(-1)
    values, kept = [], 0
    for i in range(rows.shape[0]):
        y = int(t[i])
        if y == ignore_index:
            values.append(torch.zeros((), dtype=F64))
            continue
        terms = [torch.clamp(margin + rows[i, k] - rows[i, y], min=0.0) for k in range(rows.shape[1]) if k != y]
        zero = torch.zeros((), dtype=F64)
        if kind == "crammer_singer":
            values.append(torch.stack(terms).max() if terms else zero)
        else:
            values.append(torch.stack(terms).sum() if terms else zero)
        kept += 1
    v = torch.stack(values)
    if reduction == "none":
        return v.reshape(shape[:-1])
    return v.sum() if reduction == "sum" else v.sum() / max(kept, 1)


def perceptron_loss(logits: Tensor, target: Tensor, *, dim: int = -1, ignore_index: int = -100,
                    reduction: str = "mean") -> Tensor:
    """Per row: max_k z_k - z_y."""
    rows, shape = _rows(logits, dim)
    t = target.reshape(-1)
    keep = t != ignore_index
    safe = torch.where(keep, t, torch.zeros_like(t))
    v = torch.where(keep, rows.max(1).values - rows[torch.arange(rows.shape[0]), safe], torch.zeros((), dtype=F64))
    if reduction == "none":
        return v.reshape(shape[:-1])
    return v.sum() if reduction == "sum" else v.sum() / max(int(keep.sum()), 1)


def poly1_cross_entropy(logits: Tensor, target: Tensor, *, epsilon: float = 1.0, dim: int = -1,
                        weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                        label_smoothing: float = 0.0) -> Tensor:
    """CE + epsilon * w_y * (1 - sum_c q_c p_c), q the smoothed one-hot target."""
    rows, shape = _rows(logits, dim)
    t = target.reshape(-1)
    c = rows.shape[1]
    w = weight.to(F64) if weight is not None else torch.ones(c, dtype=F64)
    values, denom = [], torch.zeros((), dtype=F64)
    for i in range(rows.shape[0]):
        y = int(t[i])
        if y == ignore_index:
            values.append(torch.zeros((), dtype=F64))
            continue
        q = torch.full((c,), label_smoothing / c, dtype=F64)
        q[y] += 1 - label_smoothing
        p = torch.exp(rows[i] - rows[i].max())
        p = p / p.sum()
        values.append(_row_ce(rows[i], q, w) + epsilon * w[y] * (1 - (q * p).sum()))
        denom = denom + w[y]
    v = torch.stack(values)
    if reduction == "none":
        return v.reshape(shape[:-1])
    return v.sum() if reduction == "sum" else (v.sum() / denom if denom != 0 else v.sum() * 0)

# --- end of the cross-entropy family ---


# --- divergences (D(target ‖ model) between probability tensors; one value per row) ---------


def _div_rows(fn, target_probs: Tensor, model_probs: Tensor, dim: int) -> Tensor:
    p, shape = _rows(target_probs, dim)
    q, _ = _rows(model_probs, dim)
    out = torch.tensor([fn([float(v) for v in p[r]], [float(v) for v in q[r]])
                        for r in range(p.shape[0])], dtype=F64)
    return out.reshape(shape[:-1])


def _kl_row(p: list, q: list) -> float:
    total = 0.0
    for pi, qi in zip(p, q):
        if pi == 0:
            continue  # 0 log 0 = 0
        if qi == 0:
            return math.inf
        total += pi * math.log(pi / qi)
    return total


def _power_sum_row(p: list, q: list, alpha: float) -> float:
    """Σ p^α q^(1−α) with 0^a = 0 for a > 0 and 0^a = inf for a < 0."""
    total = 0.0
    for pi, qi in zip(p, q):
        if (pi == 0 and alpha > 0) or (qi == 0 and alpha < 1):
            continue
        if pi == 0 or qi == 0:
            return math.inf
        total += pi ** alpha * qi ** (1 - alpha)
    return total


def kl_divergence(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """KL(target ‖ model) = Σ p log(p / q) per row."""
    return _div_rows(_kl_row, target_probs, model_probs, dim)


def reverse_kl_divergence(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """KL(model ‖ target)."""
    return _div_rows(lambda p, q: _kl_row(q, p), target_probs, model_probs, dim)


def js_divergence(target_probs: Tensor, model_probs: Tensor, *, beta: float = 0.5, dim: int = -1) -> Tensor:
    """β KL(p ‖ m) + (1 − β) KL(q ‖ m), m = β p + (1 − β) q."""
    def row(p, q):
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
        return beta * _kl_row(p, m) + (1 - beta) * _kl_row(q, m)
    return _div_rows(row, target_probs, model_probs, dim)


def alpha_divergence(target_probs: Tensor, model_probs: Tensor, *, amari_alpha: float = 0.5,
                     dim: int = -1) -> Tensor:
    """(Σ p^α q^(1−α) − 1) / (α (α − 1)); KL at α = 1, reverse KL at α = 0."""
    a = amari_alpha
    def row(p, q):
        if a == 1:
            return _kl_row(p, q)
        if a == 0:
            return _kl_row(q, p)
        return (_power_sum_row(p, q, a) - 1) / (a * (a - 1))
    return _div_rows(row, target_probs, model_probs, dim)


def renyi_divergence(target_probs: Tensor, model_probs: Tensor, *, renyi_alpha: float = 0.5,
                     dim: int = -1) -> Tensor:
    """log(Σ p^α q^(1−α)) / (α − 1); KL at α = 1."""
    a = renyi_alpha
    def row(p, q):
        if a == 1:
            return _kl_row(p, q)
        s = _power_sum_row(p, q, a)
        return math.inf if s == 0 else math.log(s) / (a - 1)
    return _div_rows(row, target_probs, model_probs, dim)


def total_variation(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """½ Σ |p − q|."""
    return _div_rows(lambda p, q: 0.5 * sum(abs(a - b) for a, b in zip(p, q)),
                     target_probs, model_probs, dim)


def hellinger_distance(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """Squared Hellinger ½ Σ (√p − √q)²."""
    return _div_rows(lambda p, q: 0.5 * sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in zip(p, q)),
                     target_probs, model_probs, dim)


def brier_loss(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """Σ (p − q)²."""
    return _div_rows(lambda p, q: sum((a - b) ** 2 for a, b in zip(p, q)), target_probs, model_probs, dim)


def entropy(probs: Tensor, *, dim: int = -1) -> Tensor:
    """H(p) = −Σ p log p in nats, 0 log 0 = 0."""
    return _div_rows(lambda p, _: -sum(a * math.log(a) for a in p if a > 0), probs, probs, dim)


def cross_entropy_between(target_probs: Tensor, model_probs: Tensor, *, dim: int = -1) -> Tensor:
    """H(p, q) = −Σ p log q; +inf where p > 0 = q."""
    def row(p, q):
        if any(a > 0 and b == 0 for a, b in zip(p, q)):
            return math.inf
        return -sum(a * math.log(b) for a, b in zip(p, q) if a > 0)
    return _div_rows(row, target_probs, model_probs, dim)


# --- Fenchel–Young losses ---------------------------------------------------------------------


def regularizer(probs: Tensor, kind: str, *, alpha: float = 1.5, dim: int = -1) -> Tensor:
    """Ω(p): 'shannon' Σ p log p, 'gini' ½‖p‖² − ½, 'tsallis' (Σ p^α − 1) / (α (α − 1)),
    'binary' Σ p log p + (1 − p) log(1 − p) (the sigmoid's, on the box [0, 1]^n)."""
    def row(p, _):
        if kind == "shannon":
            return sum(a * math.log(a) for a in p if a > 0)
        if kind == "binary":
            return sum(a * math.log(a) for a in p if a > 0) + sum((1 - a) * math.log(1 - a) for a in p if a < 1)
        if kind == "gini":
            return 0.5 * sum(a * a for a in p) - 0.5
        return (sum(a ** alpha for a in p) - 1) / (alpha * (alpha - 1))
    return _div_rows(row, probs, probs, dim)


def fenchel_young_loss(logits: Tensor, target_probs: Tensor, model_probs: Tensor, kind: str, *,
                       alpha: float = 1.5, dim: int = -1) -> Tensor:
    """Ω*(θ) + Ω(y) − ⟨θ, y⟩ with Ω*(θ) = ⟨θ, ŷ⟩ − Ω(ŷ), ŷ = ``model_probs`` the maximizer."""
    theta, _ = _rows(logits, dim)
    y, shape = _rows(target_probs, dim)
    yhat, _ = _rows(model_probs, dim)
    omega_y = regularizer(y, kind, alpha=alpha).tolist()
    omega_yhat = regularizer(yhat, kind, alpha=alpha).tolist()
    out = []
    for r in range(theta.shape[0]):
        inner = sum(float(t) * (float(a) - float(b)) for t, a, b in zip(theta[r], yhat[r], y[r])
                    if float(a) != float(b))
        out.append(inner - omega_yhat[r] + omega_y[r])
    return torch.tensor(out, dtype=F64).reshape(shape[:-1])


# ---------------------------------------------------------------------------------------------
# Fused linear + loss
# ---------------------------------------------------------------------------------------------


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None = None,
                         class_weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                         label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None) -> Tensor:
    """Cross-entropy of logits z = hidden @ weight.T + bias, row by row in float64.

    Per kept row with target t: (1 − ε)·w_t·(lse − z_t) + (ε / V)·Σ_c w_c·(lse − z_c) + λ·w_t·lse²;
    'mean' divides by Σ w_t over kept rows (0 when no row is kept).
    """
    h = hidden.to(F64).reshape(-1, hidden.shape[-1])
    logits = h @ weight.to(F64).T
    if bias is not None:
        logits = logits + bias.to(F64)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    vocab = logits.shape[1]
    w = torch.ones(vocab, dtype=F64) if class_weight is None else class_weight.to(F64)
    flat = target.reshape(-1)
    rows, denom = [], torch.zeros((), dtype=F64)
    for n in range(logits.shape[0]):
        t = int(flat[n])
        if t == ignore_index:
            rows.append(logits[n].sum() * 0)  # zero, but connected to the inputs (zero gradient)
            continue
        lse = torch.logsumexp(logits[n], 0)
        nll = lse - logits[n]
        row = (1 - label_smoothing) * w[t] * nll[t] + label_smoothing / vocab * (w * nll).sum()
        rows.append(row + z_loss * w[t] * lse**2)
        denom = denom + w[t]
    values = torch.stack(rows) if rows else torch.zeros(0, dtype=F64)
    if reduction == "none":
        return values.reshape(target.shape)
    if reduction == "sum":
        return values.sum()
    return values.sum() / denom if denom > 0 else values.sum() * 0


def linear_divergence_loss(hidden: Tensor, weight: Tensor, *, teacher_hidden: Tensor, teacher_weight: Tensor,
                           divergence: str = "kl", beta: float = 0.5, temperature: float = 1.0,
                           target: Tensor | None = None, hard_label_weight: float = 0.0,
                           bias: Tensor | None = None, teacher_bias: Tensor | None = None,
                           ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Distillation D(teacher ‖ student) (or reverse, or JS_β) of two linear heads, in float64."""
    z = hidden.to(F64).reshape(-1, hidden.shape[-1]) @ weight.to(F64).T
    u = teacher_hidden.to(F64).reshape(-1, teacher_hidden.shape[-1]) @ teacher_weight.to(F64).T
    if bias is not None:
        z = z + bias.to(F64)
    if teacher_bias is not None:
        u = u + teacher_bias.to(F64)
    values, kept = [], 0
    flat = None if target is None else target.reshape(-1)
    for n in range(z.shape[0]):
        if flat is not None and int(flat[n]) == ignore_index:
            values.append(z[n].sum() * 0)  # zero, but connected to the inputs (zero gradient)
            continue
        p = torch.softmax(u[n] / temperature, 0)
        q = torch.softmax(z[n] / temperature, 0)
        if divergence == "kl":
            value = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum()
        elif divergence == "reverse_kl":
            value = torch.where(q > 0, q * (torch.log(q) - torch.log(p)), torch.zeros_like(q)).sum()
        else:
            m = beta * p + (1 - beta) * q
            # 0·log(0 / m) = 0; the log of a where()-guarded p keeps the gradient finite too.
            p_safe, q_safe = torch.where(p > 0, p, torch.ones_like(p)), torch.where(q > 0, q, torch.ones_like(q))
            m_p, m_q = torch.where(p > 0, m, torch.ones_like(m)), torch.where(q > 0, m, torch.ones_like(m))
            value = torch.where(p > 0, beta * p * torch.log(p_safe / m_p), torch.zeros_like(p)).sum()
            value = value + torch.where(q > 0, (1 - beta) * q * torch.log(q_safe / m_q), torch.zeros_like(q)).sum()
        if hard_label_weight:
            value = value - hard_label_weight * torch.log_softmax(z[n], 0)[int(flat[n])]
        values.append(torch.as_tensor(value, dtype=F64))
        kept += 1
    out = torch.stack(values)
    if reduction == "none":
        return out.reshape(hidden.shape[:-1])
    if reduction == "sum":
        return out.sum()
    return out.sum() / kept if kept else out.sum() * 0


# ---------------------------------------------------------------------------------------------
# Structures (linear-chain CRF by enumeration) and maximum entropy
# ---------------------------------------------------------------------------------------------


def linear_chain_crf_brute_force(emissions: Tensor, transitions: Tensor, *, start_transitions: Tensor | None = None,
                                 end_transitions: Tensor | None = None) -> dict[str, Tensor]:
    """A linear-chain CRF on one sequence by enumerating all K^L tag sequences (float64).

    emissions (L, K), transitions (K, K) with transitions[i, j] the score of i followed by j,
    optional start/end scores (K,). Returns a dict with 'log_partition' (0-d), 'marginals'
    (L, K) P(y_t = k), 'best_tags' (L,) and 'best_score' (0-d), and 'scores' of every
    sequence in itertools.product order.
    """
    emissions, transitions = emissions.to(F64), transitions.to(F64)
    length, k = emissions.shape
    start = torch.zeros(k, dtype=F64) if start_transitions is None else start_transitions.to(F64)
    end = torch.zeros(k, dtype=F64) if end_transitions is None else end_transitions.to(F64)
    sequences = list(itertools.product(range(k), repeat=length))
    scores = []
    for seq in sequences:
        score = start[seq[0]] + end[seq[-1]]
        for t, tag in enumerate(seq):
            score = score + emissions[t, tag]
            if t > 0:
                score = score + transitions[seq[t - 1], tag]
        scores.append(score)
    scores_t = torch.stack(scores)
    top = scores_t.max()
    log_z = top + torch.log(torch.exp(scores_t - top).sum())
    probs = torch.exp(scores_t - log_z)
    marginals = torch.zeros(length, k, dtype=F64)
    for p, seq in zip(probs, sequences):
        for t, tag in enumerate(seq):
            marginals[t, tag] += p
    best = int(scores_t.argmax())
    entropy = -sum(float(p) * math.log(float(p)) for p in probs if float(p) > 0)
    return {"log_partition": log_z, "marginals": marginals, "best_tags": torch.tensor(sequences[best]),
            "best_score": scores_t[best], "scores": scores_t,
            "sorted_scores": torch.sort(scores_t, descending=True).values,
            "entropy": torch.tensor(entropy, dtype=F64)}


def hmm_brute_force(observations: list[int], initial: Tensor, transition: Tensor, emission: Tensor
                    ) -> dict[str, Tensor]:
    """A hidden Markov model on one sequence by enumerating all K^L state sequences (float64).

    ``initial`` (K,) π, ``transition`` (K, K) T[i, j] = p(j | i), ``emission`` (K, V)
    B[k, v] = p(v | k), as probabilities. Returns 'likelihood' p(x) (0-d), 'posteriors' (L, K)
    P(z_t = k | x), 'best_states' (L,) and 'best_joint' p(x, z*) (0-d), 'entropy' H(z | x).
    """
    initial, transition, emission = initial.to(F64), transition.to(F64), emission.to(F64)
    k = initial.shape[0]
    length = len(observations)
    joint = {}
    for states in itertools.product(range(k), repeat=length):
        p = float(initial[states[0]]) * float(emission[states[0], observations[0]])
        for t in range(1, length):
            p *= float(transition[states[t - 1], states[t]]) * float(emission[states[t], observations[t]])
        joint[states] = p
    likelihood = sum(joint.values())
    posteriors = torch.zeros(length, k, dtype=F64)
    entropy = 0.0
    for states, p in joint.items():
        q = p / likelihood
        if q > 0:
            entropy -= q * math.log(q)
        for t, z in enumerate(states):
            posteriors[t, z] += q
    best = max(joint, key=joint.get)
    return {"likelihood": torch.tensor(likelihood, dtype=F64), "posteriors": posteriors,
            "best_states": torch.tensor(best), "best_joint": torch.tensor(joint[best], dtype=F64),
            "entropy": torch.tensor(entropy, dtype=F64)}


def gibbs_distribution(statistics: Tensor, theta: Tensor, base_measure: Tensor | None = None) -> Tensor:
    """p_k = q_k exp(⟨θ, T_k⟩) / Σ_j q_j exp(⟨θ, T_j⟩), one point at a time (float64).

    statistics (K, F), theta (F,), base_measure (K,) or None (uniform). The exponential-family
    member that :func:`logitlab.maxent.solve_maxent` returns for natural parameters θ.
    """
    statistics, theta = statistics.to(F64), theta.to(F64)
    k = statistics.shape[0]
    base = torch.ones(k, dtype=F64) if base_measure is None else base_measure.to(F64)
    scores = [float(statistics[i] @ theta) for i in range(k)]
    top = max(s for s, q in zip(scores, base.tolist()) if q > 0)
    weights = [q * math.exp(s - top) if q > 0 else 0.0 for s, q in zip(scores, base.tolist())]
    total = sum(weights)
    return torch.tensor([w / total for w in weights], dtype=F64)
