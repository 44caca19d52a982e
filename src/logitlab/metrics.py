"""Metrics of a predicted distribution against class labels: accuracy, likelihood, calibration.

Every function takes ``probs`` (N, C), one distribution per row (rows on the simplex), and
``target`` (N,), integer classes, and returns a 0-d tensor (``reliability_diagram`` returns a
NamedTuple of per-bin tensors). Half-precision inputs are computed in float32.

Calibration follows Guo et al. (2017), "On Calibration of Modern Neural Networks": the
confidence of a row is its largest probability, its prediction the argmax; rows are grouped by
confidence into bins, and a bin is calibrated when its accuracy equals its mean confidence.
Equal-width bins split [0, 1] into ``n_bins`` intervals [lo, hi), the last one closed [lo, 1]
(so a confidence of exactly 1.0 falls in the last bin). Equal-mass bins sort the rows by
confidence and split them into ``n_bins`` groups of (nearly) equal size (Nixon et al. 2019,
"Measuring Calibration in Deep Learning").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from logitlab._validation import (
    check_choice,
    check_floating,
    check_index_target,
    check_probs,
    check_range,
    check_same_device,
    check_tensor,
    compute_dtype,
    fail,
)

__all__ = [
    "accuracy",
    "nll",
    "zero_probability_fraction",
    "brier_score",
    "expected_calibration_error",
    "maximum_calibration_error",
    "reliability_diagram",
    "ReliabilityDiagram",
    "BINNINGS",
]

BINNINGS = ("width", "mass")


def _check(fn: str, probs: object, target: object, validate: bool) -> tuple[Tensor, Tensor]:
    probs = check_floating(fn, "probs", probs)
    target = check_tensor(fn, "target", target)
    check_same_device(fn, "probs", probs, target=target)
    if probs.dim() != 2:
        fail(fn, "probs", "a 2-D tensor (N, C)", f"<shape {tuple(probs.shape)}>")
    if target.dim() != 1 or target.shape[0] != probs.shape[0]:
        fail(fn, "target", f"a 1-D tensor of {probs.shape[0]} class indices", f"<shape {tuple(target.shape)}>")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        fail(fn, "target", "an integer tensor of class indices", f"<dtype {target.dtype}>", kind=TypeError)
    if probs.shape[0] == 0:
        fail(fn, "probs", "at least one row", "<0 rows>")
    check_index_target(fn, "target", target, probs.shape[1])  # always: an index addresses memory
    if validate:
        check_probs(fn, "probs", probs)
    return probs.to(compute_dtype(probs)), target.long()


def accuracy(probs: Tensor, target: Tensor, *, validate: bool = True) -> Tensor:
    """Fraction of rows whose most probable class is the target: mean_i [argmax_k p_ik = y_i].

    Ties go to the lowest class index (``torch.argmax``).

    Args:
        probs: (N, C) predicted distributions.
        target: (N,) integer classes.
        validate: check rows on the simplex and indices in range.

    Returns:
        0-d tensor in [0, 1].

    Raises:
        TypeError, ValueError: on a bad argument (the message names it).

    Example:
        >>> accuracy(torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]]), torch.tensor([0, 1, 1]))
        tensor(0.6667)
    """
    probs, target = _check("accuracy", probs, target, validate)
    return (probs.argmax(-1) == target).to(probs.dtype).mean()


def nll(probs: Tensor, target: Tensor, *, smoothing: float = 0.0, validate: bool = True) -> Tensor:
    """Mean negative log-likelihood of the targets, optionally smoothed towards uniform.

    NLL = −(1/N) Σ_i log q_{i,y_i}, with q = (1 − ε) p + ε / C. With ε = 0 this is the plain
    NLL (the cross-entropy H(onehot ‖ p)), which is +inf when a row gives its target
    probability exactly 0, as sparse maps (sparsemax, entmax) do. A small ε > 0 keeps it
    finite and caps each row's loss at log(C / ε); report it together with
    :func:`zero_probability_fraction`.

    Args:
        probs: (N, C) predicted distributions.
        target: (N,) integer classes.
        smoothing: ε in [0, 1).
        validate: check rows on the simplex and indices in range.

    Returns:
        0-d tensor (may be +inf when ``smoothing == 0``).

    Raises:
        TypeError, ValueError: on a bad argument (the message names it).

    Example:
        >>> probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
        >>> nll(probs, torch.tensor([0, 1]))  # (0 + log 2) / 2
        tensor(0.3466)
        >>> nll(probs, torch.tensor([1, 1]))
        tensor(inf)
        >>> nll(probs, torch.tensor([1, 1]), smoothing=0.01)  # (log 200 + log(1/0.5)) / 2
        tensor(2.9957)
    """
    probs, target = _check("nll", probs, target, validate)
    eps = check_range("nll", "smoothing", smoothing, 0.0, 1.0, high_open=True)
    picked = probs.gather(-1, target[:, None]).squeeze(-1)
    if eps > 0:
        picked = (1 - eps) * picked + eps / probs.shape[-1]
    return -torch.log(picked).mean()


def zero_probability_fraction(probs: Tensor, target: Tensor, *, validate: bool = True) -> Tensor:
    """Fraction of rows that give their target class probability exactly 0: mean_i [p_{i,y_i} = 0].

    Nonzero only for maps with exact zeros (sparsemax, entmax); on those rows the plain NLL is
    infinite.

    Args:
        probs: (N, C) predicted distributions.
        target: (N,) integer classes.
        validate: check rows on the simplex and indices in range.

    Returns:
        0-d tensor in [0, 1].

    Raises:
        TypeError, ValueError: on a bad argument (the message names it).

    Example:
        >>> zero_probability_fraction(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([1, 1]))
        tensor(0.5000)
    """
    probs, target = _check("zero_probability_fraction", probs, target, validate)
    picked = probs.gather(-1, target[:, None]).squeeze(-1)
    return (picked == 0).to(probs.dtype).mean()


def brier_score(probs: Tensor, target: Tensor, *, validate: bool = True) -> Tensor:
    """Multi-class Brier score: (1/N) Σ_i Σ_k (p_ik − [y_i = k])², in [0, 2].

    Brier (1950), "Verification of forecasts expressed in terms of probability". For two
    classes it is twice scikit-learn's binary ``brier_score_loss`` (which scores p_i1 only).

    Args:
        probs: (N, C) predicted distributions.
        target: (N,) integer classes.
        validate: check rows on the simplex and indices in range.

    Returns:
        0-d tensor in [0, 2].

    Raises:
        TypeError, ValueError: on a bad argument (the message names it).

    Example:
        >>> brier_score(torch.tensor([[0.75, 0.25], [0.5, 0.5]]), torch.tensor([0, 1]))
        tensor(0.3125)
    """
    probs, target = _check("brier_score", probs, target, validate)
    onehot = torch.zeros_like(probs).scatter_(-1, target[:, None], 1.0)
    return ((probs - onehot) ** 2).sum(-1).mean()


class ReliabilityDiagram(NamedTuple):
    """Per-bin calibration data, each field of shape (n_bins,).

    Attributes:
        lower, upper: the bin's confidence interval (equal-mass bins: the smallest and largest
            confidence in the bin; 0 for an empty bin).
        count: number of rows in the bin.
        confidence: mean confidence of the rows in the bin (0 when ``count`` is 0).
        accuracy: fraction of the bin's rows predicted correctly (0 when ``count`` is 0).
    """

    lower: Tensor
    upper: Tensor
    count: Tensor
    confidence: Tensor
    accuracy: Tensor


def _check_bins(fn: str, n_bins: object, binning: object) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        fail(fn, "n_bins", "an int >= 1", n_bins)
    check_choice(fn, "binning", binning, BINNINGS)
    return n_bins  # type: ignore[return-value]


def _diagram(fn: str, probs: Tensor, target: Tensor, n_bins: object, binning: object,
             validate: bool) -> ReliabilityDiagram:
    n_bins = _check_bins(fn, n_bins, binning)
    probs, target = _check(fn, probs, target, validate)
    confidence, prediction = probs.max(-1)
    correct = (prediction == target).to(probs.dtype)
    if binning == "width":
        edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype, device=probs.device)
        # Number of interior edges <= confidence: bins [lo, hi), and 1.0 lands in the last bin.
        index = torch.bucketize(confidence, edges[1:-1], right=True)
        lower, upper = edges[:-1].clone(), edges[1:].clone()
    else:
        order = torch.argsort(confidence, stable=True)
        index = torch.empty_like(order)
        for b, chunk in enumerate(torch.tensor_split(order, n_bins)):
            index[chunk] = b
        lower = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device)
        upper = torch.zeros_like(lower)
        for b, chunk in enumerate(torch.tensor_split(confidence[order], n_bins)):
            if chunk.numel():
                lower[b], upper[b] = chunk[0], chunk[-1]
    count = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device).index_add_(
        0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros_like(count).index_add_(0, index, confidence)
    acc_sum = torch.zeros_like(count).index_add_(0, index, correct)
    safe = count.clamp_min(1)
    return ReliabilityDiagram(lower, upper, count.long(), conf_sum / safe, acc_sum / safe)


def reliability_diagram(probs: Tensor, target: Tensor, *, n_bins: int = 15, binning: str = "width",
                        validate: bool = True) -> ReliabilityDiagram:
    """Bin rows by confidence (max_k p_ik) and report each bin's count, mean confidence and accuracy.

    Args:
        probs: (N, C) predicted distributions.
        target: (N,) integer classes.
        n_bins: number of bins.
        binning: 'width' (equal-width bins [lo, hi), last bin [lo, 1]) or 'mass' (equal counts).
        validate: check rows on the simplex and indices in range.

    Returns:
        :class:`ReliabilityDiagram` with fields of shape (n_bins,).

    Raises:
        TypeError, ValueError: on a bad argument (the message names it).

    Example:
        >>> probs = torch.tensor([[1.0, 0.0], [0.6, 0.4], [0.3, 0.7]])
        >>> d = reliability_diagram(probs, torch.tensor([0, 1, 1]), n_bins=2)
        >>> d.count, d.confidence, d.accuracy
        (tensor([0, 3]), tensor([0.0000, 0.7667]), tensor([0.0000, 0.6667]))
    """
    return _diagram("reliability_diagram", probs, target, n_bins, binning, validate)


def expected_calibration_error(probs: Tensor, target: Tensor, *, n_bins: int = 15, binning: str = "width",
                               validate: bool = True) -> Tensor:
    """ECE = Σ_b (n_b / N) |accuracy_b − confidence_b| over the bins of :func:`reliability_diagram`.

    Guo et al. (2017); ``binning='mass'`` gives the equal-mass variant (Nixon et al. 2019).

    Args:
        probs: (N, C) predicted distributions.
        target: (N,) integer classes.
        n_bins: number of bins.
        binning: 'width' (equal-width bins) or 'mass' (equal counts), as in :func:`reliability_diagram`.
        validate: check rows on the simplex and indices in range.

    Returns:
        0-d tensor in [0, 1].

    Raises:
        TypeError, ValueError: on a bad argument (the message names it).

    Example:
        >>> probs = torch.tensor([[1.0, 0.0], [0.6, 0.4], [0.3, 0.7]])
        >>> expected_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=2)  # |2/3 − 2.3/3|
        tensor(0.1000)
    """
    d = _diagram("expected_calibration_error", probs, target, n_bins, binning, validate)
    weight = d.count.to(d.confidence.dtype) / d.count.sum()
    return (weight * (d.accuracy - d.confidence).abs()).sum()


def maximum_calibration_error(probs: Tensor, target: Tensor, *, n_bins: int = 15, binning: str = "width",
                              validate: bool = True) -> Tensor:
    """MCE = max over non-empty bins of |accuracy_b − confidence_b| (Naeini et al. 2015).

    Args:
        probs: (N, C) predicted distributions.
        target: (N,) integer classes.
        n_bins: number of bins.
        binning: 'width' (equal-width bins) or 'mass' (equal counts), as in :func:`reliability_diagram`.
        validate: check rows on the simplex and indices in range.

    Returns:
        0-d tensor in [0, 1].

    Raises:
        TypeError, ValueError: on a bad argument (the message names it).

    Example:
        >>> probs = torch.tensor([[1.0, 0.0], [0.6, 0.4], [0.3, 0.7]])
        >>> maximum_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=4)  # bin [.5, .75): |0.5 − 0.65|
        tensor(0.1500)
    """
    d = _diagram("maximum_calibration_error", probs, target, n_bins, binning, validate)
    gap = (d.accuracy - d.confidence).abs()
    return gap[d.count > 0].max()
