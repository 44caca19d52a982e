"""Gibbs distributions over structures: the linear-chain CRF, a softmax over tag sequences.

A linear-chain CRF scores a tag sequence y = (y_0, …, y_{L−1}) of a length-L input by::

    s(y) = start[y_0] + Σ_t emissions[t, y_t] + Σ_{t≥1} transitions[y_{t−1}, y_t] + end[y_{L−1}]

and gives it the probability p(y) = exp(s(y)) / Z, Z = Σ_{y'} exp(s(y')): the softmax over all
K^L sequences. The forward algorithm computes log Z in O(L K²) in log space; the gradient of
log Z with respect to the emissions is the matrix of node marginals P(y_t = k) (the
exponential family's mean parameters, here by the forward–backward recursion); the Viterbi
algorithm finds the sequence of largest score. With L = 1 and no transitions, the CRF is the softmax and its
negative log-likelihood is the cross-entropy.

Shapes: emissions (B, T, K) (batch, time, tags), transitions (K, K) with transitions[i, j] the
score of tag i followed by tag j, optional start/end scores (K,), tags (B, T), and a
left-aligned boolean ``mask`` (B, T) whose row b is True for the first L_b positions (L_b >= 0)
and False after. −inf scores forbid a tag or a transition (at least one sequence per row must
stay allowed).

References:
    J. Lafferty, A. McCallum, F. Pereira, "Conditional random fields: probabilistic models for
    segmenting and labeling sequence data", ICML 2001. L. Rabiner, "A tutorial on hidden Markov
    models", Proc. IEEE 77 (1989) (forward and Viterbi recursions).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from logitlab._reduction import reduce_loss
from logitlab._validation import (
    can_read,
    check_finite,
    check_floating,
    check_probs,
    check_reduction,
    check_same_device,
    check_tensor,
    compute_dtype,
    fail,
)
from logitlab.semirings import EntropySemiring, KMaxSemiring, LogSemiring, Semiring, get_semiring, safe_logsumexp

__all__ = ["linear_chain_crf_nll", "crf_log_partition", "crf_marginals", "viterbi_decode", "ViterbiResult",
           "chain_forward", "crf_entropy", "crf_kbest_scores",
           "hmm_log_likelihood", "hmm_posteriors", "hmm_viterbi", "hmm_entropy"]


class ViterbiResult(NamedTuple):
    """The best tag sequence of each row: ``tags`` (B, T) long with −1 past each row's length,
    and ``score`` (B,) its score s(y) (0 for an empty row)."""

    tags: Tensor
    score: Tensor


def _prepare(fn: str, emissions: object, transitions: object, mask: object, start: object, end: object,
             validate: bool):
    emissions = check_floating(fn, "emissions", emissions)
    transitions = check_floating(fn, "transitions", transitions)
    if emissions.ndim != 3 or emissions.shape[2] < 1:
        fail(fn, "emissions", "a (B, T, K) tensor (batch, time, tags) with K >= 1",
             f"<shape {tuple(emissions.shape)}>")
    b, t, k = emissions.shape
    check_same_device(fn, "emissions", emissions, transitions=transitions,
                      start_transitions=start if isinstance(start, torch.Tensor) else None,
                      end_transitions=end if isinstance(end, torch.Tensor) else None,
                      mask=mask if isinstance(mask, torch.Tensor) else None)
    if transitions.shape != (k, k):
        fail(fn, "transitions", f"shape ({k}, {k}) (K x K, K = emissions.shape[-1])",
             f"<shape {tuple(transitions.shape)}>")
    dtype = compute_dtype(emissions)
    ends = []
    for name, value in (("start_transitions", start), ("end_transitions", end)):
        if value is None:
            ends.append(emissions.new_zeros(k, dtype=dtype))
            continue
        value = check_floating(fn, name, value)
        if value.shape != (k,):
            fail(fn, name, f"shape ({k},) (K = emissions.shape[-1])", f"<shape {tuple(value.shape)}>")
        ends.append(value.to(dtype))
    if mask is None:
        mask = torch.ones(b, t, dtype=torch.bool, device=emissions.device)
    else:
        mask = check_tensor(fn, "mask", mask)
        if mask.dtype != torch.bool:
            fail(fn, "mask", "a bool tensor", f"<dtype {mask.dtype}>", kind=TypeError)
        if mask.shape != (b, t):
            fail(fn, "mask", f"shape ({b}, {t}) (the batch and time of emissions)", f"<shape {tuple(mask.shape)}>")
        holes = mask[:, 1:] & ~mask[:, :-1]
        if can_read(mask) and bool(holes.any()):
            row, pos = (int(i) for i in holes.nonzero()[0])
            fail(fn, "mask", "a left-aligned mask (each row True for its first L positions, then False)",
                 f"<a hole in row {row}: False at position {pos}, True at {pos + 1}>")
    if validate:
        check_finite(fn, "emissions", emissions)
        check_finite(fn, "transitions", transitions)
        check_finite(fn, "start_transitions", ends[0])
        check_finite(fn, "end_transitions", ends[1])
    return emissions.to(dtype), transitions.to(dtype), mask, ends[0], ends[1]


def _check_allowed(fn: str, best: Tensor, mask: Tensor) -> None:
    """Reject rows where every tag sequence scores −inf (``best`` is log Z or the Viterbi score)."""
    if mask.shape[1] == 0:
        return
    if not can_read(best, mask):  # under torch.compile: a data check, skipped (no host branch)
        return
    blocked = mask[:, 0] & (best == float("-inf"))
    if bool(blocked.any()):
        row = int(blocked.nonzero()[0, 0])
        fail(fn, "transitions", "scores (with emissions and start/end) that allow at least one tag "
             "sequence in each non-empty row", f"<row {row}: every sequence scores -inf>")


def _forward(emissions: Tensor, transitions: Tensor, mask: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """log Z per row by the forward recursion α_t(j) = log Σ_i exp(α_{t−1}(i) + A_ij) + E_t(j)."""
    b, t, _ = emissions.shape
    if t == 0:
        return emissions.new_zeros(b)
    return _ForwardBackward.apply(emissions, transitions, start, end, mask)


class _ForwardBackward(torch.autograd.Function):
    """log Z with a hand-written backward (the backward recursion β) that keeps only the
    (B, T, K) forward messages α instead of autograd's (B, K, K) intermediates of every step.

    ∂ log Z/∂E_t(k) = exp(α_t(k) + β_t(k) − log Z) (node marginals) and
    ∂ log Z/∂A_ij = Σ_t exp(α_{t−1}(i) + A_ij + E_t(j) + β_t(j) − log Z) (edge marginals), with
    β_{L−1} = end, β_{t−1}(i) = logsumexp_j(A_ij + E_t(j) + β_t(j)). A double backward (marginals
    that must stay differentiable) differentiates the plain recursion instead.

    Since log Z = logsumexp_k(α_t(k) + β_t(k)) at every step t (and likewise over the edges of a
    step), the marginals are computed as softmaxes over each step's states and edges rather than
    as exp(… − log Z): the two are equal, but with scores near 1e30 the subtraction of log Z
    cancels catastrophically in floating point, and exp of its error was inf. A softmax is a
    distribution whatever the rounding, so the gradients stay in [0, 1] per position (expected
    transition counts in [0, T − 1]).
    """

    @staticmethod
    def forward(ctx, emissions, transitions, start, end, mask):  # noqa: D401
        b, t, k = emissions.shape
        alphas = emissions.new_empty(b, t, k)
        alpha = start + emissions[:, 0]
        alphas[:, 0] = alpha
        for step in range(1, t):
            nxt = safe_logsumexp(alpha.unsqueeze(2) + transitions, 1) + emissions[:, step]
            alpha = torch.where(mask[:, step : step + 1], nxt, alpha)
            alphas[:, step] = alpha
        log_z = safe_logsumexp(alpha + end, 1)
        log_z = torch.where(mask[:, 0], log_z, torch.zeros_like(log_z))
        ctx.save_for_backward(emissions, transitions, start, end, mask, alphas)
        return log_z

    @staticmethod
    def backward(ctx, grad):
        emissions, transitions, start, end, mask, alphas = ctx.saved_tensors
        inputs = (emissions, transitions, start, end)
        if torch.is_grad_enabled():  # create_graph: differentiate the plain (autograd) recursion
            wanted = [x for x, need in zip(inputs, ctx.needs_input_grad[:4]) if need]
            with torch.enable_grad():
                log_z2 = _forward_autograd(emissions, transitions, mask, start, end)
                grads = iter(torch.autograd.grad(log_z2, wanted, grad, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:4]), None)
        b, t, k = emissions.shape
        lengths = mask.sum(1)
        zero = emissions.new_zeros(())
        grad_emissions = torch.zeros_like(emissions)
        grad_transitions = torch.zeros_like(transitions)
        beta = end.expand(b, k).clone()
        for step in range(t - 1, -1, -1):
            beta = torch.where((lengths - 1 == step).unsqueeze(1), end.expand(b, k), beta)
            active = (step < lengths).unsqueeze(1)
            node = torch.softmax(alphas[:, step] + beta, 1)
            grad_emissions[:, step] = torch.where(active, node * grad.unsqueeze(1), zero)
            if step == 0:
                break
            ahead = (emissions[:, step] + beta).unsqueeze(1)  # (B, 1, K): E_t(j) + β_t(j)
            edge_scores = alphas[:, step - 1].unsqueeze(2) + transitions + ahead
            edge = torch.softmax(edge_scores.reshape(b, k * k), 1).reshape(b, k, k)
            grad_transitions += torch.where(active.unsqueeze(2), edge * grad.view(b, 1, 1), zero).sum(0)
            beta = torch.where(active, safe_logsumexp(transitions + ahead, 2), beta)
        grad_start = grad_emissions[:, 0].sum(0)
        last = (lengths - 1).clamp(min=0).view(b, 1, 1).expand(b, 1, k)
        grad_end = grad_emissions.gather(1, last).squeeze(1).sum(0)
        return grad_emissions, grad_transitions, grad_start, grad_end, None


def _node_marginals(emissions: Tensor, transitions: Tensor, mask: Tensor, start: Tensor,
                    end: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T, K) node marginals P(y_t = k) and (B,) log Z, by the forward–backward recursion.

    α_0 = start + E_0, α_t(j) = logsumexp_i(α_{t−1}(i) + A_ij) + E_t(j); β_{L−1} = end,
    β_{t−1}(i) = logsumexp_j(A_ij + E_t(j) + β_t(j)); P(y_t = k) = softmax_k(α_t(k) + β_t(k))
    (a softmax over each step's states, for the reason given in :class:`_ForwardBackward`), 0 past
    a row's length. These are ∂ log Z/∂E, written out instead of asked of ``torch.autograd.grad``:
    plain differentiable torch ops, which ``torch.compile`` traces, and whose own gradient (the
    second derivative of log Z) autograd gives. ``T >= 1``.
    """
    b, t, k = emissions.shape
    lengths = mask.sum(1)
    alpha = start + emissions[:, 0]
    alphas = [alpha]
    for step in range(1, t):
        nxt = safe_logsumexp(alpha.unsqueeze(2) + transitions, 1) + emissions[:, step]
        alpha = torch.where(mask[:, step : step + 1], nxt, alpha)
        alphas.append(alpha)
    log_z = safe_logsumexp(alpha + end, 1)
    log_z = torch.where(mask[:, 0], log_z, torch.zeros_like(log_z))
    zero = emissions.new_zeros(())
    ends = end.expand(b, k)
    beta = ends
    nodes: list[Tensor] = [zero] * t
    for step in range(t - 1, -1, -1):
        beta = torch.where((lengths - 1 == step).unsqueeze(1), ends, beta)
        active = (step < lengths).unsqueeze(1)
        nodes[step] = torch.where(active, torch.softmax(alphas[step] + beta, 1), zero)
        if step:
            ahead = (emissions[:, step] + beta).unsqueeze(1)  # (B, 1, K): E_t(j) + β_t(j)
            beta = torch.where(active, safe_logsumexp(transitions + ahead, 2), beta)
    return torch.stack(nodes, 1), log_z


def _forward_autograd(emissions: Tensor, transitions: Tensor, mask: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """The forward recursion in plain differentiable ops: the log semiring's :func:`_chain`."""
    return _chain(LogSemiring(), emissions, transitions, mask, start, end)[:, 0]


def _sequence_score(emissions: Tensor, transitions: Tensor, tags: Tensor, mask: Tensor, start: Tensor,
                    end: Tensor) -> Tensor:
    """s(y) of the given tags per row (0 for an empty row)."""
    b, t, _ = emissions.shape
    if t == 0:
        return emissions.new_zeros(b)
    safe = torch.where(mask, tags, torch.zeros_like(tags))
    zero = emissions.new_zeros(())  # where(), not a product with the mask: −inf · 0 would be NaN
    emit = torch.where(mask, emissions.gather(2, safe.unsqueeze(2)).squeeze(2), zero).sum(1)
    trans = torch.where(mask[:, 1:], transitions[safe[:, :-1], safe[:, 1:]], zero).sum(1) if t > 1 else 0.0
    lengths = mask.sum(1)
    last = safe.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    ends = torch.where(mask[:, 0], start[safe[:, 0]] + end[last], zero)
    return emit + trans + ends


def crf_log_partition(emissions: Tensor, transitions: Tensor, *, mask: Tensor | None = None,
                      start_transitions: Tensor | None = None, end_transitions: Tensor | None = None,
                      validate: bool = True) -> Tensor:
    """log Z of a linear-chain CRF per row, by the forward algorithm in log space.

    log Z = log Σ_y exp(s(y)) over all K^L tag sequences of each row (see the module docstring
    for s), computed in O(L K²) by α_0 = start + E_0, α_t(j) = logsumexp_i(α_{t−1}(i) + A_ij)
    + E_t(j), log Z = logsumexp_j(α_{L−1}(j) + end_j). Differentiable (plain autograd).

    Args:
        emissions: (B, T, K) per-position tag scores.
        transitions: (K, K) transitions[i, j] = score of tag i followed by tag j.
        mask: (B, T) bool, left-aligned; None means every position counts.
        start_transitions, end_transitions: (K,) scores of the first / last tag, or None (0).
        validate: check for NaN and +inf.

    Returns:
        (B,) log Z in the dtype of ``emissions`` (half inputs are computed in float32); 0 for
        empty rows.

    Raises:
        TypeError, ValueError: bad shapes or dtypes, a mask with holes, NaN/+inf scores, a
            non-empty row where every tag sequence scores -inf (with ``validate``).

    Example:
        >>> emissions, transitions = torch.zeros(1, 3, 2), torch.zeros(2, 2)
        >>> crf_log_partition(emissions, transitions)  # 2^3 equally scored sequences: log 8
        tensor([2.0794])
    """
    fn = "crf_log_partition"
    out_dtype = check_floating(fn, "emissions", emissions).dtype
    emissions, transitions, mask, start, end = _prepare(fn, emissions, transitions, mask, start_transitions,
                                                        end_transitions, validate)
    log_z = _forward(emissions, transitions, mask, start, end)
    if validate:
        _check_allowed(fn, log_z, mask)
    return log_z.to(out_dtype)


def linear_chain_crf_nll(emissions: Tensor, transitions: Tensor, tags: Tensor, *, mask: Tensor | None = None,
                         start_transitions: Tensor | None = None, end_transitions: Tensor | None = None,
                         reduction: str = "mean", validate: bool = True) -> Tensor:
    """Negative log-likelihood of tag sequences under a linear-chain CRF: log Z − s(tags).

    −log p(y) = log Σ_{y'} exp(s(y')) − s(y), the cross-entropy of the softmax over all tag
    sequences, with log Z by :func:`crf_log_partition`. With T = 1 and no start/end scores it
    equals ``cross_entropy(emissions[:, 0], tags[:, 0])``.

    Args:
        emissions: (B, T, K) per-position tag scores.
        transitions: (K, K) transitions[i, j] = score of tag i followed by tag j.
        tags: (B, T) integer gold tags; entries past a row's length are ignored (any value).
        mask: (B, T) bool, left-aligned; None means every position counts.
        start_transitions, end_transitions: (K,) scores of the first / last tag, or None (0).
        reduction: 'none' | 'mean' (over the non-empty rows) | 'sum'.
        validate: check for NaN/+inf scores and tags in [0, K).

    Returns:
        (B,) for 'none', else a scalar, in the dtype of ``emissions`` (half inputs are computed
        in float32).

    Raises:
        TypeError, ValueError: bad shapes or dtypes, a mask with holes, tags out of range, a
            non-empty row where every tag sequence scores -inf (with ``validate``).

    Example:
        >>> emissions = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
        >>> transitions = torch.tensor([[0.0, -1.0], [-1.0, 0.0]])
        >>> linear_chain_crf_nll(emissions, transitions, torch.tensor([[0, 0]]))
        tensor(0.8828)
        >>> crf_log_partition(emissions, transitions) - 2.0   # log Z − s([0, 0])
        tensor([0.8828])
    """
    fn = "linear_chain_crf_nll"
    check_reduction(fn, reduction)
    out_dtype = check_floating(fn, "emissions", emissions).dtype
    emissions, transitions, mask, start, end = _prepare(fn, emissions, transitions, mask, start_transitions,
                                                        end_transitions, validate)
    tags = check_tensor(fn, "tags", tags)
    check_same_device(fn, "emissions", emissions, tags=tags)
    if tags.dtype.is_floating_point or tags.dtype == torch.bool or tags.is_complex():
        fail(fn, "tags", "an integer tensor", f"<dtype {tags.dtype}>", kind=TypeError)
    if tags.shape != emissions.shape[:2]:
        fail(fn, "tags", f"shape {tuple(emissions.shape[:2])} (the batch and time of emissions)",
             f"<shape {tuple(tags.shape)}>")
    tags = tags.to(torch.long)
    # Whatever `validate` says (indices address memory), except under torch.compile (no host branch).
    if can_read(tags, mask) and bool(mask.any()):
        valid = tags[mask]
        low, high = int(valid.min()), int(valid.max())
        if low < 0 or high >= emissions.shape[2]:
            fail(fn, "tags", f"tag indices in [0, {emissions.shape[2] - 1}] at masked-in positions",
                 f"<index {low if low < 0 else high}>")
    log_z = _forward(emissions, transitions, mask, start, end)
    if validate:
        _check_allowed(fn, log_z, mask)
    nll = log_z - _sequence_score(emissions, transitions, tags, mask, start, end)
    return reduce_loss(nll, reduction, keep=mask[:, 0] if mask.shape[1] else None).to(out_dtype)


def crf_marginals(emissions: Tensor, transitions: Tensor, *, mask: Tensor | None = None,
                  start_transitions: Tensor | None = None, end_transitions: Tensor | None = None,
                  validate: bool = True) -> Tensor:
    """Node marginals P(y_t = k) of a linear-chain CRF, by the forward–backward algorithm.

    ∂ log Z / ∂ emissions[b, t, k] = Σ_y p(y) 1[y_t = k] = P(y_t = k): the exponential
    family's mean parameters are the gradient of its log-partition. Computed as
    P(y_t = k) = softmax_k(α_t(k) + β_t(k)) from the forward messages α of
    :func:`crf_log_partition` and the backward messages β_{t−1}(i) = logsumexp_j(A_ij + E_t(j) +
    β_t(j)), β_{L−1} = end, in plain torch ops (so ``torch.compile`` traces it with no graph
    break). When an input requires grad, the result is differentiable too (the second
    derivatives of log Z).

    Args:
        emissions: (B, T, K); transitions: (K, K); mask: (B, T) bool, left-aligned, or None;
        start_transitions, end_transitions: (K,) or None; validate: check for NaN/+inf.

    Returns:
        (B, T, K) marginals: rows sum to 1 at masked-in positions and are 0 elsewhere.

    Raises:
        TypeError, ValueError: as :func:`crf_log_partition`.

    Example:
        >>> emissions = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
        >>> transitions = torch.tensor([[1.0, 0.0], [0.0, 0.0]])   # 0 → 0 is favoured
        >>> crf_marginals(emissions, transitions)
        tensor([[[0.6502, 0.3498],
                 [0.6502, 0.3498]]])
    """
    fn = "crf_marginals"
    emissions_in = check_floating(fn, "emissions", emissions)
    emissions, transitions, mask, start, end = _prepare(fn, emissions, transitions, mask, start_transitions,
                                                        end_transitions, validate)
    if emissions.shape[1] == 0:  # no positions: no marginals (and nothing to differentiate)
        return torch.zeros_like(emissions_in)
    marginals, log_z = _node_marginals(emissions, transitions, mask, start, end)
    if validate:
        _check_allowed(fn, log_z, mask)
    return marginals.to(emissions_in.dtype)


def viterbi_decode(emissions: Tensor, transitions: Tensor, *, mask: Tensor | None = None,
                   start_transitions: Tensor | None = None, end_transitions: Tensor | None = None,
                   validate: bool = True) -> ViterbiResult:
    """The highest-scoring tag sequence of each row (max-product, the Viterbi algorithm).

    δ_0 = start + E_0, δ_t(j) = max_i(δ_{t−1}(i) + A_ij) + E_t(j) with back-pointers, then
    backtracking from argmax_j(δ_{L−1}(j) + end_j): argmax_y s(y) in O(L K²).

    Args:
        emissions: (B, T, K); transitions: (K, K); mask: (B, T) bool, left-aligned, or None;
        start_transitions, end_transitions: (K,) or None; validate: check for NaN/+inf.

    Returns:
        :class:`ViterbiResult` (tags (B, T) long, −1 past each row's length; score (B,)).

    Raises:
        TypeError, ValueError: as :func:`crf_log_partition`.

    Example:
        >>> emissions = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
        >>> transitions = torch.tensor([[0.0, -3.0], [-3.0, 0.0]])   # switching costs 3
        >>> viterbi_decode(emissions, transitions)
        ViterbiResult(tags=tensor([[0, 0, 0]]), score=tensor([2.]))
        >>> viterbi_decode(emissions, transitions, mask=torch.tensor([[True, True, False]])).tags
        tensor([[ 0,  0, -1]])
    """
    fn = "viterbi_decode"
    out_dtype = check_floating(fn, "emissions", emissions).dtype
    emissions, transitions, mask, start, end = _prepare(fn, emissions, transitions, mask, start_transitions,
                                                        end_transitions, validate)
    b, t, k = emissions.shape
    tags = torch.full((b, t), -1, dtype=torch.long, device=emissions.device)
    if t == 0:
        return ViterbiResult(tags, emissions.new_zeros(b, dtype=out_dtype))
    with torch.no_grad():
        delta = start + emissions[:, 0]
        pointers = torch.zeros(b, t, k, dtype=torch.long, device=emissions.device)
        for step in range(1, t):
            best, arg = (delta.unsqueeze(2) + transitions).max(1)
            pointers[:, step] = arg
            delta = torch.where(mask[:, step : step + 1], best + emissions[:, step], delta)
        score, last = (delta + end).max(1)
        lengths = mask.sum(1)
        nonempty = lengths > 0
        rows = torch.arange(b, device=emissions.device)
        tags[rows[nonempty], lengths[nonempty] - 1] = last[nonempty]
        for step in range(t - 1, 0, -1):
            previous = pointers[:, step].gather(1, tags[:, step].clamp(min=0).unsqueeze(1)).squeeze(1)
            tags[:, step - 1] = torch.where(step < lengths, previous, tags[:, step - 1])
        score = torch.where(nonempty, score, torch.zeros_like(score))
    if validate:
        _check_allowed(fn, score, mask)
    return ViterbiResult(tags, score.to(out_dtype))


# ---------------------------------------------------------------------------------------------
# The forward algorithm over a semiring; entropy and k-best of the CRF
# ---------------------------------------------------------------------------------------------


def _chain(semiring: Semiring, emissions: Tensor, transitions: Tensor, mask: Tensor, start: Tensor,
           end: Tensor) -> Tensor:
    """⊕_y ⊗ (scores of y) over all tag sequences of each row: (B, width).

    α_0 = start ⊗ E_0, α_t(j) = ⊕_i (α_{t−1}(i) ⊗ A_ij) ⊗ E_t(j), value = ⊕_j α_{L−1}(j) ⊗ end_j;
    an empty row gets the value of the empty path (the semiring's one).
    """
    sr = semiring
    b, t, _ = emissions.shape
    one = sr.lift(emissions.new_zeros(b))
    if t == 0:
        return one
    trans = sr.lift(transitions)  # (K, K, w)
    alpha = sr.times(sr.lift(start), sr.lift(emissions[:, 0]))  # (B, K, w)
    for step in range(1, t):
        nxt = sr.times(sr.sum(sr.times(alpha.unsqueeze(2), trans), 1), sr.lift(emissions[:, step]))
        alpha = torch.where(mask[:, step].view(b, 1, 1), nxt, alpha)
    value = sr.sum(sr.times(alpha, sr.lift(end)), 1)
    return torch.where(mask[:, 0].view(b, 1), value, one)


def chain_forward(emissions: Tensor, transitions: Tensor, *, semiring: str | Semiring = "log",
                  mask: Tensor | None = None, start_transitions: Tensor | None = None,
                  end_transitions: Tensor | None = None, validate: bool = True) -> Tensor:
    """The forward algorithm of a linear-chain CRF over a semiring: ⊕ over all K^L tag sequences.

    α_0 = start ⊗ E_0, α_t(j) = ⊕_i (α_{t−1}(i) ⊗ A_ij) ⊗ E_t(j), result ⊕_j α_{L−1}(j) ⊗ end_j,
    in O(L K²) (K² k² for k-max). The semiring decides what this computes
    (:mod:`logitlab.semirings`): 'log' log Z (= :func:`crf_log_partition`), 'max' the Viterbi
    score, ``KMaxSemiring(k)`` the k best scores, 'entropy' (log Z, H(p)) with H the entropy of
    the CRF's distribution over sequences. Plain autograd: the gradient of the 'log' value with
    respect to the emissions is the node marginals, that of 'max' the best path (one-hot).

    Args:
        emissions: (B, T, K); transitions: (K, K); mask: (B, T) bool, left-aligned, or None;
        semiring: 'log' | 'max' | 'entropy' or a :class:`~logitlab.semirings.Semiring`;
        start_transitions, end_transitions: (K,) or None; validate: check for NaN/+inf.

    Returns:
        (B,) for 'log' and 'max'; (B, width) otherwise ((B, k) for k-max, (B, 2) for entropy);
        an empty row gets the empty path's value (0; k-max: 0 then −inf). Dtype of ``emissions``.

    Raises:
        TypeError, ValueError: as :func:`crf_log_partition`; an unknown semiring.

    Example:
        >>> from logitlab.semirings import KMaxSemiring
        >>> emissions, transitions = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]), torch.zeros(2, 2)
        >>> chain_forward(emissions, transitions, semiring="max")  # tags (0, 1): 1 + 2
        tensor([3.])
        >>> chain_forward(emissions, transitions, semiring=KMaxSemiring(3))
        tensor([[3., 2., 1.]])
    """
    fn = "chain_forward"
    sr = get_semiring(fn, semiring)
    out_dtype = check_floating(fn, "emissions", emissions).dtype
    emissions, transitions, mask, start, end = _prepare(fn, emissions, transitions, mask, start_transitions,
                                                        end_transitions, validate)
    value = _chain(sr, emissions, transitions, mask, start, end)
    if validate:
        _check_allowed(fn, value[:, 0], mask)
    return (value.squeeze(-1) if sr.width == 1 and sr.name in ("log", "max") else value).to(out_dtype)


def crf_entropy(emissions: Tensor, transitions: Tensor, *, mask: Tensor | None = None,
                start_transitions: Tensor | None = None, end_transitions: Tensor | None = None,
                validate: bool = True) -> Tensor:
    """H(p) = −Σ_y p(y) log p(y) of a linear-chain CRF's distribution over tag sequences.

    The entropy semiring's forward algorithm (:func:`chain_forward`), in O(L K²); equal to
    log Z − E_p[s(y)], and differentiable.

    Args:
        emissions: (B, T, K); transitions: (K, K); mask: (B, T) bool, left-aligned, or None;
        start_transitions, end_transitions: (K,) or None; validate: check for NaN/+inf.

    Returns:
        (B,) entropies in nats (0 for empty rows), dtype of ``emissions``.

    Raises:
        TypeError, ValueError: as :func:`crf_log_partition`.

    Example:
        >>> crf_entropy(torch.zeros(1, 3, 2), torch.zeros(2, 2))  # uniform over 8 sequences: log 8
        tensor([2.0794])
    """
    return chain_forward(emissions, transitions, semiring=EntropySemiring(), mask=mask,
                         start_transitions=start_transitions, end_transitions=end_transitions,
                         validate=validate)[:, 1]


def crf_kbest_scores(emissions: Tensor, transitions: Tensor, *, k: int, mask: Tensor | None = None,
                     start_transitions: Tensor | None = None, end_transitions: Tensor | None = None,
                     validate: bool = True) -> Tensor:
    """The k largest sequence scores s(y) of each row, descending (the k-max semiring).

    Args:
        emissions: (B, T, K); transitions: (K, K); k: how many (>= 1); the rest as
            :func:`chain_forward`.

    Returns:
        (B, k) scores, −inf where a row has fewer than k allowed sequences.

    Raises:
        TypeError, ValueError: as :func:`crf_log_partition`; ``k`` not an int >= 1.

    Example:
        >>> crf_kbest_scores(torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]), torch.zeros(2, 2), k=2)
        tensor([[3., 2.]])
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        fail("crf_kbest_scores", "k", "an int >= 1", k)
    return chain_forward(emissions, transitions, semiring=KMaxSemiring(k), mask=mask,
                         start_transitions=start_transitions, end_transitions=end_transitions,
                         validate=validate)


# ---------------------------------------------------------------------------------------------
# Hidden Markov models, on the same dynamic programs
# ---------------------------------------------------------------------------------------------


def _hmm_scores(fn: str, observations: object, log_initial: object, log_transition: object,
                log_emission: object, mask: object, validate: bool):
    """The HMM as a CRF: emissions E[b, t, k] = log B[k, x_bt], start = log π, A = log T."""
    log_emission = check_floating(fn, "log_emission", log_emission)
    if log_emission.ndim != 2 or log_emission.shape[0] < 1 or log_emission.shape[1] < 1:
        fail(fn, "log_emission", "a (K, V) tensor of log-probabilities (states x symbols)",
             f"<shape {tuple(log_emission.shape)}>")
    k, v = log_emission.shape
    log_initial = check_floating(fn, "log_initial", log_initial)
    log_transition = check_floating(fn, "log_transition", log_transition)
    for name, value, shape in (("log_initial", log_initial, (k,)), ("log_transition", log_transition, (k, k))):
        if tuple(value.shape) != shape:
            fail(fn, name, f"shape {shape} (K = log_emission.shape[0])", f"<shape {tuple(value.shape)}>")
    observations = check_tensor(fn, "observations", observations)
    if observations.dtype.is_floating_point or observations.dtype == torch.bool or observations.ndim != 2:
        fail(fn, "observations", "a (B, T) integer tensor of symbols",
             f"<{observations.dtype} tensor of shape {tuple(observations.shape)}>", kind=TypeError)
    if validate:
        for name, value in (("log_initial", log_initial), ("log_transition", log_transition),
                            ("log_emission", log_emission)):
            if can_read(value) and (bool(torch.isnan(value).any()) or bool((value == math.inf).any())):
                fail(fn, name, "log-probabilities without NaN or +inf", "<NaN or +inf entries>")
            check_probs(fn, name, value.double().exp(), dim=-1)
    obs = observations.long()
    present = mask if isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.shape == obs.shape else None
    if validate and obs.numel() and can_read(obs):
        seen = obs[present] if present is not None else obs.reshape(-1)
        if seen.numel() and (int(seen.min()) < 0 or int(seen.max()) >= v):
            bad = int(seen.min()) if int(seen.min()) < 0 else int(seen.max())
            fail(fn, "observations", f"symbols in [0, {v - 1}] at masked-in positions", f"<symbol {bad}>")
    safe = obs.clamp(0, v - 1)
    emissions = log_emission.t()[safe]  # (B, T, K)
    return emissions, log_transition, log_initial


def _hmm_prepare(fn, observations, log_initial, log_transition, log_emission, mask, validate):
    emissions, transitions, start = _hmm_scores(fn, observations, log_initial, log_transition, log_emission,
                                                mask, validate)
    out_dtype = emissions.dtype
    # Only the HMM's own checks: impossible (−inf) transitions or emissions are allowed.
    emissions, transitions, mask, start, end = _prepare(fn, emissions, transitions, mask, start, None, False)
    return out_dtype, emissions, transitions, mask, start, end


def hmm_log_likelihood(observations: Tensor, log_initial: Tensor, log_transition: Tensor,
                       log_emission: Tensor, *, mask: Tensor | None = None, validate: bool = True) -> Tensor:
    """log p(x) of observation sequences under a hidden Markov model (the forward algorithm).

    p(x, z) = π_{z_0} B[z_0, x_0] Π_{t≥1} T[z_{t−1}, z_t] B[z_t, x_t]; p(x) = Σ_z p(x, z) is the
    partition function of the linear-chain CRF with emissions log B[·, x_t], transitions log T and
    start log π (no end scores), so p(z | x) is that CRF's Gibbs distribution. The same
    :func:`chain_forward` code (log semiring), in O(L K²).

    Args:
        observations: (B, T) integer symbols in [0, V).
        log_initial: (K,) log π; log_transition: (K, K) log T[i, j] = log p(z_t = j | z_{t−1} = i);
        log_emission: (K, V) log B[k, v] = log p(x_t = v | z_t = k); each a log-distribution
            along its last axis (−inf for impossible events).
        mask: (B, T) bool, left-aligned, or None; validate: check the distributions and symbols.

    Returns:
        (B,) log p(x) (0 for empty rows), dtype of ``log_emission``.

    Raises:
        TypeError, ValueError: bad shapes or dtypes, rows that are not log-distributions, symbols
            out of range, a non-empty sequence of probability 0.

    Example:
        >>> log_pi, log_t = torch.tensor([0.5, 0.5]).log(), torch.tensor([[0.9, 0.1], [0.1, 0.9]]).log()
        >>> log_b = torch.tensor([[0.8, 0.2], [0.3, 0.7]]).log()
        >>> hmm_log_likelihood(torch.tensor([[0]]), log_pi, log_t, log_b).exp()  # ½·0.8 + ½·0.3
        tensor([0.5500])
    """
    fn = "hmm_log_likelihood"
    out_dtype, emissions, transitions, mask, start, end = _hmm_prepare(
        fn, observations, log_initial, log_transition, log_emission, mask, validate)
    value = _chain(LogSemiring(), emissions, transitions, mask, start, end)[:, 0]
    if validate:
        _check_allowed(fn, value, mask)
    return value.to(out_dtype)


def hmm_posteriors(observations: Tensor, log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, *,
                   mask: Tensor | None = None, validate: bool = True) -> Tensor:
    """Posterior state marginals P(z_t = k | x) of an HMM (forward–backward).

    The gradient of log p(x) with respect to the emission scores E_t(k) = log B[k, x_t], computed
    by the forward–backward algorithm (:func:`crf_marginals` on the HMM's CRF):
    P(z_t = k | x) ∝ α_t(k)·β_t(k). Differentiable with respect to the log-parameters when they
    require grad.

    Args:
        observations, log_initial, log_transition, log_emission, mask, validate: as
            :func:`hmm_log_likelihood`.

    Returns:
        (B, T, K): rows sum to 1 at masked-in positions, 0 elsewhere.

    Raises:
        As :func:`hmm_log_likelihood`.

    Example:
        >>> log_pi, log_t = torch.tensor([0.5, 0.5]).log(), torch.tensor([[0.9, 0.1], [0.1, 0.9]]).log()
        >>> log_b = torch.tensor([[0.8, 0.2], [0.3, 0.7]]).log()
        >>> hmm_posteriors(torch.tensor([[0]]), log_pi, log_t, log_b)  # 0.4 / 0.55, 0.15 / 0.55
        tensor([[[0.7273, 0.2727]]])
    """
    fn = "hmm_posteriors"
    out_dtype, emissions, transitions, mask, start, end = _hmm_prepare(
        fn, observations, log_initial, log_transition, log_emission, mask, validate)
    if emissions.shape[1] == 0:
        return emissions.new_zeros(emissions.shape).to(out_dtype)
    post, log_px = _node_marginals(emissions, transitions, mask, start, end)
    if validate:
        _check_allowed(fn, log_px, mask)
    return post.to(out_dtype)


def hmm_viterbi(observations: Tensor, log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, *,
                mask: Tensor | None = None, validate: bool = True) -> ViterbiResult:
    """The most probable hidden state sequence argmax_z p(z | x) of an HMM (Viterbi).

    Args:
        observations, log_initial, log_transition, log_emission, mask, validate: as
            :func:`hmm_log_likelihood`.

    Returns:
        :class:`ViterbiResult`: ``tags`` (B, T) the states (−1 past each row's length) and
        ``score`` (B,) log p(x, z*).

    Raises:
        As :func:`hmm_log_likelihood`.

    Example:
        >>> log_pi, log_t = torch.tensor([0.5, 0.5]).log(), torch.tensor([[0.9, 0.1], [0.1, 0.9]]).log()
        >>> log_b = torch.tensor([[0.8, 0.2], [0.3, 0.7]]).log()
        >>> hmm_viterbi(torch.tensor([[0, 0, 1]]), log_pi, log_t, log_b).tags
        tensor([[0, 0, 0]])
    """
    fn = "hmm_viterbi"
    out_dtype, emissions, transitions, mask, start, end = _hmm_prepare(
        fn, observations, log_initial, log_transition, log_emission, mask, validate)
    result = viterbi_decode(emissions, transitions, mask=mask, start_transitions=start, end_transitions=end,
                            validate=False)
    if validate:
        _check_allowed(fn, result.score, mask)
    return ViterbiResult(result.tags, result.score.to(out_dtype))


def hmm_entropy(observations: Tensor, log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, *,
                mask: Tensor | None = None, validate: bool = True) -> Tensor:
    """H(z | x) = −Σ_z p(z | x) log p(z | x): the posterior entropy of the hidden states.

    The entropy semiring on the HMM's CRF (:func:`crf_entropy`).

    Args:
        observations, log_initial, log_transition, log_emission, mask, validate: as
            :func:`hmm_log_likelihood`.

    Returns:
        (B,) entropies in nats (0 for empty rows).

    Raises:
        As :func:`hmm_log_likelihood`.

    Example:
        >>> log_pi, log_t = torch.tensor([0.5, 0.5]).log(), torch.full((2, 2), 0.5).log()
        >>> log_b = torch.full((2, 3), 1 / 3).log()   # uninformative: every z equally likely
        >>> hmm_entropy(torch.tensor([[0, 2]]), log_pi, log_t, log_b)  # log 4
        tensor([1.3863])
    """
    fn = "hmm_entropy"
    out_dtype, emissions, transitions, mask, start, end = _hmm_prepare(
        fn, observations, log_initial, log_transition, log_emission, mask, validate)
    value = _chain(EntropySemiring(), emissions, transitions, mask, start, end)
    if validate:
        _check_allowed(fn, value[:, 0], mask)
    return value[:, 1].to(out_dtype)
