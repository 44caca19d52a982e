"""Each divergence D(target ‖ model) defined once: its row function, value and gradient.

A row function takes the target's ``p``, ``log_p`` and the model's ``q``, ``log_q`` as (N, n)
rows (log = -inf exactly where the probability is 0) and returns a :class:`Row`: the (N,)
values and, with ``grad=True``, the (N, n) gradient with respect to the model's logits s when
q = softmax(s). With g = ∂D/∂log q that gradient is g − q Σ g (the softmax's chain rule); each
row function writes it in closed form. Every loss of the family uses these functions:

* the plain losses (:mod:`logitlab.losses.divergences`, any normalizer) take the value and let
  autograd differentiate it (through the normalizer, and into the target when it has a
  gradient);
* the chunked distillation loss (:mod:`logitlab.fused.divergence`) and the vocabulary-parallel
  one (:mod:`logitlab.distributed.vocab_parallel`) take value and gradient per chunk, with
  ``total`` all-reducing the row sums over the ranks' slices of the vocabulary.

``total(*terms)`` turns (N, n) element-wise terms into the tuple of their (N,) sums over the
full row; every sum a row function needs goes through one call, so a sharded vocabulary costs
one all-reduce. The functions flagged ``shardable=False`` in :data:`DIVERGENCES` (Amari and
Rényi: a log-space power sum) need the whole row on one process.

Conventions, shared by all:

* ``0 · log 0 = 0``: an entry where the weighting distribution is 0 contributes nothing.
* A divergence is ``+inf`` only where the math says so (e.g. KL(p ‖ q) with p > 0 where q = 0);
  such a row has zero gradient, never NaN.

Adding a divergence: its row function and its :class:`Divergence` record here (the public
function of :mod:`logitlab.losses.divergences` and its Module are generated from the record),
its registry row, its reference, its tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from logitlab._validation import check_positive, fail

__all__ = ["Row", "Divergence", "DIVERGENCES", "row_sums", "kl", "reverse_kl", "js", "amari", "renyi",
           "total_variation", "hellinger", "brier", "log_power_sum", "power_sum_minus_one"]

NEG_INF = -math.inf


class Row(NamedTuple):
    """(N,) values and the (N, n) gradient with respect to softmax logits (None without ``grad``)."""

    value: Tensor
    grad: Tensor | None


def row_sums(*terms: Tensor) -> tuple[Tensor, ...]:
    """The default ``total``: each (N, n) term summed over its row (the whole vocabulary is here)."""
    return tuple(t.sum(-1) for t in terms)


def _finite_or_zero(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _infinite_rows(values: Tensor, infinite: Tensor) -> Tensor:
    """Set rows flagged ``infinite`` (N,) to +inf with a constant (zero-gradient) branch."""
    return torch.where(infinite, torch.full_like(values, math.inf), values)


def _zero_rows(grad: Tensor, rows: Tensor) -> Tensor:
    """The gradient with the rows flagged ``rows`` (N,) set to 0 (the rows of value +inf)."""
    return torch.where(rows.unsqueeze(-1), torch.zeros_like(grad), grad)


def _probs(q: Tensor | None, log_q: Tensor) -> Tensor:
    return log_q.exp() if q is None else q


def kl(p: Tensor, log_p: Tensor, q: Tensor | None, log_q: Tensor, *,
       total: Callable[..., tuple[Tensor, ...]] = row_sums, grad: bool = False) -> Row:
    """KL(p ‖ q) = Σ p (log p − log q); +inf iff some p > 0 has q = 0. ∂/∂s = q − p.

    ``q`` may be None (the value needs only ``log_q``; the gradient computes it).
    """
    p_support = log_p > NEG_INF
    infinite_term = p_support & (log_q == NEG_INF)
    diff = torch.where(p_support & ~infinite_term, log_p - log_q, torch.zeros_like(log_p))
    value, n_infinite = total(p * _finite_or_zero(diff), infinite_term.to(p.dtype))
    infinite = n_infinite > 0
    return Row(_infinite_rows(value, infinite), _probs(q, log_q) - p if grad else None)


def reverse_kl(p: Tensor, log_p: Tensor, q: Tensor | None, log_q: Tensor, *,
               total: Callable[..., tuple[Tensor, ...]] = row_sums, grad: bool = False) -> Row:
    """KL(q ‖ p) = Σ q (log q − log p); +inf iff some q > 0 has p = 0. ∂/∂s = q (log q − log p − D)."""
    q = _probs(q, log_q)
    value = kl(q, log_q, p, log_p, total=total).value
    if not grad:
        return Row(value, None)
    ratio = torch.where((log_q > NEG_INF) & (log_p > NEG_INF), log_q - log_p, torch.zeros_like(log_q))
    infinite = torch.isinf(value)
    return Row(value, _zero_rows(q * (ratio - torch.where(infinite, 0.0, value).unsqueeze(-1)), infinite))


def _logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """log(e^a + e^b), -inf (with a finite backward) where both are -inf."""
    both = (a == NEG_INF) & (b == NEG_INF)
    zero = torch.zeros_like(a)
    out = torch.logaddexp(torch.where(both, zero, a), torch.where(both, zero, b))
    return torch.where(both, torch.full_like(out, NEG_INF), out)


def _weighted_log_ratio(w: Tensor, log_w: Tensor, log_m: Tensor) -> Tensor:
    """w (log w − log m) with 0 where w = 0 (log m is finite wherever log w is)."""
    support = log_w > NEG_INF
    return w * torch.where(support, log_w - log_m, torch.zeros_like(log_w))


def js(p: Tensor, log_p: Tensor, q: Tensor | None, log_q: Tensor, *, beta: float = 0.5,
       total: Callable[..., tuple[Tensor, ...]] = row_sums, grad: bool = False) -> Row:
    """β KL(p ‖ m) + (1 − β) KL(q ‖ m), m = β p + (1 − β) q, β ∈ (0, 1); always finite.

    ∂JS/∂q = (1 − β) log(q / m) (the terms through m cancel), so with
    slope = (1 − β)(log q − log m): ∂/∂s = q (slope − Σ q·slope), Σ q·slope = (1 − β) KL(q ‖ m).
    """
    q = _probs(q, log_q)
    log_m = _logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    to_p, to_q = total(_weighted_log_ratio(p, log_p, log_m), _weighted_log_ratio(q, log_q, log_m))
    value = beta * to_p + (1 - beta) * to_q
    if not grad:
        return Row(value, None)
    slope = (1 - beta) * torch.where(log_q > NEG_INF, log_q - log_m, torch.zeros_like(log_q))
    return Row(value, q * (slope - ((1 - beta) * to_q).unsqueeze(-1)))


def log_power_sum(log_p: Tensor, log_q: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """``(log Σ p^α q^(1−α), infinite)`` for α ∉ {0, 1}, with 0 · ∞ conventions.

    A term is 0 when p = 0 and α > 0, or q = 0 and α < 1; it is +inf when p = 0 (α < 0) or
    q = 0 (α > 1) and the other factor is positive. ``infinite`` (N,) flags rows with a +inf
    term; their log-sum is returned as 0 and must be replaced by the caller.
    """
    exponent, infinite_term = _power_exponent(log_p, log_q, alpha)
    empty = (exponent == NEG_INF).all(-1, keepdim=True)
    log_sum = torch.logsumexp(torch.where(empty, torch.zeros_like(exponent), exponent), dim=-1)
    log_sum = torch.where(empty.squeeze(-1), torch.full_like(log_sum, NEG_INF), log_sum)
    infinite = infinite_term.any(-1)
    return torch.where(infinite, torch.zeros_like(log_sum), log_sum), infinite


def _power_exponent(log_p: Tensor, log_q: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """α log p + (1 − α) log q per term (-inf where the term is 0 or +inf), and the +inf terms."""
    p_zero, q_zero = log_p == NEG_INF, log_q == NEG_INF
    zero = (p_zero & (alpha > 0)) | (q_zero & (alpha < 1))
    infinite_term = ~zero & (p_zero | q_zero)
    exponent = alpha * _finite_or_zero(log_p) + (1 - alpha) * _finite_or_zero(log_q)
    return torch.where(zero | infinite_term, torch.full_like(exponent, NEG_INF), exponent), infinite_term


def _power_weights(log_p: Tensor, log_q: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """(w / Σ w, infinite) with w = p^α q^(1−α) per term (0 conventions as :func:`log_power_sum`);
    rows that are +inf or have Σ w = 0 get weights 0 and are flagged."""
    exponent, infinite_term = _power_exponent(log_p, log_q, alpha)
    empty = (exponent == NEG_INF).all(-1, keepdim=True)
    weights = torch.softmax(torch.where(empty, torch.zeros_like(exponent), exponent), dim=-1)
    flagged = infinite_term.any(-1) | empty.squeeze(-1)
    return _zero_rows(weights, flagged), flagged


def power_sum_minus_one(p: Tensor, log_p: Tensor, log_q: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """``(Σ p^α q^(1−α) − 1, usable)`` without cancellation near α = 1, for rows on the simplex.

    With d = log p − log q on the joint support and Σ p = 1, Σ p^α q^(1−α) − 1 =
    Σ_{p,q>0} p·expm1((α − 1) d) − Σ_{p>0=q} p (the last sum only for α < 1; for α > 1 such a
    row is +inf and flagged by :func:`log_power_sum`). Computing ``1 + (...)`` and subtracting 1
    instead loses every digit below eps, then divided by α − 1. ``usable`` (N,) marks rows with
    |(α − 1) d| ≤ 1 everywhere (no overflow in expm1); the others must use the log-space sum.
    """
    both = (log_p > NEG_INF) & (log_q > NEG_INF)
    scaled = (alpha - 1) * torch.where(both, log_p - log_q, torch.zeros_like(log_p))
    usable = (scaled.abs() <= 1).all(-1)
    scaled = torch.where(usable.unsqueeze(-1), scaled, torch.zeros_like(scaled))
    gain = torch.where(both, p * torch.expm1(scaled), torch.zeros_like(p)).sum(-1)
    if alpha < 1:
        gain = gain - torch.where((log_p > NEG_INF) & ~both, p, torch.zeros_like(p)).sum(-1)
    return gain, usable


def amari(p: Tensor, log_p: Tensor, q: Tensor | None, log_q: Tensor, *, alpha: float = 0.5,
          total: Callable[..., tuple[Tensor, ...]] = row_sums, grad: bool = False) -> Row:
    """(Σ p^α q^(1−α) − 1) / (α (α − 1)); α = 1 gives KL(p ‖ q), α = 0 gives KL(q ‖ p).

    With w = p^α q^(1−α): ∂D/∂log q = −w / α, so ∂/∂s = (q Σ w − w) / α.
    """
    if alpha == 1:
        return kl(p, log_p, q, log_q, total=total, grad=grad)
    if alpha == 0:
        return reverse_kl(p, log_p, q, log_q, total=total, grad=grad)
    q = _probs(q, log_q)
    if alpha < 0.5:  # D_α(p ‖ q) = D_{1−α}(q ‖ p): keep the order nearest 1, where the sum cancels
        value = amari(q, log_q, p, log_p, alpha=1 - alpha).value
    else:
        log_sum, infinite = log_power_sum(log_p, log_q, alpha)
        near, usable = power_sum_minus_one(p, log_p, log_q, alpha)
        value = _infinite_rows(torch.where(usable, near, torch.expm1(log_sum)) / (alpha * (alpha - 1)), infinite)
    if not grad:
        return Row(value, None)
    weights, flagged = _power_weights(log_p, log_q, alpha)  # w / Σ w
    log_sum, _ = log_power_sum(log_p, log_q, alpha)
    total_w = torch.where(flagged, 0.0, log_sum.exp()).unsqueeze(-1)
    return Row(value, _zero_rows(total_w * (q - weights) / alpha, torch.isinf(value)))


def renyi(p: Tensor, log_p: Tensor, q: Tensor | None, log_q: Tensor, *, alpha: float = 0.5,
          total: Callable[..., tuple[Tensor, ...]] = row_sums, grad: bool = False) -> Row:
    """log(Σ p^α q^(1−α)) / (α − 1); α = 1 gives KL(p ‖ q). ∂/∂s = q − w / Σ w, w = p^α q^(1−α)."""
    if alpha == 1:
        return kl(p, log_p, q, log_q, total=total, grad=grad)
    log_sum, infinite = log_power_sum(log_p, log_q, alpha)
    # Disjoint supports (log_sum = -inf, α < 1) give +inf: flag them for a zero gradient.
    infinite = infinite | (log_sum == NEG_INF)
    near, usable = power_sum_minus_one(p, log_p, log_q, alpha)
    usable = usable & ~infinite & (near > -1)
    near = torch.log1p(torch.where(usable, near, torch.zeros_like(near)))
    values = torch.where(usable, near, _finite_or_zero(log_sum))
    value = _infinite_rows(values / (alpha - 1), infinite)
    if not grad:
        return Row(value, None)
    weights, flagged = _power_weights(log_p, log_q, alpha)
    return Row(value, _zero_rows(_probs(q, log_q) - weights, flagged | infinite))


def _sum_and_chain(term: Tensor, g: Tensor | None, q: Tensor, total: Callable[..., tuple[Tensor, ...]]) -> Row:
    """The row's value Σ term and, given g = ∂D/∂log q, its gradient g − q Σ g with respect to s
    (q = softmax(s): the chain rule of the softmax), both sums in one ``total`` call."""
    if g is None:
        (value,) = total(term)
        return Row(value, None)
    value, sum_g = total(term, g)
    return Row(value, g - q * sum_g.unsqueeze(-1))


def total_variation(p: Tensor, log_p: Tensor, q: Tensor | None, log_q: Tensor, *,
                    total: Callable[..., tuple[Tensor, ...]] = row_sums, grad: bool = False) -> Row:
    """½ Σ |p − q|. ∂D/∂log q = ½ q sign(q − p)."""
    q = _probs(q, log_q)
    return _sum_and_chain(0.5 * (p - q).abs(), 0.5 * q * torch.sign(q - p) if grad else None, q, total)


def hellinger(p: Tensor, log_p: Tensor, q: Tensor | None, log_q: Tensor, *,
              total: Callable[..., tuple[Tensor, ...]] = row_sums, grad: bool = False) -> Row:
    """½ Σ (√p − √q)², square roots taken as exp(½ log) so that q = 0 has a finite gradient.

    ∂D/∂log q = −½ (√p − √q) √q.
    """
    root_p, root_q = torch.exp(0.5 * log_p), torch.exp(0.5 * log_q)
    g = -0.5 * (root_p - root_q) * root_q if grad else None
    return _sum_and_chain(0.5 * (root_p - root_q).square(), g, _probs(q, log_q), total)


def brier(p: Tensor, log_p: Tensor, q: Tensor | None, log_q: Tensor, *,
          total: Callable[..., tuple[Tensor, ...]] = row_sums, grad: bool = False) -> Row:
    """Σ (p − q)². ∂D/∂log q = −2 (p − q) q."""
    q = _probs(q, log_q)
    return _sum_and_chain((p - q).square(), -2.0 * (p - q) * q if grad else None, q, total)


# --- the records: one per divergence -------------------------------------------------------

def _check_beta(fn: str, value: Any) -> float:
    number = check_positive(fn, "beta", value)
    if not number < 1:
        fail(fn, "beta", "a number in (0, 1)", number)
    return number


def _check_real(name: str) -> Callable[[str, Any], float]:
    def check(fn: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail(fn, name, "a finite real number", value)
        return float(value)
    return check


def _check_positive(name: str) -> Callable[[str, Any], float]:
    return lambda fn, value: check_positive(fn, name, value)


@dataclass(frozen=True)
class Divergence:
    """One member of the family: its row function and what the public loss is made of.

    ``row(p, log_p, q, log_q, *, total, grad[, <row_param>=value])`` is the row function;
    ``param`` is the public loss's own keyword (a name no normalizer uses), passed to the row
    function as ``row_param``, with its default and its check ``check(fn, value) -> float``;
    ``public`` names the public function of :mod:`logitlab.losses.divergences`, whose docstring
    is ``doc`` (the math and a doctested example; the shared arguments are appended) with
    ``param_doc`` the line of its own parameter. ``shardable``: every sum goes through
    ``total`` (the chunked and vocabulary-parallel paths may use it).
    """

    row: Callable[..., Row]
    public: str
    doc: str
    param: str | None = None
    row_param: str | None = None
    default: float | None = None
    check: Callable[[str, Any], float] | None = None
    param_doc: str = ""
    shardable: bool = True

    def __call__(self, p: Tensor, log_p: Tensor, q: Tensor | None, log_q: Tensor, value: float | None = None, *,
                 total: Callable[..., tuple[Tensor, ...]] = row_sums, grad: bool = False) -> Row:
        """The row function with the parameter ``value`` (the default when None)."""
        options = {} if self.row_param is None else {self.row_param: self.default if value is None else value}
        return self.row(p, log_p, q, log_q, total=total, grad=grad, **options)


DIVERGENCES: dict[str, Divergence] = {
    "kl": Divergence(kl, "kl_divergence",
        """Forward Kullback–Leibler divergence KL(target ‖ model), per row.

    KL(p ‖ q) = Σ_i p_i (log p_i − log q_i), with p = target and q = normalizer(logits / T).
    Minimizing it over the model is maximum likelihood: KL(p ‖ q) = H(p, q) − H(p), so with
    one-hot targets it equals the cross-entropy of any normalizer. +inf where some p_i > 0 has
    q_i = 0 (possible with sparse normalizers or -inf logits).

    Reference: Kullback & Leibler, "On Information and Sufficiency", 1951.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(float(kl_divergence(logits, torch.tensor([[1.0, 0.0]]))), 4)  # log 2
        0.6931
    """),
    "reverse_kl": Divergence(reverse_kl, "reverse_kl_divergence",
        """Reverse KL divergence, KL(model ‖ target), per row.

    D(target ‖ model) = KL(q ‖ p) = Σ_i q_i (log q_i − log p_i): mode-seeking. +inf where the
    model puts mass on a class the target excludes (always so for a dense normalizer and a
    one-hot target, hence not an index-target objective).

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(float(reverse_kl_divergence(logits, torch.tensor([[0.25, 0.75]]))), 4)
        0.1438
    """),
    "js": Divergence(js, "js_divergence",
        """Generalized Jensen–Shannon divergence JS_β(target ‖ model).

    JS_β(p ‖ q) = β KL(p ‖ m) + (1 − β) KL(q ‖ m),  m = β p + (1 − β) q,  β ∈ (0, 1).

    β = 0.5 is the Jensen–Shannon divergence (symmetric, at most log 2). Limits:
    JS_β / β → KL(p ‖ q) (forward, target ‖ model) as β → 0 and JS_β / (1 − β) → KL(q ‖ p)
    (reverse) as β → 1. Always finite: at most h(β) = −β log β − (1 − β) log(1 − β) (log 2 at ½),
    with finite gradients at zero probabilities.
    ``beta`` is this loss's own parameter (keyword-only).

    References: Lin, "Divergence measures based on the Shannon entropy", 1991; Agarwal et al.,
    "On-Policy Distillation of Language Models" (generalized JSD), 2024.

    Example:
        >>> logits = torch.tensor([[0.0, -torch.inf]])
        >>> round(float(js_divergence(logits, torch.tensor([[0.0, 1.0]]))), 4)  # log 2
        0.6931
    """, "beta", "beta", 0.5, _check_beta,
        "        beta: the mixture weight β ∈ (0, 1) of the target (0.5: Jensen–Shannon).\n"),
    "alpha": Divergence(amari, "alpha_divergence",
        """Amari α-divergence D_α(target ‖ model), α = ``amari_alpha``.

    D_α(p ‖ q) = (Σ_i p_i^α q_i^(1−α) − 1) / (α (α − 1)),  α ∈ ℝ,

    in the parametrization of Cichocki & Amari (2010) restricted to the simplex. α → 1 gives
    KL(p ‖ q) and α → 0 gives KL(q ‖ p) (both used exactly at α ∈ {1, 0}); α = ½ gives
    4 · squared Hellinger. For α ∈ (0, 1) it is finite and bounded by 1 / (α (1 − α)); for
    α > 1 it is +inf where p > 0 = q, for α < 0 where q > 0 = p. The parameter is named
    ``amari_alpha`` so that ``alpha=`` stays the entmax normalizer's.

    Reference: Amari, "Differential-Geometrical Methods in Statistics", 1985; Cichocki &
    Amari, "Families of Alpha- Beta- and Gamma- Divergences", Entropy 12, 2010.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(float(alpha_divergence(logits, torch.tensor([[1.0, 0.0]]))), 4)  # 4(1 − √½)
        1.1716
    """, "amari_alpha", "alpha", 0.5, _check_real("amari_alpha"),
        "        amari_alpha: the order α, any finite real (0 and 1 are the KL limits).\n", shardable=False),
    "renyi": Divergence(renyi, "renyi_divergence",
        """Rényi divergence of order α = ``renyi_alpha`` > 0, D_α(target ‖ model).

    D_α(p ‖ q) = log(Σ_i p_i^α q_i^(1−α)) / (α − 1);  α → 1 gives KL(p ‖ q) (used exactly at
    α = 1); α = ½ gives −2 log Σ √(p q). With a one-hot target it is −log q_y for every α,
    the cross-entropy. +inf for α > 1 where p > 0 = q, and for α < 1 between disjoint supports.

    Reference: Rényi, "On Measures of Entropy and Information", 1961; van Erven & Harremoës,
    "Rényi Divergence and Kullback–Leibler Divergence", IEEE Trans. Inf. Theory, 2014.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(float(renyi_divergence(logits, torch.tensor([[1.0, 0.0]]), renyi_alpha=2.0)), 4)
        0.6931
    """, "renyi_alpha", "alpha", 0.5, _check_positive("renyi_alpha"),
        "        renyi_alpha: the order α > 0 (1 is KL).\n", shardable=False),
    "tv": Divergence(total_variation, "total_variation",
        """Total variation distance TV(target, model) = ½ Σ_i |p_i − q_i|.

    Symmetric, in [0, 1]. Its gradient is a sign vector: bounded, but blind to how wrong the
    model is.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> float(total_variation(logits, torch.tensor([[1.0, 0.0]])))
        0.5
    """),
    "hellinger": Divergence(hellinger, "hellinger_distance",
        """Squared Hellinger distance H²(target, model) = ½ Σ_i (√p_i − √q_i)².

    Symmetric, in [0, 1], equal to 1 − Σ √(p q) (computed in the difference form, which does
    not cancel near equality). The loss is the square (the distance is its root).

    Reference: Hellinger, 1909; Le Cam & Yang, "Asymptotics in Statistics", 2000.

    Example:
        >>> logits = torch.tensor([[0.0, -torch.inf]])
        >>> float(hellinger_distance(logits, torch.tensor([[0.0, 1.0]])))
        1.0
    """),
    "brier": Divergence(brier, "brier_loss",
        """Brier score: the squared error between probability vectors, Σ_i (p_i − q_i)².

    A proper scoring rule, symmetric, in [0, 2]: the "anything else" baseline. This is the
    multiclass Brier score (scikit-learn's ``brier_score_loss`` with ``scale_by_half=False``);
    for two classes it is twice the binary Brier score (p_1 − q_1)².

    Reference: Brier, "Verification of forecasts expressed in terms of probability", 1950.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> float(brier_loss(logits, torch.tensor([[1.0, 0.0]])))
        0.5
    """),
}
